"""`neuroscope evaluate` (CONTRACT.md §3 and §8): a single image, a fixed set (`--set`), or a
folder of images (`--dataset`, see `neuroscope.evaluation.dataset`)."""
from __future__ import annotations

from pathlib import Path

from ..cli_args import CliError, explainer_from_args, method_list, target_from_args
from .reports import markdown
from .runs import evaluate
from .sets import EvalItem, get_eval_set


def run_cli(args) -> tuple[dict, str]:
    """Returns (JSON document, Markdown table)."""
    methods = method_list(args.methods)
    sources = [s for s in (args.image, args.eval_set, getattr(args, "dataset", None)) if s is not None]
    if len(sources) != 1:
        raise CliError("evaluate needs either IMAGE or --set NAME (not both)" if getattr(args, "dataset", None) is None
                       else "evaluate needs exactly one of IMAGE, --set NAME and --dataset DIR")
    if getattr(args, "dataset", None) is not None:
        from .dataset import run_dataset_cli
        return run_dataset_cli(args, methods)
    if args.eval_set is not None:
        eval_set = get_eval_set(args.eval_set)
        if args.class_id is not None or args.region is not None:
            raise CliError("--class and --region apply to a single IMAGE; an evaluation set fixes its own targets")
        ex = explainer_from_args(args)
        if ex.task != eval_set.task:
            raise CliError(f"set {eval_set.name} is for {eval_set.task} models; {ex.spec.name} is {ex.task}")
        items = eval_set.build()
    else:
        ex = explainer_from_args(args)
        from ..images import load_image
        items = [EvalItem(Path(args.image).name, load_image(args.image), target_from_args(args, ex.task))]
    report = evaluate(ex, items, methods, sanity=bool(args.sanity))
    what = f"set {args.eval_set} ({len(items)} items)" if args.eval_set else args.image
    title = f"{ex.spec.name} on {what}: deletion AUC lower is better, insertion AUC higher is better"
    return report.as_json(), title + "\n\n" + markdown(report, with_random=False, flag_pointing=False)
