"""`neuroscope evaluate` (CONTRACT.md §3): JSON keys, Markdown output, exit codes, and the
evaluation sets' ground truth. Tiny models are built here and loaded through specs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuroscope import evaluate as ev
from neuroscope.cli import main

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "images" / "cat.jpg")
KEYS = {"deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "iou_best", "iou_mean", "time_ms"}


def tiny_classifier(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


class TinySegmenter(nn.Module):
    def __init__(self, num_classes: int = 19):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                                  nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


def tiny_segmenter(num_classes: int = 19) -> nn.Module:
    return TinySegmenter(num_classes)


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("specs")
    cls = d / "tiny-cls.toml"
    cls.write_text('name = "tiny-cls"\nframework = "torch"\ntask = "classification"\ninput_size = [32, 32]\n'
                   'classes = ["a", "b", "c"]\narchitecture = "test_evaluate:tiny_classifier"\n')
    names = ", ".join(f'"{n}"' for n in __import__("neuroscope.synth", fromlist=["CLASS_NAMES"]).CLASS_NAMES)
    seg = d / "tiny-seg.toml"
    seg.write_text('name = "tiny-seg"\nframework = "torch"\ntask = "segmentation"\ninput_size = [32, 64]\n'
                   f'fully_convolutional = true\nclasses = [{names}]\narchitecture = "test_evaluate:tiny_segmenter"\n')
    return {"cls": str(cls), "seg": str(seg)}


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_single_image_json_has_the_faithfulness_keys_only(specs, capsys):
    rc, out, err = run(capsys, "evaluate", specs["cls"], CAT, "--methods", "grad-cam,saliency", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert set(data) == {"methods"}                      # no sanity without --sanity
    assert set(data["methods"]) == {"grad-cam", "saliency"}
    for scores in data["methods"].values():
        assert set(scores) == {"deletion_auc", "insertion_auc", "time_ms"}  # no ground truth: no localisation
        assert 0.0 <= scores["deletion_auc"] <= 1.0 and 0.0 <= scores["insertion_auc"] <= 1.0
        assert scores["time_ms"] > 0


def test_sanity_flag_adds_per_step_rank_correlations(specs, capsys):
    rc, out, err = run(capsys, "evaluate", specs["cls"], CAT, "--methods", "grad-cam", "--sanity", "--json",
                       "--class", "1")
    assert rc == 0, err
    s = json.loads(out)["sanity"]["grad-cam"]
    assert set(s) == {"steps", "rank_corr", "final"}
    assert len(s["steps"]) == len(s["rank_corr"]) >= 2
    assert s["steps"][0] == "6" and s["steps"][-1] == "0"   # top (Linear) first, down to the first conv
    assert s["final"] == s["rank_corr"][-1]


def test_evaluation_set_json_has_every_key(specs, capsys):
    rc, out, err = run(capsys, "evaluate", specs["seg"], "--set", "drivescene-mini", "--methods", "grad-cam",
                       "--json")
    assert rc == 0, err
    scores = json.loads(out)["methods"]["grad-cam"]
    assert set(scores) == KEYS
    for k in KEYS - {"time_ms"}:
        assert 0.0 <= scores[k] <= 1.0, k


def test_markdown_table_without_json(specs, capsys):
    rc, out, err = run(capsys, "evaluate", specs["cls"], CAT, "--methods", "saliency")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert "deletion AUC lower is better" in lines[0]
    assert lines[2].startswith("| method | deletion_auc | insertion_auc |")
    assert lines[4].startswith("| saliency |")


@pytest.mark.parametrize("argv, message", [
    ([CAT, "--methods", "no-such-method"], "unknown method"),
    (["--methods", "grad-cam"], "either IMAGE or --set"),
    ([CAT, "--methods", "grad-cam", "--set", "photos-eval"], "either IMAGE or --set"),
    (["--methods", "grad-cam", "--set", "nope"], "unknown evaluation set"),
    (["--methods", "grad-cam", "--set", "drivescene-mini"], "for segmentation models"),
    ([CAT, "--methods", "grad-cam", "--region", "all"], "segmentation models only"),
    ([CAT, "--methods", "score-map"], "for segmentation models"),
    ([CAT, "--methods", "grad-cam,grad-cam"], "twice"),
    ([CAT, "--methods", "grad-cam", "--class", "7"], "out of range"),
    ([str(ROOT / "pyproject.toml"), "--methods", "grad-cam"], "cannot read"),
])
def test_errors_are_one_line_and_exit_2(specs, capsys, argv, message):
    rc, out, err = run(capsys, "evaluate", specs["cls"], *argv, "--json")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_set_targets_and_evidence_are_fixed_and_inside_the_images():
    items = ev.get_eval_set("drivescene-mini").build()
    again = ev.get_eval_set("drivescene-mini").build()
    assert [i.name for i in items] == [i.name for i in again]
    for a, b in zip(items, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.evidence, b.evidence)
        assert a.evidence.shape == a.image.shape[:2] and a.evidence.sum() >= 150
        x0, y0, x1, y1 = a.target.region
        assert a.evidence[y0:y1, x0:x1].sum() == a.evidence.sum()   # the box holds the whole object
    photos = ev.get_eval_set("photos-eval").build()
    assert len(photos) == 5
    for p in photos:
        share = p.evidence.mean()
        assert 0.1 < share < 0.95, p.name


def test_report_rows_flag_methods_that_do_not_beat_a_random_map():
    from neuroscope import metrics
    curve = metrics.Curve("deletion", np.array([0.0, 1.0]), np.array([1.0, 0.0]), 0.5)
    iou = metrics.IoU(0.5, 0.3, (0.5,), [0.5])
    good = metrics.Scores(curve, curve, 1.0, 1.0, 0.6, iou)
    bad = metrics.Scores(curve, curve, 1.0, 0.0, 0.1, iou)
    report = ev.Report({"good": ev.MethodReport("good", [good]), "bad": ev.MethodReport("bad", [bad])},
                       ev.MethodReport(ev.RANDOM, [bad]), random_pointing_game=0.2)
    table = ev.markdown(report)
    assert "| bad |" in table.split("does not beat")[0].splitlines()[-1]
    assert "does not beat" not in [l for l in table.splitlines() if l.startswith("| good |")][0]
    assert [l for l in table.splitlines() if l.startswith("| random |")][0].count("0.200") == 1


def test_evaluate_page_runs_metrics_and_the_sanity_strip(monkeypatch):
    """The Evaluate page under the shared sidebar (a harness: the page list belongs to the app)."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    fixtures = ROOT / "tests" / "fixtures"
    spec = fixtures / "app-tiny-seg.toml"
    monkeypatch.setenv("NEUROSCOPE_EXTRA_SPECS", str(spec))
    monkeypatch.syspath_prepend(str(fixtures))
    script = (f"import sys, runpy\nsys.path.insert(0, {str(ROOT / 'app')!r})\n"
              "from dashboard import state\nstate.sidebar()\n"
              f"runpy.run_path({str(ROOT / 'app' / 'app_pages' / 'evaluate.py')!r}, run_name='__page__')\n")
    at = AppTest.from_string(script, default_timeout=240)
    at.session_state["model"] = f"extra:{spec.resolve()}"
    at.session_state["image_source"] = "Generated scene"
    at.session_state["scene_seed"] = 7
    at.session_state["eval_methods::segmentation"] = ["grad-cam"]
    at.session_state["eval_steps"] = 10
    at.session_state["eval_sanity"] = True
    at.session_state["eval_sanity_steps"] = 2
    at.run()
    at.button(key="eval_run").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    settings, report = at.session_state["ns_session"].kept["eval_report"]   # Session.kept (dashboard state)
    assert set(report.methods) == {"grad-cam"} and len(report.methods["grad-cam"].items) == 1
    assert len(report.sanity["grad-cam"].maps) == 2          # the strip: one map per randomisation step
    assert any("final ρ" in m.value for m in at.markdown)
