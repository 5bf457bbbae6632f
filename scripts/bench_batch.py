"""Throughput of `neuroscope batch` on generated scenes: one image at a time vs same-size
images batched through the model vs Ray (1 and 2 workers), for grad-cam and saliency.

    python scripts/bench_batch.py [--scenes 200] [--size 128x256] [--chunk 8] [--repeats 3]
                                  [--no-ray] [--compute]

Every mode runs the same `run_batch` (maps not saved, no metrics) on the same scenes, after
a warm-up run. images/s = scenes / wall time of the run.

Local modes: `--threads` torch threads (default 1; the same process settings for one at a
time and batched),
run alternately `--repeats` times, median; the CPU seconds per image are printed too
(with one thread they do not depend on what else the machine runs). "batched, N threads"
is the local engine with as many torch threads as the Ray run has workers (the local
engine is one process; its `--workers` only applies to Ray): the same cores.

Ray modes (one run each): the wall time includes starting the actors inside the run; the
script also reports `ray.init` seconds, when the first actor was ready (its Explainer
loaded), the steady rate = the sum over the workers of each one's images / (its last chunk
finished - its first chunk started, read inside the actors: Ray's gaps between chunks
included, the actors' staggered start-up not) and the workers' CPU ms per image inside the chunks (compare with the
local CPU ms/image: it does not depend on the machine's load). Overhead = local / Ray - 1 at equal cores, end to end and steady.

`--compute`: the bare model, forward + backward to the input, per image at batch 1, 2, 4,
8 (CPU time, one thread): what batching can gain at all at this size on this CPU.

`--cli 200,2000`: what a user waits for: the real `neuroscope batch` command, timed end to
end (process start, imports, model load, `ray.init`, actors, shutdown), local engine vs
`--engine ray --workers N` (N = the largest of `--workers`), on 200 and 2,000 images (the
scenes repeated under other names), alternating, median of `--repeats`. A fresh local Ray
costs a fixed few seconds; this shows from which data set size it is paid back.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compute_table(model: str, h: int, w: int, sizes=(1, 2, 4, 8), repeats: int = 3) -> str:
    """CPU ms per image of a bare forward + backward at each batch size (one thread)."""
    import torch
    from neuroscope import Explainer
    torch.set_num_threads(1)
    b = Explainer(model, input_size=(h, w)).backend

    def run(n):
        x = torch.rand(n, h, w, b.channels).permute(0, 3, 1, 2).requires_grad_(True)   # channels_last, as _to_tensor
        with torch.enable_grad():
            z = b._logits(b._run(x), (h, w))
            torch.autograd.grad(z[:, 1].sum(), x)

    times: dict[int, list[float]] = {n: [] for n in sizes}
    for n in sizes:
        run(n)
    for _ in range(repeats):
        for n in sizes:
            k = max(1, 8 // n)
            t = time.process_time()
            for _ in range(k):
                run(n)
            times[n].append((time.process_time() - t) * 1000.0 / (k * n))
    med = {n: statistics.median(v) for n, v in times.items()}
    return (f"bare forward + backward of {model} at {h}x{w}, CPU ms per image, one torch thread: "
            + ", ".join(f"batch {n}: {med[n]:.1f}" for n in sizes)
            + f" (batch 1 / batch {sizes[-1]}: {med[sizes[0]] / med[sizes[-1]]:.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--size", default="128x256", help="scene and model input size HxW")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--methods", default="grad-cam,saliency")
    ap.add_argument("--repeats", type=int, default=3, help="alternating local runs per mode (median)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of one at a time and batched")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--compute", action="store_true", help="also time the bare model at batch 1..8")
    ap.add_argument("--cli", default="", help="image counts for end-to-end CLI timings (e.g. 200,2000); "
                                                "then nothing else runs")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    from neuroscope import Explainer
    from neuroscope.batch.inputs import collect
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    from neuroscope.synth import generate_scene
    h, w = (int(v) for v in args.size.split("x"))
    if args.compute:
        print(compute_table(args.model, h, w), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ns-bench-batch-"))
    for i in range(args.scenes):
        Image.fromarray(generate_scene(5000 + i, (h, w)).image).save(tmp / f"scene{i:04d}.png")
    if args.cli:
        return cli_table(args, tmp)
    records = collect(str(tmp), tmp)
    worker_counts = [] if args.no_ray else [int(v) for v in args.workers.split(",")]
    many = max(worker_counts, default=1)
    ex = Explainer(args.model, input_size=(h, w))

    def local(method: str, batched: bool, threads: int, recs) -> tuple[float, float]:
        torch.set_num_threads(threads)
        settings = Settings(model=args.model, methods=[method], out="", input_size=(h, w), save=(),
                            model_batch=batched, threads=threads)
        with tempfile.TemporaryDirectory() as out:
            settings.out = out
            c0, t0 = time.process_time(), time.perf_counter()
            s = run_batch(settings, recs, chunk=args.chunk, progress=False, explainer=ex)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert s["failed"] == 0, s
        torch.set_num_threads(1)
        return len(recs) / wall, cpu * 1000.0 / len(recs)

    results: dict[tuple[str, str], float] = {}
    notes: list[str] = []
    for method in args.methods.split(","):
        local_modes = [("one at a time", False, args.threads), ("batched", True, args.threads)]
        if many > args.threads:
            local_modes.append((f"batched, {many} threads", True, many))
        for _, batched, threads in local_modes:
            local(method, batched, threads, records[:2 * args.chunk])          # warm-up
        runs: dict[str, list[tuple[float, float]]] = {m[0]: [] for m in local_modes}
        for _ in range(args.repeats):
            for label, batched, threads in local_modes:
                runs[label].append(local(method, batched, threads, records))
        for label, _, threads in local_modes:
            rate = statistics.median(r[0] for r in runs[label])
            cpu = statistics.median(r[1] for r in runs[label])
            results[method, label] = rate
            results[method, label + " cpu"] = cpu
            print(f"{method:10s} {label:22s} {rate:7.2f} images/s (median of {args.repeats}; "
                  f"CPU {cpu:.1f} ms/image{'' if threads == 1 else f' over {threads} threads'})", flush=True)
        ratios = [a[0] and b[0] / a[0] for a, b in zip(runs["one at a time"], runs["batched"])]
        results[method, "ratio"] = statistics.median(ratios)
        results[method, "cpu ratio"] = results[method, "one at a time cpu"] / results[method, "batched cpu"]
        for workers in worker_counts:
            label = f"Ray, {workers} worker{'s' if workers > 1 else ''}"
            r = ray_run(args, method, workers, records, (h, w))
            results[method, label] = r["rate"]
            results[method, label + " steady"] = r["steady"]
            notes.append(f"{method} {label}: ray.init {r['init_s']:.1f} s, first actor ready {r['ready_s']:.1f} s "
                         f"into the run (Explainer load {r['load_s']:.1f} s), run {r['wall_s']:.1f} s, "
                         f"workers' CPU {r['cpu_ms']:.1f} ms/image in the chunks")
            print(f"{method:10s} {label:22s} {r['rate']:7.2f} images/s end to end, {r['steady']:.2f} steady "
                  f"({notes[-1]})", flush=True)
    print(f"\n{args.model} at {h}x{w}, {args.scenes} generated scenes, chunks of {args.chunk}, "
          f"{args.threads} torch thread{'s' if args.threads > 1 else ''} one at a time and batched, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    labels = ["one at a time", "batched"] + ([f"batched, {many} threads"] if many > args.threads else [])
    ray_labels = [f"Ray, {n} worker{'s' if n > 1 else ''}" for n in worker_counts]
    heads = labels + ray_labels + [l + " (steady)" for l in ray_labels]
    print("| images/s | " + " | ".join(heads) + " | batched / one at a time (wall; CPU) |"
          + "".join(f" Ray {n} vs local at {n} core{'s' if n > 1 else ''}: end to end / steady |"
                    for n in worker_counts))
    print("|---" * (len(heads) + 2 + len(worker_counts)) + "|")
    for method in args.methods.split(","):
        cells = [f"{results[method, l]:.2f}" for l in labels + ray_labels]
        cells += [f"{results[method, l + ' steady']:.2f}" for l in ray_labels]
        cells.append(f"{results[method, 'ratio']:.2f}x; {results[method, 'cpu ratio']:.2f}x")
        for n, l in zip(worker_counts, ray_labels):
            base = results[method, "batched"] if n == args.threads else results.get((method, f"batched, {n} threads"))
            cells.append("n/a" if base is None else f"{(base / results[method, l] - 1) * 100:+.0f}% / "
                         f"{(base / results[method, l + ' steady'] - 1) * 100:+.0f}%")
        print(f"| {method} | " + " | ".join(cells) + " |")
    if worker_counts:
        print("\n(overhead = local images/s / Ray images/s - 1: +20% means Ray took 20% longer)")
    for n in notes:
        print("- " + n)
    return 0


def cli_table(args, scenes: Path) -> int:
    """End-to-end wall time of the real CLI, local vs Ray, at each image count."""
    import subprocess
    workers = max(int(v) for v in args.workers.split(","))
    files = sorted(scenes.glob("*.png"))
    cli = [sys.executable, "-m", "neuroscope", "batch", args.model]
    rows = []
    for n in (int(v) for v in args.cli.split(",")):
        folder = Path(tempfile.mkdtemp(prefix=f"ns-bench-cli-{n}-"))
        for i in range(n):         # hard links: the same scenes under other names (no cache across chunks)
            os.link(files[i % len(files)], folder / f"img{i:05d}.png")
        for method in args.methods.split(","):
            times: dict[str, list[float]] = {"local": [], "ray": []}
            for _ in range(args.repeats):
                for engine in ("local", "ray"):
                    with tempfile.TemporaryDirectory() as out:
                        cmd = cli + [str(folder), "--methods", method, "--out", out, "--save", "none", "--json",
                                     "--input-size", args.size, "--engine", engine] + \
                              (["--workers", str(workers)] if engine == "ray" else [])
                        t = time.perf_counter()
                        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                              env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
                        times[engine].append(time.perf_counter() - t)
                        if done.returncode != 0:
                            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            lo, ra = statistics.median(times["local"]), statistics.median(times["ray"])
            rows.append((n, method, lo, ra))
            print(f"{n:6d} {method:10s} local {lo:6.1f} s ({n / lo:5.1f} images/s)   ray, {workers} workers "
                  f"{ra:6.1f} s ({n / ra:5.1f} images/s)   {(ra / lo - 1) * 100:+.0f}%", flush=True)
    print(f"\n`neuroscope batch {args.model} DIR --methods M --save none --input-size {args.size}`, end to end "
          f"(median of {args.repeats}), local engine (one process, the framework's threads) vs "
          f"`--engine ray --workers {workers}` (a fresh local Ray), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| images | method | local, s | Ray, s | Ray overhead |")
    print("|---|---|---|---|---|")
    for n, method, lo, ra in rows:
        print(f"| {n} | {method} | {lo:.1f} | {ra:.1f} | {(ra / lo - 1) * 100:+.0f}% |")
    return 0


def ray_run(args, method: str, workers: int, records, size) -> dict:
    """One Ray run on a fresh local Ray, with the actors' own timings read back."""
    import ray
    import neuroscope.batch.ray_engine as ray_engine
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    trace = Path(tempfile.mkdtemp(prefix="ns-bench-ray-")) / "trace.txt"
    real = ray_engine.ExplainActor

    class Traced(real):          # defined here: Ray ships it by value to the workers
        def __init__(self, settings):
            import os
            import time
            t = time.time()
            super().__init__(settings)
            with open(trace, "a") as f:
                f.write(f"{os.getpid()} init {t} {time.time()} 0 0\n")

        def __call__(self, batch):
            import os
            import time
            t, c = time.time(), time.process_time()
            out = super().__call__(batch)
            with open(trace, "a") as f:
                f.write(f"{os.getpid()} call {t} {time.time()} {time.process_time() - c} {out.num_rows}\n")
            return out

    settings = Settings(model=args.model, methods=[method], out="", input_size=size, save=(), threads=1)
    t0 = time.perf_counter()
    ray_engine.start_local(workers)
    init_s = time.perf_counter() - t0
    ray_engine.ExplainActor = Traced
    try:
        with tempfile.TemporaryDirectory() as out:       # warm-up: Ray Data's own first-run costs
            settings.out = out
            run_batch(settings, records[:2 * args.chunk * workers], engine="ray", workers=workers,
                      chunk=args.chunk, progress=False)
        trace.write_text("")
        with tempfile.TemporaryDirectory() as out:
            settings.out = out
            start = time.time()
            t1 = time.perf_counter()
            s = run_batch(settings, records, engine="ray", workers=workers, chunk=args.chunk, progress=False)
            wall = time.perf_counter() - t1
        assert s["failed"] == 0, s
    finally:
        ray_engine.ExplainActor = real
        ray.shutdown()
    inits, calls, cpu = [], {}, 0.0
    for line in trace.read_text().splitlines():
        pid, kind, a, b, c, n = line.split()
        span = (float(a) - start, float(b) - start)
        if kind == "init":
            inits.append(span)
        else:
            calls.setdefault(pid, []).append((*span, int(n)))
        cpu += float(c)
    ready = min(b for _, b in inits)
    # each worker's images over its own span (first chunk started -> last one finished,
    # the gaps Ray leaves between its chunks included), summed over the workers: the
    # pool's rate once running, without the actors' staggered start-up
    steady = sum(sum(n for _, _, n in cs) / (max(b for _, b, _ in cs) - min(a for a, _, _ in cs))
                 for cs in calls.values())
    return {"rate": len(records) / wall, "steady": steady, "init_s": init_s, "ready_s": ready,
            "load_s": min(b - a for a, b in inits), "wall_s": wall, "cpu_ms": cpu * 1000.0 / len(records)}


if __name__ == "__main__":
    raise SystemExit(main())
