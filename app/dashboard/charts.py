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
        x=alt.X("predicted:N", sort=used, axis=alt.Axis(labelOverlap=False)),
        y=alt.Y("truth:N", sort=used, axis=alt.Axis(labelOverlap=False)),
        tooltip=["truth", "predicted", alt.Tooltip("fraction:Q", format=".1%"), "pixels:Q"])
    heat = base.mark_rect().encode(color=alt.Color("fraction:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])))
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("fraction:Q", format=".0%"),
        color=alt.condition(alt.datum.fraction > 0.5, alt.value("white"), alt.value("black")),
        opacity=alt.condition(alt.datum.fraction >= 0.005, alt.value(1), alt.value(0)))
    size = max(240, 26 * len(used))
    return (heat + text).properties(width=size, height=size)
