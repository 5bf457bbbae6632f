"""The original Neuroscope segmentation maps: class score map and fusion map."""
from __future__ import annotations

import numpy as np

from ..errors import BadParameter
from .registry import MethodInfo, register

SEG = ("segmentation",)


@register(MethodInfo("score-map", "segmentation", needs_layer=False, signed=True, tasks=SEG, layer_gradients=False,
                     description="The class's score (logit) at every pixel; or channel c of a chosen layer."))
def score_map(ctx) -> np.ndarray:
    c = ctx.target.class_id
    if ctx.layer is None:
        logits = ctx.explainer.predict(ctx.prep).logits
        return logits[c]
    a = ctx.capture([ctx.layer]).activations[ctx.layer]
    if a.shape[0] <= c:
        raise BadParameter(f"layer {ctx.layer} has {a.shape[0]} channels; class {c} needs more")
    return ctx.upsample(a[c])


@register(MethodInfo("fusion-map", "segmentation", needs_layer=False, signed=False, tasks=SEG, params={"classes": []},
                     description="Max class probability over the selected classes (default: all predicted)."))
def fusion_map(ctx) -> np.ndarray:
    pred = ctx.explainer.predict(ctx.prep)
    chosen = ctx.params["classes"] or sorted(set(np.unique(pred.label_map).tolist()))
    n = pred.probs.shape[0]
    for c in chosen:
        if not isinstance(c, int) or not 0 <= c < n:
            raise BadParameter(f"fusion-map classes must be class ids 0..{n - 1}, got {c!r}")
    return pred.probs[list(chosen)].max(axis=0)
