"""`neuroscope synth --seed S --count N --out DIR [--size HxW]` (CONTRACT.md §8): scenes from the
same generator as training and tests, written as image, labels, instances and parts."""
from __future__ import annotations

from pathlib import Path

MAX_COUNT = 10_000
SIDE = (32, 4096)


def run_cli(args) -> tuple[dict, str]:
    from ..cli_args import CliError
    from .io import save_scene
    from .scene import generate_scene
    if not 1 <= args.count <= MAX_COUNT:
        raise CliError(f"--count must be between 1 and {MAX_COUNT}, got {args.count}")
    if args.seed < 0 or args.seed + args.count > 2**63:
        raise CliError(f"--seed must be a non-negative integer, got {args.seed}")
    h, w = args.size
    if not (SIDE[0] <= h <= SIDE[1] and SIDE[0] <= w <= SIDE[1]):
        raise CliError(f"--size {h}x{w} out of range ({SIDE[0]}..{SIDE[1]} per side)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {out}: {exc.strerror or exc}") from None
    images = []
    for seed in range(args.seed, args.seed + args.count):
        try:
            paths = save_scene(generate_scene(seed, (h, w)), out / f"scene-{seed}")
        except OSError as exc:
            raise CliError(f"cannot write into {out}: {exc.strerror or exc}") from None
        images.append(str(paths["image"]))
    table = (f"wrote {len(images)} scene(s) at {h}x{w} (seeds {args.seed}..{args.seed + args.count - 1}) to {out}: "
             "image, _labels.png, _instances.png/.json, _parts.png each")
    return {"images": images, "out": str(out)}, table
