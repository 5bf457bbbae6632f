"""Propagation family: layer-wise relevance propagation (LRP) on the rule mechanism of
`neuroscope.propagation`, for torch and Keras models, classifiers and segmenters.

ONE forward and ONE modified backward: the backward signal is relevance, seeded with the
objective's gradient at the logits (the target's one-hot; the region mask for
segmentation; +1 / -1 for a contrast), as in Zennit's examples. The map is the input
relevance summed over colour channels (signed). `channels=K1,K2` with `--layer L` keeps
only those channels of L's relevance on the way down (concept-conditional relevance,
CRP, Achtibat et al. 2023).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import BadParameter
from ..propagation import COMPOSITES, LRP_COMPOSITES, Composite, lrp_composite
from .registry import MethodInfo, register

_HELP = " ".join(f"{name}: {what}" for name, what in LRP_COMPOSITES.items())


def make_composite(ctx, name: str | Composite | None = None, epsilon: float | None = None,
                   gamma: float | None = None) -> Composite:
    """The LRP composite `name` (default: the method's `composite` parameter) with the
    model's input bounds for z-box (preprocessed pixel values 0 and 255)."""
    if isinstance(name, Composite):
        return name
    params = getattr(ctx, "params", {}) or {}
    name = name or params.get("composite", COMPOSITES[0])
    bounds = ctx.preprocess(np.array([[[[0, 0, 0]], [[255, 255, 255]]]], np.float32))[0]
    return lrp_composite(name, epsilon=params.get("epsilon", 1e-6) if epsilon is None else epsilon,
                         gamma=params.get("gamma", 0.25) if gamma is None else gamma,
                         low=bounds[0, 0].tolist(), high=bounds[1, 0].tolist())


def _channels(ctx, layer: str | None, channels: Sequence[int]) -> tuple[int, ...]:
    if not channels:
        return ()
    if layer is None:
        raise BadParameter("lrp: channels=... needs --layer (the layer whose channels condition the relevance)")
    shape = next((l.shape for l in ctx.explainer.layers() if l.name == layer), None)
    k = int(shape[0]) if shape else 0
    bad = [c for c in channels if not isinstance(c, int) or not 0 <= c < k]
    if bad:
        raise BadParameter(f"lrp: channel(s) {bad} out of range for layer {layer} ({k} channels)")
    return tuple(int(c) for c in channels)


def seed_total(objective) -> float:
    """Sum of the output relevance (the objective's gradient at the logits)."""
    w = float(np.sum(objective.class_weights))
    return w if objective.mask is None else w * float(np.sum(objective.mask))


def layer_relevance(ctx, layer: str, composite: str | Composite | None = None,
                    channels: Sequence[int] = (), spatial: bool = False) -> np.ndarray:
    """Relevance at `layer`'s output from one LRP backward that stops there: per channel
    [K] (summed over space), or [K, h, w] with `spatial`. `channels` restricts the
    relevance to those channels (the rest are zero)."""
    comp = make_composite(ctx, composite)
    # the full backward (as the map's): a backward stopped at the layer would see residual
    # branches below it as constants, and one capture then serves map and relevance
    cap = ctx.capture(layers=(layer,), input_grad=True, rule=comp, gradients=True)
    r = np.asarray(cap.gradients[layer], np.float32)
    if channels:
        keep = np.zeros(r.shape[0], bool)
        keep[list(_channels(ctx, layer, channels))] = True
        r = r * keep.reshape((-1,) + (1,) * (r.ndim - 1))
    if spatial or r.ndim == 1:
        return r
    return r.reshape(r.shape[0], -1).sum(axis=1)


@register(MethodInfo("lrp", "propagation", needs_layer=False, signed=True, decides_target=True,
                     params={"composite": "epsilon-plus-flat", "epsilon": 1e-6, "gamma": 0.25, "channels": []},
                     choices={"composite": dict(LRP_COMPOSITES)},
                     description="Layer-wise relevance propagation: the score redistributed layer by layer "
                                 "down to the pixels (one modified backward; red = evidence for, blue = against). "
                                 "composite = " + _HELP + " epsilon: stabiliser of the epsilon rule (dense "
                                 "layers); gamma: boost of positive weights (epsilon-gamma-box). "
                                 "channels=K1,K2 with a layer: relevance through those channels only (CRP)."))
def lrp(ctx) -> np.ndarray:
    comp = make_composite(ctx)
    channels = _channels(ctx, ctx.layer, ctx.params["channels"])
    if channels:
        comp = comp.with_mask(ctx.layer, channels)
    layers = (ctx.layer,) if ctx.layer else ()
    cap = ctx.capture(layers=layers, input_grad=True, rule=comp, gradients=True)
    relevance = np.asarray(cap.input_grad, np.float64)
    total_in = float(relevance.sum())
    seed = seed_total(ctx.objective)
    ctx.extra["composite"] = comp.name
    ctx.extra["conservation"] = total_in / seed if seed else float("nan")
    ctx.extra["relevance_in"] = total_in
    ctx.extra["relevance_out"] = seed
    if ctx.layer:
        per_channel = np.asarray(cap.gradients[ctx.layer], np.float64)
        per_channel = per_channel.reshape(per_channel.shape[0], -1).sum(axis=1)
        if channels:
            ctx.extra["channels"] = list(channels)
            ctx.extra["channel_relevance"] = float(per_channel[list(channels)].sum())
        top = np.argsort(-per_channel)[:8]
        ctx.extra["top_channels"] = [[int(k), float(per_channel[k])] for k in top]
    return relevance.sum(axis=-1).astype(np.float32)
