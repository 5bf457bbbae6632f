"""Add (or redo) the LRP per-class relevance of an existing interpretation in place: the
per-class atlas, the mean relevance shares and the class averages
(`neuroscope.interpret.relevance`), without re-running the forward pass over the set.
This is how the bundled interpretations in assets/interpretations/ got theirs:

    python scripts/interpret_relevance.py MODEL [DIR] [--images N]   # default 32; the bundled: 100

DIR defaults to the model's bundled interpretation. `neuroscope interpret` does the same
pass at its end (--relevance-images).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neuroscope import Explainer  # noqa: E402
from neuroscope.interpret.core import source_items  # noqa: E402
from neuroscope.interpret.relevance import RELEVANCE_IMAGES, relevance_pass  # noqa: E402
from neuroscope.interpret.store import bundled_interpretation, load_interpretation  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--images", type=int, default=RELEVANCE_IMAGES)
    args = ap.parse_args()
    path = Path(args.dir) if args.dir else bundled_interpretation(args.model)
    if path is None:
        print(f"no bundled interpretation for {args.model}", file=sys.stderr)
        return 2
    ex = Explainer(args.model)
    it = load_interpretation(path)
    last = [0.0]

    def progress(fraction, message):
        if time.monotonic() - last[0] > 5 or fraction >= 1:
            last[0] = time.monotonic()
            print(f"{args.model}: {message}", file=sys.stderr, flush=True)

    relevance_pass(ex, it, source_items(it), args.images, progress)
    it.save(path)
    print(f"{args.model}: {it.relevance_source}; {len(it.average['pairs'])} class averages; "
          f"{it.extra['relevance']['time_s']} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
