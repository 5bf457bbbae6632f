"""Build assets/weights/mobilenet_v2-imagenet.keras from the bundled torch MobileNetV2 weights.

Rebuilds the network in Keras (`neuroscope.convert`), copies the torch weights by layer
name, saves the model, reloads it with ``safe_mode=True`` and checks that its logits
match torch's on the bundled photos (max |diff| must stay below 1e-3).

    .venv/bin/python scripts/convert_mobilenet_to_keras.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import torch  # noqa: E402

from neuroscope.archs.mobilenet_v2 import mobilenet_v2  # noqa: E402
from neuroscope.convert import copy_torch_weights, keras_mobilenet_v2  # noqa: E402
from neuroscope.images import load_image, normalize, resize_rgb  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOLERANCE = 1e-3


def preprocessed_photos(folder: Path) -> tuple[list[str], np.ndarray]:
    """All JPEGs in ``folder`` as one [N, 224, 224, 3] float32 batch (CONTRACT.md §1)."""
    paths = sorted(folder.glob("*.jpg"))
    batch = [normalize(resize_rgb(load_image(p), (224, 224)), (0.0, 1.0), MEAN, STD) for p in paths]
    return [p.name for p in paths], np.stack(batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "assets/weights/mobilenet_v2-b0353104.pth")
    ap.add_argument("--out", type=Path, default=ROOT / "assets/weights/mobilenet_v2-imagenet.keras")
    ap.add_argument("--images", type=Path, default=ROOT / "assets/images")
    args = ap.parse_args(argv)

    net = mobilenet_v2(weights=args.weights)
    kmodel = keras_mobilenet_v2(num_classes=1000, input_shape=(224, 224, 3), include_top=True)
    copied = copy_torch_weights(net, kmodel)
    print(f"copied {len(copied)} layers")
    kmodel.save(args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")

    reloaded = keras.saving.load_model(args.out, safe_mode=True)  # built-in layers only
    names, x = preprocessed_photos(args.images)
    with torch.inference_mode():
        t_logits = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    k_logits = np.asarray(reloaded(x, training=False))
    classes = (ROOT / "assets/models/imagenet_classes.txt").read_text().splitlines()
    for name, t, k in zip(names, t_logits, k_logits):
        pt, pk = _softmax(t), _softmax(k)
        print(f"{name:30s} torch {classes[pt.argmax()]} {pt.max():.3f} | keras {classes[pk.argmax()]} {pk.max():.3f}")
    diff = float(np.abs(t_logits - k_logits).max())
    print(f"max |logit diff| torch vs keras: {diff:.2e} (limit {TOLERANCE:g})")
    return 0 if diff < TOLERANCE else 1


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


if __name__ == "__main__":
    raise SystemExit(main())
