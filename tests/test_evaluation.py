"""The evaluation package: one "method fits this model" answer, the segmentation scores, the
tables, and no import cycle between the CLI and the evaluation code."""
from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from neuroscope.errors import BadParameter
from neuroscope.evaluation import (check_fits, confusion, iou, markdown_table, mean_iou, methods_for, misfit,
                                   normalise_rows, pixel_share, text_table)
from neuroscope.methods.registry import MethodInfo, list_methods

ROOT = Path(__file__).resolve().parents[1]


def test_misfit_names_the_task_or_the_framework():
    seg_only = MethodInfo("x", "cam", needs_layer=True, signed=True, tasks=("segmentation",))
    torch_only = MethodInfo("y", "gradient", needs_layer=False, signed=True, frameworks=("torch",))
    assert misfit(seg_only, "segmentation", "keras") is None
    assert misfit(seg_only, "classification", "torch", "m") == "x is for segmentation models; m is classification"
    assert misfit(torch_only, "classification", "keras") == "y is not available for keras models"
    with pytest.raises(BadParameter, match="not available for keras"):
        check_fits(torch_only, "segmentation", "keras")


def test_methods_for_is_the_registry_filtered_by_task_and_framework():
    every = list_methods()
    for task in ("classification", "segmentation"):
        for fw in ("torch", "keras"):
            names = [m.name for m in methods_for(task, fw)]
            assert names == [m.name for m in every if task in m.tasks and fw in m.frameworks]
    cls = {m.name for m in methods_for("classification", "torch")}
    seg = {m.name for m in methods_for("segmentation", "torch")}
    assert "score-map" in seg and "score-map" not in cls and {"grad-cam", "saliency"} <= cls & seg


def test_confusion_ignores_unlabelled_pixels_and_counts_truth_by_prediction():
    truth = np.array([[0, 0, 1, 255], [2, 2, 1, 9]], np.uint8)  # 255 and 9 (>= n) are ignored
    pred = np.array([[0, 1, 1, 0], [2, 0, 1, 2]], np.uint8)
    m = confusion(pred, truth, 3)
    assert m.dtype == np.int64 and m.sum() == 6
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class 0: tp 1 / (row 2 + col 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1)
    assert np.allclose(iou(m), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(m) == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))
    assert np.allclose(pixel_share(m), [2 / 6, 2 / 6, 2 / 6])
    assert np.allclose(normalise_rows(m)[0], [0.5, 0.5, 0])
    with pytest.raises(ValueError):
        confusion(pred[:, :2], truth, 3)


def test_iou_is_nan_for_absent_classes_and_mean_iou_skips_them_and_rare_ones():
    m = np.array([[90, 0, 0], [0, 0, 0], [5, 0, 5]])
    ious = iou(m)
    assert np.isnan(ious[1]) and ious[0] == pytest.approx(90 / 95) and ious[2] == pytest.approx(0.5)
    assert mean_iou(m) == pytest.approx((90 / 95 + 0.5) / 2)
    assert mean_iou(m, min_share=0.2) == pytest.approx(90 / 95)  # class 2 has 10 % of the pixels
    assert np.isnan(mean_iou(np.zeros((2, 2), int)))


def test_tables():
    rows = [{"a": 1, "bb": "x"}, {"a": 22}]
    assert text_table(rows, ["a", "bb"]).splitlines() == ["a   bb", "--  --", "1   x", "22"]
    assert markdown_table(rows, ["a", "bb"]).splitlines() == ["| a | bb |", "|---|---|", "| 1 | x |", "| 22 |  |"]


def test_evaluation_imports_without_the_cli_and_old_imports_still_work():
    code = ("import sys, neuroscope.evaluation, neuroscope.evaluation.cli; "
            "assert 'neuroscope.cli' not in sys.modules, 'evaluation imports the CLI'; "
            "from neuroscope.evaluate import evaluate, get_eval_set, markdown, _resolve_item; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_evaluate_refuses_image_and_set_together():
    from neuroscope.cli_args import CliError
    from neuroscope.evaluation.cli import run_cli
    args = Namespace(methods="grad-cam", image="x.png", eval_set="drivescene-mini", dataset=None, class_id=None,
                     region=None, sanity=False, model="drivescene-seg", input_size=None)
    with pytest.raises(CliError, match="not both"):
        run_cli(args)
