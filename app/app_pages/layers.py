"""Layers: the chosen layer's channels as a filter grid, channel statistics, and a layer sweep."""
from __future__ import annotations

import numpy as np
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from dashboard import charts, state, views
from dashboard.state import KEEP, Keys
from neuroscope import render
from neuroscope.errors import NeuroscopeError
from neuroscope.interactive import channel_order, channel_stats
from neuroscope.interpret.concepts import layer_marks

SORTS = {"importance": "importance for the target", "activation": "mean activation", "index": "channel index",
         "relevant": "relevant filters of the class first"}
GRID_COLS = 8
SWEEP_THUMB = (96, 192)


def channel_key(sel: state.Selection) -> str:
    """The selected channel, per model and layer (tests may set it)."""
    return Keys.scoped("layers_channel", sel.model_key, sel.layer)


def strip_layers(names: list[str]) -> list[str]:
    """The coarse layers (blocks) of a model: the two shallowest depths of the layer names."""
    depth = {n: n.count(".") + n.count("/") for n in names}
    top = min(depth.values())
    coarse = [n for n in names if depth[n] <= top + 1]
    return coarse if len(coarse) >= 4 else names


def filter_grid(sel: state.Selection, acts: np.ndarray, order: np.ndarray, mean_act: np.ndarray,
                importance: np.ndarray, sort: str, marks: dict[int, str] | None = None) -> None:
    k = len(order)
    c1, c2, c3 = st.columns(3)
    per_page = c1.selectbox("Tiles per page", [16, 32, 64, 128], index=1, key="layers_per_page", **KEEP)
    pages = max(1, -(-k // per_page))
    page_no = int(c2.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1,
                                  key=Keys.scoped("layers_page", sel.model_key, sel.layer, per_page), **KEEP))
    cmap = c3.selectbox("Tile colormap", ["viridis", "inferno", "gray", "jet"], key="layers_cmap", **KEEP)
    shown = order[(page_no - 1) * per_page: page_no * per_page]
    marks = marks or {}
    grid = state.memo("filter_grid", (tuple(shown.tolist()), cmap, tuple(sorted(marks.items()))),
                      lambda: render.filter_grid(acts, shown, cols=GRID_COLS, tile=96, cmap=cmap, numbers=True,
                                                 marks=marks), refs=(acts,), size=4)
    state.session().shown["layers_grid"] = {"image": grid, "shown": shown.tolist(), "marks": dict(marks)}
    rows = -(-len(shown) // GRID_COLS)
    key = channel_key(sel)

    def on_tile_click() -> None:
        v = st.session_state.get("grid_click")
        if not v or "x" not in v:
            return
        col = int(v["x"] / max(1, v["width"]) * GRID_COLS)
        row = int(v["y"] / max(1, v["height"]) * rows)
        i = row * GRID_COLS + min(col, GRID_COLS - 1)
        if 0 <= i < len(shown):
            state.set_choice(key, int(shown[i]))
    left, right = st.columns([3, 2])
    with left:
        st.caption(f"Channels {(page_no - 1) * per_page + 1}–{(page_no - 1) * per_page + len(shown)} of {k}, "
                   f"sorted by {SORTS[sort]}; each tile scaled on its own. Click a tile to enlarge it."
                   + (f" Orange frames: relevant filters of {sel.resolved.class_name} (rank, weight)." if marks else ""))
        streamlit_image_coordinates(grid, key="grid_click", width="stretch", on_click=on_tile_click,
                                    cursor="pointer")
    with right:
        ch = int(st.number_input("Channel", min_value=0, max_value=k - 1, value=int(order[0]), step=1, key=key,
                                 **KEEP))
        picture = views.shown(sel.image, (400, 560))
        # memoised by channel (acts[ch] is a new view each run: Display.overlay's memo would miss
        # and fill up, evicting the Explain page's overlays)
        enlarged = state.memo("channel_overlay", (ch,), lambda: render.overlay(
            picture, acts[ch], "inferno", 0.6, "both", 99.5), refs=(acts, picture), size=4)
        st.image(enlarged, width="stretch",
                 caption=f"channel {ch} over the image · mean activation {mean_act[ch]:.3g} · "
                         f"importance {importance[ch]:.3g}")
    st.altair_chart(charts.channel_stats(mean_act, importance, ch), width="stretch")


def layer_sweep(sel: state.Selection, names: list[str]) -> None:
    st.subheader("Layer sweep")
    every = st.toggle(f"All {len(names)} spatial layers (default: blocks only)", key="layers_sweep_all", **KEEP)
    chosen = names if every else strip_layers(names)
    picture = views.shown(sel.image, SWEEP_THUMB)

    def build() -> tuple[dict, list]:   # the maps and their thumbnails: once per image, target and layers
        maps = sel.explainer.sweep(sel.image, sel.target, layers=chosen)
        return maps, [render.overlay(picture, maps[n], "inferno", 0.5, "both", 99.5) for n in chosen]
    try:
        with st.spinner("Grad-CAM at every layer…"):
            maps, thumbs = state.memo("sweep", (sel.model_key, sel.image_key, sel.target.key(), tuple(chosen)),
                                      build, refs=(sel.explainer, picture), size=1)
    except NeuroscopeError as exc:
        st.error(f"{exc}")
        return
    state.session().shown["sweep"] = maps
    st.caption(f"Grad-CAM of {sel.resolved.class_name} at {len(chosen)} layers from one capture, "
               "input side first.")
    with st.container(key="sweep", height=420 if len(chosen) > 24 else "content"):
        st.image(thumbs, caption=chosen, width=SWEEP_THUMB[1])


def page(sel: state.Selection) -> None:
    if sel.layer is None:
        st.warning("This model has no layer with spatial output, so there is nothing to show here.")
        return
    if sel.resolved is None:
        st.warning("The target is not complete: see the sidebar.")
        return
    ex = sel.explainer
    st.markdown(f"**{sel.model_label}** · layer **{sel.layer}** · target **{sel.resolved.class_name}**")
    try:
        with st.spinner("Capturing the layer…"):
            acts, mean_act, importance = channel_stats(ex, sel.image, sel.target, sel.layer)
    except NeuroscopeError as exc:
        st.error(f"{exc}")
        return
    marks = layer_marks(ex, sel.layer, sel.resolved.class_name)
    if marks:   # the model's interpretation (Concepts page) lists these for the class: framed on the grid
        st.markdown(f"Relevant filters of **{sel.resolved.class_name}** in this layer (model interpretation, "
                    "see Concepts), framed in orange on the grid: " + ", ".join(f"{c} {m}" for c, m in marks.items()))
    state.session().shown["layers_relevant"] = list(marks)
    sort = st.radio("Sort channels by", list(SORTS), format_func=SORTS.get, horizontal=True, key="layers_sort",
                    **KEEP)
    order = channel_order("importance" if sort == "relevant" else sort, mean_act, importance)
    if sort == "relevant":
        order = np.concatenate([np.array(list(marks), int), order[~np.isin(order, list(marks))]])
    filter_grid(sel, acts, order, mean_act, importance, sort, marks)
    layer_sweep(sel, [l.name for l in ex.spatial_layers()])


state.show(page)
