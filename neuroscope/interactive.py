"""What an interactive front end asks of the engine besides maps: which methods fit a model,
channel statistics of a layer, ground-truth evidence of a target, parameter counts.

The dashboard's pages call these with the sidebar's selection and draw what comes back;
nothing here imports Streamlit.
"""
from __future__ import annotations

from typing import Any

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


class Prefetcher:
    """Fills the engine's caches in one background thread so the next click is a cache hit.

    A page first computes what it shows (e.g. one layer's Grad-CAM from one capture of
    that layer), then `submit`s the rest (the capture of every layer, for layer switches
    and the sweep). Requests with a key already pending or running are dropped; only the
    `keep` newest pending requests are kept (older ones are stale clicks). Failures are
    swallowed: a prefetch is an optimisation and the foreground call reports the error.
    """

    def __init__(self, keep: int = 2):
        import threading
        self._cond = threading.Condition()
        self._pending: dict[Any, Any] = {}
        self._running: Any = None
        self._keep = keep
        self._thread = None

    def submit(self, key, fn) -> bool:
        """Queue `fn()` under `key`; False when the same key is already queued or running."""
        import threading
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
