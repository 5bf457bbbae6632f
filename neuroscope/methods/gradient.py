"""Gradient family: saliency, gradient x input, integrated gradients, guided backprop, deconvnet.

Each method is a batched function of inputs x [N, h, w, 3] -> maps [N, h, w], so the
engine's single SmoothGrad wrapper (`smooth=N`) composes with every one of them.
"""
from __future__ import annotations

import numpy as np

from .registry import MethodInfo, register


def signed_max_abs(g: np.ndarray) -> np.ndarray:
    """Reduce [..., 3] over colour channels keeping the value of largest magnitude."""
    idx = np.argmax(np.abs(g), axis=-1)[..., None]
    return np.take_along_axis(g, idx, axis=-1)[..., 0]


def _input_grads(ctx, x: np.ndarray, rule: str | None = None, chunk: int = 4) -> np.ndarray:
    if x is ctx.x and rule is None:  # the clean input: reuse the engine's cached one-pass capture
        return ctx.capture(input_grad=True).input_grad[None]
    out = []
    for s in range(0, len(x), chunk):
        g, _ = ctx.backend.input_gradients(x[s:s + chunk], ctx.objective, rule=rule)
        out.append(g)
    return np.concatenate(out)


@register(MethodInfo("saliency", "gradient", needs_layer=False, signed=True, batched_gradient=True,
                     description="Which input pixels the score is most sensitive to (dy/dx, signed max over colours)."))
def saliency(ctx, x: np.ndarray) -> np.ndarray:
    return signed_max_abs(_input_grads(ctx, x))


@register(MethodInfo("gradient-x-input", "gradient", needs_layer=False, signed=True, batched_gradient=True,
                     description="Gradient times input, summed over colours: a first-order contribution per pixel."))
def gradient_x_input(ctx, x: np.ndarray) -> np.ndarray:
    return (_input_grads(ctx, x) * x).sum(axis=-1)


@register(MethodInfo("guided-backprop", "gradient", needs_layer=False, signed=True, batched_gradient=True,
                     description="Gradient through ReLUs passing only positive signal where the input was active: sharp edges."))
def guided_backprop(ctx, x: np.ndarray) -> np.ndarray:
    return signed_max_abs(_input_grads(ctx, x, rule="guided"))


@register(MethodInfo("integrated-gradients", "gradient", needs_layer=False, signed=True, batched_gradient=True,
                     params={"steps": 32, "baseline": "black"}, slow=True,
                     description="Path integral of gradients from a baseline: complete (sums to the score change)."))
def integrated_gradients(ctx, x: np.ndarray) -> np.ndarray:
    m = ctx.params["steps"]
    base = ctx.preprocess(ctx.baseline_rgb(ctx.params["baseline"])[None])[0]
    alphas = np.arange(1, m + 1, dtype=np.float32) / m  # right Riemann sum
    maps = []
    for i, xi in enumerate(x):
        path = base[None] + alphas[:, None, None, None] * (xi - base)[None]
        total = np.zeros_like(xi, dtype=np.float64)
        chunk = 4
        for s in range(0, m, chunk):
            g, _ = ctx.backend.input_gradients(path[s:s + chunk], ctx.objective)
            total += g.sum(axis=0)
            ctx.tick((i * m + s + len(g)) / (len(x) * m), "integrated gradients")
        attribution = ((xi - base) * total / m).sum(axis=-1)
        maps.append(attribution)
        if len(x) == 1:
            y = ctx.backend.scores(np.stack([xi, base]), ctx.objective)
            ctx.extra["completeness_gap"] = float(attribution.sum() - (y[0] - y[1]))
    return np.stack(maps).astype(np.float32)
