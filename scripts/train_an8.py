"""Train the roofsign-an8 classifier on the an8 set and convert it to Keras.

    nice -n 10 python scripts/train_an8.py [--train 6000] [--minutes 15]

Seeded (torch and the generator), one thread (the machine is shared). Training seeds
0..N-1, held-out test seeds from an8.TEST_SEED0 (1000 images). Stops at --minutes or when
the held-out accuracy reaches --target after an epoch. Writes
assets/weights/roofsign-an8.pth and assets/weights/roofsign-an8.keras (the Keras twin, weights
copied by name, reloaded with safe_mode=True and its logits checked against torch) and
prints a JSON line with the accuracy, epochs and time (for the model card).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope.archs.an8 import An8Net, keras_an8_net  # noqa: E402
from neuroscope.synth.an8 import TEST_SEED0, an8_batch  # noqa: E402

MEAN, STD = 0.5, 0.25     # the spec's mean/std (value range [0, 1])


def to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD)
    return x.permute(0, 3, 1, 2).contiguous()


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    model.train()
    return float((pred == y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--target", type=float, default=0.985)
    ap.add_argument("--out", default=str(ROOT / "assets" / "weights" / "roofsign-an8"))
    args = ap.parse_args()
    os.nice(10)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.time()
    xi, yi, _ = an8_batch(range(args.train))
    xt, yt, _ = an8_batch(range(TEST_SEED0, TEST_SEED0 + args.test))
    x_train, y_train = to_input(xi), torch.from_numpy(yi)
    x_test, y_test = to_input(xt), torch.from_numpy(yt)
    print(f"data: {len(x_train)} train, {len(x_test)} test in {time.time() - t0:.0f} s", flush=True)
    model = An8Net(4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    epoch, acc = 0, 0.0
    while time.time() - t0 < args.minutes * 60:
        epoch += 1
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            xb = x_train[idx]
            if torch.rand(1, generator=g).item() < 0.5:      # the class does not depend on the direction
                xb = xb.flip(3)
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch}: loss {total / len(order):.4f}, held-out accuracy {acc:.4f}, "
              f"{time.time() - t0:.0f} s", flush=True)
        if acc >= args.target:
            break
        if epoch == 6:
            for group in opt.param_groups:
                group["lr"] = 1e-3
    model.eval()
    torch.save(model.state_dict(), args.out + ".pth")

    import keras
    from neuroscope.convert import copy_torch_weights
    kmodel = keras_an8_net(4)
    copy_torch_weights(model, kmodel)
    kmodel.save(args.out + ".keras")
    back = keras.saving.load_model(args.out + ".keras", safe_mode=True)
    with torch.inference_mode():
        zt = model(x_test[:64]).numpy()
    zk = np.asarray(back(x_test[:64].permute(0, 2, 3, 1).numpy()))
    diff = float(np.abs(zt - zk).max())
    print(json.dumps({"accuracy": round(acc, 4), "test_images": len(x_test), "train_images": len(x_train),
                      "epochs": epoch, "minutes": round((time.time() - t0) / 60, 1), "keras_max_logit_diff": diff}))
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
