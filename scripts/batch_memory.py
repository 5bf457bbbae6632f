"""Memory of a long `neuroscope batch` run: RSS after every chunk over N generated scenes,
and the slope per 100 images after a warm-up (least squares).

    python scripts/batch_memory.py [--images 1000] [--size 64x128] [--warmup 200] [--methods grad-cam,saliency]

The local engine runs in this process (maps saved as float16 .npz, as by default); RSS is
read from /proc/self/statm. Goal: slope < 2 MB per 100 images after the warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    from neuroscope.runtime import rss_bytes
    return rss_bytes() / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", default="64x128")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--methods", default="grad-cam,saliency")
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args()
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    from neuroscope import Explainer
    from neuroscope.batch import work
    from neuroscope.batch.inputs import collect
    from neuroscope.batch.run import run_batch
    from neuroscope.synth import generate_scene
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="ns-batch-mem-"))
    (tmp / "in").mkdir()
    # 100 distinct scenes, each written 10 times with a different pixel: every image is new
    # to the caches (content hash), as in a real data set
    bases = [generate_scene(7000 + i, (h, w)).image for i in range(min(100, args.images))]
    for i in range(args.images):
        im = bases[i % len(bases)].copy()
        im[0, 0] = (i * 7 % 256, i * 13 % 256, i // 256)
        Image.fromarray(im).save(tmp / "in" / f"img{i:05d}.png")
    records = collect(str(tmp / "in"), tmp)
    ex = Explainer(args.model, input_size=(h, w))
    samples = []          # (images done, RSS MB)
    real = work.run_chunk
    done = [0]

    def measured(explainer, recs, settings):
        rows = real(explainer, recs, settings)
        done[0] += len(recs)
        samples.append((done[0], rss_mb()))
        return rows

    import neuroscope.batch.run as run_mod
    run_mod.run_chunk = measured
    settings = work.Settings(model=args.model, methods=args.methods.split(","), out=str(tmp / "out"),
                             input_size=(h, w), threads=1)
    summary = run_batch(settings, records, chunk=args.chunk, progress=False, explainer=ex)
    x = np.array([n for n, _ in samples if n > args.warmup], float)
    y = np.array([r for n, r in samples if n > args.warmup], float)
    slope = np.polyfit(x, y, 1)[0] * 100 if len(x) > 2 else float("nan")
    print(f"{args.model} at {h}x{w}, {args.images} images x {len(settings.methods)} methods "
          f"({args.methods}), chunks of {args.chunk}, maps saved: {summary['done']} rows in {summary['time_s']:.0f} s")
    print("| images done | RSS (MB) |\n|---|---|")
    for n, r in samples[:: max(1, len(samples) // 10)] + [samples[-1]]:
        print(f"| {n} | {r:.1f} |")
    print(f"\nRSS slope after {args.warmup} images: {slope:+.2f} MB per 100 images (goal < 2); "
          f"peak {max(r for _, r in samples):.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
