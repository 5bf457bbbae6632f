"""What an interactive front end asks of the engine besides maps: which methods fit a model,
channel statistics of a layer, ground-truth evidence of a target, parameter counts.

The dashboard's pages call these with the sidebar's selection and draw what comes back;
nothing here imports Streamlit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import threading
import time
import weakref

import numpy as np

from .methods import registry
from .methods.registry import MethodInfo

CHANNEL_SORTS = ("importance", "activation", "index")


def methods_for(explainer) -> dict[str, MethodInfo]:
    """Every registered method that fits the explainer's model, by name (registry order)."""
    return {m.name: m for m in registry.methods_for(explainer.task, explainer.backend.framework)}


def channel_stats(explainer, image, target, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations [K, h, w], mean activation [K], importance [K]) of `layer` for the target.

    Importance is the channel's share of the Grad-CAM sum: mean gradient x mean activation.
    One capture of the layer (cached by the engine; a cached all-layer capture serves it).
    """
    cap = explainer.capture(image, target, layers=[layer])
    acts = cap.activations[layer]
    mean_act = acts.mean(axis=(1, 2))
    means = cap.gradient_means.get(layer) if getattr(cap, "gradient_means", None) else None
    if means is None:
        means = cap.gradients[layer].mean(axis=(1, 2))
    return acts, mean_act, np.asarray(means, np.float64).reshape(-1) * mean_act


def channel_order(kind: str, mean_act: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Channel indices sorted by importance or mean activation (descending), or by index."""
    if kind == "importance":
        return np.argsort(-importance, kind="stable")
    if kind == "activation":
        return np.argsort(-mean_act, kind="stable")
    if kind == "index":
        return np.arange(len(mean_act))
    raise ValueError(f"sort must be one of {CHANNEL_SORTS}")


def evidence_mask(truth: np.ndarray | None, resolved) -> np.ndarray | None:
    """Ground-truth pixels of the target class inside the target region's bounding box
    (segmentation with labels), or None when there is no such evidence."""
    if truth is None or resolved is None or resolved.task != "segmentation":
        return None
    mask = truth == resolved.class_id
    region = resolved.mask
    if region is not None and not region.all():
        ys, xs = np.nonzero(region)
        box = np.zeros_like(mask)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        mask &= box
    return mask if mask.any() else None


def parameter_counts(explainer) -> dict[str, int]:
    """Parameters per layer name ("" = the whole model).

    The backend's `parameter_counts()` when it has one; otherwise the wrapped model by
    duck typing (no framework import): a torch module's `named_modules()` or a Keras
    model's nested `layers`.
    """
    backend = explainer.backend
    counter = getattr(backend, "parameter_counts", None)
    if callable(counter):
        return dict(counter())
    module = getattr(backend, "module", None)
    if module is not None and hasattr(module, "named_modules"):
        return {name: sum(int(p.numel()) for p in m.parameters()) for name, m in module.named_modules()}
    model = getattr(backend, "model", None)
    if model is not None and hasattr(model, "layers"):
        out: dict[str, Any] = {"": int(model.count_params())}
        stack = list(model.layers)
        while stack:
            layer = stack.pop()
            try:
                out.setdefault(layer.name, int(layer.count_params()))
            except Exception:  # an unbuilt layer cannot count
                pass
            stack.extend(getattr(layer, "layers", []) or [])
        return out
    return {}


#: Niceness of background fills (NEUROSCOPE_PREFETCH_NICE, 0 = as the server): the next
#: click's pass and the browser's drawing come first. On 2 busy cores an all-layer capture
#: at the same priority ran beside every new click's one-layer pass and the image decode.
PREFETCH_NICE = 10


def lower_priority(nice: int | None = None) -> bool:
    """Give the calling thread (Linux: threads have their own nice value, and the OpenMP
    workers a framework starts from it inherit it) a lower CPU priority; False where not
    possible."""
    import os
    if nice is None:
        try:
            nice = int(os.environ.get("NEUROSCOPE_PREFETCH_NICE", PREFETCH_NICE))
        except ValueError:
            nice = PREFETCH_NICE
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), min(19, nice)))
        return True
    except OSError:
        return False


class Foreground:
    """Script runs in progress, over all sessions of a server: background fills (the layer
    prefetch, the Parts view's passes) start their next model pass only when none is
    running, so a click's own pass does not share the cores (and the GIL) with them.

    Measured (scripts/bench_browser.py, 2 cores): a click's one-layer Grad-CAM took ~144 ms
    in the server while the previous click's fills ran, vs ~64 ms alone. A fill waits at
    most `max_wait_s` per pass, so a server that is never idle still makes progress."""

    def __init__(self, max_wait_s: float = 5.0, quiet_s: float = 0.3):
        self._cond = threading.Condition()
        self._active = 0
        self._ended = 0.0          # time.monotonic() when the last run ended
        self.max_wait_s = max_wait_s
        self.quiet_s = quiet_s     # after a run: the browser still fetches and draws its pictures

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._ended = time.monotonic()
                if not self._active:
                    self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block while a script run is active or ended less than `quiet_s` ago (at most
        `timeout`, default `max_wait_s`); True when idle."""
        end = time.monotonic() + (self.max_wait_s if timeout is None else timeout)
        with self._cond:
            while True:
                now = time.monotonic()
                if self._active == 0 and now - self._ended >= self.quiet_s:
                    return True
                if now >= end:
                    return False
                left = end - now if self._active else min(end - now, self.quiet_s - (now - self._ended))
                self._cond.wait(left)


#: One per process: every session's script runs count.
FOREGROUND = Foreground()


class Prefetcher:
    """Fills the engine's caches in one background thread so the next click is a cache hit.

    A page first computes what it shows (e.g. one layer's Grad-CAM from one capture of
    that layer), then `submit`s the rest (the capture of every layer, for layer switches
    and the sweep). Requests with a key already pending or running are dropped; only the
    `keep` newest pending requests are kept (older ones are stale clicks). Failures are
    swallowed: a prefetch is an optimisation and the foreground call reports the error.
    """

    def __init__(self, keep: int = 2):
        self._cond = threading.Condition()
        self._pending: dict[Any, Any] = {}
        self._running: Any = None
        self._keep = keep
        self._thread = None

    def submit(self, key, fn) -> bool:
        """Queue `fn()` under `key`; False when the same key is already queued or running."""
        with self._cond:
            if key == self._running or key in self._pending:
                return False
            self._pending[key] = fn
            while len(self._pending) > self._keep:
                self._pending.pop(next(iter(self._pending)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="neuroscope-prefetch", daemon=True)
                self._thread.start()
            return True

    def _work(self) -> None:
        lower_priority()
        while True:
            with self._cond:
                if not self._pending:
                    self._running = None
                    self._thread = None
                    self._cond.notify_all()
                    return
                key = next(reversed(self._pending))     # the newest request first
                fn = self._pending.pop(key)
                self._running = key
            try:
                FOREGROUND.wait_idle()   # the click that queued this first: its page is still drawing
                fn()
            except Exception:  # noqa: BLE001 -- see the class docstring
                pass
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def busy(self, key=None) -> bool:
        with self._cond:
            if key is None:
                return self._running is not None or bool(self._pending)
            return key == self._running or key in self._pending

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None and not self._pending, timeout)


#: One per process: the dashboard's sessions share the models, so they share the filler.
PREFETCH = Prefetcher()


def prefetch_layers(explainer, image, target, image_key: str) -> bool:
    """Capture every spatial layer for this image and target in the background (layer
    switches, the Layers page and the sweep then need no model pass)."""
    key = ("layers", id(explainer), image_key, None if target is None else target.key())
    return PREFETCH.submit(key, lambda: explainer.capture(image, target))


# ------------------------------------------------------------------------- cost of a method
#: Seconds a method may take to run without asking (NEUROSCOPE_INTERACTIVE_BUDGET_S).
DEFAULT_BUDGET_S = 2.0
#: Lighter settings a segmentation model gets by default in an interactive front end (the
#: registry defaults are the full-quality run): occlusion with 4x the window and stride
#: (~16x fewer windows), RISE with a fifth of the masks.
INTERACTIVE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "segmentation": {"occlusion": {"window": 64, "stride": 32}, "rise": {"masks": 100}},
}
#: A forward+backward costs about this many batched forwards of one image (a backward is
#: ~2 forwards; batching a chunk saves a little). Refined by measured runs (`record_run`).
GRADIENT_PASS_FACTOR = 2.5
#: Methods of at most this many passes always run at once (and need no pass-time measurement).
ALWAYS_PASSES = 2


def budget_s() -> float:
    import os
    try:
        return max(0.0, float(os.environ.get("NEUROSCOPE_INTERACTIVE_BUDGET_S", DEFAULT_BUDGET_S)))
    except ValueError:
        return DEFAULT_BUDGET_S


def interactive_params(task: str, method: str) -> dict[str, Any]:
    """The lighter defaults of `method` on a `task` model ({} when it has none)."""
    return dict(INTERACTIVE_DEFAULTS.get(task, {}).get(method, {}))


@dataclass(frozen=True)
class Cost:
    """What running a method would cost: passes (limits.estimate_passes) x seconds per pass."""

    passes: int
    seconds: float
    gradient: bool                  # passes are forward+backward (else batched forwards)
    measured: bool                  # seconds per pass from earlier runs of this method on this model

    def over(self, budget: float | None = None) -> bool:
        """Above the interactive budget. A method of one or two passes never is: nothing
        can answer faster, and asking first would only add a click."""
        return self.passes > ALWAYS_PASSES and self.seconds > (budget_s() if budget is None else budget)

    def text(self) -> str:
        kind = "forward+backward" if self.gradient else "forward"
        return f"≈ {self.passes:,} {kind} passes × {1000 * self.seconds / self.passes:.0f} ms ≈ {duration(self.seconds)}"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


_PASS_LOCK = threading.Lock()
_forward_s: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # explainer -> seconds of one batched forward per image
_per_pass: dict = {}                                 # (id(explainer), method) -> measured seconds per pass


def forward_seconds(explainer) -> float:
    """Seconds of one forward of one image in a batch of the chunk size: measured once per
    model (a warm-up call, then the median of two) on a blank input."""
    from .methods.chunks import MAX_CHUNK, PIXELS_PER_CHUNK
    with _PASS_LOCK:
        hit = _forward_s.get(explainer)
    if hit is not None:
        return hit
    h, w = explainer.spec.input_size
    n = max(1, min(MAX_CHUNK, PIXELS_PER_CHUNK // max(1, h * w)))
    x = np.repeat(explainer.prepare(np.zeros((h, w, 3), np.uint8)).x, n, axis=0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        explainer.backend.forward(x)
        times.append(time.perf_counter() - t0)
    value = float(np.median(times[1:])) / n
    with _PASS_LOCK:
        _forward_s[explainer] = value
    return value


def record_run(explainer, method: str, passes: int, seconds: float) -> None:
    """Remember how long a run took per pass (the next estimate of this method uses it)."""
    if passes >= 4 and seconds > 0:
        with _PASS_LOCK:
            old = _per_pass.get((id(explainer), method))
            per = seconds / passes
            _per_pass[(id(explainer), method)] = per if old is None else 0.5 * (old + per)


def cost(explainer, method: str, params: dict | None = None, layer: str | None = None) -> Cost:
    """Estimated cost of `explainer.explain(..., method, params, layer)` before running it."""
    from . import limits
    from .methods.registry import get_method
    info, _ = get_method(method)
    passes = limits.estimate_passes(method, params, explainer=explainer, layer=layer)
    smooth = int((params or {}).get("smooth", 0) or 0)
    gradient = info.batched_gradient or info.family == "gradient" or smooth > 0 or (
        info.family in ("cam", "activation") and not info.slow)
    with _PASS_LOCK:
        measured = _per_pass.get((id(explainer), method))
        known = _forward_s.get(explainer)
    if measured is not None:
        return Cost(passes, passes * measured, gradient, True)
    if passes <= ALWAYS_PASSES and known is None:   # runs anyway: do not spend passes measuring
        return Cost(passes, 0.0, gradient, False)
    per = forward_seconds(explainer) * (GRADIENT_PASS_FACTOR if gradient else 1.0)
    return Cost(passes, passes * per, gradient, False)


# ------------------------------------------------------------------------- background jobs
class Job:
    """One explanation computed in a background thread, with progress and a Cancel.

    `fn(progress)` gets a progress callback for the engine (`explain(progress=...)`); the
    callback records the fraction and returns False once `cancel()` was called, so the
    engine raises `Cancelled` at its next chunk (well within a second).

    `fill=True`: work the page did not ask to wait for (the Parts view): its thread runs at
    the prefetch's lower priority and each progress report (between passes) first waits
    until no script run is drawing a page (`FOREGROUND`), as the layer prefetch does.
    """

    def __init__(self, fn, label: str = "", fill: bool = False):
        self.label, self.fill = label, fill
        self.fraction, self.message = 0.0, "starting"
        self.result = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"neuroscope-job-{label}", daemon=True)
        self._thread.start()

    def _progress(self, fraction: float, message: str) -> bool:
        self.fraction, self.message = float(fraction), message
        if self.fill:
            FOREGROUND.wait_idle()
        return not self._cancel.is_set()

    def _run(self, fn) -> None:
        if self.fill:
            lower_priority()
        try:
            self.result = fn(self._progress)
        except BaseException as exc:  # noqa: BLE001 -- reported to the page (Cancelled included)
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self._done.set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def time_left(self) -> float | None:
        """Seconds left, extrapolated from the progress so far (None before any)."""
        if self.fraction <= 0.01:
            return None
        return self.elapsed * (1.0 - self.fraction) / self.fraction
