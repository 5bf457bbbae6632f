"""What the Concepts page (and the Layers page's marks) need from an interpretation,
without Streamlit: the bundled interpretation of a model, a class's ranked filters, each
filter's share of the evidence for a target on the current image, and atlas crops."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .store import Interpretation, bundled_interpretation, load_interpretation


@lru_cache(maxsize=8)
def _bundled(name: str) -> Interpretation | None:
    path = bundled_interpretation(name)
    return None if path is None else load_interpretation(path)


def interpretation_of(explainer) -> Interpretation | None:
    """The bundled interpretation of the explainer's model when it fits its layers."""
    it = _bundled(explainer.spec.name)
    if it is None or it.task != explainer.task:
        return None
    return None if it.misfit_layer(explainer.layers()) is not None else it


def ranked_filters(it: Interpretation, class_name: str) -> list[dict]:
    """The class's relevant filters, largest weight first: [{"layer", "channel", "weight"}]."""
    return sorted(it.class_entry(class_name)["filters"], key=lambda f: -f["weight"])


def relevant_channels(explainer, layer: str, class_name: str) -> list[int]:
    """Channels of `layer` that the bundled interpretation lists for the class (may be [])."""
    it = interpretation_of(explainer)
    if it is None or class_name not in it.classes:
        return []
    return [f["channel"] for f in ranked_filters(it, class_name) if f["layer"] == layer]


def shares_here(explainer, image, target, it: Interpretation, class_name: str) -> tuple[dict, dict]:
    """({(layer, channel): share of r = x * w_c / sum w_c among the class's filters},
    {layer: activations [K, h, w]}) for the image and target (one cached capture)."""
    from ..methods.relevant_filters import filter_evidence
    layers = [l["name"] for l in it.layers]
    cap = explainer.capture(image, target, layers=layers)
    rt = explainer.resolve(image, target)
    acts = {l: cap.activations[l] for l in layers}
    r, _ = filter_evidence(it, class_name, acts, rt.objective.mask)
    total = float(r[r > 0].sum())
    shares = {}
    for f in it.class_entry(class_name)["filters"]:
        j = it.filter_index(f["layer"], f["channel"])
        shares[(f["layer"], f["channel"])] = float(r[j]) / total if total > 0 else 0.0
    return shares, acts


def atlas_crops(it: Interpretation, layer: str, channel: int, k: int = 6, size: int = 80) -> list[tuple[np.ndarray, float]]:
    from .core import iter_atlas_crops
    out = []
    for crop, value in iter_atlas_crops(it, layer, channel, size=size):
        out.append((crop, value))
        if len(out) >= k:
            break
    return out
