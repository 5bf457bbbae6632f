"""Slow work on request: an estimate and a Compute button, then progress with time left and
a Cancel, while the rest of the session stays usable (the work runs in a background thread,
`neuroscope.interactive.Job`; this module only draws it).

Any page can use it for work above the interactive budget:

    job = jobs.tile(key, cost, start=lambda progress: ex.explain(..., progress=progress))
    if job is not None and job.result is not None: draw(job.result)
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import streamlit as st

from neuroscope.errors import Cancelled
from neuroscope.interactive import Cost, Job, duration

from . import state

MAX_JOBS = 12       # per session: finished jobs beyond this are forgotten, oldest first
POLL_S = 0.5        # how often a running job's progress is redrawn


def jobs() -> dict[Hashable, Job]:
    return state.session().kept.setdefault("jobs", {})


def find(key: Hashable) -> Job | None:
    return jobs().get(key)


def start(key: Hashable, fn: Callable[[Callable[[float, str], bool]], Any], label: str = "") -> Job:
    table = jobs()
    old = table.pop(key, None)
    if old is not None and not old.done:
        old.cancel()
    table[key] = Job(fn, label)
    while len(table) > MAX_JOBS:
        oldest = next((k for k, j in table.items() if j.done), None)
        if oldest is None:
            break
        table.pop(oldest)
    return table[key]


def cancel_all() -> None:
    for job in jobs().values():
        job.cancel()


def _button_key(prefix: str, key: Hashable) -> str:
    return f"{prefix}::{abs(hash(key)):x}"


def running(job: Job, name: str, key: Hashable) -> None:
    """Progress with time left and a Cancel, redrawn every POLL_S until the job ends; then
    the whole page reruns to show the result."""
    @st.fragment(run_every=POLL_S)
    def poll() -> None:
        if job.done:
            st.rerun(scope="app")
        left = job.time_left()
        eta = "estimating time left" if left is None else f"{duration(left)} left"
        st.progress(min(1.0, job.fraction), text=f"{name}: {job.message} · {job.fraction:.0%} · "
                                                 f"{duration(job.elapsed)} so far · {eta}")
        if st.button("Cancel", key=_button_key("cancel", key), icon=":material/stop_circle:"):
            job.cancel()
            job.wait(2.0)   # the engine stops at its next chunk
            st.rerun(scope="app")
    poll()


def tile(key: Hashable, name: str, cost: Cost, run: Callable[[Callable[[float, str], bool]], Any],
         note: str = "", extra: Callable[[], None] | None = None, autostart: bool = False) -> Job | None:
    """The job of `key` if it finished with a result; otherwise draw its state (estimate and
    Compute, progress and Cancel, or the error) and return None. `autostart` starts it
    without the Compute click (a button elsewhere asked for it)."""
    job = find(key)
    if autostart and (job is None or (job.done and job.error is not None)):
        job = start(key, run, name)
    if job is not None and not job.done:
        running(job, name, key)
        return None
    if job is not None and job.error is None:
        return job
    with st.container(border=True):
        st.markdown(f"**{name}** — not computed yet (above the interactive budget of "
                    f"{duration(_budget())}): {cost.text()}" + (" (measured)" if cost.measured else ""))
        if note:
            st.caption(note)
        if job is not None and isinstance(job.error, Cancelled):
            st.warning(f"Cancelled after {duration(job.elapsed)} ({job.fraction:.0%} done).")
        elif job is not None:
            st.error(f"{name}: {job.error}")
        clicked = st.button(f"Compute {name}", key=_button_key("compute", key), type="primary",
                            icon=":material/play_arrow:")
        if extra is not None:
            extra()
    if clicked:
        running(start(key, run, name), name, key)
    return None


def _budget() -> float:
    from neuroscope.interactive import budget_s
    return budget_s()
