"""The README's Parts picture: a car on a real dash-cam frame, its predicted parts outlined,
each part's share of the relevance beside its measured drop, and the Spearman value.

    python scripts/parts_figure.py [--image assets/images/dashcam-highway-cars.jpg]
                                   [--model drivescene-seg] [--out docs/parts-dashcam-car.png]

Clicks the largest predicted car (its pixel deepest inside the car), runs
`neuroscope.parts.part_contributions` (what `neuroscope parts` and the app's Parts view run)
and prints the CLI's JSON for that click.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))

from neuroscope import Explainer  # noqa: E402
from neuroscope.images import load_image  # noqa: E402
from neuroscope.parts import part_contributions  # noqa: E402
from neuroscope.synth.parts import PART_PALETTE  # noqa: E402
from neuroscope.targets import Target  # noqa: E402


def largest_car_pixel(ex, image) -> tuple[int, int]:
    labels = ex.predict(image).labels
    comp, n = ndimage.label(labels == ex.classes.index("car"), structure=np.ones((3, 3), bool))
    if not n:
        raise SystemExit("no car predicted in the image")
    biggest = 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
    depth = ndimage.distance_transform_edt(comp == biggest)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(x), int(y)


def bars(result, width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    n = len(result.part_ids)
    row = min(40, (height - 60) // max(n, 1))
    label_w, col_w = 90, (width - 90 - 30) // 2
    d.text((label_w, 8), f"share of {result.method} relevance", fill=(0, 0, 0))
    d.text((label_w + col_w + 20, 8), "probability drop when the part is removed", fill=(0, 0, 0))
    smax = max(1e-9, float(np.abs(result.shares).max()))
    dmax = max(1e-9, float(np.abs(result.drops).max()))
    for i, (k, name, s, dr) in enumerate(zip(result.part_ids, result.part_names, result.shares, result.drops)):
        y = 30 + i * row
        colour = PART_PALETTE[k]
        d.text((4, y + row // 3), name, fill=(0, 0, 0))
        for x0, v, vmax, text in ((label_w, s, smax, f"{s:+.1%}"), (label_w + col_w + 20, dr, dmax, f"{dr:+.4f}")):
            zero = x0 + col_w // 4
            length = int((col_w * 3 // 4 - 50) * abs(v) / vmax)
            a, b = (zero, zero + length) if v >= 0 else (zero - min(length, col_w // 4), zero)
            d.rectangle([a, y + 4, max(a + 1, b), y + row - 6], fill=colour)
            d.line([zero, y, zero, y + row - 2], fill=(90, 90, 90))
            d.text((max(a, b) + 4, y + row // 3), text, fill=(0, 0, 0))
    rho = "n/a" if result.spearman is None else f"{result.spearman:+.2f}"
    d.text((4, height - 22), f"Spearman(share, drop) = {rho} over {n} parts", fill=(0, 0, 0))
    return im


def main() -> int:
    from dashboard.parts_view import outlined
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "assets" / "images" / "dashcam-highway-cars.jpg"))
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--out", default=str(ROOT / "docs" / "parts-dashcam-car.png"))
    args = ap.parse_args()
    ex = Explainer(args.model)
    image = load_image(args.image)
    x, y = largest_car_pixel(ex, image)
    result = part_contributions(ex, image, Target.segmentation(region=(x, y)))
    crop = Image.fromarray(outlined(image, result.part_labels))
    h = max(crop.height, 60 + 40 * len(result.part_ids))
    chart = bars(result, 620, h)
    fig = Image.new("RGB", (crop.width + chart.width + 10, h), (255, 255, 255))
    fig.paste(crop, (0, 0))
    fig.paste(chart, (crop.width + 10, 0))
    fig.save(args.out, optimize=True)
    print(f"click {x},{y} on {Path(args.image).name}; wrote {args.out}")
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
