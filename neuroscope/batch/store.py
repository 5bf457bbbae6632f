"""The results table of a batch run: OUT/results.parquet, written in parts as rows arrive.

Rows go to OUT/.parts/part-*.parquet every few seconds (each part written whole, then
renamed), and `close` merges everything into results.parquet (the last row of an
image x method wins: a retried failure replaces its error row). A run killed hard leaves
parts behind; the next run reads them, so nothing written is lost.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .work import COLUMNS, DONE, schema

RESULTS = "results.parquet"
PARTS = ".parts"


class Store:
    def __init__(self, out: str | os.PathLike, flush_rows: int = 64, flush_s: float = 5.0):
        self.out = Path(out)
        self.parts = self.out / PARTS
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.rows: dict[tuple[str, str], dict] = {}
        self._pending: list[dict] = []
        self._last = time.monotonic()
        self._n = 0
        for path in [self.out / RESULTS, *sorted(self.parts.glob("part-*.parquet"))]:
            if path.is_file():
                for row in _read(path):
                    self.rows[row["image"], row["method"]] = row

    def done(self, image: str, method: str) -> bool:
        row = self.rows.get((image, method))
        return row is not None and row["status"] == DONE

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self.rows[row["image"], row["method"]] = row
        self._pending += rows
        if len(self._pending) >= self.flush_rows or time.monotonic() - self._last > self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        self._n += 1
        _write(self._pending, self.parts / f"part-{time.time_ns()}-{os.getpid()}-{self._n:06d}.parquet")
        self._pending = []

    def close(self, method_order: list[str] | None = None) -> None:
        """Everything into results.parquet, sorted by image then method; parts removed."""
        self._pending = []
        order = {m: i for i, m in enumerate(method_order or [])}
        rows = sorted(self.rows.values(), key=lambda r: (r["image"], order.get(r["method"], len(order)), r["method"]))
        _write(rows, self.out / RESULTS)
        for part in self.parts.glob("part-*.parquet"):
            part.unlink(missing_ok=True)
        try:
            self.parts.rmdir()
        except OSError:
            pass


def _write(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema())
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001  (a part cut short by a hard kill)
        import warnings
        warnings.warn(f"skipping unreadable results file {path.name}: {exc}")
        return []
    return [{c: r.get(c) for c in COLUMNS} for r in table.to_pylist()]


def read_results(out: str | os.PathLike):
    """results.parquet of a batch output folder as a pandas DataFrame."""
    import pandas as pd
    import pyarrow.parquet as pq
    path = Path(out) / RESULTS
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    return pq.read_table(path).to_pandas()
