"""Train the demo segmenter `drivescene-seg` on generated street scenes (CPU, time-boxed).

    python scripts/train_drivescene.py [--scenes 4000] [--minutes 55] [--out assets/weights/drivescene-seg.pth]

1. Pre-generates `--scenes` scenes (seeds 0..N-1) at 256x512 into uint8 memmaps under
   data/drivescene/ (git-ignored; reused when present).
2. Trains DriveSceneSeg from the ImageNet MobileNetV2 backbone with AdamW and a cosine
   learning rate driven by elapsed wall time, so the run ends after `--minutes`.
   Augmentation: random scale + crop, horizontal flip, colour jitter, blur, noise.
   Loss: cross-entropy, mildly class-weighted, ignore_index 255.
3. Every few minutes: mIoU on held-out scenes (seeds from 1_000_000) and a checkpoint;
   the final state dict (float32) is written to `--out`.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope.archs.drivescene import drivescene_seg, load_imagenet_backbone  # noqa: E402
from neuroscope.synth import generate_scene  # noqa: E402
from neuroscope.evaluation import reports as scores  # noqa: E402

H, W = 256, 512
NUM_CLASSES = 19
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
HELD_OUT_SEED = 1_000_000


def _generate_range(args: tuple[str, int, int, int]) -> None:
    folder, n, start, stop = args
    images = np.lib.format.open_memmap(Path(folder) / "images.npy", mode="r+")
    labels = np.lib.format.open_memmap(Path(folder) / "labels.npy", mode="r+")
    for i in range(start, stop):
        s = generate_scene(i, (H, W))
        images[i], labels[i] = s.image, s.labels
    images.flush()
    labels.flush()


def generate_dataset(folder: Path, n: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Scenes 0..n-1 as memmaps images [n, H, W, 3] and labels [n, H, W] (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"complete-{n}"
    if not done.exists():
        t = time.time()
        np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, H, W, 3))
        np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, H, W))
        bounds = np.linspace(0, n, workers * 8 + 1).astype(int)
        jobs = [(str(folder), n, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_generate_range, jobs)
        done.write_text("ok\n")
        print(f"generated {n} scenes in {time.time() - t:.0f} s", flush=True)
    return (np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy", mmap_mode="r"))


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (the spec's mean/std, values in [0, 1])."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


def augment(images: np.ndarray, labels: np.ndarray, crop: tuple[int, int], rng: np.random.Generator):
    """Random scale + crop + flip per sample, then photometric jitter on the batch.
    Returns float images [N, 3, h, w] in [0, 1] and long labels [N, h, w]."""
    ch, cw = crop
    xs, ys = [], []
    for img, lab in zip(images, labels):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        y = torch.from_numpy(np.ascontiguousarray(lab))[None, None].float()
        s = math.exp(rng.uniform(math.log(0.55), math.log(1.5)))
        nh, nw = max(8, round(H * s)), max(8, round(W * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)
        y = F.interpolate(y, size=(nh, nw), mode="nearest")
        if nh < ch or nw < cw:  # pad: image with grey, labels with ignore
            ph, pw = max(0, ch - nh), max(0, cw - nw)
            top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
            x = F.pad(x, (left, pw - left, top, ph - top), value=0.45)
            y = F.pad(y, (left, pw - left, top, ph - top), value=255)
            nh, nw = x.shape[-2:]
        top, left = int(rng.integers(0, nh - ch + 1)), int(rng.integers(0, nw - cw + 1))
        x, y = x[..., top:top + ch, left:left + cw], y[..., top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    x = torch.cat(xs)
    y = torch.cat(ys)[:, 0].long()
    n = x.shape[0]
    # Colour jitter: brightness, per-channel gain, contrast, saturation, gamma.
    t = lambda a, b: torch.from_numpy(rng.uniform(a, b, (n, 1, 1, 1)).astype(np.float32))  # noqa: E731
    x = x * t(0.6, 1.4) * torch.from_numpy(rng.uniform(0.88, 1.12, (n, 3, 1, 1)).astype(np.float32))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * t(0.65, 1.35) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * t(0.4, 1.5) + grey
    x = x.clamp(0, 1) ** t(0.75, 1.35)
    # Blur (some samples), then sensor noise.
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    blurred = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
    a = t(0, 1) * torch.from_numpy((rng.random((n, 1, 1, 1)) < 0.5).astype(np.float32))
    x = x * (1 - a) + blurred * a
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31)))) * t(0, 0.04)
    return x.clamp(0, 1), y


def confusion(pred: np.ndarray, gt: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    return scores.confusion(pred, gt, n)


def iou_report(conf: np.ndarray, min_share: float = 0.01) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-class IoU, pixel share, and the mIoU over classes with share >= min_share."""
    return scores.iou(conf), scores.pixel_share(conf), scores.mean_iou(conf, min_share)


@torch.no_grad()
def evaluate(model, scenes, batch: int = 4) -> np.ndarray:
    model.eval()
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        x = normalise(torch.from_numpy(np.stack([s.image for s in chunk])))
        pred = model(x.contiguous(memory_format=torch.channels_last)).argmax(1).numpy()
        for p, s in zip(pred, chunk):
            conf += confusion(p.ravel(), s.labels.ravel())
    return conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=55.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, nargs=2, default=[224, 352])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--freeze", type=int, default=4, help="freeze backbone blocks 0..freeze-1 (stride <= 4)")
    ap.add_argument("--val", type=int, default=48, help="held-out scenes checked during training")
    ap.add_argument("--init", default=None, help="continue from a state dict instead of ImageNet")
    ap.add_argument("--data", default=str(ROOT / "data" / "drivescene"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "weights" / "drivescene-seg.pth"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    images, labels = generate_dataset(Path(args.data), args.scenes)
    val_scenes = [generate_scene(HELD_OUT_SEED + i, (H, W)) for i in range(args.val)]

    # Mild class weights from pixel frequencies: (median / freq) ** 0.3, within [0.5, 3].
    counts = np.zeros(256, np.int64)
    for i in range(0, len(labels), max(1, len(labels) // 200)):
        counts += np.bincount(np.asarray(labels[i]).ravel(), minlength=256)
    freq = counts[:NUM_CLASSES] / counts[:NUM_CLASSES].sum()
    present = freq > 0
    weight = np.ones(NUM_CLASSES)
    weight[present] = np.clip((np.median(freq[present]) / freq[present]) ** 0.3, 0.5, 3.0)
    print("class weights", np.round(weight, 2).tolist(), flush=True)
    weight_t = torch.tensor(weight, dtype=torch.float32)

    model = drivescene_seg()
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    else:
        load_imagenet_backbone(model, ROOT / "assets" / "weights" / "mobilenet_v2-b0353104.pth")
    frozen = list(model.features[: args.freeze].parameters())
    for p in frozen:
        p.requires_grad = False
    model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    head = set(id(p) for p in model.head.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in head], "lr": args.lr * 0.5},
                             {"params": [p for p in params if id(p) in head], "lr": args.lr}],
                            weight_decay=1e-4)
    base_lrs = [g["lr"] for g in opt.param_groups]

    budget = args.minutes * 60
    start = time.time()
    last_eval = start
    step, losses = 0, []
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        frac = elapsed / budget
        warm = min(1.0, (step + 1) / 100)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        model.train()
        for m in model.features[: args.freeze].modules():  # frozen blocks keep ImageNet BN stats
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        idx = np.sort(rng.choice(len(images), args.batch, replace=False))
        x, y = augment(images[idx], labels[idx], tuple(args.crop), rng)
        x = ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last)
        out = model(x)
        loss = F.cross_entropy(out, y, weight=weight_t, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} t={elapsed / 60:.1f}min lr={opt.param_groups[1]['lr']:.2e} "
                  f"loss={np.mean(losses[-50:]):.4f} ({elapsed / step:.2f} s/step)", flush=True)
        if time.time() - last_eval > 8 * 60:
            last_eval = time.time()
            _, _, miou = iou_report(evaluate(model, val_scenes))
            print(f"  val mIoU(>=1%) on {len(val_scenes)} held-out scenes: {miou:.4f}", flush=True)
            save(model, args.out + ".ckpt")

    iou, share, miou = iou_report(evaluate(model, val_scenes))
    print(f"done: {step} steps in {(time.time() - start) / 60:.1f} min; val mIoU(>=1%) {miou:.4f}", flush=True)
    print("per-class IoU", np.round(iou, 3).tolist(), flush=True)
    save(model, args.out)


def save(model, path: str) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


if __name__ == "__main__":
    main()
