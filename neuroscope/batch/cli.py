"""`neuroscope batch` (CONTRACT.md §8): arguments and the command."""
from __future__ import annotations

SAVE_CHOICES = ("maps", "overlays", "maps,overlays", "none")


def add_engine_arguments(c) -> None:
    c.add_argument("--engine", choices=("local", "ray"), default="local")
    c.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    c.add_argument("--workers", type=int, default=1, help="Ray workers (one Explainer each)")


def add_arguments(c) -> None:
    c.add_argument("input", help="folder (recursive), glob, text file of paths, or video")
    c.add_argument("--methods", required=True)
    c.add_argument("--out", required=True, help="output folder (a rerun continues where it stopped)")
    c.add_argument("--targets", help="CSV or JSONL: path, class, region, contrast per image")
    c.add_argument("--metrics", action="store_true", help="deletion / insertion AUC per map")
    c.add_argument("--save", choices=SAVE_CHOICES, default="maps")
    c.add_argument("--every", type=int, default=1, help="video: every K-th frame")
    c.add_argument("--layer")
    add_engine_arguments(c)


def check_engine(args) -> None:
    from ..cli_args import CliError
    if args.workers < 1 or args.workers > 1024:
        raise CliError(f"--workers must be 1..1024, got {args.workers}")
    if args.address and args.engine != "ray":
        raise CliError("--address applies to --engine ray")


def run_cli(args) -> tuple[dict, str]:
    from ..cli_args import CliError, method_list
    from .inputs import attach_targets, collect, read_targets
    from .run import run_batch
    from .work import Settings
    methods = method_list(args.methods)
    check_engine(args)
    records = collect(args.input, args.out, args.every)
    if args.targets:
        unmatched = attach_targets(records, read_targets(args.targets))
        if unmatched:
            raise CliError(f"--targets names {len(unmatched)} image(s) not in INPUT, e.g. {unmatched[0]}")
    save = () if args.save == "none" else tuple(args.save.split(","))
    settings = Settings(model=args.model, methods=methods, out=args.out, input_size=args.input_size, save=save,
                        metrics=args.metrics, layer=args.layer)
    ex = _check_model(settings, args.engine)
    summary = run_batch(settings, records, engine=args.engine, workers=args.workers, address=args.address,
                        explainer=ex if args.engine == "local" else None)
    table = (f"{summary['images']} images x {len(methods)} methods: {summary['done']} done, "
             f"{summary['failed']} failed, {summary['skipped']} skipped (already done) in {summary['time_s']:.1f} s\n"
             f"wrote {args.out}/results.parquet and run.json")
    return summary, table


def _check_model(settings, engine: str = "local"):
    """The model loads and every method fits it, before any image is read. With Ray, a
    bundled model is checked against its spec and loaded by the workers only (None is
    returned): the driver's `import torch` and load would take ~2 s of CPU from a Ray
    that is starting up on the same cores."""
    from ..evaluation import check_fits
    from ..methods.registry import get_method
    from ..zoo import bundled_specs, read_spec, sized
    bundled = bundled_specs()
    if engine == "ray" and settings.layer is None and settings.model in bundled:
        spec = sized(read_spec(bundled[settings.model]), settings.input_size)
        for m in settings.methods:
            check_fits(get_method(m)[0], spec.task, spec.framework, spec.name)
        return None
    ex = settings.explainer()
    for m in settings.methods:
        check_fits(get_method(m)[0], ex.task, ex.backend.framework, ex.spec.name)
    if settings.layer is not None:
        ex.check_layer(settings.layer, get_method("grad-cam")[0])
    return ex
