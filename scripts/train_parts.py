"""Train the parts detection module (drivescene-parts) on generated scenes (CPU, seeded).

    python scripts/train_parts.py [--scenes 800] [--steps 6000] [--minutes 44] [--threads 1]
                                  [--out assets/weights/drivescene-parts.pth]

1. Generates `--scenes` scenes (seeds 0..N-1, 256x512) with their part maps and runs the
   frozen backbone (drivescene-seg's blocks 0-13, BatchNorm statistics kept) ONCE per
   scene, without gradients, on the whole scene; its taps at strides 2, 4, 8 and 16 are
   kept in memory (float16). The backbone never changes, so this is exact, and every crop
   sees features computed with the whole scene as context (as at test time).
2. Trains only the decoder of `neuroscope.archs.drivescene_parts` for `--steps` steps on
   batches of crops (offsets on the stride-16 grid, so the cached taps crop exactly with
   the image): most crops are centred on a pixel of a part chosen uniformly among the 14
   part classes (class-balanced: a lamp or an arm is seen as often as a car body), the
   rest anywhere. The decoder's stride-16 context step (dilated convolutions) runs on the
   whole scene's taps and is then cropped, so it sees what it sees at test time. Loss: per-pixel cross-entropy weighted by (median frequency /
   frequency) ** 0.5 plus `--dice` x soft Dice over the part classes present in the batch
   (Dice tracks IoU, which the cross-entropy of small parts does not). AdamW, linear
   warm-up then cosine decay over `--steps`, or over the wall-time budget `--minutes`
   (data included) when that comes first on a busy machine; seeded (numpy and torch), so
   a run that finishes its steps is reproducible from its command line.
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
STRIDES = (2, 4, 8, 16)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalise(images_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


def make_data(model, n: int, chunk: int = 8):
    """Scenes 0..n-1: images (uint8), part maps and the backbone taps (float16, whole scenes)."""
    images = np.empty((n, H, W, 3), np.uint8)
    parts = np.empty((n, H, W), np.uint8)
    taps = None
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        for i in range(i0, i1):
            s = generate_scene(i, (H, W))
            images[i], parts[i] = s.image, s.parts
        with torch.no_grad():
            out = model.taps(normalise(images[i0:i1]))
        if taps is None:
            taps = [torch.empty((n,) + tuple(t.shape[1:]), dtype=torch.float16) for t in out]
        for dst, t in zip(taps, out):
            dst[i0:i1] = t.half()
    return images, parts, taps


def part_pixels(parts: np.ndarray, rng, per_scene: int = 20):
    """Per part class 1..K-1: (scene indices, flat pixel indices), up to `per_scene` a scene."""
    found: list[tuple[list, list]] = [([], []) for _ in range(NUM_PARTS)]
    for i, p in enumerate(parts):
        flat = p.reshape(-1)
        idx = np.flatnonzero(flat)
        if not len(idx):
            continue
        order = np.argsort(flat[idx], kind="stable")
        idx = idx[order]
        ks, starts = np.unique(flat[idx], return_index=True)
        ends = list(starts[1:]) + [len(idx)]
        for k, a, b in zip(ks, starts, ends):
            pick = idx[a:b][rng.integers(b - a, size=min(b - a, per_scene))]
            found[k][0].append(np.full(len(pick), i))
            found[k][1].append(pick)
    return [(np.concatenate(s), np.concatenate(x)) if s else None for s, x in found[1:]]


def batch(images, parts, taps, where, rng, n: int, crop: tuple[int, int], focus: float = 0.9):
    ch, cw = crop
    xs, ys, fs, where16 = [], [], [[] for _ in taps[:3]], []
    classes = [k for k, w in enumerate(where) if w is not None]
    for _ in range(n):
        if rng.random() < focus:
            sc, ix = where[classes[int(rng.integers(len(classes)))]]
            j = int(rng.integers(len(sc)))
            i = int(sc[j])
            cy, cx = divmod(int(ix[j]), W)
        else:
            i = int(rng.integers(len(images)))
            cy, cx = int(rng.integers(H)), int(rng.integers(W))
        y0 = int(np.clip(cy - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, H - ch)) // 16 * 16
        x0 = int(np.clip(cx - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, W - cw)) // 16 * 16
        xs.append(images[i, y0:y0 + ch, x0:x0 + cw])
        ys.append(parts[i, y0:y0 + ch, x0:x0 + cw])
        for dst, t, s in zip(fs, taps, STRIDES):
            dst.append(t[i, :, y0 // s:(y0 + ch) // s, x0 // s:(x0 + cw) // s])
        where16.append((i, y0 // 16, x0 // 16))
    return (normalise(np.stack(xs)), [torch.stack(f).float() for f in fs], where16,
            torch.from_numpy(np.stack(ys).astype(np.int64)))


def dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over the part classes (not 'none') present in the batch."""
    p = logits.softmax(1)
    onehot = F.one_hot(y, NUM_PARTS).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * onehot).sum((0, 2, 3))
    total = (p + onehot).sum((0, 2, 3))
    present = onehot.sum((0, 2, 3))[1:] > 0
    d = 1 - (2 * inter[1:] + 1) / (total[1:] + 1)
    return d[present].mean() if bool(present.any()) else logits.sum() * 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=800)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", default="128x256")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dice", type=float, default=1.0, help="weight of the Dice term (0: cross-entropy only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=44.0,
                    help="wall-time budget of the whole run, data included; the schedule ends at --steps "
                         "or at --minutes, whichever comes first")
    ap.add_argument("--backbone", default=str(ROOT / "assets" / "weights" / "drivescene-seg.pth"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "weights" / "drivescene-parts.pth"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    crop = tuple(int(v) for v in args.crop.split("x"))

    t0 = time.time()
    model = drivescene_parts(args.backbone)
    images, parts, taps = make_data(model, args.scenes)
    where = part_pixels(parts, rng)
    freq = np.bincount(parts.ravel(), minlength=NUM_PARTS).astype(np.float64)
    freq /= freq.sum()
    weight = np.clip((np.median(freq) / np.maximum(freq, 1e-7)) ** 0.5, 0.05, 10.0)
    print(f"generated {args.scenes} scenes and their backbone taps in {time.time() - t0:.0f} s; part weights "
          + ", ".join(f"{n} {w:.2f}" for n, w in zip(PART_NAMES, weight)), flush=True)

    model.train()
    opt = torch.optim.AdamW(model.decoder.parameters(), lr=args.lr, weight_decay=1e-4)
    wt = torch.tensor(weight, dtype=torch.float32)
    t_start = last_save = time.time()
    losses = []
    budget = args.minutes * 60 - (t_start - t0)   # what making the data left of --minutes
    for step in range(args.steps):
        frac = max(step / args.steps, (time.time() - t_start) / budget) if budget > 0 else 1.0   # steps or wall time
        if frac >= 1:
            print(f"wall-time budget of {args.minutes} min reached at step {step}", flush=True)
            break
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        x, f, where16, y = batch(images, parts, taps, where, rng, args.batch, crop)
        # the stride-16 context step runs on the whole scenes (as at test time), then is cropped
        h = model.decoder.context(taps[3][[i for i, _, _ in where16]].float())
        h16 = torch.stack([h[j, :, oy:oy + crop[0] // 16, ox:ox + crop[1] // 16]
                           for j, (_, oy, ox) in enumerate(where16)])
        logits = model.decoder(x, *f, None, h16)
        loss = F.cross_entropy(logits, y, weight=wt)
        if args.dice:
            loss = loss + args.dice * dice_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} t {time.time() - t_start:.0f}s lr {lr:.2e} loss {np.mean(losses[-100:]):.4f}",
                  flush=True)
        if time.time() - last_save > 300:
            save(model, args.out)
            last_save = time.time()
    save(model, args.out)
    print(f"done: {len(losses)} steps in {(time.time() - t_start) / 60:.1f} min of training "
          f"({(time.time() - t0) / 60:.1f} min with data); wrote {args.out}", flush=True)


def save(model, path: str) -> None:
    state = {f"decoder.{k}": v.detach().float().clone() for k, v in model.decoder.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()
