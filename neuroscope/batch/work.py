"""One unit of batch work, the same for the local and the Ray engine: a chunk of records
through one Explainer, giving one row per image x method and writing the maps.

A record is ``{"image": id, "path": file, "class"?, "region"?, "contrast"?}``. Same-size
images go through the model together where the method allows it (`batched.py`); every
failure of one image (unreadable file, empty region, a method error) becomes that row's
``error``, never an abort.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Cancelled, NeuroscopeError

#: every row has these columns, in this order (Arrow schema below)
COLUMNS = ("image", "path", "method", "status", "error", "class_id", "class_name", "region", "contrast", "layer",
           "params", "time_ms", "height", "width", "map_min", "map_max", "map_mean", "map_abs_mean",
           "deletion_auc", "insertion_auc", "map_file", "overlay_file")
DONE, FAILED = "done", "failed"
#: with ``Settings.labels`` (dataset evaluation), the first row of each image also carries
#: the model's confusion counts against its label file, from the explanation pass's own
#: prediction (no second forward): JSON [[truth, predicted, pixels], ...], or the problem
LABEL_COLUMNS = ("label_confusion", "label_problem")


@dataclass
class Settings:
    """What every worker needs to do the same work (picklable: Ray ships it)."""

    model: str
    methods: list[str]
    out: str
    input_size: tuple[int, int] | None = None
    save: tuple[str, ...] = ("maps",)               # "maps", "overlays"; () = none
    metrics: bool = False
    metric_steps: int = 20
    params: dict = field(default_factory=dict)      # method -> params
    layer: str | None = None
    model_batch: bool = True                        # same-size images through the model together
    #: torch threads per worker (None: the framework's default; Ray gives each worker its
    #: CPU share). Float sums differ in the last bits between thread counts, so runs to be
    #: compared bit for bit use the same number.
    threads: int | None = None
    #: labels folder (`evaluate --dataset --labels`): each image's confusion counts in its
    #: first row (LABEL_COLUMNS), from the prediction of the explanation pass
    labels: str | None = None

    def explainer(self):
        from ..engine import Explainer
        if self.threads:
            import torch
            torch.set_num_threads(self.threads)
        return Explainer(self.model, input_size=self.input_size)


def schema(labels: bool = False):
    """The Arrow schema of COLUMNS (plus LABEL_COLUMNS with `labels`)."""
    import pyarrow as pa
    types = {"class_id": pa.int64(), "height": pa.int64(), "width": pa.int64(), "time_ms": pa.float64(),
             "map_min": pa.float64(), "map_max": pa.float64(), "map_mean": pa.float64(),
             "map_abs_mean": pa.float64(), "deletion_auc": pa.float64(), "insertion_auc": pa.float64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS + (LABEL_COLUMNS if labels else ())])


def file_stem(image_id: str) -> str:
    """A file-name-safe, collision-free stem for an image id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)[-80:].strip("._") or "image"
    return f"{slug}-{hashlib.blake2b(image_id.encode(), digest_size=4).hexdigest()}"


def target_of(record: dict, task: str):
    from ..targets import Target, parse_region
    region = record.get("region")
    return Target(class_id=record.get("class"), region=parse_region(region) if region else None,
                  contrast=record.get("contrast"), task=task)


def _row(record: dict, method: str, **kw) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(image=record["image"], path=record["path"], method=method, region=record.get("region"),
               contrast=record.get("contrast"))
    if record.get("class") is not None:
        row["class_name"] = str(record["class"])
    row.update(kw)
    return row


def run_chunk(ex, records: list[dict], settings: Settings) -> list[dict]:
    """Rows for `records` x `settings.methods` (records in order, methods in order); a
    record's ``todo`` (comma list) narrows its methods (a resumed run)."""
    from ..methods.registry import get_method
    from .batched import explain_many, prefill
    rows: dict[tuple[str, str], dict] = {}
    ready = []                                       # (record, prep, target)
    for rec in records:
        try:
            prep = ex.prepare(rec["path"])
            target = target_of(rec, ex.task)
            ready.append((rec, prep, target))
        except Cancelled:
            raise
        except (NeuroscopeError, OSError) as exc:
            for m in _wanted(rec, settings):
                rows[rec["image"], m] = _row(rec, m, status=FAILED, error=_message(exc))
    # same-size images together (one model input shape per batched pass)
    groups: dict[tuple, list] = {}
    for item in ready:
        groups.setdefault(item[1].x.shape, []).append(item)
    for group in groups.values():
        wanted = [m for m in settings.methods if any(m in _wanted(rec, settings) for rec, _, _ in group)]
        shared = {}                  # method -> its share (ms) of the batched pass per image
        if settings.model_batch:
            t0 = time.perf_counter()
            try:
                served = prefill(ex, [p for _, p, _ in group], [t for _, _, t in group], wanted,
                                 layer=settings.layer, params=settings.params)
            except Cancelled:
                raise
            except NeuroscopeError:
                served = []  # each image then runs (and fails, with its own message) on its own
            if served:
                share = (time.perf_counter() - t0) * 1000.0 / (len(group) * len(served))
                shared = dict.fromkeys(served, share)
        for method in wanted:
            info = get_method(method)[0]
            layer = settings.layer if info.needs_layer else None
            todo = [item for item in group if method in _wanted(item[0], settings)]
            results = explain_many(ex, [p for _, p, _ in todo], method, [t for _, _, t in todo], layer=layer,
                                   params=settings.params.get(method))
            for (rec, prep, target), res in zip(todo, results):
                if isinstance(res, Exception):
                    rows[rec["image"], method] = _row(rec, method, status=FAILED, error=_message(res))
                    continue
                try:
                    rows[rec["image"], method] = _done_row(ex, rec, prep, target, method, res, settings,
                                                           shared.get(method, 0.0))
                except Cancelled:
                    raise
                except (NeuroscopeError, OSError) as exc:
                    rows[rec["image"], method] = _row(rec, method, status=FAILED, error=_message(exc))
    if settings.labels:
        preps = {rec["image"]: prep for rec, prep, _ in ready}
        for rec in records:
            _label_counts(ex, rec, preps.get(rec["image"]), rows[rec["image"], _wanted(rec, settings)[0]],
                          settings.labels)
    return [rows[r["image"], m] for r in records for m in _wanted(r, settings)]


def _label_counts(ex, rec: dict, prep, row: dict, labels: str) -> None:
    """`row`'s LABEL_COLUMNS: the prediction (cached by the explanation pass) against the
    image's label file."""
    from ..evaluation.dataset import find_labels
    from ..evaluation.reports import confusion
    from ..images import load_labels
    path = find_labels(rec["image"], rec["path"], Path(labels))
    if path is None:
        row["label_problem"] = "no label file"
        return
    if prep is None:
        row["label_problem"] = row.get("error") or "the image could not be read"
        return
    try:
        truth = load_labels(path.read_bytes(), path.name)
        pred = ex.predict(prep).labels          # cached: no forward after the explanation pass
        if pred.shape != truth.shape:
            raise ValueError(f"labels {truth.shape[1]}x{truth.shape[0]} but image {pred.shape[1]}x{pred.shape[0]}")
        m = confusion(pred, truth, len(ex.classes))
        t, p = np.nonzero(m)
        row["label_confusion"] = json.dumps([[int(a), int(b), int(m[a, b])] for a, b in zip(t, p)])
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001  (one bad pair is a problem line, not an abort)
        row["label_problem"] = str(exc)


def _wanted(record: dict, settings: Settings) -> list[str]:
    todo = record.get("todo")
    return [m for m in settings.methods if m in todo.split(",")] if todo else settings.methods


def _message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _done_row(ex, rec: dict, prep, target, method: str, res, settings: Settings, shared_ms: float = 0.0) -> dict:
    """`shared_ms`: this map's share of a batched model pass (added to its time_ms)."""
    m = res.map
    t = res.meta["target"]
    row = _row(rec, method, status=DONE, class_id=int(t["class_id"]), class_name=t["class_name"],
               region=t.get("region"), layer=res.meta["layer"],
               params=json.dumps(res.meta["params"], sort_keys=True, default=str),
               time_ms=float(res.meta["time_ms"]) + shared_ms, height=int(m.shape[0]), width=int(m.shape[1]),
               map_min=float(m.min()), map_max=float(m.max()), map_mean=float(m.mean()),
               map_abs_mean=float(np.abs(m).mean()))
    if settings.metrics:
        from .. import metrics
        rt = ex.resolve(prep, target)
        scores = metrics.evaluate_map(ex, prep, res, rt, None, steps=settings.metric_steps)
        js = scores.as_json()
        row.update(deletion_auc=js.get("deletion_auc"), insertion_auc=js.get("insertion_auc"))
    stem = f"{file_stem(rec['image'])}__{method}"
    out = Path(settings.out)
    if "maps" in settings.save:
        row["map_file"] = f"maps/{stem}.npz"
        _atomic(out / row["map_file"], lambda f: np.savez_compressed(f, map=m.astype(np.float16)))
    if "overlays" in settings.save:
        from ..render import overlay, save_png
        row["overlay_file"] = f"overlays/{stem}.png"
        pic = overlay(prep.image, m, sign="both" if res.meta["signed"] else "positive")
        _atomic(out / row["overlay_file"], lambda f: save_png(pic, f, compress_level=1))   # speed over bytes
    return row


def _atomic(path: Path, write) -> None:
    """`write(temporary path)` then rename: a map file is whole or absent (Ctrl-C, kill)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(str(tmp))
    os.replace(tmp, path)
