"""`make gpu-check`: on a CUDA machine, the tests marked `gpu` and `neuroscope bench` on the
GPU; elsewhere it prints "no GPU" and exits 0.

    python scripts/gpu_check.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device; the gpu tests and the GPU bench were not run")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"], cwd=ROOT)
    for model, image, size in (("mobilenet_v2-imagenet", "cat.jpg", None),
                               ("drivescene-seg", "scene-1000002.png", None)):
        cmd = [sys.executable, "-m", "neuroscope", "bench", model, str(ROOT / "assets" / "images" / image),
               "--repeats", str(args.repeats)] + (["--input-size", size] if size else [])
        print("\n$ neuroscope bench " + " ".join(cmd[4:]), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT) or rc
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
