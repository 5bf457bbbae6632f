"""Parts view of the Explain page (Harada et al. 2020): the clicked object's predicted parts
outlined in distinct colours, each part's share of the relevance beside the score drop
measured when the part is set to the mean colour, and their Spearman rank correlation.

Called from the Explain page with the sidebar's selection; it renders nothing for
classifiers and explains itself when the target has no parts. The result is computed in a
background job per session (model, image, target) and shown in
`state.session().shown["parts"]` (tests read it)."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from scipy import ndimage

from dashboard import state, views
from neuroscope.errors import NeuroscopeError
from neuroscope.synth.parts import PART_PALETTE

ZOOM_WIDTH = 420


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def outlined(image: np.ndarray, part_labels: np.ndarray, margin: float = 0.35) -> np.ndarray:
    """The object's crop (bounding box plus a margin), enlarged, with each part's outline in its colour."""
    ys, xs = np.nonzero(part_labels)
    h, w = part_labels.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = int((y1 - y0) * margin) + 4, int((x1 - x0) * margin) + 4
    y0, y1, x0, x1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
    scale = max(1, min(8, ZOOM_WIDTH // max(1, x1 - x0)))
    crop = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(((x1 - x0) * scale, (y1 - y0) * scale),
                                                                     Image.NEAREST)).copy()
    labels = np.kron(part_labels[y0:y1, x0:x1], np.ones((scale, scale), np.uint8))
    for k in np.unique(labels):
        if k == 0:
            continue
        m = labels == k
        edge = m & ~ndimage.binary_erosion(m, iterations=max(1, scale // 2))
        crop[edge] = PART_PALETTE[int(k)]
    return crop


def chart(result) -> alt.HConcatChart:
    """Share of the relevance and measured drop per part, side by side, in the part colours."""
    names = result.part_names
    colours = [_hex(PART_PALETTE[k]) for k in result.part_ids]
    df = pd.DataFrame({"part": names, "share": result.shares, "drop": result.drops})
    colour = alt.Color("part:N", scale=alt.Scale(domain=names, range=colours), legend=None)
    y = alt.Y("part:N", sort=names, title=None, axis=alt.Axis(labelOverlap=False))
    height = 26 * len(names) + 10
    shares = alt.Chart(df).mark_bar().encode(
        x=alt.X("share:Q", title=f"share of {result.method} relevance", axis=alt.Axis(format="%")),
        y=y, color=colour, tooltip=["part", alt.Tooltip("share:Q", format=".1%")]).properties(height=height)
    drops = alt.Chart(df).mark_bar().encode(
        x=alt.X("drop:Q", title="score drop when removed (mean colour)"),
        y=alt.Y("part:N", sort=names, title=None, axis=None), color=colour,
        tooltip=["part", alt.Tooltip("drop:Q", format=".4f")]).properties(height=height)
    return alt.hconcat(shares, drops)


def sentence(result) -> str:
    if result.spearman is None:
        return "One part only: there is no ranking to compare."
    s = result.spearman
    if s >= 0.5:
        verdict = "the parts credited most are also the ones whose removal lowers the score most"
    elif s > -0.5:
        verdict = "the credited order and the measured order of the parts only partly agree"
    else:
        verdict = "the measured drops rank the parts in nearly the opposite order to the credit"
    return (f"Spearman(share, drop) = **{s:+.2f}** over {len(result.part_ids)} parts: {verdict} "
            "(1 = same order, 0 = unrelated, −1 = reversed).")


POLL_S = 0.3
KEEP_JOBS = 4


def _job(sel, key):
    """The background computation of the parts of this selection's target (per session,
    the newest KEEP_JOBS kept): a click shows its map at once, the parts when they are ready."""
    from neuroscope.interactive import Job
    from neuroscope.parts import part_contributions
    table = state.session().kept.setdefault("parts_jobs", {})
    job = table.get(key)
    if job is None:
        explainer, image, target = sel.explainer, sel.image, sel.target
        # a fill: after the map, the next click's pass and the page's drawing come first
        job = table[key] = Job(lambda progress: part_contributions(explainer, image, target, progress=progress),
                               "parts", fill=True)
        while len(table) > KEEP_JOBS:
            table.pop(next(iter(table)))
    return job


def render(sel) -> None:
    """The Parts view for the selection's target (a clicked object); nothing for classifiers.
    Computed in the background (a few model passes: ~1-3 s on a busy CPU): the page shows
    the map first and this view once the parts are measured."""
    resolved = sel.resolved
    if sel.explainer.task != "segmentation" or resolved is None:
        return
    with st.container(key="parts_view"):
        st.subheader("Parts")
        if resolved.region in (None, "all", "predicted"):
            st.caption("Click an object (a car, truck, bus, person, sign or traffic light) to see its parts.")
            return
        job = _job(sel, (sel.model_key, sel.image_key, resolved.key()))
        if not job.done:
            @st.fragment(run_every=POLL_S)
            def waiting() -> None:
                if job.done:
                    st.rerun(scope="app")
                st.caption("Finding the object's parts and measuring their drops…")
            waiting()
            return
        if isinstance(job.error, NeuroscopeError):
            st.info(str(job.error))
            return
        if job.error is not None:
            raise job.error
        result = job.result
        state.session().shown["parts"] = result
        left, right = st.columns([2, 3])
        with left:   # picture and chart built once per result (memoised per session)
            picture = state.memo("parts:outlined", (), lambda: outlined(np.asarray(sel.image), result.part_labels),
                                 refs=(result,), size=2)
            views.image(picture, width="stretch", caption=f"{result.class_name}: predicted parts outlined")
        with right:
            views.chart("parts", result, lambda: chart(result))
            st.markdown(sentence(result))
