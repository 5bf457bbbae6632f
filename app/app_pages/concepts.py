"""Concepts: the relevant filters of a class (the model's interpretation, Oramas et al.),
what each one looks for (atlas crops) and where it fires on the current image."""
from __future__ import annotations

import streamlit as st

from dashboard import state, views
from dashboard.state import KEEP, Keys
from neuroscope.errors import NeuroscopeError
from neuroscope.interpret.concepts import atlas_crops, interpretation_of, ranked_filters, shares_here


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
    st.caption(f"Interpretation of {it.model}: {it.images} images, layers {', '.join(l['name'] for l in it.layers)}, "
               f"mu {it.mu}. {len(filters)} relevant filters of **{cls}** ({it.classes[cls]['samples']} samples).")
    if not filters:
        st.warning(f"The lasso kept no filter for {cls}.")
        return
    shares, acts = {}, {}
    if sel.resolved is not None and here == cls:
        try:
            shares, acts = shares_here(ex, sel.image, sel.target, it, cls)
        except NeuroscopeError as exc:
            st.error(f"{exc}")
    rows = [{"filter": f"{f['layer']}:{f['channel']}", "weight": round(f["weight"], 4),
             "share here": round(shares[(f["layer"], f["channel"])], 3) if shares else None} for f in filters]
    left, right = st.columns([2, 3])
    with left:
        st.dataframe(rows, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(rows)))
        names = [r["filter"] for r in rows]
        pick = st.selectbox("Filter", names, key=Keys.scoped("concepts_filter", sel.model_key, cls), **KEEP)
    layer, channel = pick.rsplit(":", 1)
    channel = int(channel)
    with right:
        crops = state.memo("concepts_atlas", (it.model, layer, channel), lambda: atlas_crops(it, layer, channel))
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
    state.session().shown["concepts"] = {"class": cls, "filters": rows, "filter": pick, "crops": len(crops)}


state.show(page)
