"""Chunked model passes for methods that run many of them: bounded memory, progress, cancel.

Every perturbation-style loop (Score-CAM, Ablation-CAM, occlusion, RISE, integrated
gradients, SmoothGrad) builds its inputs one chunk at a time, so memory depends on the
chunk size, never on the number of channels, windows, masks or steps.
"""
from __future__ import annotations

from typing import Iterator

#: Model-input pixels per chunk: 4 images at 256x512, 1 image from 512x1024 up. Small
#: chunks (2-4 images) were fastest on the 2-core machines (DESIGN.md) and keep the
#: activations of a 1024x2048 forward within a few hundred MB.
PIXELS_PER_CHUNK = 4 * 256 * 512
MAX_CHUNK = 4


def chunk_size(ctx) -> int:
    """Images per model call for this model's input size."""
    h, w = ctx.model_size
    if getattr(ctx.backend, "max_batch", None) == 1:   # a model that runs one image per pass
        return 1
    return max(1, min(MAX_CHUNK, PIXELS_PER_CHUNK // max(1, h * w)))


def chunks(ctx, n: int, message: str, size: int | None = None, start: float = 0.0,
           end: float = 1.0) -> Iterator[tuple[int, int]]:
    """Yield (lo, hi) index ranges covering range(n); after each, report progress in
    [start, end] through `ctx.tick` (which raises `Cancelled` when asked to stop)."""
    size = size or chunk_size(ctx)
    for lo in range(0, n, size):
        hi = min(n, lo + size)
        yield lo, hi
        ctx.tick(start + (end - start) * hi / n, message)
