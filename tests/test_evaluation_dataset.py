"""`neuroscope evaluate MODEL --dataset DIR [--labels DIR]` (CONTRACT.md §8): metrics over a
folder through the batch machinery, and the model's confusion matrix and IoU from labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroscope.cli import main

MODEL, SIZE = "drivescene-seg", "64x128"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from neuroscope.synth import generate_scene, save_scene
    d = tmp_path_factory.mktemp("ds")
    for i in range(3):
        save_scene(generate_scene(300 + i, (64, 128)), d / ("sub" if i == 2 else "") / f"scene{i}")
    from PIL import Image
    Image.fromarray(generate_scene(9, (64, 128)).image).save(d / "unlabelled.png")
    return d


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dataset_metrics_model_iou_and_confusion(dataset, capsys):
    rc, out, err = run(capsys, "evaluate", MODEL, "--dataset", str(dataset), "--labels", str(dataset),
                       "--methods", "grad-cam", "--input-size", SIZE, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["images"] == 4 and data["failed"] == {"grad-cam": 0}
    m = data["methods"]["grad-cam"]
    assert set(m) == {"deletion_auc", "insertion_auc", "time_ms"} and 0 <= m["deletion_auc"] <= 1
    assert data["labels_used"] == 3 and data["labels_missing"] == 1
    # the confusion matrix is the model's prediction against every labelled pixel
    from PIL import Image
    from neuroscope import Explainer
    ex = Explainer(MODEL, input_size=(64, 128))
    n = len(ex.classes)
    want = np.zeros((n, n), np.int64)
    for lab in sorted(dataset.rglob("*_labels.png")):
        truth = np.asarray(Image.open(lab))
        pred = ex.predict(str(lab).replace("_labels.png", ".png")).labels
        keep = truth != 255
        np.add.at(want, (truth[keep], pred[keep]), 1)
    conf = np.asarray(data["confusion"])
    assert conf.shape == (n, n) and (conf == want).all()
    assert conf.sum() == sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in dataset.rglob("*_labels.png"))
    road = ex.classes.index("road")
    tp = want[road, road]
    assert data["model_iou"]["road"] == pytest.approx(tp / (want[road].sum() + want[:, road].sum() - tp))
    absent = [c for c in range(n) if want[c].sum() == 0 and want[:, c].sum() == 0]
    assert all(data["model_iou"][ex.classes[c]] is None for c in absent)
    present = [v for k, v in data["model_iou"].items() if k != "mean" and v is not None]
    assert data["model_iou"]["mean"] == pytest.approx(np.mean(present))


def test_labels_reuse_the_explanation_pass_one_model_pass_per_image(dataset, capsys, monkeypatch):
    """The confusion matrix comes from the explanation pass's own prediction: no forward
    per image for the labels (the metrics' perturbed scores are separate calls)."""
    import neuroscope.batch.batched as batched
    from neuroscope.backends.torch_backend import TorchBackend
    calls = {"forward": 0, "capture": 0, "batched": 0}
    forward, capture, torch_pass = TorchBackend.forward, TorchBackend.capture, batched._torch_pass

    def counted_forward(self, x):
        calls["forward"] += len(x)
        return forward(self, x)

    def counted_capture(self, x, *a, **kw):
        calls["capture"] += len(x)
        return capture(self, x, *a, **kw)

    def counted_pass(ex, preps, *a):
        calls["batched"] += len(preps)
        return torch_pass(ex, preps, *a)

    monkeypatch.setattr(TorchBackend, "forward", counted_forward)
    monkeypatch.setattr(TorchBackend, "capture", counted_capture)
    monkeypatch.setattr(batched, "_torch_pass", counted_pass)
    rc, out, err = run(capsys, "evaluate", MODEL, "--dataset", str(dataset), "--labels", str(dataset),
                       "--methods", "grad-cam", "--input-size", SIZE, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["labels_used"] == 3 and np.asarray(data["confusion"]).sum() > 0
    # 4 images: one explanation pass each (batched together), no prediction forward
    assert calls == {"forward": 0, "capture": 0, "batched": 4}


def test_dataset_markdown_and_without_labels(dataset, capsys):
    rc, out, err = run(capsys, "evaluate", MODEL, "--dataset", str(dataset / "sub"), "--methods", "grad-cam,saliency",
                       "--input-size", SIZE)
    assert rc == 0, err
    assert "| method | deletion_auc | insertion_auc | time_ms | failed |" in out
    assert "| saliency |" in out and "Model IoU" not in out


@pytest.mark.parametrize("argv, message", [
    (["mobilenet_v2-imagenet", "--labels", "{d}"], "--labels needs a segmentation model"),
    ([MODEL, "--labels", "{d}/nowhere"], "--labels folder not found"),
    ([MODEL, "--class", "car"], "apply to a single IMAGE"),
    ([MODEL, "--set", "drivescene-mini"], "exactly one of IMAGE, --set NAME and --dataset DIR"),
])
def test_dataset_usage_errors(dataset, capsys, argv, message):
    argv = [a.replace("{d}", str(dataset)) for a in argv]
    rc, _, err = run(capsys, "evaluate", argv[0], "--dataset", str(dataset), "--methods", "grad-cam", *argv[1:])
    assert rc == 2 and message in err and err.count("\n") == 1
