"""The an8Flower-style objective evaluation of relevant-filters beside other methods.

    nice -n 10 python scripts/eval_interpret.py [--steps 25] [--an8 40] [--scenes 12]
        [--methods relevant-filters,grad-cam,guided-backprop,fem,eigen-cam] [--out docs/evaluation-interpret.md]

1. `roofsign-an8` on `an8-eval` (held-out an8 cars; the class is the roof-sign colour;
   evidence = the exact sign mask): localisation IoU (best and mean over thresholds),
   pointing game, energy pointing game, deletion / insertion AUC.
2. `drivescene-seg` on `drivescene-eval` (evidence = the target object's instance mask).
Prints Markdown and writes it to --out. `lrp` joins the methods when it is registered.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope import Explainer  # noqa: E402
from neuroscope.evaluation.reports import markdown  # noqa: E402
from neuroscope.evaluation.runs import evaluate  # noqa: E402
from neuroscope.evaluation.sets import an8_items, drivescene_items  # noqa: E402
from neuroscope.methods.registry import list_methods  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--an8", type=int, default=40)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--methods", default="relevant-filters,grad-cam,guided-backprop,fem,eigen-cam")
    ap.add_argument("--only", choices=["an8", "scenes"], help="run one of the two evaluations")
    ap.add_argument("--out", default=str(ROOT / "docs" / "evaluation-interpret.md"))
    args = ap.parse_args()
    methods = args.methods.split(",")
    if "lrp" in {m.name for m in list_methods()} and "lrp" not in methods:
        methods.append("lrp")
    parts = []
    runs = [("roofsign-an8", "an8-eval", lambda: an8_items(args.an8)),
            ("drivescene-seg", "drivescene-eval", lambda: drivescene_items(args.scenes))]
    runs = [r for r in runs if args.only is None or (args.only == "an8") == (r[1] == "an8-eval")]
    for model, set_name, build in runs:
        t0 = time.time()
        ex = Explainer(model)
        items = build()
        report = evaluate(ex, items, methods, steps=args.steps, with_random=True, strict=False)
        errors = {n: r.errors for n, r in report.methods.items() if r.errors}
        head = (f"### `{model}` on `{set_name}` ({len(items)} items, {args.steps} deletion/insertion steps, "
                f"{time.time() - t0:.0f} s)\n")
        parts.append(head + "\n" + markdown(report) + ("\n\nErrors: " + str(errors) if errors else ""))
        print(parts[-1], flush=True)
    Path(args.out).write_text("# relevant-filters: objective evaluation (an8 protocol)\n\n"
                              "`python scripts/eval_interpret.py` (see its docstring).\n\n" + "\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
