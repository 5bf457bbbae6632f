"""Results: a `neuroscope batch` output folder as a sortable, filterable table and a gallery;
"Open in Explain" shows a row's image on the Explain page with the same target and method.

Folders come from the operator's result roots (NEUROSCOPE_RESULTS_DIRS), never from a
path typed here. Needs no model or image: it works before the sidebar is complete.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import state, views
from dashboard.state import KEEP, Keys
from neuroscope import render
from neuroscope.batch import results
from neuroscope.images import load_image

GALLERY = 12


def open_in_explain(row: dict, model_key: str | None, task: str | None) -> None:
    """A callback: the row's image becomes the sidebar's image, its target the sidebar's."""
    t = results.target_of_row(row)
    s = state.session()
    s.opened = {"path": t["path"], "name": t["image"]}
    image_key = f"batch:{t['path']}"
    if model_key is not None:
        state.set_choice(Keys.MODEL, model_key)
    state.set_choice(Keys.IMAGE_SOURCE, state.OPENED)
    key = model_key or state.choice(Keys.MODEL)
    region = t["region"]
    if isinstance(region, tuple) and len(region) == 4:          # a box: its two corners as clicks
        s.clicks_image, s.clicks = image_key, [[region[0], region[1]], [region[2] - 1, region[3] - 1]]
        state.set_choice(Keys.REGION_MODE, "box")
    elif isinstance(region, tuple):                              # a pixel: the clicked object
        s.clicks_image, s.clicks = image_key, [list(region)]
        state.set_choice(Keys.REGION_MODE, "clicked")
    elif region in ("all", "predicted"):
        state.set_choice(Keys.REGION_MODE, region)
    if t["class_id"] is not None and key is not None:
        state.set_choice(Keys.target_class(key, image_key), int(t["class_id"]))
    if task is not None and t["method"]:
        state.set_choice(Keys.scoped("methods", task), [t["method"]])
    s.shown["results:opened"] = t
    s.kept["results:switch"] = True


def page() -> None:
    if state.session().kept.pop("results:switch", False):   # set by "Open in Explain" (a callback)
        st.switch_page("app_pages/explain.py")
    runs = results.find_runs()
    if not runs:
        st.info(f"No batch results found under {', '.join(map(str, results.roots()))}. Run "
                "`neuroscope batch MODEL INPUT --methods ... --out DIR` there (or set NEUROSCOPE_RESULTS_DIRS).")
        return
    base = results.roots()
    label = {str(r): next((str(r.relative_to(b)) for b in base if b in r.parents or b == r), str(r)) for r in runs}
    folder = st.selectbox("Batch output folder", [str(r) for r in runs], format_func=label.get,
                          key="results_folder", **KEEP)
    stamp = (folder, Path(folder, results.RESULTS).stat().st_mtime)
    run = state.memo("results_run", stamp, lambda: results.load_run(Path(folder)))
    df = run.table
    meta = run.meta
    st.caption(f"model **{meta.get('model', '?')}** · {meta.get('images', '?')} images · "
               f"{len(df)} rows · engine {meta.get('engine', '?')}"
               + (" · interrupted" if meta.get("interrupted") else ""))
    c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
    methods = c1.multiselect("Methods", sorted(df["method"].dropna().unique()), key="results_methods", **KEEP)
    classes = c2.multiselect("Classes", sorted(df["class_name"].dropna().unique()), key="results_classes", **KEEP)
    status = c3.radio("Status", ["all", "done", "failed"], key="results_status", **KEEP)
    error = c4.text_input("Error contains", key="results_error", **KEEP)
    metric = low = high = None
    if run.metric_columns:
        m1, m2 = st.columns([1, 3])
        metric = m1.selectbox("Metric", run.metric_columns, key="results_metric", **KEEP)
        values = df[metric].dropna()
        if len(values) and values.min() < values.max():
            lo, hi = float(values.min()), float(values.max())
            low, high = m2.slider(f"{metric} range", lo, hi, (lo, hi), key=f"results_range::{folder}::{metric}")
            if (low, high) == (lo, hi):       # the full range: rows without the metric stay too
                low = high = None
    rows = results.filter_rows(df, methods=methods, classes=classes, status=status, error=error, metric=metric,
                               low=low, high=high)
    state.session().shown["results:rows"] = len(rows)
    shown_cols = [c for c in ("image", "method", "status", "class_name", "region", "layer", "time_ms",
                              "map_max", "map_abs_mean", "deletion_auc", "insertion_auc", "error") if c in rows]
    event = st.dataframe(rows[shown_cols], width="stretch", hide_index=True, on_select="rerun",
                         selection_mode="single-row", key="results_table")
    st.caption(f"{len(rows)} of {len(df)} rows · click a column header to sort, a row to pick it")
    if rows.empty:
        return
    picked = event.selection.rows[0] if event and event.selection.rows else 0
    labels = [f"{r.image} · {r.method}" for r in rows.itertuples()]
    index = st.selectbox("Row", range(len(rows)), index=min(picked, len(rows) - 1), format_func=labels.__getitem__,
                         key=f"results_row::{folder}::{picked}::{hash(tuple(rows.index))}")
    row = results.records(rows.iloc[[index]])[0]
    entries, _ = state.catalogue("")
    entry = next((e for e in entries if e.name == meta.get("model")), None)
    if entry is None:
        st.caption(f"{meta.get('model')} is not in the sidebar's models: Explain keeps the current model.")
    st.button("Open in Explain", type="primary", key="results_open", on_click=open_in_explain,
              args=(row, entry.key if entry else None, entry.task if entry else None),
              disabled=row["status"] != "done")

    st.subheader("Gallery")
    done = rows[rows["status"] == "done"].head(GALLERY)
    tiles, captions = state.memo("results_gallery", (*stamp, tuple(done.index)), lambda: gallery(run, done),
                                  size=2)
    if tiles:
        with st.container(key="results_gallery"):
            st.image(tiles, caption=captions, width=220)
    state.session().shown["results:gallery"] = len(tiles)


def gallery(run, done) -> tuple[list, list[str]]:
    """The gallery's tiles at display size and their captions (read from disk: memoised by the page)."""
    from neuroscope.images import resize_rgb
    tiles, captions = [], []
    for r in results.records(done):
        if r.get("overlay_file") and (run.folder / r["overlay_file"]).is_file():
            tiles.append(load_image(str(run.folder / r["overlay_file"])))
        else:
            m = results.map_of(run, r)
            if m is None:
                continue
            try:
                image = load_image(r["path"])
            except Exception:  # noqa: BLE001  (the image moved: the map alone)
                image = None
            tiles.append(render.overlay(image, m) if image is not None and image.shape[:2] == m.shape
                         else render.colorize(render.scale_map(m)))
        captions.append(f"{r['image']} · {r['method']}")
    return [resize_rgb(t, views.display_size(t.shape)) for t in tiles], captions


page()
