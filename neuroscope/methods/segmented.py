"""The original Neuroscope segmented maps: a class score map aggregated over regions.

Candidate regions are Felzenszwalb superpixels at several scales (each dilated by one
pixel), optionally plus the predicted class masks; a greedy cover then repeatedly takes
the region with the highest mean score over its not-yet-covered pixels and gives those
pixels that mean, until every pixel is covered (METHODS.md §1). Vectorised: the regions
are a sparse region x pixel matrix, the per-region sums and counts over uncovered pixels
are updated incrementally for the regions that touch newly covered pixels only, and the
superpixels of an image are computed once and cached (switching class is instant).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy import sparse

from .registry import MethodInfo, register

SEG = ("segmentation",)
SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SIZE = 150
#: 8-neighbourhood: each superpixel is dilated by one pixel.
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_ITEMS = 8


def label_regions(labels: np.ndarray, dilate: bool = True) -> sparse.csr_matrix:
    """Binary region x pixel matrix of a label image [h, w] (labels 0..n-1), each region
    dilated by one pixel (8-neighbourhood) when `dilate`."""
    h, w = labels.shape
    n = int(labels.max()) + 1
    pix = np.arange(h * w).reshape(h, w)
    rows, cols = [labels.ravel()], [pix.ravel()]
    if dilate:
        for dy, dx in _SHIFTS:
            # pixel (y, x) joins the region of its neighbour (y + dy, x + dx) where they differ
            ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            own, other = labels[ys, xs], labels[yd, xd]
            edge = own != other
            rows.append(other[edge])
            cols.append(pix[ys, xs][edge])
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, h * w))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def superpixel_regions(rgb: np.ndarray, key: str | None = None, tick=None) -> sparse.csr_matrix:
    """Felzenszwalb superpixels of `rgb` at all SCALES as one region x pixel matrix
    (cached by key); `tick(fraction, message)` is called after each scale."""
    if key is not None:
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
    from skimage.segmentation import felzenszwalb

    mats = []
    for i, scale in enumerate(SCALES):
        mats.append(label_regions(felzenszwalb(rgb, scale=scale, sigma=SIGMA, min_size=MIN_SIZE)))
        if tick is not None:
            tick(0.9 * (i + 1) / len(SCALES), "superpixels")
    m = sparse.vstack(mats, format="csr")
    if key is not None:
        with _cache_lock:
            _cache[key] = m
            while len(_cache) > _CACHE_ITEMS:
                _cache.popitem(last=False)
    return m


def greedy_cover(regions: sparse.csr_matrix, score: np.ndarray) -> np.ndarray:
    """Each pixel gets the mean score (over then-uncovered pixels) of the region that
    covered it, regions taken greedily by that mean, highest first. Pixels in no region
    keep their own score."""
    s = score.astype(np.float64).ravel()
    n_regions, n_pix = regions.shape
    by_pixel = regions.T.tocsr()                       # pixel -> regions containing it
    sums = regions @ s
    counts = np.asarray(regions.sum(axis=1)).ravel().astype(np.float64)
    mean = np.full(n_regions, -np.inf)
    np.divide(sums, counts, out=mean, where=counts > 0)
    out = s.copy()
    covered = np.zeros(n_pix, bool)
    left = int(np.count_nonzero(np.diff(by_pixel.indptr)))  # pixels some region can cover
    indptr, indices = regions.indptr, regions.indices
    pptr, pidx = by_pixel.indptr, by_pixel.indices
    while left > 0:
        r = int(np.argmax(mean))
        if mean[r] == -np.inf:
            break
        pix = indices[indptr[r]:indptr[r + 1]]
        pix = pix[~covered[pix]]
        out[pix] = mean[r]
        covered[pix] = True
        left -= len(pix)
        # remove the newly covered pixels from every region containing them
        starts, lens = pptr[pix], pptr[pix + 1] - pptr[pix]
        total = int(lens.sum())
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
        regs = pidx[offsets + np.arange(total)]
        touched = np.unique(regs)
        sums -= np.bincount(regs, weights=np.repeat(s[pix], lens), minlength=n_regions)
        counts -= np.bincount(regs, minlength=n_regions)
        c = counts[touched]
        mean[touched] = np.where(c > 0.5, sums[touched] / np.maximum(c, 1.0), -np.inf)
    return out.reshape(score.shape).astype(np.float32)


def class_regions(label_map: np.ndarray, n_classes: int) -> sparse.csr_matrix:
    """One region per predicted class (its one-hot mask), classes absent dropped."""
    m = label_regions(label_map.astype(np.int64), dilate=False)
    keep = np.flatnonzero(np.diff(m.indptr) > 0)
    return m[keep]


def _score_map(ctx) -> np.ndarray:
    """The target's class score map (logits) at model resolution; contrast: the difference."""
    logits = ctx.explainer.predict(ctx.prep).logits
    w = np.asarray(ctx.objective.class_weights, np.float32)
    idx = np.flatnonzero(w)
    return np.tensordot(w[idx], logits[idx], axes=(0, 0))


def _segmented(ctx, superpixels: bool, classes: bool) -> np.ndarray:
    parts = []
    if superpixels:
        parts.append(superpixel_regions(ctx.rgb, key=f"{ctx.prep.hash}:{ctx.model_size}", tick=ctx.tick))
    if classes:
        pred = ctx.explainer.predict(ctx.prep)
        parts.append(class_regions(pred.label_map, len(ctx.explainer.classes)))
    regions = sparse.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
    ctx.extra["regions"] = int(regions.shape[0])
    return greedy_cover(regions, _score_map(ctx))


@register(MethodInfo("segmented-score-map", "segmentation", needs_layer=False, signed=True, tasks=SEG,
                     description="The class score map averaged over the best-scoring superpixels: "
                                 "which image regions carry the class."))
def segmented_score_map(ctx) -> np.ndarray:
    return _segmented(ctx, superpixels=True, classes=False)


@register(MethodInfo("guided-segmented-score-map", "segmentation", needs_layer=False, signed=True, tasks=SEG,
                     description="Segmented score map whose candidate regions include the predicted class masks."))
def guided_segmented_score_map(ctx) -> np.ndarray:
    return _segmented(ctx, superpixels=True, classes=True)


@register(MethodInfo("similarity-map", "segmentation", needs_layer=False, signed=True, tasks=SEG,
                     description="The class score averaged over each predicted class region: how similar "
                                 "every predicted region is to the class."))
def similarity_map(ctx) -> np.ndarray:
    return _segmented(ctx, superpixels=False, classes=True)
