"""Soak: many varied explanations on one Explainer; prints RSS every 100 calls and the slope.

    nice -n 10 python scripts/soak.py --model drivescene-seg --calls 600
    nice -n 10 python scripts/soak.py --model mobilenet_v2-imagenet --calls 400

Each call explains a different image (a random crop of a bundled photo, so no two calls
share a cached preparation), with a method, class and region drawn from a seeded
generator, as a dashboard session would. The slope is a least-squares fit of RSS over the
second half of the calls (after the caches have filled), in MB per 100 calls; a flat
process shows ~0. `--trace` also prints the top Python allocation sites (tracemalloc).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

CLASSIFY = ["grad-cam", "saliency", "activation", "grad-cam++", "guided-backprop", "layer-cam", "gradient-x-input"]
SEGMENT = CLASSIFY + ["score-map", "fusion-map"]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_per_100(calls: list[int], rss: list[float]) -> float:
    half = len(calls) // 2
    x, y = np.asarray(calls[half:], float), np.asarray(rss[half:], float)
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0] * 100.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="drivescene-seg")
    p.add_argument("--calls", type=int, default=600)
    p.add_argument("--every", type=int, default=100, help="print RSS every N calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", choices=["crops", "photos"], default="crops",
                   help="crops: a new random crop every call; photos: the 6 photos whole (targets vary)")
    p.add_argument("--clear", action="store_true", help="empty the Explainer's caches after every call "
                   "(tells cache filling from other growth)")
    p.add_argument("--trace", action="store_true", help="tracemalloc: top allocation growth at the end")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from neuroscope import Explainer, Target
    from neuroscope.errors import NeuroscopeError
    from neuroscope.images import load_image

    ex = Explainer(args.model)
    photos = [load_image(ROOT / "assets" / "images" / n) for n in
              ("coffee.jpg", "cat.jpg", "dashcam-highway-cars.jpg", "leuven-street.jpg", "scene-1000002.png",
               "fruits.jpg")]
    rng = np.random.default_rng(args.seed)
    methods = SEGMENT if ex.task == "segmentation" else CLASSIFY
    if args.trace:
        import tracemalloc
        tracemalloc.start(10)
    calls, rss, errors = [], [], 0
    print(f"{args.model}: {args.calls} calls, RSS every {args.every}")
    print(f"{'calls':>6} {'rss_mb':>8} {'cache_mb':>8} {'s':>6}")
    t0 = time.perf_counter()
    snap0 = None
    for i in range(1, args.calls + 1):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        ch, cw = (int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))) if args.images == "crops" \
            else (h, w)
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = np.ascontiguousarray(photo[y0:y0 + ch, x0:x0 + cw])
        method = methods[rng.integers(len(methods))]
        if ex.task == "segmentation":
            kind = rng.integers(3)
            region = ("predicted" if kind == 0 else (int(rng.integers(cw)), int(rng.integers(ch))) if kind == 1
                      else "all")
            target = Target.segmentation(region=region)
        else:
            target = Target.classification(class_id=int(rng.integers(len(ex.classes))))
        try:
            ex.explain(image, method, target=target)
        except NeuroscopeError:
            errors += 1   # e.g. a click on a pixel whose class has no region: still a call
        if args.clear:
            ex.clear_caches()
        if i == args.calls // 2 and args.trace:
            gc.collect()
            snap0 = tracemalloc.take_snapshot()
        if i % args.every == 0:
            gc.collect()
            calls.append(i)
            rss.append(rss_mb())
            cached = sum(ex.cache_bytes().values()) / 2**20 if hasattr(ex, "cache_bytes") else float("nan")
            print(f"{i:>6} {rss[-1]:>8.1f} {cached:>8.1f} {time.perf_counter() - t0:>6.0f}", flush=True)
    print(f"slope over the second half: {slope_per_100(calls, rss):+.2f} MB per 100 calls "
          f"(first {rss[0]:.0f} MB, last {rss[-1]:.0f} MB, {errors} target errors)")
    if args.trace and snap0 is not None:
        for stat in tracemalloc.take_snapshot().compare_to(snap0, "traceback")[:8]:
            print(f"{stat.size_diff / 2**20:+8.2f} MB  {stat.count_diff:+6d}  {stat.traceback.format()[-1].strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
