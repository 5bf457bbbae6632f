"""Reports: the metric and sanity tables as Markdown, the CLI's plain-text table, and the
segmentation scores against ground-truth labels (confusion matrix, per-class IoU)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import metrics
from .runs import RANDOM, Report

COLUMNS = ("method", "deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "iou_best",
           "iou_mean", "time_ms")


def fmt_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def markdown(report: Report, with_random: bool = True, flag_pointing: bool = True) -> str:
    """The metric table (and the sanity table when present) as Markdown."""
    rows = report.rows(with_random)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    ref = report.random_pointing_game
    head = ["| " + " | ".join(cols) + (" | note |" if flag_pointing and ref is not None else " |"),
            "|" + "---|" * (len(cols) + (1 if flag_pointing and ref is not None else 0))]
    lines = []
    for r in rows:
        cells = [fmt_value(r.get(c)) for c in cols]
        if flag_pointing and ref is not None:
            note = ""
            if r["method"] == RANDOM:
                note = "reference (pointing game = expected hit rate)"
            elif r.get("pointing_game") is not None and r["pointing_game"] <= ref:
                note = "does not beat a random map on pointing game"
            cells.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(head + lines)
    if report.sanity:
        out += "\n\n" + sanity_markdown(report.sanity)
    return out


def sanity_markdown(sanity: dict[str, metrics.SanityResult]) -> str:
    lines = ["| method | rank correlation per step (top layer first) | final | sanity |", "|---|---|---|---|"]
    for name, s in sanity.items():
        steps = ", ".join(f"{v:.2f}" for v in s.rank_corr)
        lines.append(f"| {name} | {steps} | {s.final:.3f} | {'pass' if s.passed else 'FAIL (map ignores the weights)'} |")
    return "\n".join(lines)




# ------------------------------------------------------------------ plain tables
def text_table(rows: list[dict], columns: Sequence[str]) -> str:
    """Left-aligned columns under a dashed rule (the CLI's table output)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(rows: list[dict], columns: Sequence[str], fmt=str) -> str:
    """A Markdown table; cells through `fmt` (e.g. `fmt_value`)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------ segmentation scores
IGNORE = 255


def confusion(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """int64 counts [truth class, predicted class] over pixels whose truth is a class (< n;
    255 and any other id >= n are ignored). `pred` and `truth` have the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and labels {truth.shape} differ in shape")
    valid = truth < n
    idx = truth[valid].astype(np.int64) * n + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=n * n).reshape(n, n)


def iou(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN where a class is in neither truth nor prediction."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def pixel_share(matrix: np.ndarray) -> np.ndarray:
    """Each class's share of the labelled pixels (truth rows)."""
    return matrix.sum(axis=1) / max(int(matrix.sum()), 1)


def mean_iou(matrix: np.ndarray, min_share: float = 0.0) -> float:
    """Mean IoU over classes present (and with >= `min_share` of the labelled pixels); NaN if none."""
    ious = iou(matrix)
    keep = np.isfinite(ious) & (pixel_share(matrix) >= min_share) if min_share > 0 else np.isfinite(ious)
    return float(np.mean(ious[keep])) if keep.any() else float("nan")


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each truth row as fractions of its pixels (rows without pixels stay 0)."""
    rows = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, rows, out=np.zeros(matrix.shape, np.float64), where=rows > 0)
