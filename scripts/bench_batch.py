"""Throughput of `neuroscope batch` on generated scenes: one image at a time vs same-size
images batched through the model vs Ray (1 and 2 workers), for grad-cam and saliency.

    python scripts/bench_batch.py [--scenes 200] [--size 128x256] [--chunk 8] [--no-ray]

Every mode runs the same `run_batch` (maps not saved, no metrics) on the same scenes with
one torch thread per worker, after a warm-up run. images/s = scenes / wall time of the
run. A Ray run starts its actor pool (workers import torch and load the model) inside
the run, so Ray also gets a "steady" figure: the images after the first finished chunk
divided by the time from that chunk to the last. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--size", default="128x256", help="scene and model input size HxW")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--methods", default="grad-cam,saliency")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    from neuroscope.batch.inputs import collect
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    from neuroscope.synth import generate_scene
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="ns-bench-batch-"))
    for i in range(args.scenes):
        Image.fromarray(generate_scene(5000 + i, (h, w)).image).save(tmp / f"scene{i:04d}.png")
    records = collect(str(tmp), tmp)
    modes = [("one at a time", "local", 1, False), ("batched", "local", 1, True)]
    if not args.no_ray:
        modes += [("Ray, 1 worker, batched", "ray", 1, True), ("Ray, 2 workers, batched", "ray", 2, True)]
    results = {}
    ray = None
    for method in args.methods.split(","):
        for label, engine, workers, batched in modes:
            if engine == "ray" and ray is None:
                import ray as _ray
                ray = _ray
            if engine == "ray":
                if ray.is_initialized():
                    ray.shutdown()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", configure_logging=False)
            ex = None
            if engine == "local":
                from neuroscope import Explainer
                ex = Explainer(args.model, input_size=(h, w))
            base = Settings(model=args.model, methods=[method], out="", input_size=(h, w), save=(),
                            model_batch=batched, threads=1)

            arrivals: list[tuple[float, int]] = []

            def once(recs):
                arrivals.clear()
                with tempfile.TemporaryDirectory() as out:
                    base.out = out
                    t0 = time.perf_counter()
                    s = run_batch(base, recs, engine=engine, workers=workers, chunk=args.chunk, progress=False,
                                  explainer=ex)
                    assert s["failed"] == 0, s
                    return time.perf_counter() - t0

            import neuroscope.batch.ray_engine as ray_engine
            real_run_ray = ray_engine.run_ray

            def timed_run_ray(*a, **kw):
                for rows in real_run_ray(*a, **kw):
                    arrivals.append((time.perf_counter(), len(rows)))
                    yield rows

            ray_engine.run_ray = timed_run_ray
            once(records[:2 * args.chunk * workers])      # warm-up (model load, tracing)
            wall = once(records)
            ray_engine.run_ray = real_run_ray
            results[method, label] = args.scenes / wall
            steady = ""
            if engine == "ray" and len(arrivals) > 1:
                rate = sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0])
                results[method, label + " steady"] = rate
                steady = f", steady {rate:.2f} images/s after the first chunk"
            print(f"{method:10s} {label:26s} {results[method, label]:7.2f} images/s ({wall:.1f} s{steady})",
                  flush=True)
            if engine == "ray":
                ray.shutdown()
    print(f"\n{args.model} at {h}x{w}, {args.scenes} generated scenes, chunks of {args.chunk}, "
          f"1 torch thread per worker, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    labels = [m[0] for m in modes]
    heads = labels + ([l + " (steady)" for l in labels[2:]] if not args.no_ray else [])
    print("| method (images/s) | " + " | ".join(heads) + " | batched / one at a time |" +
          (" Ray 1 worker overhead vs batched, end to end / steady |" if not args.no_ray else ""))
    print("|---" * (len(heads) + 2 + (0 if args.no_ray else 1)) + "|")
    for method in args.methods.split(","):
        r = [results[method, l] for l in labels]
        st = [results.get((method, l + " steady"), float("nan")) for l in labels[2:]] if not args.no_ray else []
        cells = [f"{v:.2f}" for v in r + st] + [f"{r[1] / r[0]:.2f}x"]
        if not args.no_ray:
            cells.append(f"{(r[1] / r[2] - 1) * 100:+.0f}% / {(r[1] / st[0] - 1) * 100:+.0f}%")
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
