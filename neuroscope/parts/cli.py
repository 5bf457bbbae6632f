"""`neuroscope parts MODEL IMAGE --region R [--class C] [--json]` (CONTRACT.md §8)."""
from __future__ import annotations


def run_cli(args) -> tuple[dict, str]:
    from ..cli_args import CliError, explainer_from_args, target_from_args
    from ..evaluation.reports import text_table
    from ..images import load_image
    from .contributions import part_contributions
    if not args.region:
        raise CliError("parts needs --region X,Y (a pixel of the object) or X0,Y0,X1,Y1")
    ex = explainer_from_args(args)
    if ex.task != "segmentation":
        raise CliError(f"parts applies to segmentation models; {ex.spec.name} is a classifier")
    res = part_contributions(ex, load_image(args.image), target_from_args(args, ex.task))
    data = res.as_json()
    rows = [{"part": p["name"], "pixels": p["pixels"], "share": f"{p['share']:+.3f}", "drop": f"{p['drop']:+.4f}"}
            for p in data["parts"]]
    rho = "n/a (one part)" if res.spearman is None else f"{res.spearman:+.2f}"
    head = (f"{res.class_name}, {res.pixels} px, score {res.score:.3f}; shares from {res.method}, "
            f"drop = score lost when the part is set to the mean colour; Spearman(share, drop) = {rho}")
    return data, head + "\n" + text_table(rows, ["part", "pixels", "share", "drop"])
