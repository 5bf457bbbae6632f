"""Perturbation family: occlusion and RISE — scores of perturbed inputs, run in chunks.

Both act on the resized uint8-range RGB image before normalisation (CONTRACT.md §1) and
score with the logit-form scalar (CONTRACT.md §2, as Captum does). Because preprocessing
is affine per pixel, "replace by the baseline" and "multiply by a mask" are done on the
preprocessed input directly: x' = b + M (x - b) with b the preprocessed baseline.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BadParameter
from ..images import resize_maps
from .chunks import chunk_size, chunks
from .registry import MethodInfo, register


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins 0, stride, ... plus a last one flush with the border, so every
    pixel is covered (on aligned sizes these are exactly Captum's windows)."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@register(MethodInfo("occlusion", "perturbation", needs_layer=False, signed=True, slow=True,
                     params={"window": 16, "stride": 8, "baseline": "black"},
                     description="Score drop when a sliding patch is replaced by the baseline: model-agnostic, slow."))
def occlusion(ctx) -> np.ndarray:
    window, stride = ctx.params["window"], ctx.params["stride"]
    H, W = ctx.model_size
    if window < 1 or stride < 1:
        raise BadParameter(f"occlusion needs window >= 1 and stride >= 1, got {window} and {stride}")
    wh, ww = min(window, H), min(window, W)
    origins = [(y, x) for y in window_starts(H, wh, stride) for x in window_starts(W, ww, stride)]
    x = ctx.x[0]
    base = ctx.preprocess(ctx.baseline_rgb(ctx.params["baseline"])[None])[0]
    y_clean = float(ctx.backend.scores(ctx.x, ctx.objective)[0])
    # Sums over windows as a 2-D difference array (one cumsum at the end).
    total = np.zeros((H + 1, W + 1), np.float64)
    count = np.zeros((H + 1, W + 1), np.float64)
    size = chunk_size(ctx)
    buf = np.repeat(x[None], min(size, len(origins)), axis=0)  # reused: only patches change
    for lo, hi in chunks(ctx, len(origins), "occlusion windows", size=size):
        part = origins[lo:hi]
        for i, (y0, x0) in enumerate(part):
            buf[i, y0:y0 + wh, x0:x0 + ww] = base[y0:y0 + wh, x0:x0 + ww]
        drops = y_clean - ctx.backend.scores(buf[:len(part)], ctx.objective)
        for i, ((y0, x0), d) in enumerate(zip(part, drops)):
            buf[i, y0:y0 + wh, x0:x0 + ww] = x[y0:y0 + wh, x0:x0 + ww]
            for arr, v in ((total, d), (count, 1.0)):
                arr[y0, x0] += v
                arr[y0, x0 + ww] -= v
                arr[y0 + wh, x0] -= v
                arr[y0 + wh, x0 + ww] += v
    total = total.cumsum(0).cumsum(1)[:H, :W]
    count = count.cumsum(0).cumsum(1)[:H, :W]
    ctx.extra["windows"] = len(origins)
    return (total / np.maximum(count, 1.0)).astype(np.float32)


def rise_masks(rng: np.random.Generator, n: int, cells: int, p: float,
               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """The random part of RISE, drawn once: binary grids [n, cells, cells] and shifts.
    Masks are made from them chunk by chunk with `rise_batch`."""
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
    dy = rng.integers(0, cell[0], n)
    dx = rng.integers(0, cell[1], n)
    return grids, dy, dx, cell


def rise_batch(grids: np.ndarray, dy: np.ndarray, dx: np.ndarray, cell: tuple[int, int],
               size: tuple[int, int]) -> np.ndarray:
    """RISE masks [n, H, W]: each grid upsampled bilinearly to (cells + 1) * cell (the shared
    resize, batched), cropped at its shift."""
    cells = grids.shape[1]
    up = resize_maps(list(grids), ((cells + 1) * cell[0], (cells + 1) * cell[1]))
    return np.stack([u[y:y + size[0], x:x + size[1]] for u, y, x in zip(up, dy, dx)])


@register(MethodInfo("rise", "perturbation", needs_layer=False, signed=False, slow=True,
                     params={"masks": 500, "cells": 8, "p": 0.5, "seed": 0},
                     description="Average of random masks weighted by the score of the masked image: "
                                 "model-agnostic, seeded, slow."))
def rise(ctx) -> np.ndarray:
    n, cells, p = ctx.params["masks"], ctx.params["cells"], ctx.params["p"]
    if n < 1 or cells < 1 or not 0.0 < p <= 1.0:
        raise BadParameter(f"rise needs masks >= 1, cells >= 1 and 0 < p <= 1; got {n}, {cells}, {p}")
    H, W = ctx.model_size
    grids, dy, dx, cell = rise_masks(ctx.rng(ctx.params["seed"]), n, cells, p, (H, W))
    base = ctx.preprocess(np.zeros((1, H, W, 3), np.float32))[0]  # x * M: black where masked
    diff = ctx.x[0] - base
    total = np.zeros((H, W), np.float64)
    for lo, hi in chunks(ctx, n, "RISE masks"):
        masks = rise_batch(grids[lo:hi], dy[lo:hi], dx[lo:hi], cell, (H, W))
        y = ctx.backend.scores(base[None] + masks[..., None] * diff[None], ctx.objective)
        total += np.tensordot(y.astype(np.float64), masks, axes=(0, 0))
    ctx.extra["masks"] = n
    return (total / (n * p)).astype(np.float32)
