"""What the Explain page offers for download: the overlay grid, the raw maps, the parameters.

The files are built from this session's results and target only (an engine result may
be shared with another session that asked the same question, so its metadata's target is
replaced by this session's), as bytes (no deferred callables: a rerun between the click
and the fetch dropped those), and memoised per session so a rerun does not rebuild them.
They are rebuilt on every new map, so they are built cheaply: the PNG without row filters
at zlib level 1 (`render.to_png_bytes(fast=True)`; Pillow took 50-150 ms) and the maps
uncompressed (np.savez; compressing 0.5 MB of floats cost ~40-150 ms a click).
"""
from __future__ import annotations

import io
import json

import numpy as np
import streamlit as st

from neuroscope import render

from . import state


def overlays_png(results: dict, overlays: dict) -> bytes:
    """The overlays as one PNG grid, each labelled with its method and layer."""
    names = [m for m in results if m in overlays]
    labels = [f"{m} ({results[m].meta['layer'] or 'input'})" for m in names]
    return render.to_png_bytes(render.montage([overlays[m] for m in names], labels, cols=3), compress_level=1, fast=True)


def maps_npz(results: dict) -> bytes:
    """Raw float32 maps at original image size, one array per method name (uncompressed)."""
    buf = io.BytesIO()
    np.savez(buf, **{m: r.map for m, r in results.items()})
    return buf.getvalue()


def parameters_json(model: str, image: str, shape, target: dict | None, results: dict) -> str:
    """Everything needed to reproduce the maps: model, image, this session's target and each
    method's metadata (with that target, not the one of whoever computed the cached map)."""
    methods = {m: {**r.meta, "target": target} for m, r in results.items()}
    doc = {"model": model, "image": image, "shape": list(shape), "target": target, "methods": methods}
    return json.dumps(_plain(doc), indent=2)


def download_buttons(sel: state.Selection, results: dict, overlays: dict) -> None:
    stem = f"neuroscope-{sel.explainer.spec.name}"
    target = sel.resolved.as_json() if sel.resolved else None
    png = state.memo("export_png", tuple(overlays), lambda: overlays_png(results, overlays),
                     refs=(*results.values(), *overlays.values()), size=2)
    npz = state.memo("export_npz", tuple(results), lambda: maps_npz(results), refs=tuple(results.values()), size=2)
    params = parameters_json(sel.explainer.spec.name, sel.image_name, sel.image.shape[:2], target, results)
    c1, c2, c3 = st.columns(3)
    c1.download_button("Overlays (PNG)", png, f"{stem}-overlays.png", "image/png", width="stretch",
                       on_click="ignore", key="download_png")
    c2.download_button("Raw maps (.npz)", npz, f"{stem}-maps.npz", "application/octet-stream", width="stretch",
                       on_click="ignore", key="download_npz")
    c3.download_button("Parameters (JSON)", params, f"{stem}-params.json", "application/json", width="stretch",
                       on_click="ignore", key="download_json")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
