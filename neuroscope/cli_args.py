"""What the CLI's commands share and their modules import without importing `cli` itself:
the usage error and the model / target arguments."""
from __future__ import annotations


class CliError(Exception):
    """A usage error: one line on stderr, exit 2."""


def explainer_from_args(args):
    from .engine import Explainer
    return Explainer(args.model, input_size=getattr(args, "input_size", None))


def target_from_args(args, task: str):
    from .targets import Target, parse_region
    region = getattr(args, "region", None)
    if task == "classification" and region is not None:
        raise CliError("--region applies to segmentation models only")
    for flag, value in (("--class", getattr(args, "class_id", None)), ("--contrast", getattr(args, "contrast", None))):
        if value is not None and not str(value).strip():
            raise CliError(f"{flag} is empty; give a class id or an exact class name")
    return Target(class_id=getattr(args, "class_id", None),
                  region=parse_region(region) if region is not None else None,
                  within_class=getattr(args, "within_class", False), contrast=getattr(args, "contrast", None),
                  task=task)


def method_list(text: str | None) -> list[str]:
    """--methods a,b -> names, each known, none twice, at least one."""
    from .methods.registry import get_method
    methods = [m.strip() for m in (text or "").split(",") if m.strip()]
    if not methods:
        raise CliError("--methods needs at least one method name, e.g. --methods grad-cam,saliency")
    if len(set(methods)) != len(methods):
        raise CliError("--methods names a method twice")
    for name in methods:
        get_method(name)
    return methods
