"""Activation maps of a layer: one channel, or the channel mean (the filter grid's source)."""
from __future__ import annotations

import numpy as np

from ..errors import BadParameter
from .registry import MethodInfo, register


@register(MethodInfo("activation", "activation", needs_layer=True, signed=True, params={"channel": -1},
                     layer_gradients=False,
                     description="What a layer responds to: one channel's activation (or the channel mean)."))
def activation(ctx) -> np.ndarray:
    a = ctx.capture([ctx.layer]).activations[ctx.layer]
    k = ctx.params["channel"]
    if k < 0:
        return ctx.upsample(a.mean(axis=0))
    if k >= a.shape[0]:
        raise BadParameter(f"channel {k} out of range: layer {ctx.layer} has {a.shape[0]} channels (0..{a.shape[0] - 1})")
    return ctx.upsample(a[k])
