"""Feature-based family (Zemmari / Ayyar / Benois-Pineau): FEM and multi-layer FEM.

Class-agnostic and gradient-free: strong activations (above mean + 2 std of their
channel) weighted by the channel's mean, at one layer (FEM) or fused over the stage
ends of the network (MLFEM).
"""
from __future__ import annotations

import numpy as np

from ..errors import BadParameter
from .registry import MethodInfo, register

FUSIONS = ("product", "mean", "max")


def fem_map(a: np.ndarray, k: float = 2.0) -> np.ndarray:
    """FEM at layer resolution: sum_k mu_k [A^k >= mu_k + k sigma_k], divided by max |.|."""
    a = a.astype(np.float32, copy=False)
    mu = a.mean(axis=(1, 2))
    sigma = a.std(axis=(1, 2))
    # A numerically constant channel has no salient positions (its threshold test would
    # otherwise flip on rounding noise, e.g. between frameworks).
    varying = sigma > 1e-5 * (np.abs(a).max(axis=(1, 2)) + 1e-12)
    salient = (a >= (mu + k * sigma)[:, None, None]) & varying[:, None, None]
    m = np.tensordot(mu, salient.astype(np.float32), axes=(0, 0))
    peak = np.abs(m).max()
    return m / peak if peak > 0 else m


# Signed: after a ReLU every channel mean is >= 0, but at a linear layer a salient
# channel with a negative mean subtracts.
@register(MethodInfo("fem", "feature", needs_layer=True, signed=True, layer_gradients=False,
                     description="Feature Explanation Method: where the layer's strongest features fire "
                                 "(class-agnostic, no gradients)."))
def fem(ctx) -> np.ndarray:
    a = ctx.capture([ctx.layer]).activations[ctx.layer]
    return ctx.upsample(fem_map(a))


def stage_ends(layers, last: str) -> list[str]:
    """The last spatial layer of each stride up to `last` (in execution order), i.e. the
    output of every resolution stage: "the last conv of each block", found generically.
    Padding layers are skipped: they only frame a tensor (and their stride is off)."""
    spatial = [l for l in layers if l.spatial and ("pad" not in l.type.lower() or l.name == last)]
    names = [l.name for l in spatial]
    if last not in names:
        raise BadParameter(f"layer {last!r} is not a spatial layer")
    upto = spatial[:names.index(last) + 1]
    top = upto[-1].stride
    ends: dict[int, str] = {}
    for l in upto:
        if l.stride <= top:
            ends.pop(l.stride, None)  # re-insert: order of the stage's last layer
            ends[l.stride] = l.name
    return list(ends.values())


@register(MethodInfo("mlfem", "feature", needs_layer=True, signed=False, params={"fusion": "product"},
                     layer_gradients=False,
                     description="Multi-layer FEM: FEM at the end of every resolution stage up to the layer, "
                                 "fused (product, mean or max)."))
def mlfem(ctx) -> np.ndarray:
    fusion = ctx.params["fusion"]
    if fusion not in FUSIONS:
        raise BadParameter(f"mlfem fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    levels = stage_ends(ctx.explainer.layers(), ctx.layer)
    cap = ctx.capture(levels)  # ONE pass for all levels
    maps = []
    for name in levels:
        m = ctx.upsample(fem_map(cap.activations[name]))
        lo, hi = m.min(), m.max()
        maps.append((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m))
    stack = np.stack(maps)
    ctx.extra["layers"] = levels
    if fusion == "product":
        return stack.prod(axis=0)
    if fusion == "mean":
        return stack.mean(axis=0)
    return stack.max(axis=0)
