"""README figure: the relevant filters of a class, each with its class average (first tile,
framed) and its atlas crops, and the relevant-filters explanation of one image.

    python scripts/figure_concepts.py [--model drivescene-seg] [--class car]
        [--image assets/images/scene-1000002.png] [--out docs/concepts-car.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope import Explainer, Target  # noqa: E402
from neuroscope.interpret.concepts import atlas_crops, average_tile, interpretation_of, ranked_filters  # noqa: E402
from neuroscope.render import overlay  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--class", dest="cls", default="car")
    ap.add_argument("--image", default=str(ROOT / "assets" / "images" / "scene-1000002.png"))
    ap.add_argument("--filters", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "concepts-car.png"))
    args = ap.parse_args()
    ex = Explainer(args.model)
    it = interpretation_of(ex)
    tile, k = 96, 6
    rows = []
    for f in ranked_filters(it, args.cls)[:args.filters]:
        crops = [c for c, _ in atlas_crops(it, f["layer"], f["channel"], k=k, size=tile)]
        avg = average_tile(it, args.cls, f["layer"], f["channel"])
        row = Image.new("RGB", (170 + (k + 1) * (tile + 4) + 8, tile + 4), "white")
        ImageDraw.Draw(row).text((4, tile // 2 - 12), f"{f['layer']}:{f['channel']}\nweight {f['weight']:.3f}",
                                 fill="black")
        if avg is not None:
            row.paste(Image.fromarray(avg).resize((tile, tile)), (170, 2))
            ImageDraw.Draw(row).rectangle([168, 0, 170 + tile + 1, tile + 3], outline=(255, 140, 0), width=2)
        for i, c in enumerate(crops):
            row.paste(Image.fromarray(c), (170 + 8 + (i + 1) * (tile + 4), 2))
        rows.append(row)
    from neuroscope.images import load_image
    img = load_image(args.image)
    target = Target.segmentation(args.cls, "predicted") if ex.task == "segmentation" else Target.classification(args.cls)
    res = ex.explain(img, "relevant-filters", target=target)
    ov = Image.fromarray(overlay(img, res.map, sign="positive"))
    width = max(r.width for r in rows)
    ov = ov.resize((width, int(ov.height * width / ov.width)))
    out = Image.new("RGB", (width, sum(r.height for r in rows) + ov.height + 4), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    out.paste(ov, (0, y + 4))
    out.save(args.out)
    print(args.out, res.as_json()["meta"]["filters"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
