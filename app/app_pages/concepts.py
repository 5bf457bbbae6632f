"""Concepts: the relevant filters of a class (the model's interpretation, Oramas et al.),
each with its class average; click one to see what it looks for (atlas crops: where it
is most LRP-relevant for the class, where it activates most) and where it fires on the
current image with its share of the evidence."""
from __future__ import annotations

import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from dashboard import state, views
from dashboard.state import KEEP, Keys
from neuroscope.errors import NeuroscopeError
from neuroscope.interpret.concepts import (atlas_crops, average_tile, filter_relevance, filter_strip,
                                           interpretation_of, ranked_filters, shares_here, strip_index)

CLICK_KEY = "concepts_strip_click"


def page(sel: state.Selection) -> None:
    ex = sel.explainer
    it = interpretation_of(ex)
    if it is None:
        st.info(f"No interpretation is bundled for {sel.model_label}. Run `neuroscope interpret MODEL --set ... "
                "--out DIR` and use the method relevant-filters with interpretation=DIR.")
        return
    classes = list(it.classes)
    here = sel.resolved.class_name if sel.resolved is not None else None
    cls = st.selectbox("Class", classes, index=classes.index(here) if here in classes else 0,
                       key=Keys.scoped("concepts_class", sel.model_key), **KEEP)
    filters = ranked_filters(it, cls)
    source = it.relevance_source
    st.caption(f"Interpretation of {it.model}: {it.images} images, layers {', '.join(l['name'] for l in it.layers)}, "
               f"mu {it.mu}. {len(filters)} relevant filters of **{cls}** ({it.classes[cls]['samples']} samples). "
               + (f"Per-class relevance: {source}." if source else
                  "No per-class relevance stored (rerun `neuroscope interpret` for LRP relevance and class averages)."))
    if not filters:
        st.warning(f"The lasso kept no filter for {cls}.")
        return
    shares, acts = {}, {}
    if sel.resolved is not None and here == cls:
        try:
            shares, acts = shares_here(ex, sel.image, sel.target, it, cls)
        except NeuroscopeError as exc:
            st.error(f"{exc}")
    relevance = filter_relevance(it, cls, filters)
    rows = [{"filter": f"{f['layer']}:{f['channel']}", "weight": round(f["weight"], 4),
             "LRP relevance": None if r is None else round(r, 4),
             "share here": round(shares[(f["layer"], f["channel"])], 3) if shares else None}
            for f, r in zip(filters, relevance)]
    names = [r["filter"] for r in rows]
    pick_key = Keys.scoped("concepts_filter", sel.model_key, cls)

    def on_strip_click() -> None:
        i = strip_index(st.session_state.get(CLICK_KEY), len(names))
        if i is not None:
            state.set_choice(pick_key, names[i])

    current = st.session_state.get(pick_key)
    selected = names.index(current) if current in names else 0
    strip = state.memo("concepts_strip", (it.model, cls, selected), lambda: filter_strip(it, cls, filters, selected),
                       refs=(it,), size=8)
    st.markdown(f"**Relevant filters of {cls}**, heaviest first: each tile is the filter's average over the "
                f"class's images (mean of its {it.extra.get('class_average', {}).get('size', '')} px windows where "
                "it is most LRP-relevant, its mean relevance in inferno). Click a tile to pick the filter.")
    with st.container(key="concepts_strip"):
        streamlit_image_coordinates(strip, key=CLICK_KEY, width="stretch", on_click=on_strip_click, cursor="pointer")
    left, right = st.columns([2, 3])
    with left:
        st.dataframe(rows, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(rows)))
        pick = st.selectbox("Filter", names, key=pick_key, **KEEP)
    layer, channel = pick.rsplit(":", 1)
    channel = int(channel)
    with right:
        average = it.class_average(cls, layer, channel)
        if average is not None:
            with st.container(key="concepts_average"):
                st.image([average_tile(it, cls, layer, channel), average[0]], width=160,
                         caption=[f"{pick}: class average for {cls} ({average[2]} windows, LRP relevance)",
                                  "the mean crop alone"])
        else:
            st.caption(f"No class average stored for {pick} and {cls}.")
        crops = state.memo("concepts_atlas", (it.model, layer, channel), lambda: atlas_crops(it, layer, channel))
        rel_crops = state.memo("concepts_relatlas", (it.model, cls, layer, channel),
                               lambda: atlas_crops(it, layer, channel, k=4, class_name=cls))
        if rel_crops:
            st.markdown(f"Where **{pick}** is most relevant for **{cls}** (LRP relevance share)")
            with st.container(key="concepts_relatlas"):
                st.image([c for c, _ in rel_crops], caption=[f"{v:.3g}" for _, v in rel_crops], width=96)
        st.markdown(f"**{pick}**: its strongest activations over the interpretation's images")
        with st.container(key="concepts_atlas"):
            if crops:
                st.image([c for c, _ in crops], caption=[f"{v:.3g}" for _, v in crops], width=96)
            else:
                st.caption("No atlas stored for this filter.")
        if acts:
            display = views.Display("inferno", 0.6, "positive", 99.5)
            picture = views.shown(sel.image, (300, 560))
            st.image(display.overlay(picture, acts[layer][channel], signed=False), width="stretch",
                     caption=f"{pick} on this image · share of the {cls} evidence here "
                             f"{shares[(layer, channel)]:.1%}")
        else:
            st.caption(f"Pick {cls} as the target in the sidebar to see where this filter fires here and its share.")
    state.session().shown["concepts"] = {"class": cls, "filters": rows, "filter": pick, "crops": len(crops),
                                         "relevance_crops": len(rel_crops), "relevance": source,
                                         "average": average is not None, "strip": strip.shape}


state.show(page)
