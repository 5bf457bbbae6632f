"""Evaluate: how faithful and how well localised each method's maps are (METHODS.md §9).

Runs `neuroscope.evaluation.evaluate` on the current image (and target) or on a fixed
evaluation set, with a progress bar; shows deletion/insertion curves per method, a table
ranking the methods by any metric, and the model-randomisation sanity strip.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, state
from dashboard.state import KEEP, Keys
from neuroscope import render
from neuroscope.errors import NeuroscopeError
from neuroscope.evaluation import EVAL_SETS, RANDOM, EvalItem, evaluate
from neuroscope.interactive import evidence_mask, methods_for
from neuroscope.methods.registry import MethodInfo

REPORT = "eval_report"        # Session.kept: (settings, Report) of the last run (tests read it)
DEFAULT_METHODS = ("grad-cam", "saliency")
THIS_IMAGE = "This image and target"
#: metric -> (label, higher is better)
METRICS = {
    "deletion_auc": ("Deletion AUC ↓", False),
    "insertion_auc": ("Insertion AUC ↑", True),
    "pointing_game": ("Pointing game ↑", True),
    "energy_pointing_game": ("Energy pointing ↑", True),
    "iou_best": ("IoU best ↑", True),
    "iou_mean": ("IoU mean ↑", True),
    "time_ms": ("Time (ms) ↓", False),
}


def controls(sel: state.Selection, infos: dict[str, MethodInfo]):
    c1, c2 = st.columns([3, 2])
    chosen = c1.multiselect("Methods to evaluate", list(infos), default=[m for m in DEFAULT_METHODS if m in infos],
                            key=Keys.scoped("eval_methods", sel.task), placeholder="Choose methods", **KEEP,
                            help="Slow methods (perturbation, evidence analysis) take minutes on a set.")
    sets = [name for name, s in EVAL_SETS.items() if s.task == sel.task]
    scope = c2.radio("Evaluate on", [THIS_IMAGE, *sets], key=Keys.scoped("eval_scope", sel.task), **KEEP,
                     format_func=lambda s: s if s == THIS_IMAGE else f"set {s} — {EVAL_SETS[s].description}")
    c3, c4, c5 = st.columns(3)
    steps = int(c3.select_slider("Deletion/insertion steps", [10, 20, 30, 50], value=50, key="eval_steps",
                                 **KEEP))
    sanity = c4.checkbox("Sanity check (model randomisation)", key="eval_sanity", **KEEP,
                         help="Randomises a copy of the model from the top layer down; the shared model is untouched.")
    sanity_steps = int(c5.number_input("Randomisation steps", 2, 16, value=6, key="eval_sanity_steps",
                                       **KEEP))
    return chosen, scope, steps, sanity, sanity_steps


def run(sel: state.Selection, chosen: list[str], scope: str, steps: int, sanity: bool, sanity_steps: int):
    if scope == THIS_IMAGE:
        if sel.resolved is None:
            st.warning("The target is not complete: see the sidebar.")
            return None
        items = [EvalItem(sel.image_name, sel.image, sel.target, evidence_mask(sel.truth, sel.resolved))]
    else:
        with st.spinner(f"Building the evaluation set {scope}…"):
            items = EVAL_SETS[scope].build()
    bar = st.progress(0.0, text="starting")

    def progress(fraction: float, message: str) -> bool:
        bar.progress(min(1.0, fraction), text=f"{message} ({fraction:.0%})")
        return True

    layer = sel.layer if scope == THIS_IMAGE else None
    try:
        report = evaluate(sel.explainer, items, chosen, steps=steps, layer=layer, with_random=True, sanity=sanity,
                          sanity_steps=sanity_steps, sanity_maps=True, progress=progress, strict=False)
    except NeuroscopeError as exc:
        st.error(f"{exc}")
        return None
    finally:
        bar.empty()
    return report


def ranking(report) -> None:
    rows = report.rows(with_random=True)
    df = pd.DataFrame(rows).set_index("method")
    metrics_here = [m for m in METRICS if m in df.columns]
    by = st.selectbox("Rank by", metrics_here, format_func=lambda m: METRICS[m][0],
                      key="eval_rank_by", **KEEP)
    methods = df.drop(index=RANDOM, errors="ignore")
    order = methods[by].sort_values(ascending=not METRICS[by][1], na_position="last")
    table = df.loc[list(order.index) + ([RANDOM] if RANDOM in df.index else [])]
    table.insert(0, "rank", list(range(1, len(order) + 1)) + ([None] if RANDOM in df.index else []))
    ref = report.random_pointing_game
    if ref is not None and "pointing_game" in table:
        table["beats random pointing"] = [None if name == RANDOM else bool(v > ref)
                                          for name, v in table["pointing_game"].items()]
    st.dataframe(table.rename(columns={k: v[0] for k, v in METRICS.items()}), width="stretch",
                 column_config={"rank": st.column_config.NumberColumn(format="%d")})
    note = "Random row: a seeded uniform map"
    if ref is not None:
        note += f"; its pointing game is the exact expected hit rate of a random map ({ref:.3f})"
    st.caption(note + ". Deletion: lower is better; insertion: higher is better.")
    for name, r in report.methods.items():
        for err in r.errors:
            st.warning(f"{name} failed on {err}")


def curves(report) -> None:
    df = charts.curve_records(report, RANDOM)
    if df is None:
        return
    for col, kind in zip(st.columns(2), ("deletion", "insertion")):
        col.altair_chart(charts.deletion_insertion(df, kind, RANDOM), width="stretch")


def thumbnail(m: np.ndarray, signed: bool) -> np.ndarray:
    sign = "both" if signed else "positive"
    return render.colorize(render.scale_map(m, sign=sign, clip_percentile=99.5), "RdBu_r" if signed else "inferno")


def sanity_strip(report, infos: dict[str, MethodInfo]) -> None:
    st.subheader("Sanity check: cascading model randomisation")
    st.caption("Each row: the map of the original model, then after randomising the layers from the top down "
               "to the named layer; ρ = Spearman rank correlation with the original map. A method whose map "
               "does not change (final ρ ≥ 0.5) is not explaining the model.")
    records = []
    for name, s in report.sanity.items():
        records += [{"method": name, "step": i + 1, "layer": layer, "rank correlation": rho}
                    for i, (layer, rho) in enumerate(zip(s.steps, s.rank_corr))]
        signed = infos[name].signed if name in infos else True
        verdict = "passes" if s.passed else "**fails**"
        st.markdown(f"**{name}** — final ρ = {s.final:.3f}, {verdict}")
        cols = st.columns(len(s.maps) + 1)
        if s.original is not None:
            cols[0].image(thumbnail(s.original, signed), caption="original", width="stretch")
        for col, layer, rho, m in zip(cols[1:], s.steps, s.rank_corr, s.maps):
            col.image(thumbnail(m, signed), caption=f"→ {layer} · ρ {rho:.2f}", width="stretch")
    if records:
        st.altair_chart(charts.rank_correlation(records), width="stretch")


def page(sel: state.Selection) -> None:
    ex = sel.explainer
    infos = methods_for(ex)
    st.markdown(f"**{sel.model_label}** — faithfulness (deletion / insertion), localisation against ground "
                "truth (pointing game, IoU) and the sanity check.")
    chosen, scope, steps, sanity, sanity_steps = controls(sel, infos)
    settings = (sel.model_key, sel.image_key if scope == THIS_IMAGE else scope,
                repr(sel.target) if scope == THIS_IMAGE else None, tuple(chosen), steps, sanity, sanity_steps)
    if not chosen:
        st.info("Choose one or more methods to evaluate.")
        return
    if scope == THIS_IMAGE and evidence_mask(sel.truth, sel.resolved) is None:
        st.caption("This image has no ground-truth evidence for the target: pointing game and IoU need a labelled "
                   "image (a generated scene) or an evaluation set.")
    if st.button("Run evaluation", type="primary", key="eval_run"):
        report = run(sel, chosen, scope, steps, sanity, sanity_steps)
        if report is not None:
            state.session().kept[REPORT] = (settings, report)
    last = state.session().kept.get(REPORT)
    if last is None:
        return
    if last[0] != settings:
        st.info("The settings changed since the last run: press *Run evaluation* to update. Showing the last run.")
    report = last[1]
    ranking(report)
    curves(report)
    if report.sanity:
        sanity_strip(report, infos)


state.show(page)
