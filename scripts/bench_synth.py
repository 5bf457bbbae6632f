"""Scene generator speed: scenes per second at 256x512 on ONE core (issue: >= 20/s).

    python scripts/bench_synth.py [--scenes 200] [--size 256x512] [--profile]

Pins the process to one CPU (sched_setaffinity) and limits BLAS/OpenMP threads, generates
`--scenes` consecutive seeds after a short warm-up, and prints scenes/s with the median
and 90th-percentile time per scene. `--profile` prints the slowest functions instead.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from neuroscope.synth import generate_scene
    for seed in range(5):                       # warm-up: imports, caches
        generate_scene(10_000_000 + seed, (h, w))
    seeds = range(args.first_seed, args.first_seed + args.scenes)
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for s in seeds:
            generate_scene(s, (h, w))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return 0
    times = []
    t_all = time.perf_counter()
    for s in seeds:
        t0 = time.perf_counter()
        generate_scene(s, (h, w))
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    times.sort()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"{args.scenes} scenes at {h}x{w} on {cores} core(s): {args.scenes / total:.1f} scenes/s "
          f"(median {1000 * statistics.median(times):.1f} ms, p90 {1000 * times[int(0.9 * len(times))]:.1f} ms, "
          f"max {1000 * times[-1]:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
