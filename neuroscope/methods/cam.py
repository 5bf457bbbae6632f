"""CAM family: class activation maps from ONE capture of activations A and gradients G."""
from __future__ import annotations

import numpy as np

from .gradient import signed_max_abs
from .registry import MethodInfo, register


def _ag(ctx) -> tuple[np.ndarray, np.ndarray]:
    cap = ctx.capture([ctx.layer])
    a, g = cap.activations[ctx.layer], cap.gradients[ctx.layer]
    if a.ndim != 3:
        raise ValueError(f"layer {ctx.layer} output is not [K, h, w]")
    return a.astype(np.float32, copy=False), g.astype(np.float32, copy=False)


def weighted_cam(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A^k) at layer resolution."""
    return np.maximum(np.tensordot(weights.astype(np.float32), a, axes=(0, 0)), 0.0)


def _cam(name: str, description: str):
    return MethodInfo(name, "cam", needs_layer=True, signed=False, description=description)


@register(_cam("grad-cam", "Where the chosen layer's features support the target: gradient-weighted channels."))
def grad_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    return ctx.upsample(weighted_cam(a, g.mean(axis=(1, 2))))


@register(_cam("grad-cam++", "Grad-CAM with pixel-wise weights: better for several instances of a class."))
def grad_cam_pp(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    g2 = g * g
    denom = 2.0 * g2 + a.sum(axis=(1, 2))[:, None, None] * g2 * g
    w = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    alpha = (w * np.maximum(g, 0.0)).sum(axis=(1, 2))
    return ctx.upsample(weighted_cam(a, alpha))


@register(_cam("xgrad-cam", "Grad-CAM with activation-normalised weights (axiom-based)."))
def xgrad_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    s = a.sum(axis=(1, 2))
    w = (a * g).sum(axis=(1, 2)) / np.where(np.abs(s) > 1e-12, s, np.inf)
    return ctx.upsample(weighted_cam(a, w))


@register(_cam("hires-cam", "Element-wise gradient x activation summed over channels: faithful to the layer."))
def hires_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    return ctx.upsample(np.maximum((a * g).sum(axis=0), 0.0))


@register(_cam("layer-cam", "Positive gradients x activations: sharp maps, good for shallow layers."))
def layer_cam(ctx) -> np.ndarray:
    a, g = _ag(ctx)
    return ctx.upsample(np.maximum((np.maximum(g, 0.0) * a).sum(axis=0), 0.0))


@register(_cam("eigen-cam", "First principal component of the layer's activations (class-agnostic)."))
def eigen_cam(ctx) -> np.ndarray:
    a, _ = _ag(ctx)
    k, h, w = a.shape
    flat = a.reshape(k, h * w).T.astype(np.float64)  # positions x channels
    centred = flat - flat.mean(axis=0, keepdims=True)
    if not np.any(centred):
        return ctx.upsample(np.zeros((h, w), np.float32))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[0]
    if np.corrcoef(proj, flat.mean(axis=1))[0, 1] < 0:  # sign: agree with the mean activation
        proj = -proj
    return ctx.upsample(proj.reshape(h, w).astype(np.float32))


@register(MethodInfo("guided-grad-cam", "cam", needs_layer=True, signed=True, batched_gradient=True,
                     description="Guided backprop masked by Grad-CAM: fine detail, class-discriminative."))
def guided_grad_cam(ctx, x: np.ndarray) -> np.ndarray:
    cam = grad_cam(ctx)
    grads = []
    for s in range(0, len(x), 4):
        g, _ = ctx.backend.input_gradients(x[s:s + 4], ctx.objective, rule="guided")
        grads.append(g)
    return signed_max_abs(np.concatenate(grads)) * cam[None]
