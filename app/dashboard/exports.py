"""What the Explain page offers for download: the overlay grid, the raw maps, the parameters."""
from __future__ import annotations

import io
import json

import numpy as np

from neuroscope import render


def overlays_png(results: dict, overlays: dict) -> bytes:
    """The overlays as one PNG grid, each labelled with its method and layer."""
    names = [m for m in results if m in overlays]
    labels = [f"{m} ({results[m].meta['layer'] or 'input'})" for m in names]
    return render.to_png_bytes(render.montage([overlays[m] for m in names], labels, cols=3))


def maps_npz(results: dict) -> bytes:
    """Raw float32 maps at original image size, one array per method name."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{m: r.map for m, r in results.items()})
    return buf.getvalue()


def parameters_json(model: str, image: str, shape, target: dict | None, results: dict) -> str:
    """Everything needed to reproduce the maps: model, image, target and each method's metadata."""
    doc = {"model": model, "image": image, "shape": list(shape), "target": target,
           "methods": {m: r.meta for m, r in results.items()}}
    return json.dumps(_plain(doc), indent=2)


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
