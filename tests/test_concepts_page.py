"""The Concepts page (AppTest) and the Layers page's marks of the relevant filters, on the
bundled MobileNetV2 and its bundled interpretation."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("streamlit")

from test_app import CLASSIFIER, clean, selection, shown, start  # noqa: E402


def test_concepts_page_ranks_the_filters_of_the_target_class_with_their_share_and_atlas():
    at = start(CLASSIFIER, gallery="cat.jpg")
    clean(at.switch_page("app_pages/concepts.py").run())
    sel = selection(at)
    got = shown(at, "concepts")
    assert got["class"] == sel.resolved.class_name
    weights = [r["weight"] for r in got["filters"]]
    assert weights and weights == sorted(weights, reverse=True) and min(weights) > 0
    shares = [r["share here"] for r in got["filters"]]
    assert abs(sum(s for s in shares if s > 0) - 1) < 1e-2      # shares of the positive evidence
    assert got["filter"] == got["filters"][0]["filter"] and got["crops"] >= 1
    # per-class relevance from LRP, said so, and the class average of the picked filter
    assert got["relevance"].startswith("LRP (epsilon-plus-flat)")
    assert all(isinstance(r["LRP relevance"], float) for r in got["filters"])
    assert got["average"] and got["relevance_crops"] >= 1
    assert got["strip"][1] == 8 * 98 + 2            # 8 tiles of 96 px a row, 2 px gaps
    # another filter: the page follows the choice
    key = f"concepts_filter::{sel.model_key}::{got['class']}"
    at.session_state[key] = got["filters"][1]["filter"]
    clean(at.run())
    assert shown(at, "concepts")["filter"] == got["filters"][1]["filter"]


def test_a_click_on_the_filter_strip_picks_the_filter_under_it():
    from neuroscope.interpret.concepts import strip_index
    # 11 filters in rows of 8, shown at half size (392 x 99 px for 786 x 198)
    click = {"x": 1.5 * 392 / 8, "y": 10, "width": 392, "height": 99}
    assert strip_index(click, 11) == 1
    assert strip_index({**click, "x": 2.5 * 392 / 8, "y": 80}, 11) == 10
    assert strip_index({**click, "x": 5.5 * 392 / 8, "y": 80}, 11) is None       # no tile there
    assert strip_index(None, 11) is None


def test_layers_page_frames_the_relevant_filters_of_the_class_on_the_grid():
    from neuroscope.render import MARK, MARK_WIDTH
    at = start(CLASSIFIER, gallery="cat.jpg")
    at.session_state[f"layer::{selection(at).model_key}"] = "features.18.2"
    at.session_state["layers_sort"] = "relevant"
    clean(at.run())
    assert selection(at).layer == "features.18.2"
    clean(at.switch_page("app_pages/layers.py").run())
    marks = shown(at, "layers_relevant")
    from neuroscope.interpret.concepts import interpretation_of, ranked_filters
    it = interpretation_of(selection(at).explainer)
    ranked = ranked_filters(it, selection(at).resolved.class_name)
    expected = [f["channel"] for f in ranked if f["layer"] == "features.18.2"]
    assert marks == expected and len(np.unique(marks)) == len(marks) > 0
    grid = shown(at, "layers_grid")
    assert grid["shown"][:len(marks)] == marks                 # "relevant first"
    assert grid["marks"][marks[0]].startswith(f"#{[f['channel'] for f in ranked].index(marks[0]) + 1} ")
    img = grid["image"]
    tile_h = (img.shape[0] - 2) // -(-len(grid["shown"]) // 8) - 2
    tile_w = (img.shape[1] - 2) // 8 - 2
    for i, ch in enumerate(grid["shown"][:10]):
        r, c = divmod(i, 8)
        y, x = 2 + r * (tile_h + 2), 2 + c * (tile_w + 2)
        top_edge = img[y:y + MARK_WIDTH, x + tile_w // 2]
        framed = bool((top_edge == MARK).all())
        assert framed == (ch in marks), (i, ch)
