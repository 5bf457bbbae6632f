"""Explain: the image (clickable), the prediction, and one overlay per method side by side."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, exports, state, views
from neuroscope.errors import NeuroscopeError
from neuroscope.methods.registry import MethodInfo, methods_for

MAPS = "ns_maps"           # method -> map float32 [H, W] of the last run (tests compare them)
RESULTS = "ns_results"     # method -> Explanation of the last run
OVERLAYS = "ns_overlays"   # method -> overlay uint8 as displayed
DEFAULT_METHODS = ("grad-cam",)


def available_methods(ex) -> dict[str, MethodInfo]:
    """Every registered method that fits the model's task and framework (new ones appear here)."""
    return {m.name: m for m in methods_for(ex.task, ex.backend.framework)}


def pick_methods(infos: dict[str, MethodInfo], task: str) -> list[str]:
    key = f"methods::{task}"
    chosen = [m for m in st.session_state.get(key, DEFAULT_METHODS) if m in infos]
    st.session_state[key] = chosen
    st.sidebar.multiselect("Methods", list(infos), key=key, placeholder="Choose methods",
                           help="Each selected method gets its own overlay; all share one colour scale.")
    with st.sidebar.expander("What the methods show"):
        st.markdown("\n".join(f"- **{n}** — {i.description or i.family}" + (" *(slow)*" if i.slow else "")
                              for n, i in infos.items()))
    return list(st.session_state[key])


def _param_widget(method: str, name: str, default):
    key = state.init(f"param::{method}::{name}", ", ".join(map(str, default)) if isinstance(default, list)
                     else default)
    label = name
    if isinstance(default, bool):
        return st.checkbox(label, key=key)
    if isinstance(default, int):
        return int(st.number_input(label, step=1, key=key))
    if isinstance(default, float):
        return float(st.number_input(label, step=max(abs(default) / 10, 0.01), format="%.4g", key=key))
    if isinstance(default, list):
        text = st.text_input(f"{label} (comma list)", key=key)
        return text if text.strip() else []
    return st.text_input(label, key=key)


def method_params(chosen: list[str], infos: dict[str, MethodInfo]) -> dict[str, dict]:
    """Editable parameters generated from each method's registry defaults."""
    params = {m: {} for m in chosen}
    with_params = [m for m in chosen if infos[m].all_params()]
    if not with_params:
        return params
    with st.sidebar.expander("Method parameters"):
        for m in with_params:
            st.markdown(f"**{m}**")
            for name, default in infos[m].all_params().items():
                params[m][name] = _param_widget(m, name, default)
    return params


def compute(sel: state.Selection, chosen: list[str], infos: dict[str, MethodInfo],
            params: dict[str, dict], slots: dict) -> tuple[dict, dict]:
    """Run (or fetch from the engine's cache) one explanation per method."""
    ex, results, errors = sel.explainer, {}, {}
    one_pass = [m for m in chosen if infos[m].needs_layer and not infos[m].slow]
    if one_pass and sel.layer is not None:
        try:  # one capture of every spatial layer: later layer switches need no model pass
            with st.spinner("Capturing activations and gradients of all layers…"):
                ex.capture(sel.image, sel.target)
        except NeuroscopeError:
            pass  # each method reports its own error below
    for m in chosen:
        info, slot = infos[m], slots[m]
        bar = {}

        def progress(fraction: float, message: str, slot=slot, bar=bar, m=m) -> bool:
            if "bar" not in bar:
                bar["bar"] = slot.progress(0.0)
            bar["bar"].progress(min(1.0, fraction), text=f"{m}: {message} ({fraction:.0%})")
            return True
        try:
            with slot, st.spinner(f"Computing {m}…"):
                results[m] = ex.explain(sel.image, m, target=sel.target,
                                        layer=sel.layer if info.needs_layer else None,
                                        params=params.get(m),
                                        progress=progress if info.slow or params[m].get("smooth") else None)
        except NeuroscopeError as exc:
            errors[m] = str(exc)
        if "bar" in bar:
            bar["bar"].empty()
    return results, errors


def downloads(sel: state.Selection, results: dict, overlays: dict) -> None:
    stem = f"neuroscope-{sel.explainer.spec.name}"
    target = sel.resolved.as_json() if sel.resolved else None
    c1, c2, c3 = st.columns(3)
    c1.download_button("Overlays (PNG)", lambda: exports.overlays_png(results, overlays), f"{stem}-overlays.png",
                       "image/png", width="stretch")
    c2.download_button("Raw maps (.npz)", lambda: exports.maps_npz(results), f"{stem}-maps.npz",
                       "application/octet-stream", width="stretch")
    c3.download_button("Parameters (JSON)", lambda: exports.parameters_json(
        sel.explainer.spec.name, sel.image_name, sel.image.shape[:2], target, results),
        f"{stem}-params.json", "application/json", width="stretch")


def target_summary(sel: state.Selection) -> str:
    r = sel.resolved
    if r is None:
        return "no target yet"
    where = "" if r.region is None else f" · region {r.region}" + (f" · {r.pixels:,} px" if r.pixels else "")
    contrast = "" if r.contrast_id is None else f" − {sel.explainer.classes[r.contrast_id]}"
    return f"target **{r.class_name}**{contrast}{where}"


def page() -> None:
    sel = state.current()
    if sel is None:
        st.info("Pick a model and an image in the sidebar.")
        return
    ex = sel.explainer
    infos = available_methods(ex)
    chosen = pick_methods(infos, ex.task)
    params = method_params(chosen, infos)

    with st.container(key="target_summary"):
        st.markdown(f"**{sel.model_label}** · {sel.image_name} · {target_summary(sel)}")
    left, right = st.columns(2)
    with left:
        if ex.task == "segmentation":
            views.clickable(sel, views.target_picture(sel))
            st.caption("Click an object to explain it; in box mode click two corners.")
        else:
            st.image(views.shown(sel.image), width="stretch")
    with right:
        if ex.task == "segmentation":
            st.image(views.prediction_picture(sel), width="stretch", caption="Predicted classes")
            st.altair_chart(charts.class_shares(sel.prediction.pixel_shares()[:12], ex.palette), width="stretch")
        else:
            st.altair_chart(charts.top_classes(sel.prediction.top(5)), width="stretch")

    if not chosen:
        st.info("Choose one or more methods in the sidebar.")
        return
    display = views.display_controls()
    if sel.resolved is None:
        st.warning("The target is not complete: see the sidebar.")
        return
    ncols = 2 if len(chosen) <= 2 else 3
    with st.container(key="overlays"):
        slots = {}
        for start in range(0, len(chosen), ncols):
            cols = st.columns(ncols)
            for col, m in zip(cols, chosen[start:start + ncols]):
                slots[m] = col.container()
        results, errors = compute(sel, chosen, infos, params, slots)
        picture = views.shown(sel.image)
        overlays = {}
        for m in chosen:
            with slots[m]:
                if m in errors:
                    st.error(f"{m}: {errors[m]}")
                    continue
                res = results[m]
                overlays[m] = display.overlay(picture, res.map, res.meta["signed"])
                layer = res.meta["layer"] or "input"
                st.image(overlays[m], width="stretch",
                         caption=f"{m} · {layer} · {res.meta['time_ms']:.0f} ms · "
                                 f"range {float(res.map.min()):.3g} … {float(res.map.max()):.3g}")
    st.session_state[RESULTS] = results
    st.session_state[MAPS] = {m: r.map for m, r in results.items()}
    st.session_state[OVERLAYS] = overlays
    if results:
        downloads(sel, results, overlays)


page()
