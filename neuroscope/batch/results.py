"""Reading batch output folders for the dashboard's Results page (no Streamlit here).

The page opens only folders found under the operator's result roots
(``NEUROSCOPE_RESULTS_DIRS``, os.pathsep-separated; default: the working directory),
never a path typed into the browser.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .store import RESULTS, read_results

ROOTS_ENV = "NEUROSCOPE_RESULTS_DIRS"
MAX_DEPTH = 4
MAX_RUNS = 200


def roots() -> list[Path]:
    text = os.environ.get(ROOTS_ENV)
    paths = [Path(p) for p in text.split(os.pathsep) if p] if text else [Path.cwd()]
    return [p.resolve() for p in paths if p.is_dir()]


def find_runs(bases: list[Path] | None = None) -> list[Path]:
    """Batch output folders (holding results.parquet) under the roots, at most MAX_DEPTH deep."""
    found = []
    for base in bases if bases is not None else roots():
        for dirpath, dirnames, filenames in os.walk(base):
            depth = len(Path(dirpath).relative_to(base).parts)
            dirnames[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirnames if not d.startswith("."))
            if RESULTS in filenames:
                found.append(Path(dirpath))
            if len(found) >= MAX_RUNS:
                return sorted(found)
    return sorted(found)


@dataclass
class Run:
    folder: Path
    table: "object"             # pandas DataFrame, one row per image x method
    meta: dict

    @property
    def metric_columns(self) -> list[str]:
        cols = ["time_ms", "map_max", "map_abs_mean", "deletion_auc", "insertion_auc"]
        return [c for c in cols if c in self.table and self.table[c].notna().any()]


def load_run(folder: Path) -> Run:
    meta = {}
    try:
        meta = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    return Run(folder, read_results(folder), meta)


def filter_rows(df, *, methods=(), classes=(), status: str = "all", error: str = "", metric: str | None = None,
                low: float | None = None, high: float | None = None):
    """The rows matching every given filter (empty selections match everything)."""
    keep = np.ones(len(df), bool)
    if methods:
        keep &= df["method"].isin(list(methods)).to_numpy()
    if classes:
        keep &= df["class_name"].isin(list(classes)).to_numpy()
    if status in ("done", "failed"):
        keep &= (df["status"] == status).to_numpy()
    if error:
        keep &= df["error"].fillna("").str.contains(error, case=False, regex=False).to_numpy()
    if metric and metric in df:
        values = df[metric].to_numpy(dtype=float)
        if low is not None:
            keep &= values >= low
        if high is not None:
            keep &= values <= high
    return df[keep]


def records(df) -> list[dict]:
    """Rows as dicts with missing values as None (pandas gives NaN for them)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in df.to_dict("records")]


def map_of(run: Run, row) -> np.ndarray | None:
    """The float32 map of a row (from its float16 .npz), or None."""
    name = row.get("map_file")
    if not name:
        return None
    path = (run.folder / name).resolve()
    if run.folder.resolve() not in path.parents:
        return None
    with np.load(path) as f:
        return f["map"].astype(np.float32)


def target_of_row(row) -> dict:
    """What the Explain page needs to show a row's target: class name, region, contrast."""
    region = row.get("region")
    out = {"class_name": row.get("class_name"), "class_id": row.get("class_id"), "region": region,
           "contrast": row.get("contrast"), "method": row.get("method"), "path": row.get("path"),
           "image": row.get("image")}
    if isinstance(region, str) and region not in ("all", "predicted"):
        out["region"] = tuple(int(v) for v in region.split(","))
    return out
