"""Explain: the image (clickable), the prediction, and one overlay per method side by side."""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import streamlit as st

from dashboard import charts, exports, jobs, parts_view, state, timing, views
from dashboard.state import KEEP, Keys
from neuroscope.errors import NeuroscopeError
from neuroscope.interactive import cost, duration, interactive_params, methods_for, prefetch_layers, record_run
from neuroscope.methods.registry import MethodInfo

DEFAULT_METHODS = ("grad-cam",)


def pick_methods(infos: dict[str, MethodInfo], task: str) -> list[str]:
    chosen = st.sidebar.multiselect(
        "Methods", list(infos), default=[m for m in DEFAULT_METHODS if m in infos], key=Keys.scoped("methods", task),
        placeholder="Choose methods", help="Each selected method gets its own overlay.", **KEEP)
    with st.sidebar.expander("What the methods show"):
        st.markdown("\n".join(f"- **{n}** — {i.description or i.family}" + (" *(slow)*" if i.slow else "")
                              for n, i in infos.items()))
    return [m for m in chosen if m in infos]


def param_key(task: str, method: str, name: str) -> str:
    return Keys.scoped("param", task, method, name)


def _param_widget(task: str, method: str, name: str, default, choices: dict[str, str] | None = None):
    key = param_key(task, method, name)
    if choices:   # a fixed set of values: a choice list, each value's help text below it
        options = list(choices)
        value = st.selectbox(name, options, index=options.index(default) if default in options else 0, key=key,
                             help="\n".join(f"- **{k}**: {v}" for k, v in choices.items()), **KEEP)
        st.caption(choices.get(value, ""))
        return value
    if isinstance(default, bool):
        return st.checkbox(name, value=default, key=key, **KEEP)
    if isinstance(default, int):
        return int(st.number_input(name, value=default, step=1, key=key, **KEEP))
    if isinstance(default, float):
        return float(st.number_input(name, value=default, step=max(abs(default) / 10, 0.01), format="%.4g",
                                     key=key, **KEEP))
    if isinstance(default, list):
        text = st.text_input(f"{name} (comma list)", value=", ".join(map(str, default)), key=key, **KEEP)
        return text if text.strip() else []
    return st.text_input(name, value=str(default), key=key, **KEEP)


def defaults(task: str, info: MethodInfo) -> dict:
    """The registry's defaults, with the lighter interactive ones of this task on top."""
    return {**info.all_params(), **interactive_params(task, info.name)}


def method_params(task: str, chosen: list[str], infos: dict[str, MethodInfo]) -> dict[str, dict]:
    """Editable parameters generated from each method's registry defaults."""
    params = {m: {} for m in chosen}
    with_params = [m for m in chosen if infos[m].all_params()]
    if not with_params:
        return params
    with st.sidebar.expander("Method parameters"):
        for m in with_params:
            st.markdown(f"**{m}**")
            for name, default in defaults(task, infos[m]).items():
                params[m][name] = _param_widget(task, m, name, default, infos[m].choices.get(name))
    return params


def full_quality(sel: state.Selection, info: MethodInfo, params: dict) -> tuple[str, Callable[[], None]] | None:
    """For a method running with interactive settings: the tile's note, and a button that
    switches to the registry's (full-quality) settings and starts the run."""
    light = interactive_params(sel.task, info.name)
    if not light or any(params.get(k) != v for k, v in light.items()):
        return None
    full = {k: info.all_params()[k] for k in light}
    try:
        full_cost = cost(sel.explainer, info.name, {**params, **full})
    except NeuroscopeError:
        return None
    say = ", ".join(f"{k} {v}" for k, v in light.items())
    note = (f"Interactive settings: {say}. Full quality ({', '.join(f'{k} {v}' for k, v in full.items())}): "
            f"{full_cost.text()}.")

    def switch() -> None:
        for k, v in full.items():
            state.set_choice(param_key(sel.task, info.name, k), v)
        state.session().kept["autostart"] = info.name

    def button() -> None:
        st.button(f"Full quality ({duration(full_cost.seconds)})", key=f"full::{info.name}", on_click=switch,
                  icon=":material/high_quality:")
    return note, button


def compute(sel: state.Selection, chosen: list[str], infos: dict[str, MethodInfo],
            params: dict[str, dict], slots: dict) -> tuple[dict, dict]:
    """Run (or fetch from the engine's cache) one explanation per method."""
    ex, results, errors = sel.explainer, {}, {}
    autostart = state.session().kept.pop("autostart", None)
    for m in chosen:
        info, slot = infos[m], slots[m]
        layer = sel.layer if info.needs_layer else None
        try:
            c = cost(ex, m, params[m], layer)
        except NeuroscopeError as exc:
            errors[m] = str(exc)
            continue
        if c.over():   # slow: on request, in the background
            key = (sel.model_key, sel.image_key, sel.target.key(), m, layer, repr(sorted(params[m].items())))

            def run(progress, m=m, layer=layer, p=params[m], passes=c.passes):
                t0 = time.perf_counter()
                res = ex.explain(sel.image, m, target=sel.target, layer=layer, params=p, progress=progress)
                record_run(ex, m, passes, time.perf_counter() - t0)
                return res
            note, button = full_quality(sel, info, params[m]) or ("", None)
            with slot:
                job = jobs.tile(key, m, c, run, note=note, extra=button, autostart=autostart == m)
            if job is not None:
                results[m] = job.result
            continue
        bar = {}

        def progress(fraction: float, message: str, slot=slot, bar=bar, m=m) -> bool:
            if "bar" not in bar:
                bar["bar"] = slot.progress(0.0)
            bar["bar"].progress(min(1.0, fraction), text=f"{m}: {message} ({fraction:.0%})")
            return True
        # Streamlit's spinner appears only after 0.5 s, and starting its timer thread took up
        # to 60 ms of a click on a busy machine: only for work estimated to last that long
        waiting = st.spinner(f"Computing {m}…") if c.seconds >= 0.5 else contextlib.nullcontext()
        try:
            with slot, waiting, timing.phase("cam"):
                results[m] = ex.explain(sel.image, m, target=sel.target, layer=layer, params=params.get(m),
                                        progress=progress if info.slow or params[m].get("smooth") else None)
        except NeuroscopeError as exc:
            errors[m] = str(exc)
        if "bar" in bar:
            bar["bar"].empty()
    return results, errors


def target_summary(sel: state.Selection) -> str:
    r = sel.resolved
    if r is None:
        return "no target yet"
    where = "" if r.region is None else f" · region {r.region}" + (f" · {r.pixels:,} px" if r.pixels else "")
    contrast = "" if r.contrast_id is None else f" − {sel.explainer.classes[r.contrast_id]}"
    return f"target **{r.class_name}**{contrast}{where}"


def page(sel: state.Selection) -> None:
    ex = sel.explainer
    infos = methods_for(ex)
    chosen = pick_methods(infos, ex.task)
    params = method_params(ex.task, chosen, infos)

    with st.container(key="target_summary"):
        st.markdown(f"**{sel.model_label}** · {sel.image_name} · {target_summary(sel)}")
    left, right = st.columns(2)
    with left:
        if ex.task == "segmentation":
            with timing.phase("target picture"):
                picture = views.target_picture(sel)
            with timing.phase("encode"):
                views.clickable(sel, picture)
            st.caption("Click an object to explain it; in box mode click two corners.")
        else:
            views.image(views.shown(sel.image), width="stretch")
    with right:
        if ex.task == "segmentation":
            with timing.phase("prediction picture"):
                picture = views.prediction_picture(sel)
            with timing.phase("encode"):
                views.image(picture, width="stretch", caption="Predicted classes")
            with timing.phase("charts"):
                views.chart("shares", sel.prediction, lambda: charts.class_shares(
                    sel.prediction.pixel_shares()[:12], ex.palette))
        else:
            with timing.phase("charts"):
                views.chart("top", sel.prediction, lambda: charts.top_classes(sel.prediction.top(5)))

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
                if m not in results and m not in errors:
                    continue   # a slow method waiting for Compute or running
                if m in errors:
                    st.error(f"{m}: {errors[m]}")
                    continue
                res = results[m]
                with timing.phase("overlay"):
                    overlays[m] = display.overlay(picture, res.map, res.meta["signed"])
                layer = res.meta["layer"] or "input"
                caption = f"{m} · {layer} · {res.meta['time_ms']:.0f} ms"
                with timing.phase("encode"):
                    if display.raw:
                        a, b = st.columns(2)
                        with a:
                            views.image(overlays[m], width="stretch", caption=caption)
                        with b:
                            views.image(display.raw_map(picture, res.map, res.meta["signed"]), width="stretch",
                                        caption=f"{m}: the map alone")
                    else:
                        views.image(overlays[m], width="stretch", caption=caption)
                timing.mark("map sent")
                if display.empties(res.map, res.meta["signed"]):
                    st.warning(f"{m} has no {views.SIGN_LABELS[display.sign].split()[0]} values: the sign filter "
                               "leaves an empty map. Choose *both* to see it.")
                with timing.phase("legend"):
                    legend = display.legend(res.map, res.meta["signed"], infos[m].family)
                with timing.phase("encode"):
                    views.image(legend, width="stretch")
                for warning in res.meta.get("warnings", ()):   # e.g. activations a rule could not reach
                    st.warning(warning)
    if sel.layer is not None and any(infos[m].needs_layer and not infos[m].slow for m in results):
        with timing.phase("prefetch"):
            prefetch_layers(ex, sel.image, sel.target, sel.image_key)   # later layer switches: no model pass
    shown = state.session().shown
    shown["results"], shown["overlays"] = results, overlays
    shown["maps"] = {m: r.map for m, r in results.items()}
    if results:
        with timing.phase("downloads"):
            exports.download_buttons(sel, results, overlays)
    with timing.phase("parts"):
        parts_view.render(sel)   # the clicked object's parts, their shares and drops (Harada et al.)


state.show(page)
