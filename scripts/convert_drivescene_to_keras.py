"""Convert the trained drivescene-seg (torch) to Keras 3 and check the logits match.

    python scripts/convert_drivescene_to_keras.py [--weights assets/weights/drivescene-seg.pth]
                                                  [--out assets/weights/drivescene-seg.keras]

Builds `neuroscope.archs.drivescene_keras.keras_drivescene_seg` (built-in layers, torch
layer names), copies the weights by name (`neuroscope.convert.copy_torch_weights`),
saves the .keras file, reloads it with ``safe_mode=True`` and compares logits with the
torch model on held-out generated scenes and on a bundled dash-cam photo (same
preprocessed input, CONTRACT.md §1). Exits 1 when the max difference exceeds --tol.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from neuroscope.archs.drivescene import drivescene_seg  # noqa: E402
from neuroscope.archs.drivescene_keras import keras_drivescene_seg  # noqa: E402
from neuroscope.convert import copy_torch_weights  # noqa: E402
from neuroscope.images import load_image, normalize, resize_rgb  # noqa: E402
from neuroscope.synth import generate_scene  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
H, W = 256, 512


def check_inputs() -> np.ndarray:
    """Normalised NHWC float32 inputs: 3 held-out scenes and one real photo, at 256x512."""
    rgbs = [generate_scene(1_000_000 + i, (H, W)).image for i in range(3)]
    photos = sorted((ROOT / "assets" / "images").glob("dashcam-*.jpg"))
    if photos:
        rgbs.append(resize_rgb(load_image(photos[0]), (H, W)))
    return np.stack([normalize(r, (0, 1), MEAN, STD) for r in rgbs]).astype(np.float32)


def max_diff(torch_model, keras_model, x: np.ndarray) -> float:
    with torch.no_grad():
        t = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    k = np.asarray(keras_model.predict(x, batch_size=2, verbose=0))
    return float(np.abs(t - k).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(ROOT / "assets" / "weights" / "drivescene-seg.pth"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "weights" / "drivescene-seg.keras"))
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()

    torch_model = drivescene_seg(weights=args.weights)
    keras_model = keras_drivescene_seg(num_classes=torch_model.num_classes)
    copied = copy_torch_weights(torch_model, keras_model, strict=True)
    keras_model.save(args.out)
    reloaded = keras.saving.load_model(args.out, safe_mode=True)

    x = check_inputs()
    diff = max_diff(torch_model, reloaded, x)
    size_kb = Path(args.out).stat().st_size / 1024
    print(f"copied {len(copied)} layers; wrote {args.out} ({size_kb:.0f} KB); "
          f"max |torch - keras| logit difference on {len(x)} inputs: {diff:.2e}")
    if not diff <= args.tol:
        print(f"FAILED: difference above {args.tol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
