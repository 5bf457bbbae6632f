"""Where a script run's time goes: named phases, written as one JSON line per run.

Off unless the server starts with NEUROSCOPE_APP_PROFILE=path (scripts/bench_browser.py
sets it); then `streamlit_app.py` wraps the run in `run()` and code marks phases with
`with timing.phase("cam"):`. Nested phases count in their own name only (the outer one
gets the rest), so the phases of a run add up to its total. Each line:
{"t": unix time at the start, "page": ..., "total_ms": ..., "phases": {name: ms},
"marks": {name: ms since the start}, "rss_mb": ..., "bytes": {what: encoded bytes}}. A no-op (one dict lookup) when off.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterator

ENV = "NEUROSCOPE_APP_PROFILE"
#: With the profile on: NEUROSCOPE_APP_TRACEMALLOC=path traces Python allocations (numpy's
#: included) from script run TRACE_START on (after a warm-up: tracing a model load is very
#: slow), takes a first snapshot TRACE_EVERY runs later, and every TRACE_EVERY runs after
#: that appends to `path` the allocation sites that grew most since. Diagnosis only.
TRACE_ENV = "NEUROSCOPE_APP_TRACEMALLOC"
TRACE_START, TRACE_EVERY = 30, 15
_trace: dict = {"runs": 0, "first": None}
_local = threading.local()
_write_lock = threading.Lock()


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _rss_mb() -> float:
    from neuroscope.runtime import rss_bytes
    return rss_bytes() / 2**20


@contextlib.contextmanager
def run(page: str = "") -> Iterator[None]:
    """One script run: collect its phases and append them to the profile file."""
    if not enabled():
        yield
        return
    t0, wall = time.perf_counter(), time.time()
    _local.rec = {"phases": {}, "bytes": {}, "marks": {}, "notes": {}, "stack": [], "page": page, "t0": t0}
    try:
        with phase("other"):
            yield
    finally:
        rec = _local.__dict__.pop("rec", None)
        if rec is not None:
            line = {"t": wall, "page": rec["page"], "total_ms": round(1000 * (time.perf_counter() - t0), 2),
                    "phases": {k: round(v, 2) for k, v in rec["phases"].items()}, "bytes": rec["bytes"],
                    "marks": rec["marks"], **rec["notes"], "rss_mb": round(_rss_mb(), 1)}
            with _write_lock, open(os.environ[ENV], "a") as fh:
                fh.write(json.dumps(line) + "\n")
            if os.environ.get(TRACE_ENV):
                _trace_step(os.environ[TRACE_ENV])


def set_page(name: str) -> None:
    rec = getattr(_local, "rec", None)
    if rec is not None:
        rec["page"] = name


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a block under `name` (exclusive of the phases nested in it)."""
    rec = getattr(_local, "rec", None)
    if rec is None:
        yield
        return
    stack = rec["stack"]
    now = time.perf_counter()
    if stack:   # pause the enclosing phase
        outer, since = stack[-1]
        rec["phases"][outer] = rec["phases"].get(outer, 0.0) + 1000 * (now - since)
    stack.append([name, now])
    try:
        yield
    finally:
        end = time.perf_counter()
        _, since = stack.pop()
        rec["phases"][name] = rec["phases"].get(name, 0.0) + 1000 * (end - since)
        if stack:
            stack[-1][1] = end


def count_bytes(what: str, n: int) -> None:
    rec = getattr(_local, "rec", None)
    if rec is not None:
        rec["bytes"][what] = rec["bytes"].get(what, 0) + int(n)


def mark(name: str) -> None:
    """Note when something was handed to the browser (ms since the run's start; first one wins)."""
    rec = getattr(_local, "rec", None)
    if rec is not None and name not in rec["marks"]:
        rec["marks"][name] = round(1000 * (time.perf_counter() - rec["t0"]), 2)


def _trace_step(path: str) -> None:
    import tracemalloc
    _trace["runs"] += 1
    n = _trace["runs"]
    if n == TRACE_START:
        tracemalloc.start(6)
    elif n == TRACE_START + TRACE_EVERY:
        _trace["first"] = tracemalloc.take_snapshot()
    elif n > TRACE_START + TRACE_EVERY and (n - TRACE_START) % TRACE_EVERY == 0 and _trace["first"] is not None:
        snap = tracemalloc.take_snapshot()
        stats = snap.compare_to(_trace["first"], "traceback")[:12]
        with _write_lock, open(path, "a") as fh:
            fh.write(f"=== run {n}: traced {tracemalloc.get_traced_memory()[0] / 2**20:.0f} MB, "
                     f"RSS {_rss_mb():.0f} MB\n")
            for st in stats:
                fh.write(f"{st.size_diff / 2**20:+8.1f} MB ({st.count_diff:+d} blocks), now {st.size / 2**20:.1f} MB\n")
                for line in st.traceback.format()[-12:]:
                    fh.write(f"      {line}\n")


def note(name: str, value) -> None:
    """A value for this run's line (e.g. the engine caches' bytes)."""
    rec = getattr(_local, "rec", None)
    if rec is not None:
        rec["notes"][name] = value
