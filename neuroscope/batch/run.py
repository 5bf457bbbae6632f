"""`neuroscope batch`: the driver. Decides what is left to do, runs it on the local or the
Ray engine, keeps results.parquet / run.json current, shows progress, stops cleanly."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..cli_args import CliError
from .store import Store
from .work import DONE, Settings, run_chunk

RUN_JSON = "run.json"
CHUNK = 8          # images per unit of work (one model batch per same-size group)


def versions() -> dict:
    out = {"neuroscope": __import__("neuroscope").__version__, "python": platform.python_version()}
    for name in ("numpy", "torch", "keras", "tensorflow", "pyarrow", "ray"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def run_batch(settings: Settings, records: list[dict], *, engine: str = "local", workers: int = 1,
              address: str | None = None, chunk: int | None = None, progress: bool | None = None,
              explainer=None, on_rows=None) -> dict:
    """Run what is not done yet; returns {"images", "done", "failed", "skipped", "out", "time_s"}
    where done/failed count the image x method rows of this run and skipped the rows
    already done by an earlier run. `explainer`: the local engine's (else loaded here).
    `on_rows(rows)`: called with every list of finished rows (columns beyond COLUMNS, such
    as LABEL_COLUMNS, are there; results.parquet keeps COLUMNS)."""
    t0 = time.perf_counter()
    chunk = chunk or CHUNK
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_previous(out, settings)
    store = Store(out)
    todo, skipped = [], 0
    for rec in records:
        left = [m for m in settings.methods if not store.done(rec["image"], m)]
        skipped += len(settings.methods) - len(left)
        if left:
            todo.append({**rec, "todo": ",".join(left) if len(left) < len(settings.methods) else None})
    meta = {"model": settings.model, "input_size": list(settings.input_size) if settings.input_size else None,
            "methods": settings.methods, "layer": settings.layer, "params": settings.params,
            "save": list(settings.save), "metrics": settings.metrics, "engine": engine, "workers": workers,
            "address": address, "images": len(records), "versions": versions(),
            "started": _now(), "finished": None, "interrupted": False}
    _write_json(out / RUN_JSON, meta)
    bar = Progress(len(todo), enabled=sys.stderr.isatty() if progress is None else progress)
    counts = {"done": 0, "failed": 0}

    def take(rows: list[dict]) -> None:
        if on_rows is not None:
            on_rows(rows)
        store.add(rows)
        for r in rows:
            counts["done" if r["status"] == DONE else "failed"] += 1
        bar.step(len({r["image"] for r in rows}), counts["failed"])

    try:
        if todo and engine == "ray":
            from .ray_engine import run_ray
            for rows in run_ray(settings, todo, workers=workers, address=address, chunk=chunk):
                take(rows)
        elif todo:
            ex = explainer or settings.explainer()
            for i in range(0, len(todo), chunk):
                take(run_chunk(ex, todo[i:i + chunk], settings))
                ex.clear_caches()      # flat memory over thousands of images
        meta["finished"] = _now()
    except KeyboardInterrupt:
        meta["interrupted"] = True
        raise
    finally:
        bar.close()
        store.close(settings.methods)
        meta["time_s"] = round(time.perf_counter() - t0, 3)
        meta["versions"] = versions()
        _write_json(out / RUN_JSON, meta)
    return {"images": len(records), "done": counts["done"], "failed": counts["failed"], "skipped": skipped,
            "out": str(out), "time_s": meta["time_s"]}


def _check_previous(out: Path, settings: Settings) -> None:
    path = out / RUN_JSON
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    size = list(settings.input_size) if settings.input_size else None
    if old.get("model") != settings.model or old.get("input_size") != size:
        raise CliError(f"{out} holds a run of {old.get('model')} (input size {old.get('input_size')}); "
                       f"use another --out for {settings.model}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class Progress:
    """A one-line progress bar with rate and ETA on stderr (terminals only)."""

    def __init__(self, total: int, enabled: bool, width: int = 28):
        self.total, self.enabled, self.width = total, enabled and total > 0, width
        self.n, self.t0, self.failed = 0, time.perf_counter(), 0

    def step(self, n: int, failed: int) -> None:
        self.n += n
        self.failed = failed
        if self.enabled:
            sys.stderr.write("\r" + self.line())
            sys.stderr.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        filled = int(self.width * self.n / max(self.total, 1))
        eta_text = "--:--" if eta != eta else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        fails = f", {self.failed} failed rows" if self.failed else ""
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.n}/{self.total} images "
                f"{rate:.2f}/s ETA {eta_text}{fails}")

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
