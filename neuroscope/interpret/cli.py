"""`neuroscope interpret` (CONTRACT.md §8): arguments and the command."""
from __future__ import annotations

import sys
import time


def add_arguments(c) -> None:
    c.add_argument("--set", dest="interp_set", help="drivescene-train | imagenet-samples | an8-train")
    c.add_argument("--images", help="folder of images (instead of --set)")
    c.add_argument("--labels", help="folder of label maps <stem>_labels.png (segmentation) or labels.json (classification)")
    c.add_argument("--out", required=True, help="output folder (a rerun continues an unfinished run)")
    c.add_argument("--layers", help="comma-separated layer names (default: last activation of the two coarsest strides)")
    c.add_argument("--mu", type=float, default=None, help="L1 budget of each class's weights (default 0.2)")
    c.add_argument("--count", type=int, help="use the first N images of the set")
    c.add_argument("--relevance-images", type=int, default=None,
                   help="LRP relevance per class (atlas, class averages) over the first N images (default 32; 0: skip)")


def run_cli(args, explainer):
    from .core import DEFAULT_MU, interpret
    last = [0.0]

    def progress(fraction: float, message: str):
        now = time.monotonic()
        if now - last[0] > 1.0 or fraction >= 1.0:
            last[0] = now
            print(f"\rinterpret: {message}   ", end="", file=sys.stderr, flush=True)
        return None

    try:
        it = interpret(explainer, set_name=args.interp_set, images=args.images, labels=args.labels, out=args.out,
                       layers=[l.strip() for l in args.layers.split(",") if l.strip()] if args.layers else None,
                       mu=DEFAULT_MU if args.mu is None else args.mu, count=args.count, progress=progress,
                       relevance_images=args.relevance_images)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        raise KeyboardInterrupt("interrupted; rerun the same command to continue") from None
    print("", file=sys.stderr)
    data = it.summary()
    rows = []
    for name, c in it.classes.items():
        top = ", ".join(f"{f['layer']}:{f['channel']} ({f['weight']:.3g})" for f in c["filters"][:3])
        rows.append({"class": name, "samples": c["samples"], "filters": len(c["filters"]), "top": top})
    head = (f"{it.model}: {it.images} images, {it.extra.get('samples')} samples, layers {', '.join(data['layers'])}, "
            f"mu {it.mu}, {it.time_s:.1f} s -> {args.out}")
    return data, head, rows
