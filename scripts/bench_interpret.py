"""relevant-filters against a bare forward + backward, per bundled model (interleaved runs,
medians; the ratio is the median of the per-pair ratios, robust to load drifting between
pairs), printed as a Markdown table.

    nice -n 10 python scripts/bench_interpret.py [--repeats 5] [--models a,b]

relevant-filters is timed as a full uncached `Explainer.explain` (prediction and target
from the method's own forward, one backward per filter, resize), with the
bundled interpretation already loaded; the reference is `backend.input_gradients` of the
same image and target (one forward + one backward).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope import Explainer, Target  # noqa: E402

CASES = {"drivescene-seg": ("scene-1000002.png", "car"), "drivescene-seg-keras": ("scene-1000002.png", "car"),
         "mobilenet_v2-imagenet": ("cat.jpg", None), "mobilenet_v2-imagenet-keras": ("cat.jpg", None),
         "roofsign-an8": (None, None), "roofsign-an8-keras": (None, None)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(CASES))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        image, cls = CASES[name]
        ex = Explainer(name)
        if image is None:
            from neuroscope.synth.an8 import CLASSES, TEST_SEED0, an8_sample
            s = an8_sample(TEST_SEED0)
            img, target = s.image, Target.classification(CLASSES[s.label])
        else:
            from neuroscope.images import load_image
            img = load_image(ROOT / "assets" / "images" / image)
            target = Target.segmentation(cls, "predicted") if ex.task == "segmentation" else None
        prep, rt = ex.prepare(img), ex.resolve(img, target)
        ex.explain(img, "relevant-filters", target=target)          # warm-up (traces, interpretation)
        ex.backend.input_gradients(prep.x, rt.objective)
        rf, fb = [], []
        for _ in range(args.repeats):
            ex.clear_caches()
            t0 = time.perf_counter()
            ex.explain(img, "relevant-filters", target=target)
            t1 = time.perf_counter()
            ex.backend.input_gradients(prep.x, rt.objective)
            t2 = time.perf_counter()
            rf.append((t1 - t0) * 1e3)
            fb.append((t2 - t1) * 1e3)
        a, b = statistics.median(rf), statistics.median(fb)
        ratio = statistics.median(x / y for x, y in zip(rf, fb))
        rows.append((name, f"{prep.x.shape[1]}x{prep.x.shape[2]}", f"{b:.1f}", f"{a:.1f}", f"{ratio:.2f}"))
    print("| model | input | fwd+bwd ms | relevant-filters ms | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
