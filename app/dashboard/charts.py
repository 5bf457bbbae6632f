"""Altair charts of the dashboard: class probabilities and shares, channel statistics, IoU, confusion."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def top_classes(top: list[dict]) -> alt.Chart:
    """Horizontal bars of the top-k class probabilities (classification)."""
    df = pd.DataFrame({"class": [t["name"] for t in top], "probability": [t["prob"] for t in top]})
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
        tooltip=["class", alt.Tooltip("probability:Q", format=".2%")],
    ).properties(height=28 * len(top) + 20)


def class_shares(shares: list[dict], palette: Sequence[Sequence[int]]) -> alt.Chart:
    """Share of pixels per predicted class in the class colours: the segmentation legend."""
    names = [s["name"] for s in shares]
    df = pd.DataFrame({"class": names, "share": [s["pixel_share"] for s in shares]})
    colours = [hex_colour(palette[s["class_id"]]) for s in shares]
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="share of pixels"),
        y=alt.Y("class:N", sort=names, title=None, axis=alt.Axis(labelOverlap=False)),
        color=alt.Color("class:N", scale=alt.Scale(domain=names, range=colours), legend=None),
        tooltip=["class", alt.Tooltip("share:Q", format=".2%")],
    ).properties(height=22 * len(names) + 20)


def channel_stats(mean_activation: np.ndarray, importance: np.ndarray, selected: int | None) -> alt.VConcatChart:
    """Per-channel mean activation and importance for the target, the selected channel highlighted."""
    k = len(mean_activation)
    df = pd.DataFrame({"channel": np.arange(k), "mean activation": mean_activation.astype(float),
                       "importance": importance.astype(float)})
    highlight = alt.condition(alt.datum.channel == (-1 if selected is None else int(selected)),
                              alt.value("#d62728"), alt.value("#4c78a8"))

    def bars(field: str) -> alt.Chart:
        return alt.Chart(df).mark_bar().encode(
            x=alt.X("channel:O", axis=alt.Axis(labels=k <= 64, ticks=k <= 64)),
            y=alt.Y(f"{field}:Q"), color=highlight,
            tooltip=["channel", alt.Tooltip(f"{field}:Q", format=".4g")],
        ).properties(height=120)
    return alt.vconcat(bars("mean activation"), bars("importance"))


def class_iou(names: list[str], ious: np.ndarray, palette: Sequence[Sequence[int]]) -> alt.Chart:
    keep = [i for i, v in enumerate(ious) if not np.isnan(v)]
    chosen = [names[i] for i in keep]
    df = pd.DataFrame({"class": chosen, "IoU": [float(ious[i]) for i in keep]})
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("IoU:Q", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("class:N", sort=chosen, title=None, axis=alt.Axis(labelOverlap=False)),
        color=alt.Color("class:N", scale=alt.Scale(domain=chosen, range=[hex_colour(palette[i]) for i in keep]),
                        legend=None),
        tooltip=["class", alt.Tooltip("IoU:Q", format=".3f")],
    ).properties(height=22 * len(keep) + 20)


def confusion_heatmap(matrix: np.ndarray, names: list[str], counts: np.ndarray) -> alt.Chart:
    """Row-normalised confusion matrix (truth rows, predicted columns) as a heatmap."""
    rows = [i for i in range(len(names)) if counts[i].sum() > 0 or counts[:, i].sum() > 0]
    used = [names[i] for i in rows]
    records = [{"truth": names[t], "predicted": names[p], "fraction": float(matrix[t, p]),
                "pixels": int(counts[t, p])} for t in rows for p in rows]
    df = pd.DataFrame.from_records(records)
    base = alt.Chart(df).encode(
        x=alt.X("predicted:N", sort=used, axis=alt.Axis(labelOverlap=False, labelAngle=-45, labelLimit=160)),
        y=alt.Y("truth:N", sort=used, axis=alt.Axis(labelOverlap=False, labelLimit=160)),
        tooltip=["truth", "predicted", alt.Tooltip("fraction:Q", format=".1%"), "pixels:Q"])
    heat = base.mark_rect().encode(color=alt.Color("fraction:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])))
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("fraction:Q", format=".0%"),
        color=alt.condition(alt.datum.fraction > 0.5, alt.value("white"), alt.value("black")),
        opacity=alt.condition(alt.datum.fraction >= 0.005, alt.value(1), alt.value(0)))
    size = max(420, 34 * len(used))      # cells large enough for their percentages
    return (heat + text).properties(width=size, height=size)


def curve_records(report, random_name: str) -> pd.DataFrame | None:
    """Mean deletion/insertion curves of every method (and the random map) as one long table."""
    records = []
    for name, r in [*report.methods.items(), (random_name, report.random)]:
        if r is None:
            continue
        for kind in ("deletion", "insertion"):
            c = r.mean_curve(kind)
            if c is not None:
                records += [{"method": name, "curve": kind, "fraction": float(f), "probability": float(p)}
                            for f, p in zip(*c)]
    return pd.DataFrame.from_records(records) if records else None


def deletion_insertion(df: pd.DataFrame, kind: str, random_name: str) -> alt.Chart:
    """One kind of curve per method; the random map dashed."""
    part = df[df.curve == kind]
    return alt.Chart(part).mark_line().encode(
        x=alt.X("fraction:Q", title="fraction of pixels " + ("removed" if kind == "deletion" else "revealed"),
                axis=alt.Axis(format="%")),
        y=alt.Y("probability:Q", title="probability of the target", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("method:N"),
        strokeDash=alt.condition(alt.datum.method == random_name, alt.value([4, 3]), alt.value([1, 0])),
        tooltip=["method", alt.Tooltip("fraction:Q", format=".0%"), alt.Tooltip("probability:Q", format=".3f")],
    ).properties(title=f"{kind.capitalize()} curves (mean over items)", height=260)


def rank_correlation(records: list[dict]) -> alt.LayerChart:
    """Rank correlation with the original map per randomisation step, with the 0.5 pass line."""
    chart = alt.Chart(pd.DataFrame.from_records(records)).mark_line(point=True).encode(
        x=alt.X("step:O", title="randomisation step (top layer first)"),
        y=alt.Y("rank correlation:Q", scale=alt.Scale(domain=[-1, 1])),
        color="method:N", tooltip=["method", "layer", alt.Tooltip("rank correlation:Q", format=".3f")],
    ).properties(height=220)
    rule = alt.Chart(pd.DataFrame({"y": [0.5]})).mark_rule(strokeDash=[4, 3], color="grey").encode(y="y:Q")
    return chart + rule
