"""Interpretation-based explanation (Oramas, Wang, Tuytelaars 2019; METHODS.md §7).

The model's interpretation (`neuroscope interpret`, bundled for the bundled models) gives
each class its relevant filters and weights w_c. For the target: x = the per-filter
energies sum_ij A_f(ij)^2 of the interpreted layers (segmentation: over the target
region, at layer resolution), normalised as in the interpretation; r = x * w_c / sum w_c;
the `top` filters with the largest positive r are back-projected, each from its own
activation map (segmentation: weighted by the region), to the pixels with the deconvnet
rule and the strided-artefact fix ("deconvnet-fixed"); each map is the max |gradient|
over colours, min-max normalised; the explanation is their pixel-wise max.
`meta.extra.filters` lists the filters with their share of the evidence r_f / sum r.
Cost: one forward to the deepest interpreted layer and one backward per filter; on an image
with no cached prediction the forward runs to the logits and gives the prediction and the
target too (`MethodInfo.decides_target`: no separate prediction pass).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import BadParameter
from ..limits import register_estimator
from .registry import MethodInfo, register

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def load_for(spec_name: str, path: str):
    """The interpretation at `path` ("" = the bundled one of the model), read once and
    re-read only when its JSON file changes (one stat per call)."""
    import os

    from ..interpret.store import JSON_NAME, bundled_interpretation, load_interpretation
    with _LOCK:
        hit = _CACHE.get((spec_name, path))
    if hit is not None:
        f, stamp, it = hit
        try:
            if os.stat(f).st_mtime_ns == stamp:
                return it
        except OSError:
            pass
    if not path:
        found = bundled_interpretation(spec_name)
        if found is None:
            raise BadParameter(f"relevant-filters: no bundled interpretation for {spec_name}; run "
                               "`neuroscope interpret MODEL --set ... --out DIR` and pass --param interpretation=DIR")
        p = found
    else:
        p = Path(path)
    f = p / JSON_NAME if p.is_dir() else p
    it = load_interpretation(p, arrays=False)
    with _LOCK:
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[(spec_name, path)] = (str(f), f.stat().st_mtime_ns, it)
    return it


def filter_evidence(it, w: np.ndarray, acts: dict[str, np.ndarray], mask: np.ndarray | None):
    """(r [F], region weights per layer or None) for one image: r = x * w_c / sum w_c, with
    w = `it.weights(class)`."""
    from ..interpret.core import _pool, normalise_features
    parts, masks = [], {}
    for l in it.layers:
        sq = acts[l["name"]].astype(np.float32) ** 2
        if mask is None:
            parts.append(sq.sum(axis=(1, 2))[None])
        else:
            m = _pool(mask > 0, sq.shape[1:])
            masks[l["name"]] = m
            parts.append(np.einsum("khw,hw->k", sq, m)[None])
    x = normalise_features(parts)[0]
    return x * w / w.sum(), masks


register_estimator("relevant-filters", lambda p, s, c, t: 1 + int(p["top"]))   # a forward, a backward per filter


@register(MethodInfo("relevant-filters", "interpretation", needs_layer=False, signed=False,
                     params={"interpretation": "", "top": 3}, decides_target=True,
                     description="The class's relevant filters from the model interpretation (Oramas et al.), "
                                 "the strongest ones here back-projected to pixels (deconvnet, strided fix)."))
def relevant_filters(ctx) -> np.ndarray:
    from ..interpret.passes import backproject
    top = ctx.params["top"]
    if not 1 <= top <= 16:
        raise BadParameter(f"relevant-filters: top must be 1..16, got {top}")
    it = load_for(ctx.spec.name, ctx.params["interpretation"])
    if it.task != ctx.backend.task:
        raise BadParameter(f"relevant-filters: the interpretation is of a {it.task} model, not {ctx.backend.task}")
    layers = [l["name"] for l in it.layers]
    bad = it.misfit_layer(ctx.backend.layers())
    if bad is not None:
        raise BadParameter(f"relevant-filters: the interpretation ({it.model}) does not fit this model: "
                           f"layer {bad['name']} with {bad['channels']} channels")

    def class_weights(target) -> np.ndarray:
        w = it.weights(target.class_name)
        if not (w > 0).any():
            raise BadParameter(f"relevant-filters: the interpretation has no relevant filter for class {target.class_name!r}")
        return w

    # known before the pass, checked before it (else: from ctx.decide, the pass's own logits)
    known = class_weights(ctx.target) if ctx.target is not None else None
    chosen: list[tuple[str, int, float]] = []
    if ctx.backend.framework == "keras":     # one traced call: forward, evidence, top, backwards
        from ..interpret.core import _pool
        from ..interpret.passes import keras_backproject_top
        shapes = {l.name: l.shape for l in ctx.backend.layers()}

        def inputs(target):   # (w [F], {layer: region weights [h, w]}) for the target
            mask = target.objective.mask
            return known if known is not None else class_weights(target), {
                l: np.ones(shapes[l][1:], np.float32) if mask is None else _pool(mask > 0, tuple(shapes[l][1:]))
                for l in layers}

        if ctx.target is None:
            r, order, all_grads = keras_backproject_top(ctx.backend, ctx.x, layers, None, None, top,
                                                        decide=lambda logits: inputs(ctx.decide(logits)))
        else:
            w, masks = inputs(ctx.target)
            r, order, all_grads = keras_backproject_top(ctx.backend, ctx.x, layers, w, masks, top)
        total = float(r[r > 0].sum())
        grads = []
        for i, j in enumerate(order[:top]):
            if r[j] > 0:
                layer, ch = it.filter_of(int(j))
                chosen.append((layer, ch, float(r[j]) / total))
                grads.append(all_grads[i])
    else:
        def picks(acts):
            w = known if known is not None else class_weights(ctx.target)
            r, masks = filter_evidence(it, w, acts, ctx.target.objective.mask)
            total = float(r[r > 0].sum())
            order = [int(j) for j in np.argsort(-r, kind="stable")[:top] if r[j] > 0]
            for j in order:
                layer, ch = it.filter_of(j)
                chosen.append((layer, ch, float(r[j]) / total))
            return [(layer, ch, masks.get(layer)) for layer, ch, _ in chosen]

        _, grads = backproject(ctx.backend, ctx.x, picks, "deconvnet-fixed", layers, decide=ctx.decide)
    class_name = ctx.target.class_name
    ctx.extra["filters"] = [{"layer": l, "channel": c, "share": round(s, 4)} for l, c, s in chosen]
    ctx.extra["interpretation"] = it.model
    if not grads:   # none of the class's filters fires here
        ctx.extra["warning"] = f"no relevant filter of {class_name} is active in this image/region"
        return np.zeros(ctx.x.shape[1:3], np.float32)
    out = None
    for g in grads:
        m = _channel_max_abs(g)
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        out = m if out is None else np.maximum(out, m)
    return out.astype(np.float32)


def _channel_max_abs(g: np.ndarray) -> np.ndarray:
    """max_c |g[..., c]| of g [H, W, C]: channel by channel (numpy's max over a last axis of
    3 on contiguous HWC memory -- Keras gradients, torch's channels_last ones -- costs
    ~8 ms at 224x224, this ~0.05 ms)."""
    m = np.abs(g[..., 0])
    for k in range(1, g.shape[-1]):
        np.maximum(m, np.abs(g[..., k]), out=m)
    return m
