"""docs/lrp-dashcam-car.jpg: LRP of the car clicked at (880, 450) on a real dash-cam frame
(drivescene-seg), beside Grad-CAM, cropped to the car's surroundings.

    nice python scripts/lrp_figure.py [--out docs/lrp-dashcam-car.jpg]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from PIL import Image  # noqa: E402

from neuroscope import Explainer, Target, load_model  # noqa: E402
from neuroscope.images import load_image  # noqa: E402
from neuroscope.render import mark_points, montage, overlay  # noqa: E402

IMAGE = "assets/images/dashcam-highway-cars.jpg"
CLICK = (880, 450)
CROP = (560, 300, 1200, 620)   # x0, y0, x1, y1 around the car


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/lrp-dashcam-car.jpg")
    args = ap.parse_args()
    ex = Explainer(load_model("drivescene-seg", device="cpu"))
    rgb = load_image(IMAGE)
    target = Target.segmentation("car", CLICK)
    panels, labels = [], []
    for method, params, label in [("grad-cam", {}, "Grad-CAM (default layer)"),
                                  ("lrp", {"composite": "epsilon-plus-flat"}, "LRP epsilon-plus-flat"),
                                  ("lrp", {"composite": "epsilon-gamma-box"}, "LRP epsilon-gamma-box")]:
        e = ex.explain(rgb, method, target=target, params=params)
        signed = method == "lrp"
        pic = overlay(rgb, e.map, cmap="bwr" if signed else "jet", alpha=0.75 if signed else 0.5,
                      sign="both" if signed else "positive", clip_percentile=99.5, by_magnitude=signed)
        pic = mark_points(pic, [CLICK])
        x0, y0, x1, y1 = CROP
        panels.append(pic[y0:y1, x0:x1])
        extra = e.meta["extra"]
        note = f", conservation {extra['conservation']:.2f}" if "conservation" in extra else ""
        labels.append(f"{label}{note}")
        print(label, f"{e.meta['time_ms']:.0f} ms{note}")
    Image.fromarray(montage(panels, labels, cols=3)).save(args.out, quality=85)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
