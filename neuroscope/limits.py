"""Resource limits: every input size and every pass count is bounded (SECURITY.md).

Each limit is a documented setting with a default and a ``NEUROSCOPE_*`` environment
override, read when it is checked (so a server operator or a test can change it without a
restart of the interpreter). Exceeding one is a `NeuroscopeError` whose one-line message
gives the value, the limit and the variable that raises it; the CLI turns it into exit 2.

| setting | default | variable |
|---|---|---|
| image_pixels: decoded image size (checked from the header before decoding and again after) | 50 Mpx | NEUROSCOPE_MAX_IMAGE_PIXELS |
| image_bytes: encoded image file size | 50 MiB | NEUROSCOPE_MAX_IMAGE_BYTES |
| input_pixels: model input H x W (local specs, CLI `--input-size`) | 4 Mpx (2048 x 2048) | NEUROSCOPE_MAX_INPUT_PIXELS |
| upload_input_pixels: model input H x W of an uploaded model / spec | 1 Mpx (1024 x 1024) | NEUROSCOPE_MAX_UPLOAD_INPUT_PIXELS |
| model_bytes: model file size | 1 GiB | NEUROSCOPE_MAX_MODEL_BYTES |
| archive_bytes: decompressed size of a .keras (zip) archive | 1 GiB | NEUROSCOPE_MAX_ARCHIVE_BYTES |
| cache_bytes: an Explainer's result, image, prediction and target caches together (captures: capture_cache_bytes) | 512 MiB | NEUROSCOPE_CACHE_BYTES |
| server_cache_bytes: the dashboard's engine caches, all models together (engine.CachePool) | 1.5 GiB | NEUROSCOPE_SERVER_CACHE_BYTES |
| server_rss_soft_bytes: the dashboard returns freed memory to the OS after a script run when its RSS is above this | 4 GiB | NEUROSCOPE_SERVER_RSS_SOFT_BYTES |
| passes: model passes (forward or forward+backward, per image) of one explanation | 10,000 | NEUROSCOPE_MAX_PASSES |

Pass estimates (`estimate_passes`) are what the engine checks before it runs a method, and
what a user interface can show before offering a "Compute" button for a slow method::

    from neuroscope import limits
    n = limits.estimate_passes("rise", {"masks": 2000}, explainer=ex)          # 2000
    n = limits.estimate_passes("score-cam", {}, model_size=(224, 224), channels=1280)
    limits.check_passes("occlusion", {"stride": 1}, explainer=ex)            # raises BadParameter
    limits.limit("passes")                                                  # 10000 (or the override)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import BadImage, BadParameter


@dataclass(frozen=True)
class Limit:
    name: str
    env: str
    default: int
    unit: str
    doc: str


LIMITS: dict[str, Limit] = {l.name: l for l in (
    Limit("image_pixels", "NEUROSCOPE_MAX_IMAGE_PIXELS", 50_000_000, "pixels",
          "largest image, checked from the header before decoding and again after decoding"),
    Limit("image_bytes", "NEUROSCOPE_MAX_IMAGE_BYTES", 50 << 20, "bytes", "largest encoded image file"),
    Limit("input_pixels", "NEUROSCOPE_MAX_INPUT_PIXELS", 2048 * 2048, "pixels",
          "largest model input H x W of a local model (spec or --input-size)"),
    Limit("upload_input_pixels", "NEUROSCOPE_MAX_UPLOAD_INPUT_PIXELS", 1024 * 1024, "pixels",
          "largest model input H x W of an uploaded model"),
    Limit("model_bytes", "NEUROSCOPE_MAX_MODEL_BYTES", 1 << 30, "bytes", "largest model file"),
    Limit("archive_bytes", "NEUROSCOPE_MAX_ARCHIVE_BYTES", 1 << 30, "bytes",
          "largest decompressed .keras archive (zip bombs)"),
    Limit("cache_bytes", "NEUROSCOPE_CACHE_BYTES", 512 << 20, "bytes",
          "an Explainer's result, image, prediction and target caches together (not captures)"),
    Limit("server_cache_bytes", "NEUROSCOPE_SERVER_CACHE_BYTES", 3 << 29, "bytes",
          "the dashboard's engine caches (captures included), all loaded models together"),
    Limit("server_rss_soft_bytes", "NEUROSCOPE_SERVER_RSS_SOFT_BYTES", 4 << 30, "bytes",
          "the dashboard's resident memory above which freed memory is returned to the OS after a script run"),
    Limit("passes", "NEUROSCOPE_MAX_PASSES", 10_000, "passes",
          "most model passes one explanation may run (steps x samples, masks, windows, channels)"),
)}


def limit(name: str) -> int:
    """The limit `name` (LIMITS), with its NEUROSCOPE_* override applied."""
    spec = LIMITS[name]
    text = os.environ.get(spec.env, "").strip().replace("_", "")
    if not text:
        return spec.default
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise BadParameter(f"{spec.env} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise BadParameter(f"{spec.env} must be a positive integer, got {text!r}")
    return value


def _fmt(n: int | float) -> str:
    return f"{int(n):,}"


def check_input_size(size: tuple[int, int], upload: bool = False, what: str = "model input") -> None:
    """Refuse a model input larger than the input limit (uploads: the smaller upload limit)."""
    name = "upload_input_pixels" if upload else "input_pixels"
    h, w = int(size[0]), int(size[1])
    cap = limit(name)
    if h * w > cap:
        raise BadParameter(f"{what} {h}x{w} = {_fmt(h * w)} pixels exceeds the limit of {_fmt(cap)} pixels "
                           f"({LIMITS[name].env})")


def check_image_pixels(width: int, height: int, what: str = "image") -> None:
    """Refuse an image of more pixels than the image limit (images.py checks the header and the decoded image)."""
    cap = limit("image_pixels")
    if width * height > cap:
        raise BadImage(f"{what} is too large: {width}x{height} = {_fmt(width * height)} pixels; the limit is "
                       f"{_fmt(cap)} ({LIMITS['image_pixels'].env})")


# ------------------------------------------------------------------------- pass estimates
def window_count(size: int, window: int, stride: int) -> int:
    """How many window origins `perturbation.window_starts` gives along one axis."""
    window = max(1, min(int(window), size))
    stride = max(1, int(stride))
    n = (size - window) // stride + 1
    return n + (1 if (n - 1) * stride != size - window else 0)


def _windows(params: dict, size: tuple[int, int], window: str = "window", stride: str = "stride") -> int:
    return window_count(size[0], params[window], params[stride]) * window_count(size[1], params[window], params[stride])


def _channels(params: dict, channels: int | None) -> int:
    top = int(params.get("top", 0) or 0)
    if channels is None:
        channels = 2048   # unknown layer: a generous guess (the engine always knows it)
    return min(top, channels) if top > 0 else channels


def _smooth(params: dict) -> int:
    return max(1, int(params.get("smooth", 0) or 0))


#: method name -> fn(params, model_size (H, W), channels of the layer or None, task) -> passes.
#: Methods not listed run a handful of passes (one capture, a prediction): 1 x SmoothGrad samples.
ESTIMATORS: dict[str, Callable[[dict, tuple[int, int], int | None, str | None], int]] = {
    "integrated-gradients": lambda p, s, c, t: (int(p["steps"]) + 1) * _smooth(p),
    "guided-grad-cam": lambda p, s, c, t: 1 + _smooth(p),
    "score-cam": lambda p, s, c, t: _channels(p, c) + 2,
    "ablation-cam": lambda p, s, c, t: _channels(p, c) + 1,
    "occlusion": lambda p, s, c, t: _windows(p, s) + 1,
    "rise": lambda p, s, c, t: int(p["masks"]),
    "pda": lambda p, s, c, t: _windows(p, s) * int(p["samples"]) + 1,
    # first-order: a capture, the bank, and on a segmenter one capture per class that matters
    "evidence": lambda p, s, c, t: (_windows(p, s) * int(p["samples"]) + 1 if p.get("variant") == "sampled"
                                    else 2 + (20 if t == "segmentation" else 1)),
}


def register_estimator(method: str, fn: Callable[[dict, tuple[int, int], int | None, str | None], int]) -> None:
    """Give a new slow method its pass estimate (fn(params, (H, W), channels, task) -> passes)."""
    ESTIMATORS[method] = fn


def estimate_passes(method: str, params: dict[str, Any] | None = None, *, explainer: Any = None,
                    layer: str | None = None, model_size: tuple[int, int] | None = None,
                    channels: int | None = None, task: str | None = None) -> int:
    """Estimated model passes (one forward, or one forward+backward, of one image) that the
    explanation `method` with `params` runs. Cheap (no model pass): call it before running.

    Give either `explainer` (and `layer` for layer methods: the default layer otherwise;
    model size, channel count and task are read from it) or `model_size` (H, W) and, for
    Score-CAM / Ablation-CAM, the layer's `channels`. `params` may be partial: the
    registry's defaults fill the rest, and they are type- and range-checked
    (`BadParameter` on a bad one). Compare with `limit("passes")`; `check_passes` raises
    when the estimate exceeds it. Time: multiply by the time of one pass (e.g. one
    measured `Explainer.predict`, ~x2 for gradient methods).
    """
    from .methods.registry import check_params, get_method
    info, _ = get_method(method)
    full = check_params(info, params)
    if explainer is not None:
        model_size = tuple(explainer.spec.input_size)
        task = task or explainer.task
        if info.needs_layer and channels is None:
            name = layer or explainer.default_layer()
            shape = next((l.shape for l in explainer.layers() if l.name == name), None)
            channels = int(shape[0]) if shape else None
    if model_size is None:
        raise BadParameter("estimate_passes needs an explainer or a model_size (H, W)")
    fn = ESTIMATORS.get(method)
    if fn is None:
        return _smooth(full) if info.batched_gradient else 1
    return max(1, int(fn(full, (int(model_size[0]), int(model_size[1])), channels, task)))


def check_passes(method: str, params: dict[str, Any] | None = None, **kwargs) -> int:
    """`estimate_passes`, raising `BadParameter` (one line: estimate and limit) above the limit."""
    n = estimate_passes(method, params, **kwargs)
    cap = limit("passes")
    if n > cap:
        what = " ".join(f"{k}={v}" for k, v in (params or {}).items())
        raise BadParameter(f"{method}{' ' + what if what else ''} needs about {_fmt(n)} model passes; the limit is "
                           f"{_fmt(cap)} ({LIMITS['passes'].env}); use fewer steps, samples, masks or windows")
    return n


def describe() -> list[dict]:
    """Every limit with its current value (for docs and the app)."""
    return [{"name": l.name, "env": l.env, "default": l.default, "value": limit(l.name), "unit": l.unit,
             "doc": l.doc} for l in LIMITS.values()]

