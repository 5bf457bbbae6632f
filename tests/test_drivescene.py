"""The bundled segmenter: segments held-out generated scenes as well as its card says, in both frameworks."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuroscope.archs.drivescene import drivescene_seg
from neuroscope.images import normalize
from neuroscope.synth import CLASS_NAMES, PALETTE, generate_scene
from neuroscope.zoo import read_spec

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
WEIGHTS = ROOT / "assets" / "weights"
SEEDS = [1_000_000 + i for i in range(8)]  # held out: training used seeds 0..N-1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N = len(CLASS_NAMES)


def card_miou() -> float:
    text = (MODELS / "drivescene-seg.md").read_text()
    return float(re.search(r"mIoU over the classes with ≥ 1% of the pixels: ([0-9.]+)", text).group(1))


def miou(preds, scenes) -> float:
    conf = np.zeros((N, N), np.int64)
    for p, s in zip(preds, scenes):
        keep = s.labels != 255
        conf += np.bincount(s.labels[keep].astype(np.int64) * N + p[keep], minlength=N * N).reshape(N, N)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    share = conf.sum(1) / conf.sum()
    sel = share >= 0.01
    return float(np.mean(tp[sel] / union[sel]))


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s) for s in SEEDS]


@pytest.fixture(scope="module")
def inputs(scenes) -> np.ndarray:
    return np.stack([normalize(s.image, (0, 1), MEAN, STD) for s in scenes]).astype(np.float32)


@pytest.fixture(scope="module")
def torch_logits(inputs) -> np.ndarray:
    model = drivescene_seg(weights=str(WEIGHTS / "drivescene-seg.pth"))
    with torch.no_grad():
        return model(torch.from_numpy(inputs).permute(0, 3, 1, 2)).numpy()


@pytest.fixture(scope="module")
def keras_logits(inputs) -> np.ndarray:
    keras = pytest.importorskip("keras")
    model = keras.saving.load_model(str(WEIGHTS / "drivescene-seg.keras"), safe_mode=True)
    return np.asarray(model.predict(inputs, batch_size=4, verbose=0)).transpose(0, 3, 1, 2)


def test_specs_describe_the_bundled_files():
    for name, framework in (("drivescene-seg", "torch"), ("drivescene-seg-keras", "keras")):
        spec = read_spec(MODELS / f"{name}.toml")
        assert (spec.name, spec.framework, spec.task) == (name, framework, "segmentation")
        assert tuple(spec.input_size) == (256, 512) and spec.fully_convolutional
        assert spec.classes == CLASS_NAMES and [tuple(p) for p in spec.palette] == PALETTE
        assert Path(spec.weights).is_file()


def test_torch_model_reaches_the_card_miou_on_held_out_scenes(torch_logits, scenes):
    assert miou(torch_logits.argmax(1), scenes) >= card_miou() - 0.05


def test_keras_port_reaches_the_card_miou_on_held_out_scenes(keras_logits, scenes):
    assert miou(keras_logits.argmax(1), scenes) >= card_miou() - 0.05


def test_keras_logits_equal_torch_logits(torch_logits, keras_logits):
    assert torch_logits.shape == keras_logits.shape == (len(SEEDS), N, 256, 512)
    assert np.abs(torch_logits - keras_logits).max() < 1e-3


def test_architecture_is_hookable_and_fully_convolutional():
    model = drivescene_seg()
    kinds = {type(m) for m in model.modules()}
    assert {nn.ReLU6, nn.ReLU, nn.Sigmoid} <= kinds
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 96, 160))
    assert out.shape == (1, 19, 96, 160)
