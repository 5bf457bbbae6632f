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
    # another filter: the page follows the choice
    key = f"concepts_filter::{sel.model_key}::{got['class']}"
    at.session_state[key] = got["filters"][1]["filter"]
    clean(at.run())
    assert shown(at, "concepts")["filter"] == got["filters"][1]["filter"]


def test_layers_page_marks_the_relevant_filters_of_the_class():
    at = start(CLASSIFIER, gallery="cat.jpg")
    at.session_state[f"layer::{selection(at).model_key}"] = "features.18.2"
    clean(at.run())
    assert selection(at).layer == "features.18.2"
    clean(at.switch_page("app_pages/layers.py").run())
    marks = shown(at, "layers_relevant")
    from neuroscope.interpret.concepts import interpretation_of, ranked_filters
    it = interpretation_of(selection(at).explainer)
    expected = [f["channel"] for f in ranked_filters(it, selection(at).resolved.class_name)
                if f["layer"] == "features.18.2"]
    assert marks == expected and len(np.unique(marks)) == len(marks) > 0
