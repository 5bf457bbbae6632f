"""CAM family: class activation maps from ONE capture of activations A and gradients G,
plus the perturbation CAMs (Score-CAM, Ablation-CAM) that score channels with chunked passes.

CAM methods return their map at the layer's resolution: the engine resizes it with the
shared resize (`explain`: one map; `sweep`: every layer's map in one batch)."""
from __future__ import annotations

import numpy as np

from ..errors import BadParameter
from ..images import resize_maps
from .chunks import PIXELS_PER_CHUNK, chunk_size, chunks
from .gradient import input_grads, signed_max_abs
from .registry import MethodInfo, register


def _activation(ctx, cap) -> np.ndarray:
    a = cap.activations[ctx.layer]
    if a.ndim != 3:
        raise ValueError(f"layer {ctx.layer} output is not [K, h, w]")
    return a.astype(np.float32, copy=False)


def _ag(ctx) -> tuple[np.ndarray, np.ndarray]:
    cap = ctx.capture([ctx.layer])
    return _activation(ctx, cap), cap.gradients[ctx.layer].astype(np.float32, copy=False)


def weighted_cam(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A^k) at layer resolution."""
    return np.maximum(np.tensordot(weights.astype(np.float32), a, axes=(0, 0)), 0.0)


def _cam(name: str, description: str, signed: bool = False, **kwargs):
    return MethodInfo(name, "cam", needs_layer=True, signed=signed, description=description, **kwargs)


@register(_cam("grad-cam", "Where the chosen layer's features support the target: gradient-weighted channels.",
               layer_gradients=False))
def grad_cam(ctx) -> np.ndarray:
    cap = ctx.capture([ctx.layer])
    w = cap.gradient_means.get(ctx.layer)   # computed by the backend during the backward, if it can
    if w is None:   # a backend that gives no means: take them from the full gradients
        cap = ctx.capture([ctx.layer], gradients=True)
        w = cap.gradients[ctx.layer].astype(np.float32, copy=False).mean(axis=(1, 2))
    return weighted_cam(_activation(ctx, cap), w)


@register(_cam("grad-cam++", "Grad-CAM with pixel-wise weights: better for several instances of a class."))
def grad_cam_pp(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    g2 = g * g
    denom = 2.0 * g2 + a.sum(axis=(1, 2))[:, None, None] * g2 * g
    w = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    alpha = (w * np.maximum(g, 0.0)).sum(axis=(1, 2))
    return weighted_cam(a, alpha)


@register(_cam("xgrad-cam", "Grad-CAM with activation-normalised weights (axiom-based)."))
def xgrad_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    s = a.sum(axis=(1, 2))
    w = (a * g).sum(axis=(1, 2)) / np.where(np.abs(s) > 1e-12, s, np.inf)
    return weighted_cam(a, w)


@register(_cam("hires-cam", "Element-wise gradient x activation summed over channels: faithful to the layer."))
def hires_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    return np.maximum((a * g).sum(axis=0), 0.0)


@register(_cam("layer-cam", "Positive gradients x activations: sharp maps, good for shallow layers."))
def layer_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    return np.maximum((np.maximum(g, 0.0) * a).sum(axis=0), 0.0)


@register(_cam("eigen-cam", "First principal component of the layer's activations (class-agnostic).", signed=True,
               layer_gradients=False))
def eigen_cam(ctx) -> np.ndarray:
    a = _activation(ctx, ctx.capture([ctx.layer]))
    k, h, w = a.shape
    flat = a.reshape(k, h * w).T.astype(np.float64)  # positions x channels
    centred = flat - flat.mean(axis=0, keepdims=True)
    if not np.any(centred):
        return np.zeros((h, w), np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    mean_act = flat.mean(axis=1)
    if np.dot(proj - proj.mean(), mean_act - mean_act.mean()) < 0:  # sign: agree with the mean activation
        proj = -proj
    return proj.reshape(h, w).astype(np.float32)


@register(MethodInfo("guided-grad-cam", "cam", needs_layer=True, signed=True, batched_gradient=True,
                     description="Guided backprop masked by Grad-CAM: fine detail, class-discriminative."))
def guided_grad_cam(ctx, x: np.ndarray) -> np.ndarray:
    return signed_max_abs(input_grads(ctx, x, rule="guided")) * ctx.upsample(grad_cam(ctx))[None]


# --------------------------------------------------------------- perturbation CAMs

def _selected_channels(a: np.ndarray, top: int) -> np.ndarray:
    """All channels, or the `top` ones with the largest activation variance (Faster Score-CAM)."""
    if top < 0:
        raise BadParameter(f"top must be >= 0 (0 = all channels), got {top}")
    k = a.shape[0]
    if top == 0 or top >= k:
        return np.arange(k)
    var = a.reshape(k, -1).var(axis=1)
    return np.sort(np.argsort(-var, kind="stable")[:top])


@register(_cam("score-cam", "Channels weighted by how much the input masked with each one keeps the "
               "class probability: gradient-free, slow.", slow=True,
               params={"top": 0, "softmax": False, "baseline": "black"}, layer_gradients=False))
def score_cam(ctx) -> np.ndarray:
    a = ctx.capture([ctx.layer]).activations[ctx.layer].astype(np.float32, copy=False)
    chosen = _selected_channels(a, ctx.params["top"])
    lo, hi = a.min(axis=(1, 2)), a.max(axis=(1, 2))
    live = chosen[hi[chosen] - lo[chosen] > 1e-12]  # a constant channel masks everything: s = 0
    # x * M in uint8 RGB before normalisation (CONTRACT.md §1) = base + M (x - base) after it.
    base = ctx.preprocess(ctx.baseline_rgb(ctx.params["baseline"])[None])[0]
    diff = ctx.x[0] - base
    y_base = float(ctx.backend.scores(base[None], ctx.objective, kind="prob")[0])
    s = np.zeros(a.shape[0], np.float64)
    for i, j in chunks(ctx, len(live), "Score-CAM channels"):
        ks = live[i:j]
        masks = np.stack(resize_maps([(a[k] - lo[k]) / (hi[k] - lo[k]) for k in ks], ctx.model_size))
        batch = base[None] + masks[..., None] * diff[None]
        s[ks] = ctx.backend.scores(batch, ctx.objective, kind="prob") - y_base
    w = s[chosen]
    if ctx.params["softmax"]:
        w = np.exp(w - w.max())
        w /= w.sum()
    ctx.extra["channels"] = int(len(chosen))
    return weighted_cam(a[chosen], w)


@register(_cam("ablation-cam", "Channels weighted by the score drop when each is zeroed: gradient-free, "
               "slow; re-runs only the layers above where the model is a chain.", slow=True,
               params={"top": 0}, layer_gradients=False))
def ablation_cam(ctx) -> np.ndarray:
    backend = ctx.backend
    if not hasattr(backend, "scores_from"):
        raise BadParameter(f"ablation-cam needs forward_from support, which the {backend.framework} backend lacks")
    cap = ctx.capture([ctx.layer])
    a = cap.activations[ctx.layer].astype(np.float32, copy=False)
    chosen = _selected_channels(a, ctx.params["top"])
    live = chosen[np.any(a[chosen] != 0, axis=(1, 2))]  # zeroing an all-zero channel changes nothing
    y = cap.score
    cut = backend.can_cut(ctx.layer) if hasattr(backend, "can_cut") else False
    # Above a cut only the upper layers run: much larger chunks stay cheap there (but
    # keep about 8 of them for the progress bar).
    size = max(1, min(64, 3 * PIXELS_PER_CHUNK // a.size, -(-len(live) // 8))) if cut else chunk_size(ctx)
    drops = np.zeros(a.shape[0], np.float64)
    for i, j in chunks(ctx, len(live), "Ablation-CAM channels", size=size):
        ks = live[i:j]
        batch = np.repeat(a[None], len(ks), axis=0)
        batch[np.arange(len(ks)), ks] = 0.0
        drops[ks] = y - backend.scores_from(ctx.layer, batch, ctx.objective, "logit", x=ctx.x)
    scale = abs(y) if abs(y) > 1e-8 else 1.0  # (y - y_k) / |y|, guarded
    ctx.extra["channels"] = int(len(chosen))
    ctx.extra["sequential_cut"] = bool(cut)
    return weighted_cam(a[chosen], drops[chosen] / scale)
