"""Train the parts detection module (drivescene-parts) on generated scenes (CPU, time-boxed, seeded).

    nice -n 10 python scripts/train_parts.py [--scenes 1200] [--minutes 30] [--threads 2]
                                             [--out assets/weights/drivescene-parts.pth]

1. Generates `--scenes` scenes (seeds 0..N-1, 256x512) with their part maps in memory.
2. Trains only the decoder of `neuroscope.archs.drivescene_parts` (backbone = drivescene-seg's
   frozen blocks 0-13, BatchNorm statistics kept) with per-pixel cross-entropy on the part
   map (class-weighted, (median frequency / frequency) ** 0.5). Batches of crops at full
   resolution (offsets on the stride-16 grid), most of them centred on a part pixel so the
   small objects are seen often; horizontal flips and mild colour jitter. AdamW with a
   cosine learning rate driven by elapsed wall time, so the run ends after `--minutes`.
3. Writes the decoder's state dict (float32, keys ``decoder.*``) to `--out` every few
   minutes and at the end. Evaluation and the Keras port: scripts/eval_parts.py.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope.archs.drivescene_parts import drivescene_parts  # noqa: E402
from neuroscope.synth import generate_scene  # noqa: E402
from neuroscope.synth.parts import NUM_PARTS, PART_NAMES  # noqa: E402

H, W = 256, 512
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalise(images_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


def batch(images, parts, rng, n: int, crop: tuple[int, int]):
    ch, cw = crop
    xs, ys = [], []
    for _ in range(n):
        i = int(rng.integers(len(images)))
        p = parts[i]
        if rng.random() < 0.85:
            idx = np.flatnonzero(p)
            cy, cx = divmod(int(idx[rng.integers(len(idx))]), W) if len(idx) else (H // 2, W // 2)
        else:
            cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0 = int(np.clip(cy - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, H - ch)) // 16 * 16
        x0 = int(np.clip(cx - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, W - cw)) // 16 * 16
        img = images[i, y0:y0 + ch, x0:x0 + cw].astype(np.float32)
        lab = p[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        gain = rng.uniform(0.75, 1.25) * np.exp(rng.normal(0, 0.06, 3))
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.8, 1.2) + mean
        xs.append(np.clip(img * gain, 0, 255).astype(np.uint8))
        ys.append(lab.copy())
    return normalise(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=1200)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", default="128x256")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default=str(ROOT / "assets" / "weights" / "drivescene-seg.pth"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "weights" / "drivescene-parts.pth"))
    ap.add_argument("--init", help="continue from a decoder state dict (a warm restart of the schedule)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    crop = tuple(int(v) for v in args.crop.split("x"))

    t0 = time.time()
    images = np.empty((args.scenes, H, W, 3), np.uint8)
    parts = np.empty((args.scenes, H, W), np.uint8)
    for i in range(args.scenes):
        s = generate_scene(i, (H, W))
        images[i], parts[i] = s.image, s.parts
    freq = np.bincount(parts.ravel(), minlength=NUM_PARTS).astype(np.float64)
    freq /= freq.sum()
    weight = np.clip((np.median(freq) / np.maximum(freq, 1e-7)) ** 0.5, 0.05, 10.0)
    print(f"generated {args.scenes} scenes in {time.time() - t0:.0f} s; part weights "
          + ", ".join(f"{n} {w:.2f}" for n, w in zip(PART_NAMES, weight)), flush=True)

    model = drivescene_parts(args.backbone, args.init)
    model.train()
    params = [p for p in model.decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    wt = torch.tensor(weight, dtype=torch.float32)
    budget = args.minutes * 60
    t_start = last_save = time.time()
    step, losses = 0, []
    while True:
        frac = (time.time() - t_start) / budget
        if frac >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(images, parts, rng, args.batch, crop)
        with torch.no_grad():
            taps = model.taps(x)
        loss = F.cross_entropy(model.decoder(*taps), y, weight=wt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} t {time.time() - t_start:.0f}s lr {lr:.2e} loss {np.mean(losses[-50:]):.4f}", flush=True)
        if time.time() - last_save > 300:
            save(model, args.out)
            last_save = time.time()
    save(model, args.out)
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min of training "
          f"({(time.time() - t0) / 60:.1f} min with data); wrote {args.out}", flush=True)


def save(model, path: str) -> None:
    state = {f"decoder.{k}": v.detach().float().clone() for k, v in model.decoder.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()
