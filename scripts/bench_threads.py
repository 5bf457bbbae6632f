"""Forward time of a bundled model under CPU contention: framework thread settings compared.

Starts `--busy` spinning processes (default: one per core) so the cores are taken, then
runs each setting in a fresh interpreter (thread settings only apply before the framework
loads) and prints the median forward time. The machine's own load adds to it: compare
ratios, and report the load average printed with the table.

    python scripts/bench_threads.py [--model drivescene-seg] [--repeats 8] [--busy 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import sys, time, numpy as np
from neuroscope import Explainer, load_model
from neuroscope.zoo import read_spec, bundled_specs
ex = Explainer(load_model(read_spec(bundled_specs()[sys.argv[1]])))
h, w = ex.spec.input_size
x = ex.prepare(np.zeros((h, w, 3), np.uint8)).x
ts = []
for _ in range(int(sys.argv[2]) + 2):
    t = time.perf_counter(); ex.backend.forward(x); ts.append(time.perf_counter() - t)
print(np.median(ts[2:]) * 1000, min(ts[2:]) * 1000)
"""
SETTINGS = {
    "framework defaults (OMP_WAIT_POLICY unset, spin)": {"NEUROSCOPE_OMP_WAIT_POLICY": "ACTIVE"},
    "neuroscope default (OMP_WAIT_POLICY=PASSIVE)": {},
    "PASSIVE + NEUROSCOPE_THREADS=1": {"NEUROSCOPE_THREADS": "1"},
    "spin + NEUROSCOPE_THREADS=1": {"NEUROSCOPE_OMP_WAIT_POLICY": "ACTIVE", "NEUROSCOPE_THREADS": "1"},
}


def spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="drivescene-seg")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    busy = [mp.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    rows = []
    try:
        for name, env in SETTINGS.items():
            full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            full.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
            out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.repeats)], env=full,
                                 capture_output=True, text=True, check=True).stdout.split()
            rows.append((name, float(out[0]), float(out[1])))
    finally:
        for p in busy:
            p.terminate()
    load = os.getloadavg()[0]
    print(f"{args.model}, forward of one image, {args.busy} spinning processes on {os.cpu_count()} cores "
          f"(load average {load:.1f} at the end)\n")
    print("| setting | median ms | min ms | vs framework defaults |\n|---|---:|---:|---:|")
    base = rows[0][1]
    for name, med, best in rows:
        print(f"| {name} | {med:.0f} | {best:.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
