"""Model: task, classes, preprocessing, device, and the architecture table."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, state
from neuroscope.interactive import parameter_counts


def page(sel: state.Selection) -> None:
    ex = sel.explainer
    spec = ex.spec
    counts = parameter_counts(ex)
    st.header(spec.name)
    if spec.description:
        st.caption(spec.description)
    c = st.columns([1.6, 1, 1, 1, 1])
    c[0].metric("Task", spec.task)
    c[1].metric("Framework", ex.backend.framework)
    c[2].metric("Device", str(ex.device))
    c[3].metric("Classes", len(ex.classes))
    c[4].metric("Parameters", f"{counts[''] / 1e6:.2f} M" if "" in counts else "—")
    for warning in getattr(ex.backend, "warnings", []) or []:
        st.warning(warning)

    left, right = st.columns([2, 3])
    with left:
        st.subheader("Preprocessing")
        h, w = spec.input_size
        st.dataframe(pd.DataFrame({"setting": [
            "input size", "resize", "value range", "mean", "std", "fully convolutional", "output"],
            "value": [f"{h} × {w} (H × W)", "whole image, bilinear, no crop",
                      f"{spec.value_range[0]:g} … {spec.value_range[1]:g}",
                      ", ".join(f"{v:g}" for v in spec.mean), ", ".join(f"{v:g}" for v in spec.std),
                      "yes" if spec.fully_convolutional else "no", spec.output_kind]}),
            hide_index=True, width="stretch")
        st.subheader("Classes")
        table = pd.DataFrame({"id": range(len(ex.classes)), "name": ex.classes})
        if ex.task == "segmentation":   # the colour as a swatch, not as hex text
            colours = [charts.hex_colour(c) for c in ex.palette[: len(ex.classes)]]
            table["colour"] = ""
            table = table.style.apply(lambda col: [f"background-color: {c}" for c in colours], subset=["colour"])
        st.dataframe(table, hide_index=True, width="stretch", height=320)
    with right:
        st.subheader("Architecture")
        layers = ex.layers()
        default = ex.default_layer()
        st.caption(f"{len(layers)} layers in execution order, {sum(l.spatial for l in layers)} with spatial output; "
                   f"default explanation layer: {default or '—'}. Shapes are channels-first without the batch.")
        arch = pd.DataFrame({
            "layer": [l.name for l in layers],
            "type": [l.type for l in layers],
            "output shape": ["—" if l.shape is None else " × ".join(map(str, l.shape)) for l in layers],
            "stride": [l.stride if l.spatial else None for l in layers],
            "parameters": [counts.get(l.name) for l in layers],
        })
        state.session().shown["architecture"] = arch
        st.dataframe(arch, hide_index=True, width="stretch", height=560,
                     column_config={"parameters": st.column_config.NumberColumn(format="%d")})


state.show(page, needs="a model")
