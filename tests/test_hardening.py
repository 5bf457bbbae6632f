"""Hardening (issue 16): limits, one-line errors, uploads are data, parameter ranges.

Each test names the numbered defect of the issue it covers; all failed before the fix.
"""
from __future__ import annotations

import numpy as np
import pytest

from neuroscope import limits
from neuroscope.errors import BadParameter, NeuroscopeError
from neuroscope.methods.registry import check_params, get_method


# ---------------------------------------------------------------- limits and pass estimates (defect 5)
def test_estimate_passes_counts_windows_masks_steps_and_samples():
    size = (256, 512)
    assert limits.estimate_passes("occlusion", {}, model_size=size) == 31 * 63 + 1   # window 16, stride 8
    assert limits.estimate_passes("rise", {"masks": 700}, model_size=size) == 700
    assert limits.estimate_passes("integrated-gradients", {"steps": 10, "smooth": 3}, model_size=size) == 33
    assert limits.estimate_passes("saliency", {"smooth": 25}, model_size=size) == 25
    assert limits.estimate_passes("score-cam", {}, model_size=size, channels=96) == 98
    assert limits.estimate_passes("score-cam", {"top": 10}, model_size=size, channels=96) == 12
    assert limits.estimate_passes("grad-cam", {}, model_size=size) == 1


@pytest.mark.parametrize("method, params", [("integrated-gradients", {"steps": 100_000}),
                                            ("saliency", {"smooth": 100_000}), ("rise", {"masks": 1_000_000_000}),
                                            ("occlusion", {"stride": 1, "window": 2})])
def test_check_passes_refuses_unbounded_runs_with_estimate_and_limit(method, params):
    with pytest.raises(BadParameter) as err:
        limits.check_passes(method, params, model_size=(224, 224))
    text = str(err.value)
    assert "10,000" in text and "NEUROSCOPE_MAX_PASSES" in text and "\n" not in text


def test_pass_limit_override(monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_MAX_PASSES", "100")
    assert limits.limit("passes") == 100
    with pytest.raises(BadParameter, match="the limit is 100"):
        limits.check_passes("rise", {}, model_size=(64, 64))
    monkeypatch.setenv("NEUROSCOPE_MAX_PASSES", "abc")
    with pytest.raises(BadParameter, match="NEUROSCOPE_MAX_PASSES"):
        limits.limit("passes")


@pytest.mark.parametrize("method, params", [
    ("saliency", {"smooth": -1}), ("integrated-gradients", {"steps": 0}), ("rise", {"cells": 100_000}),
    ("rise", {"masks": -5}), ("rise", {"p": float("nan")}), ("rise", {"p": float("inf")}), ("rise", {"p": 0.0}),
    ("rise", {"seed": -1}), ("occlusion", {"window": 0}), ("occlusion", {"stride": -3}),
    ("activation", {"channel": -2}), ("score-cam", {"top": -1}), ("pda", {"samples": 0})])
def test_parameters_are_range_checked(method, params):
    info, _ = get_method(method)
    with pytest.raises(BadParameter) as err:
        check_params(info, params)
    assert "\n" not in str(err.value)
