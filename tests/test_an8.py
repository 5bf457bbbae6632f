"""The an8 set (cars that differ only in the roof-sign colour) and the bundled roofsign-an8."""
from __future__ import annotations

import numpy as np
import pytest

from neuroscope.synth.an8 import CLASSES, TEST_SEED0, an8_sample


def test_an8_is_seeded_and_the_classes_differ_only_in_the_part():
    a, b = an8_sample(5), an8_sample(5)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.part.any() and (a.part <= a.car).all() and a.part.sum() < 0.02 * a.part.size
    variants = [an8_sample(5, label=k) for k in range(len(CLASSES))]
    for v in variants:
        np.testing.assert_array_equal(v.part, a.part)
        np.testing.assert_array_equal(v.image[~v.part], a.image[~a.part])    # identical outside the part
    colours = [v.image[v.part].mean(axis=0) for v in variants]
    assert min(np.abs(c1 - c2).max() for i, c1 in enumerate(colours) for c2 in colours[i + 1:]) > 60
    labels = [an8_sample(s).label for s in range(200)]
    assert np.bincount(labels, minlength=4).min() >= 35                    # balanced classes


def test_bundled_roofsign_model_classifies_held_out_cars_in_both_frameworks():
    pytest.importorskip("keras")
    from neuroscope import Explainer
    samples = [an8_sample(TEST_SEED0 + 500 + i) for i in range(24)]
    preds = {}
    for name in ("roofsign-an8", "roofsign-an8-keras"):
        ex = Explainer(name)
        preds[name] = [ex.predict(s.image).top(1)[0]["name"] for s in samples]
    truth = [CLASSES[s.label] for s in samples]
    assert sum(p == t for p, t in zip(preds["roofsign-an8"], truth)) >= 22
    assert preds["roofsign-an8"] == preds["roofsign-an8-keras"]
