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


def filter_relevance(it: Interpretation, class_name: str, filters: list[dict]) -> list[float | None]:
    """Each filter's mean LRP relevance share for the class (None without a relevance pass)."""
    R = it.relevance_of(class_name)
    return [None if R is None else float(R[it.filter_index(f["layer"], f["channel"])]) for f in filters]


def average_tile(it: Interpretation, class_name: str, layer: str, channel: int) -> np.ndarray | None:
    """The class average of a filter as one RGB picture (mean crop under its mean relevance,
    inferno), or None when the interpretation has none for it."""
    from ..render import overlay
    got = it.class_average(class_name, layer, channel)
    if got is None:
        return None
    rgb, m, _ = got
    return overlay(rgb, m.astype(np.float32) / 255.0, "inferno", 0.4, "positive", 100.0, by_magnitude=True)


STRIP_COLS = 8
STRIP_TILE = 96


def filter_strip(it: Interpretation, class_name: str, filters: list[dict], selected: int | None = None) -> np.ndarray:
    """The ranked filters of a class as one clickable picture: tile i = filter i's class
    average (grey when none is stored), labelled "#rank: channel",
    the selected one framed; STRIP_COLS tiles a row."""
    from ..render import tile_grid
    tiles, labels = [], []
    for i, f in enumerate(filters):
        t = average_tile(it, class_name, f["layer"], f["channel"])
        tiles.append(np.full((STRIP_TILE, STRIP_TILE, 3), 200, np.uint8) if t is None else t)
        labels.append(f"#{i + 1}: {f['channel']}")
    return tile_grid(tiles, labels, cols=STRIP_COLS, tile=STRIP_TILE, selected=selected)


def strip_index(click: dict | None, n: int, cols: int = STRIP_COLS) -> int | None:
    """The filter a click on `filter_strip` (streamlit-image-coordinates' value: x, y in
    displayed pixels, width, height of the displayed picture) falls on, or None."""
    if not click or "x" not in click or n <= 0:
        return None
    rows = -(-n // cols)
    col = min(cols - 1, int(click["x"] / max(1, click["width"]) * cols))
    row = min(rows - 1, int(click["y"] / max(1, click["height"]) * rows))
    i = row * cols + col
    return i if 0 <= i < n else None


def layer_marks(explainer, layer: str, class_name: str) -> dict[int, str]:
    """{channel: "#rank (weight)"} of the class's relevant filters in `layer` (rank among all
    the class's relevant filters), for the Layers page's filter grid."""
    it = interpretation_of(explainer)
    if it is None or class_name not in it.classes:
        return {}
    return {f["channel"]: f"#{i + 1} ({f['weight']:.2f})" for i, f in enumerate(ranked_filters(it, class_name))
            if f["layer"] == layer}


def shares_here(explainer, image, target, it: Interpretation, class_name: str) -> tuple[dict, dict]:
    """({(layer, channel): share of r = x * w_c / sum w_c among the class's filters},
    {layer: activations [K, h, w]}) for the image and target (one cached capture)."""
    from ..methods.relevant_filters import filter_evidence
    layers = [l["name"] for l in it.layers]
    cap = explainer.capture(image, target, layers=layers)
    rt = explainer.resolve(image, target)
    acts = {l: cap.activations[l] for l in layers}
    r, _ = filter_evidence(it, it.weights(class_name), acts, rt.objective.mask)
    total = float(r[r > 0].sum())
    shares = {}
    for f in it.class_entry(class_name)["filters"]:
        j = it.filter_index(f["layer"], f["channel"])
        shares[(f["layer"], f["channel"])] = float(r[j]) / total if total > 0 else 0.0
    return shares, acts


def atlas_crops(it: Interpretation, layer: str, channel: int, k: int = 6, size: int = 80,
                class_name: str | None = None) -> list[tuple[np.ndarray, float]]:
    """The filter's top atlas crops (with `class_name`: where it is most LRP-relevant for the class)."""
    from .core import iter_atlas_crops
    out = []
    for crop, value in iter_atlas_crops(it, layer, channel, size=size, class_name=class_name):
        out.append((crop, value))
        if len(out) >= k:
            break
    return out
