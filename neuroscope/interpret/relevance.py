"""The per-class half of the concept atlas, from LRP (METHODS.md §7 / the LRP issue).

For the samples of the first `images` images of the interpretation's set (classification:
the image and its label; segmentation: each (image, class) sample, the class's predicted
region as the target), ONE LRP backward (composite ``epsilon-plus-flat``) gives the
relevance of every filter of the interpreted layers at once ([K, h, w] per layer). Per
sample and layer the relevance is divided by the layer's total |relevance|, so it is the
filter's share of the class's evidence there. Kept:

- ``rel_*`` [C, F, RELEVANCE_K]: per class and filter the top positions (value, image,
  row, column at layer resolution) where the filter is most relevant for the class;
- ``R`` [C, F]: the filter's mean relevance share for the class over its samples;
- the class "interpretation" of each relevant filter (the class's top AVERAGE_FILTERS
  filters by weight): the mean of its top-AVERAGE_K windows of the class's images
  (``avg_rgb`` [P, S, S, 3]) and the mean of its positive relevance there, each window
  scaled to max 1 (``avg_map`` [P, S, S]); ``avg_pairs`` [P, 2] = (class row, filter index).

Cost: per sample one forward and one LRP backward that stops at the interpreted layers
(`passes.layer_relevances`; the first pass of an image gives its prediction and targets).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..errors import Cancelled, NeuroscopeError

COMPOSITE = "epsilon-plus-flat"
RELEVANCE_IMAGES = 32           # default: the first 32 images of the set (~1 LRP backward per sample)
RELEVANCE_K = 4                 # per class and filter, the top positions kept
AVERAGE_FILTERS = 16            # per class, the filters (by weight) with a class average
AVERAGE_K = 8                   # windows averaged
AVERAGE_SIZE = 48               # side of the stored average, pixels


def window_half(stride: int) -> int:
    """Half side (model pixels) of an atlas window at a layer of this stride."""
    return max(24, 3 * int(stride) // 2)


def window(arr: np.ndarray, cy: int, cx: int, half: int, fill) -> np.ndarray:
    """arr[cy-half:cy+half, cx-half:cx+half] padded with `fill` where it leaves arr."""
    H, W = arr.shape[:2]
    out = np.full((2 * half, 2 * half, *arr.shape[2:]), fill, arr.dtype)
    y0, x0 = cy - half, cx - half
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(H, cy + half), min(W, cx + half)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = arr[ys:ye, xs:xe]
    return out


def _small(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    if a.ndim == 3:
        return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))
    from ..images import resize_map
    return resize_map(a, (size, size))


def relevance_pass(explainer, it, items, images: int = RELEVANCE_IMAGES,
                   progress: Callable[[float, str], bool | None] | None = None) -> None:
    """Fill it.relevance_atlas, it.R, it.average and it.extra["relevance"] (see the module)."""
    from ..images import resize_map, resize_rgb
    from ..methods.propagation import make_composite
    from .passes import layer_relevances
    from ..targets import Target
    t0 = time.perf_counter()
    if it.labels is None or it.sample_image is None or images <= 0:
        return
    layers = [l["name"] for l in it.layers]
    strides = {l["name"]: int(l["stride"]) for l in it.layers}
    offsets = it.offsets
    names = list(it.classes)
    row_of = {it.classes[n]["class_id"]: r for r, n in enumerate(names)}
    C, F = len(names), it.num_filters
    H, W = it.extra.get("input_size") or explainer.spec.input_size
    n_images = min(images, len(items))
    chosen = np.flatnonzero(it.sample_image < n_images)
    by_image: dict[int, list[int]] = {}
    for s in chosen:
        by_image.setdefault(int(it.sample_image[s]), []).append(int(it.labels[s]))
    # the filters with a class average: per class row, {filter index: slot}
    avg_of: list[dict[int, int]] = []
    pairs = []
    for r, n in enumerate(names):
        fs = sorted(it.classes[n]["filters"], key=lambda f: -f["weight"])[:AVERAGE_FILTERS]
        slots = {}
        for f in fs:
            slots[it.filter_index(f["layer"], f["channel"])] = len(pairs)
            pairs.append((r, it.filter_index(f["layer"], f["channel"])))
        avg_of.append(slots)
    cand: list[list[tuple]] = [[] for _ in pairs]       # per pair: (value, image, rgb window, map window)
    top = {k: np.zeros((C, F, 0), np.float32 if k == "value" else np.int32) for k in ("value", "image", "row", "col")}
    rsum, count = np.zeros((C, F), np.float64), np.zeros(C, np.int64)

    class Ctx:   # what make_composite reads (the model's input bounds)
        params: dict = {}
        preprocess = staticmethod(explainer.preprocess_rgb)
    comp = make_composite(Ctx(), COMPOSITE)
    done_samples, skipped = 0, 0
    order = sorted(by_image)
    for step, i in enumerate(order):
        rgb = items[i].load()
        rgb = rgb if rgb.shape[:2] == (H, W) else resize_rgb(rgb, (H, W))
        prep = explainer.prepare(rgb)
        new = {k: np.zeros((C, F, 1), v.dtype) for k, v in top.items()}
        samples = [(row_of[cid], cid) for cid in by_image[i] if cid in row_of]
        targets = [Target.classification(names[r]) if it.task == "classification"
                   else Target.segmentation(names[r], "predicted") for r, _ in samples]

        def decide(logits, prep=prep, targets=targets):
            # the prediction and targets from the relevance pass's own forward (cached
            # as `Explainer.predict` / `resolve` would); None: e.g. the class is not
            # predicted in this image
            out = []
            for t in targets:
                try:   # (the prediction once: the first call caches it, the others take it)
                    out.append(explainer._decide(prep, t, logits).objective)
                except NeuroscopeError:
                    out.append(None)
            return out

        try:
            rels = layer_relevances(explainer.backend, prep.x, decide, layers, comp) if samples else []
        except NeuroscopeError:
            rels = [None] * len(samples)
        for (r, _), rel_of in zip(samples, rels):
            if rel_of is None:
                skipped += 1
                continue
            done_samples += 1
            count[r] += 1
            for l in layers:
                rel = rel_of[l]                                            # [K, h, w]
                rel = rel / max(float(np.abs(rel).sum()), 1e-12)
                K, h, w = rel.shape
                o = offsets[l]
                flat = rel.reshape(K, -1)
                pos = flat.argmax(axis=1)
                val = flat[np.arange(K), pos]
                rsum[r, o:o + K] += flat.sum(axis=1)
                better = val > new["value"][r, o:o + K, 0]
                new["value"][r, o:o + K, 0] = np.where(better, val, new["value"][r, o:o + K, 0])
                new["image"][r, o:o + K, 0] = np.where(better, i, new["image"][r, o:o + K, 0])
                new["row"][r, o:o + K, 0] = np.where(better, pos // w, new["row"][r, o:o + K, 0])
                new["col"][r, o:o + K, 0] = np.where(better, pos % w, new["col"][r, o:o + K, 0])
                stride, half = strides[l], window_half(strides[l])
                for j, slot in avg_of[r].items():
                    ch = j - o
                    if not 0 <= ch < K or val[ch] <= 0:
                        continue
                    c = cand[slot]
                    if len(c) >= AVERAGE_K and val[ch] <= min(v for v, *_ in c):
                        continue
                    cy, cx = int(pos[ch] // w) * stride + stride // 2, int(pos[ch] % w) * stride + stride // 2
                    m = np.clip(resize_map(rel[ch], (H, W)), 0, None)
                    mw = window(m, cy, cx, half, 0.0)
                    peak = float(mw.max())
                    c.append((float(val[ch]), i, _small(window(rgb, cy, cx, half, 127), AVERAGE_SIZE),
                              _small(mw / peak if peak > 0 else mw, AVERAGE_SIZE)))
                    c.sort(key=lambda t: -t[0])
                    del c[AVERAGE_K:]
        top = _merge({k: np.concatenate([top[k], new[k]], axis=2) for k in top})
        if progress is not None:
            msg = f"LRP relevance {step + 1}/{len(order)} images ({done_samples} samples)"
            if progress((step + 1) / len(order), msg) is False:
                raise Cancelled(f"interpret cancelled in the relevance pass after {step + 1} images; rerun to continue")
    top["value"][top["value"] <= 0] = 0.0
    it.relevance_atlas = top
    it.R = (rsum / np.maximum(count, 1)[:, None]).astype(np.float32)
    keep = [p for p, c in enumerate(cand) if c]
    it.average = {"pairs": np.array([pairs[p] for p in keep], np.int32).reshape(-1, 2),
                  "count": np.array([len(cand[p]) for p in keep], np.int32),
                  "rgb": np.stack([np.mean([t[2] for t in cand[p]], axis=0).round().astype(np.uint8) for p in keep])
                  if keep else np.zeros((0, AVERAGE_SIZE, AVERAGE_SIZE, 3), np.uint8),
                  "map": np.stack([(np.mean([t[3] for t in cand[p]], axis=0) * 255).round().clip(0, 255).astype(np.uint8)
                                   for p in keep]) if keep else np.zeros((0, AVERAGE_SIZE, AVERAGE_SIZE), np.uint8)}
    it.extra["relevance"] = {"method": "lrp", "composite": COMPOSITE, "images": n_images, "samples": done_samples,
                             "skipped": skipped, "k": RELEVANCE_K, "normalised": "share of the layer's total |relevance|",
                             "time_s": round(time.perf_counter() - t0, 2)}
    it.extra["class_average"] = {"of": f"the top-{AVERAGE_K} windows where the filter is most LRP-relevant for "
                                       "the class: mean crop and mean positive relevance (each window scaled to 1)",
                                 "filters_per_class": AVERAGE_FILTERS, "size": AVERAGE_SIZE}


def _merge(a: dict[str, np.ndarray], k: int = RELEVANCE_K) -> dict[str, np.ndarray]:
    order = np.argsort(-a["value"], axis=2, kind="stable")[:, :, :k]
    return {key: np.take_along_axis(v, order, 2) for key, v in a.items()}
