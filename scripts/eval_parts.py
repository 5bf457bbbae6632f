"""Evaluate the parts module, port it to Keras, check parity and write its model card.

    nice -n 10 python scripts/eval_parts.py [--scenes 200] [--threads 2] [--validity 100]
                                            [--card assets/models/drivescene-parts.md]

1. Part mIoU of `assets/weights/drivescene-parts.pth` on `--scenes` held-out generated scenes
   (seeds 1,000,000.., 256x512; training used seeds 0..N-1): IoU per part pooled over the
   scenes, the mean over the 14 parts.
2. Keras port: `neuroscope.archs.drivescene_parts_keras` filled by name
   (`neuroscope.convert.copy_torch_weights`), saved to assets/weights/drivescene-parts.keras,
   reloaded with safe_mode=True; max |logit difference| and argmax agreement with torch on
   held-out scenes and the bundled dash-cam photos (same preprocessed input).
3. With `--validity N`: `neuroscope evaluate drivescene-seg --parts --objects N` (torch).
4. Writes the model card (and docs/parts-validity.json with the numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402

from neuroscope.archs.drivescene_parts import drivescene_parts  # noqa: E402
from neuroscope.images import load_image, normalize, resize_rgb  # noqa: E402
from neuroscope.synth import generate_scene  # noqa: E402
from neuroscope.synth.classes import CAR, PERSON, TRAFFIC_LIGHT, TRAFFIC_SIGN  # noqa: E402
from neuroscope.synth.parts import CLASS_PARTS, NUM_PARTS, PART_NAMES  # noqa: E402

H, W = 256, 512
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HELD_OUT = 1_000_000
WEIGHTS = ROOT / "assets" / "weights"
#: Part ids per object kind (the card's group means; trucks and buses have the car's parts).
GROUPS = {"vehicle": CLASS_PARTS[CAR], "person": CLASS_PARTS[PERSON], "traffic sign": CLASS_PARTS[TRAFFIC_SIGN],
          "traffic light": CLASS_PARTS[TRAFFIC_LIGHT]}


def prep(rgb: np.ndarray) -> np.ndarray:
    return normalize(resize_rgb(rgb, (H, W)), (0, 1), MEAN, STD)[None].astype(np.float32)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--validity", type=int, default=0, help="objects for the validity check (0: skip)")
    ap.add_argument("--train-note", default="", help="training run line for the card")
    ap.add_argument("--card", default=str(ROOT / "assets" / "models" / "drivescene-parts.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = drivescene_parts(WEIGHTS / "drivescene-seg.pth", WEIGHTS / "drivescene-parts.pth")
    n_dec = sum(p.numel() for p in model.decoder.parameters())

    conf = np.zeros((NUM_PARTS, NUM_PARTS), np.int64)
    xs = []
    for i in range(args.scenes):
        s = generate_scene(HELD_OUT + i, (H, W))
        x = prep(s.image)
        if i < 4:
            xs.append(x)
        pred = torch_logits(model, x)[0].argmax(0)
        conf += np.bincount(s.parts.ravel().astype(np.int64) * NUM_PARTS + pred.ravel(),
                            minlength=NUM_PARTS ** 2).reshape(NUM_PARTS, NUM_PARTS)
    tp = np.diag(conf).astype(np.float64)
    iou = tp / np.maximum(conf.sum(0) + conf.sum(1) - tp, 1)
    present = conf.sum(1) > 0
    miou = float(iou[1:][present[1:]].mean())
    share = conf.sum(1) / conf.sum()
    groups = {name: float(np.mean([iou[k] for k in ids if present[k]] or [np.nan])) for name, ids in GROUPS.items()}
    t_eval = time.time() - t0
    print(f"part mIoU over {int(present[1:].sum())} parts on {args.scenes} held-out scenes: {miou:.3f} "
          f"({t_eval:.0f} s)", flush=True)

    import keras
    from neuroscope.archs.drivescene_parts_keras import keras_drivescene_parts
    from neuroscope.convert import copy_torch_weights
    km = keras_drivescene_parts(NUM_PARTS)
    copy_torch_weights(model, km, strict=True)
    out = WEIGHTS / "drivescene-parts.keras"
    km.save(out)
    km = keras.saving.load_model(out, safe_mode=True, compile=False)
    photos = sorted((ROOT / "assets" / "images").glob("dashcam-*.jpg"))
    xs += [prep(load_image(p)) for p in photos]
    diff, agree, total = 0.0, 0, 0
    for x in xs:
        t = torch_logits(model, x)
        k = np.asarray(km(x, training=False)).transpose(0, 3, 1, 2)
        diff = max(diff, float(np.abs(t - k).max()))
        agree += int((t.argmax(1) == k.argmax(1)).sum())
        total += t.shape[2] * t.shape[3]
    print(f"keras: max |logit diff| {diff:.2e}, argmax agreement {agree / total:.4%} on {len(xs)} inputs", flush=True)

    validity = None
    if args.validity:
        from neuroscope.engine import Explainer
        from neuroscope.evaluation.parts import evaluate_parts, markdown_report
        tv = time.time()
        validity = evaluate_parts(Explainer("drivescene-seg"), n_objects=args.validity)
        validity["time_s"] = round(time.time() - tv, 1)
        print(markdown_report(validity), flush=True)

    rows = "\n".join(f"| {k} | {PART_NAMES[k]} | {iou[k]:.3f} | {share[k]:.3%} |" for k in range(1, NUM_PARTS))
    card = f"""# drivescene-parts — model card

The parts detection module of Neuroscope's Parts view (Harada et al. 2020; METHODS.md §8):
part masks for the objects drivescene-seg segments, on its frozen backbone. Used by
`neuroscope parts`, `neuroscope evaluate --parts` and the app's Parts view; loaded through
`neuroscope.parts.parts_module_for` (`drivescene-seg` -> torch, `drivescene-seg-keras` -> Keras).

## Model

- `neuroscope.archs.drivescene_parts`: drivescene-seg's MobileNetV2 blocks `features.0`–`features.13`
  (frozen, its weights `../weights/drivescene-seg.pth`) and a decoder with stepwise x2
  nearest upsampling, 3x3 convolutions and skip connections from strides 8, 4 and 2 and
  from the input itself at full resolution (the preprocessed RGB: sharp edges for thin
  and small parts), then a 1x1 classifier (`decoder.*`, {n_dec:,} parameters, weights
  `../weights/drivescene-parts.pth`, decoder only). Output: logits of
  {NUM_PARTS} part classes (0 = no part) at the input resolution; input sides multiples of 16.
- Keras port `../weights/drivescene-parts.keras` (whole module, built-in layers only, torch
  layer names): max |logit difference| **{diff:.1e}**, argmax agreement **{agree / total:.3%}**
  on {len(xs)} inputs (4 held-out scenes, {len(photos)} dash-cam photos).

## Training

`scripts/train_parts.py`: generated scenes with the generator's part maps (seeds 0..N-1,
256x512); the frozen backbone runs once per whole scene (no gradients) and its taps are
cached, so training steps cost only the decoder and crops keep whole-scene context. Crops
at full resolution, most centred on a pixel of a part class drawn uniformly over the 14
parts (class-balanced sampling); loss = cross-entropy weighted by (median frequency /
frequency)^0.5 + soft Dice over the parts present; AdamW, warm-up and cosine decay over
`--steps` or over the wall-time budget `--minutes` (data included), whichever ends first;
seeded (a run that ends on its steps is reproducible; one that ends on the clock, as this
one, is not bit for bit); decoder only. {args.train_note}

## Held-out evaluation ({args.scenes} generated scenes, seeds 1,000,000–{HELD_OUT + args.scenes - 1})

**Part mIoU: {miou:.3f}** (mean of the IoUs of the {int(present[1:].sum())} parts, 'none' not counted; each IoU
pooled over the scenes; goal ≥ 0.6). Means by object kind: {", ".join(f"{k} {v:.3f}" for k, v in groups.items())}.

| id | part | IoU | pixel share |
|---:|---|---:|---:|
{rows}

Small parts (plates, lamps, wheels of distant cars) are a few pixels wide at 256x512, which
caps their IoU; the decoder's last step is at full resolution so edges stay sharp.
{"" if validity is None else chr(10) + "## Validity of part contributions" + chr(10) + chr(10) + markdown_report(validity) + chr(10) + chr(10) + f"Over {validity['objects']} generated objects ({validity['scenes']} scenes), shares from {validity['method']}; `neuroscope evaluate drivescene-seg --parts --objects {args.validity}` ({validity['time_s']:.0f} s)." + chr(10)}
## Limitations

Trained on synthetic scenes only: on real photos the parts are plausible for large, clear
objects (a car's windows, lights and wheels) and unreliable for small or unusual ones.

*Written by `scripts/eval_parts.py` (evaluation {t_eval:.0f} s on a shared 2-core CPU).*
"""
    Path(args.card).write_text(card)
    Path(ROOT / "docs" / "parts-validity.json").write_text(json.dumps(
        {"part_miou": miou, "group_miou": groups, "iou": {PART_NAMES[k]: float(iou[k]) for k in range(1, NUM_PARTS)},
         "keras_max_diff": diff, "keras_agreement": agree / total, "validity": validity}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
