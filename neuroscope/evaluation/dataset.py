"""`neuroscope evaluate MODEL --dataset DIR [--labels DIR] [--engine local|ray]`: the
faithfulness metrics of each method over a folder of images, run through the batch
machinery (`neuroscope.batch`: same inputs, per-image failures, local or Ray), and with
ground-truth labels the model's own segmentation quality: the confusion matrix and the
per-class IoU over all labelled pixels. The confusion counts come from the prediction of
each image's explanation pass (`Settings.labels`: the workers count them and send them
back with the rows), so the model runs once per image, on either engine.

Labels (DATA.md §6: uint8 PNG of trainIds, 255 = ignore) are found for image
``a/b.png`` as ``LABELS/a/b_labels.png`` or ``LABELS/a/b.png``; LABELS may be DIR itself
(the layout `neuroscope synth` writes). Images without a label file are left out of the
IoU and counted in ``labels_missing``. Without pointing-game evidence in a plain folder,
the metrics are deletion and insertion AUC (and time); the JSON is `evaluate`'s plus
``images``, ``failed`` and, with labels, ``model_iou`` ({class name: IoU or null},
``mean``) and ``confusion`` (counts [truth][predicted]).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..cli_args import CliError
from .reports import fmt_value, iou, markdown_table, mean_iou


def find_labels(image_id: str, image_path: str, labels_dir: Path) -> Path | None:
    """LABELS/<id stem>_labels.png, else LABELS/<id stem>.png unless that is the image itself."""
    rel = Path(image_id)
    for cand in (labels_dir / rel.parent / f"{rel.stem}_labels.png", labels_dir / rel.parent / f"{rel.stem}.png"):
        if cand.is_file() and cand.resolve() != Path(image_path).resolve():
            return cand
    return None


def label_confusion(rows: list[dict], n: int) -> tuple[np.ndarray, int, list[str]]:
    """Summed confusion matrix, images counted, and per-image problems, from the batch rows'
    LABEL_COLUMNS (`Settings.labels`: counted by the workers from the explanation pass's
    own prediction, so the model runs once per image)."""
    import json
    total = np.zeros((n, n), np.int64)
    used, problems = 0, []
    for row in rows:
        if row.get("label_confusion") is not None:
            for t, p, count in json.loads(row["label_confusion"]):
                total[t, p] += count
            used += 1
        elif row.get("label_problem") is not None:
            problems.append(f"{row['image']}: {row['label_problem']}")
    return total, used, problems


def run_dataset_cli(args, methods: list[str]) -> tuple[dict, str]:
    from ..batch.cli import check_engine
    from ..batch.inputs import collect
    from ..batch.run import run_batch
    from ..batch.store import read_results
    from ..batch.work import DONE, Settings
    from ..cli_args import explainer_from_args
    if args.class_id is not None or args.region is not None or args.sanity:
        raise CliError("--class, --region and --sanity apply to a single IMAGE, not to --dataset")
    check_engine(args)
    labels_dir = Path(args.labels) if args.labels else None
    if labels_dir is not None and not labels_dir.is_dir():
        raise CliError(f"--labels folder not found: {args.labels}")
    ex = explainer_from_args(args)
    if labels_dir is not None and ex.task != "segmentation":
        raise CliError(f"--labels needs a segmentation model; {ex.spec.name} is {ex.task}")
    with tempfile.TemporaryDirectory(prefix="neuroscope-eval-") as tmp:
        records = collect(args.dataset, tmp)
        settings = Settings(model=args.model, methods=methods, out=tmp, input_size=args.input_size, save=(),
                            metrics=True, labels=str(labels_dir) if labels_dir is not None else None)
        rows_seen: list[dict] = []      # label_confusion() reads the label columns of these
        run_batch(settings, records, engine=args.engine, workers=args.workers, address=args.address,
                  explainer=ex if args.engine == "local" else None, progress=None, on_rows=rows_seen.extend)
        df = read_results(tmp)
    data: dict = {"methods": {}, "images": len(records), "failed": {}}
    rows = []
    for m in methods:
        d = df[(df.method == m) & (df.status == DONE)]
        stats = {k: float(d[k].mean()) for k in ("deletion_auc", "insertion_auc", "time_ms") if d[k].notna().any()}
        data["methods"][m] = stats
        data["failed"][m] = int(((df.method == m) & (df.status != DONE)).sum())
        rows.append({"method": m, **stats, "failed": data["failed"][m]})
    title = (f"{ex.spec.name} on {args.dataset} ({len(records)} images): deletion AUC lower is better, "
             f"insertion AUC higher is better")
    text = title + "\n\n" + markdown_table(rows, ["method", "deletion_auc", "insertion_auc", "time_ms", "failed"],
                                           fmt=fmt_value)
    if labels_dir is not None:
        matrix, used, problems = label_confusion(rows_seen, len(ex.classes))
        ious = iou(matrix)
        data["model_iou"] = {name: (None if np.isnan(v) else float(v)) for name, v in zip(ex.classes, ious)}
        data["model_iou"]["mean"] = None if not used else mean_iou(matrix)
        data["confusion"] = matrix.tolist()
        data["labels_used"] = used
        data["labels_missing"] = len(records) - used
        present = [{"class": n, "iou": v} for n, v in zip(ex.classes, ious) if not np.isnan(v)]
        text += (f"\n\nModel IoU over {used} labelled images (mean {fmt_value(data['model_iou']['mean'])}):\n\n"
                 + markdown_table(present, ["class", "iou"], fmt=fmt_value))
        if problems:
            text += f"\n\n{len(problems)} image(s) without usable labels, e.g. {problems[0]}"
    return data, text
