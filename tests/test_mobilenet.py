"""The bundled ImageNet MobileNetV2: torch weights load strictly, both frameworks name real
photos correctly, and the Keras port computes the same logits and block outputs as torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuroscope.archs.mobilenet_v2 import STAGE_ENDS, mobilenet_v2
from neuroscope.images import load_image, normalize, resize_rgb

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TORCH_WEIGHTS = ASSETS / "weights" / "mobilenet_v2-b0353104.pth"
KERAS_MODEL = ASSETS / "weights" / "mobilenet_v2-imagenet.keras"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# photo -> acceptable top-1 names (measured: espresso 0.99, Egyptian cat 0.72, fox squirrel 0.84, lemon 0.78)
EXPECTED = {
    "coffee.jpg": {"espresso"},
    "cat.jpg": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"},
    "squirrel.jpg": {"fox squirrel"},
    "fruits.jpg": {"lemon", "orange"},
}


def _preprocess(path: Path, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """CONTRACT.md §1: whole image resized BILINEAR, /255, minus mean, over std."""
    return normalize(resize_rgb(load_image(path), size), (0.0, 1.0), MEAN, STD)


@pytest.fixture(scope="module")
def classes() -> list[str]:
    names = (ASSETS / "models" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) == 1000
    return names


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([_preprocess(ASSETS / "images" / name) for name in EXPECTED])


@pytest.fixture(scope="module")
def torch_net() -> torch.nn.Module:
    return mobilenet_v2(weights=TORCH_WEIGHTS)


@pytest.fixture(scope="module")
def torch_logits(torch_net, photos) -> np.ndarray:
    with torch.inference_mode():
        return torch_net(torch.from_numpy(photos).permute(0, 3, 1, 2)).numpy()


@pytest.fixture(scope="module")
def keras_logits(photos) -> np.ndarray:
    import keras

    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True)  # built-in layers only
    return np.asarray(model(photos, training=False))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_class_names_are_unique_single_names(classes):
    assert classes[967] == "espresso" and classes[335] == "fox squirrel"
    assert len({c.lower() for c in classes}) == 1000      # --class NAME is unambiguous
    assert not any("," in c or c != c.strip() or not c for c in classes)


def test_torch_state_dict_has_exactly_torchvisions_keys(torch_net):
    state = torch.load(TORCH_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(state) == set(torch_net.state_dict())
    # Activations are hookable, non-inplace ReLU6 modules: stem, 16 expansions, 17 depthwise, last conv.
    relus = [m for m in torch_net.modules() if isinstance(m, torch.nn.ReLU6)]
    assert len(relus) == 35 and not any(m.inplace for m in relus)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_real_photos_get_their_class(framework, request, classes):
    logits = request.getfixturevalue(f"{framework}_logits")
    probs = _softmax(logits)
    for (name, accepted), p in zip(EXPECTED.items(), probs):
        top = int(p.argmax())
        assert classes[top] in accepted, f"{framework}: {name} -> {classes[top]} ({p[top]:.3f})"
        assert p[top] > 0.5


def test_keras_port_matches_torch_logits(torch_logits, keras_logits):
    assert np.abs(torch_logits - keras_logits).max() < 1e-3
    assert (torch_logits.argmax(1) == keras_logits.argmax(1)).all()


def test_keras_backbone_blocks_match_torch_at_odd_sizes(torch_net):
    """The reusable backbone (segmentation nets): every block output equals torch's
    ``features.i`` output, also at an odd, non-square size where Keras' own stride-2
    "same" padding would differ from torch's."""
    import keras

    from neuroscope.convert import copy_torch_weights, keras_mobilenet_v2_features

    inputs = keras.Input((None, None, 3), name="input")
    feats = keras_mobilenet_v2_features(inputs, prefix="features")
    backbone = keras.Model(inputs, list(feats.values()))
    copy_torch_weights(torch_net, backbone, strict=False)  # backbone only: no classifier

    x = _preprocess(ASSETS / "images" / "dashcam-highway-sign.jpg", size=(97, 131))[None]
    k_outs = backbone(x, training=False)
    t_outs, h = [], torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.inference_mode():
        for block in torch_net.features:
            h = block(h)
            t_outs.append(h.permute(0, 2, 3, 1).numpy())
    assert list(feats) == [f"features.{i}" for i in range(19)]
    for i, (t, k) in enumerate(zip(t_outs, k_outs)):
        k = np.asarray(k)
        assert t.shape == k.shape, f"features.{i}"
        assert np.abs(t - k).max() < 1e-3 * max(1.0, np.abs(t).max()), f"features.{i}"
    assert t_outs[STAGE_ENDS[32]].shape[1:3] == (4, 5)  # ceil(97/32), ceil(131/32)


def test_copy_refuses_a_mismatched_net(torch_net):
    from neuroscope.convert import copy_torch_weights, keras_mobilenet_v2

    with pytest.raises(ValueError, match="classifier.1"):
        copy_torch_weights(torch_net, keras_mobilenet_v2(num_classes=10))
