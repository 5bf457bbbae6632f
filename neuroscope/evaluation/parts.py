"""`neuroscope evaluate MODEL --parts`: Harada's validity check of part contributions over
generated objects (METHODS.md §8).

For held-out generated scenes (seeds from 1,000,000, drawn at the model's input size) every
vehicle, person, traffic sign and traffic light the model predicts is clicked at its
predicted pixel nearest the object's centroid; `part_contributions` gives the parts module's
parts of that object, their shares and measured drops. Objects with fewer than three parts
are left out (a rank correlation over two values is only ±1). Reported: the mean Spearman
between drops and the shares of the relevance method, of Grad-CAM (default layer) and of a
random ordering (a seeded permutation of the shares), with its standard error; when LRP is
the relevance method, gradient x input's shares are reported beside it.
"""
from __future__ import annotations

import numpy as np

from ..errors import BadTarget
from ..metrics import spearman
from ..synth import generate_scene
from ..synth.classes import CLASS_NAMES
from ..synth.parts import object_masks
from ..targets import Target

FIRST_SEED = 1_000_000
MAX_OBJECTS = 2000


def _click(mask: np.ndarray, predicted: np.ndarray) -> tuple[int, int] | None:
    """The predicted pixel of the object nearest its centroid, as (x, y)."""
    ys, xs = np.nonzero(mask & predicted)
    if not len(ys):
        return None
    cy, cx = np.nonzero(mask)
    i = int(np.argmin((ys - cy.mean()) ** 2 + (xs - cx.mean()) ** 2))
    return int(xs[i]), int(ys[i])


def evaluate_parts(explainer, n_objects: int = 100, first_seed: int = FIRST_SEED, min_parts: int = 3,
                   min_pixels: int = 80, source: str = "module", seed: int = 0, progress=None) -> dict:
    """Mean Spearman(share, drop) over `n_objects` generated objects; `source` = "module"
    (the parts module's predicted parts) or "truth" (the generator's part map)."""
    from ..parts.contributions import PREFERRED, map_shares, part_contributions, relevance_method
    from ..parts.module import parts_module_for
    if explainer.task != "segmentation":
        raise BadTarget("the parts evaluation applies to segmentation models")
    if source not in ("module", "truth"):
        raise BadTarget(f"part source must be module or truth, got {source!r}")
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise BadTarget(f"--objects must be between 1 and {MAX_OBJECTS}, got {n_objects}")
    module = parts_module_for(explainer) if source == "module" else None
    method = relevance_method(explainer)
    others = list(PREFERRED[PREFERRED.index(method) + 1:]) + ["grad-cam"]
    rng = np.random.default_rng(seed)
    size = tuple(explainer.spec.input_size)
    rows = []
    scene_seed = first_seed
    while len(rows) < n_objects and scene_seed < first_seed + 50 * n_objects:
        scene = generate_scene(scene_seed, size)
        scene_seed += 1
        prep = explainer.prepare(scene.image)
        label_map = explainer.predict(prep).label_map
        part_map = module.labels(prep.x) if module is not None else scene.parts
        for cls, mask in object_masks(scene.labels, scene.instances, scene.parts, scene.objects):
            if len(rows) >= n_objects:
                break
            if mask.sum() < min_pixels:
                continue
            xy = _click(mask & (scene.labels == cls), label_map == cls)
            if xy is None:
                continue
            target = Target.segmentation(class_id=cls, region=xy)
            try:
                res = part_contributions(explainer, prep, target, part_map=part_map, method=method)
            except BadTarget:
                continue
            if len(res.part_ids) < min_parts:
                continue
            row = {"seed": scene_seed - 1, "class_name": CLASS_NAMES[cls], "parts": len(res.part_ids),
                   method: res.spearman}
            for other in others:
                e = explainer.explain(prep, other, target=target)
                shares = map_shares(e.map_model if e.map_model is not None else e.map, res.masks_model)
                row[other] = spearman(shares, res.drops)
            row["random"] = spearman(rng.permutation(res.shares), res.drops)
            rows.append(row)
            if progress is not None and progress(len(rows) / n_objects, "parts") is False:
                break
        explainer.clear_caches()
    names = [method] + others + ["random"]
    summary = {}
    for n in names:
        v = np.array([r[n] for r in rows], np.float64)
        summary[n] = {"mean": float(v.mean()) if len(v) else None,
                      "sem": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None}
    classes = sorted({r["class_name"] for r in rows})
    return {"objects": len(rows), "scenes": scene_seed - first_seed, "method": method, "source": source,
            "spearman": summary,
            "per_class": {c: {"objects": sum(r["class_name"] == c for r in rows),
                              **{n: float(np.mean([r[n] for r in rows if r["class_name"] == c])) for n in names}}
                          for c in classes}}


def markdown_report(result: dict) -> str:
    from .reports import markdown_table
    rows = []
    for name, s in result["spearman"].items():
        label = {"random": "random ordering", "grad-cam": "Grad-CAM shares"}.get(name, f"{name} shares")
        rows.append({"contributions": label,
                     "mean Spearman(share, drop)": "—" if s["mean"] is None else f"{s['mean']:+.3f}",
                     "± s.e.": "—" if s["sem"] is None else f"{s['sem']:.3f}"})
    return markdown_table(rows, ["contributions", "mean Spearman(share, drop)", "± s.e."])


def run_cli(args) -> tuple[dict, str]:
    from ..cli_args import CliError, explainer_from_args
    if (args.image is not None or args.eval_set is not None or args.methods or args.class_id or args.region
            or getattr(args, "dataset", None)):
        raise CliError("evaluate --parts takes only MODEL (and --objects N): it generates its own objects")
    ex = explainer_from_args(args)
    result = evaluate_parts(ex, n_objects=args.objects)
    title = (f"{ex.spec.name}: validity of part contributions over {result['objects']} generated objects "
             f"({result['scenes']} scenes, parts from the parts module, drop = score lost when the part is set to the mean colour)")
    return result, title + "\n\n" + markdown_report(result)
