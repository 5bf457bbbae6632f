"""`interpret`: one forward pass over a labelled image set, then the mu-lasso per class.

Per sample the feature of filter f is x_f = sum_ij A_f(ij)^2 (METHODS.md §7), for
segmentation summed over the sample's class region only (one sample per image and class
present, the region at layer resolution as area fractions). Each layer's features are
L1-normalised and multiplied by the layer's channel count (an average filter has 1,
whatever the layer width), then concatenated.

Memory stays flat: images are generated or read one batch at a time, and each batch's
features (a few KB per sample) and atlas candidates go to ``DIR/partial/`` at once. A
rerun with the same model, layers and set continues after the last finished batch.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import BadParameter, Cancelled
from .lasso import fit_classes
from .passes import layer_outputs
from .store import Interpretation

Progress = Callable[[float, str], bool | None]
ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_MU = 0.2                 # on features scaled to mean 1 per layer: ~1-20 filters per class
ATLAS_K = 8                      # top activations kept per filter
MIN_REGION = 1e-3                # a class is "present" above this share of the pixels (segmentation)
MAX_IMAGES = 20000
ACTIVATION_TYPES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Hardswish", "Activation")
TRAIN_SCENES = 500               # drivescene-train: seeds 0..499 (the segmenter's training seeds)
SETS = {"drivescene-train": "generated street scenes (seeds 0..N-1, 256x512; the segmenter's training seeds)",
        "imagenet-samples": "the bundled photos in assets/images (labels: the model's top-1)",
        "an8-train": "an8 cars (neuroscope.synth.an8, training seeds 0..N-1, default 500; labels: the true class)"}


def default_layers(layers) -> list[str]:
    """The last ReLU-like layer of each of the two coarsest output strides (falls back to
    the last spatial layer of the stride when it has no activation layer)."""
    by_stride: dict[int, list] = {}
    for l in layers:
        if l.spatial and l.stride:
            by_stride.setdefault(l.stride, []).append(l)
    out = []
    for stride in sorted(by_stride, reverse=True)[:2]:
        group = by_stride[stride]
        acts = [l for l in group if l.type in ACTIVATION_TYPES]
        out.append((acts or group)[-1].name)
    return out[::-1]   # execution order: finer stride first


# ----------------------------------------------------------------- image sets
@dataclass
class Item:
    key: str
    load: Callable[[], np.ndarray]                      # uint8 RGB
    truth: Callable[[], object] | None = None          # class id (classification) or label map


def set_items(name: str | None, images: str | None = None, labels: str | None = None,
              count: int | None = None, task: str = "segmentation", classes: Sequence[str] = ()) -> tuple[list[Item], dict]:
    """The items of a named set or of an image folder, and the source description."""
    from ..images import load_image
    if name is not None:
        if name == "drivescene-train":
            n = TRAIN_SCENES if count is None else count
            if not 1 <= n <= MAX_IMAGES:
                raise BadParameter(f"--count must be 1..{MAX_IMAGES}, got {n}")

            def scene(seed):
                from ..synth import generate_scene
                return generate_scene(seed).image
            return [Item(f"scene-{s}", lambda s=s: scene(s)) for s in range(n)], {"set": name, "count": n}
        if name == "an8-train":
            n = 500 if count is None else count
            if not 1 <= n <= MAX_IMAGES:
                raise BadParameter(f"--count must be 1..{MAX_IMAGES}, got {n}")
            from ..synth.an8 import an8_sample
            return ([Item(f"an8-{s}", lambda s=s: an8_sample(s).image, lambda s=s: an8_sample(s).label)
                     for s in range(n)], {"set": name, "count": n})
        if name == "imagenet-samples":
            paths = sorted(p for p in (ASSETS / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
            paths = paths[:count] if count else paths
            return ([Item(p.name, lambda p=p: load_image(p)) for p in paths],
                    {"set": name, "images": [p.name for p in paths]})
        raise BadParameter(f"unknown set {name!r}; known: {', '.join(SETS)}")
    folder = Path(images)
    if not folder.is_dir():
        raise BadParameter(f"--images {images}: not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS
                   and not p.stem.endswith(("_labels", "_instances")))
    if count:
        paths = paths[:count]
    if not paths:
        raise BadParameter(f"--images {images}: no images ({', '.join(IMAGE_EXTS)})")
    if len(paths) > MAX_IMAGES:
        raise BadParameter(f"--images {images}: {len(paths)} images, the limit is {MAX_IMAGES} (use --count)")
    truth = _truth_loader(labels, task, classes) if labels else None
    return ([Item(p.name, lambda p=p: load_image(p), (lambda p=p: truth(p)) if truth else None) for p in paths],
            {"images": [str(p.resolve()) for p in paths]})


def _truth_loader(labels: str, task: str, classes: Sequence[str]):
    folder = Path(labels)
    if not folder.is_dir():
        raise BadParameter(f"--labels {labels}: not a directory")
    if task == "classification":
        f = folder / "labels.json"
        if not f.is_file():
            raise BadParameter(f"--labels {labels}: a classification set needs labels.json "
                               "({\"image file name\": class name or id})")
        try:
            table = json.loads(f.read_text())
        except ValueError as exc:
            raise BadParameter(f"{f}: not JSON ({exc})") from None
        names = {c: i for i, c in enumerate(classes)}

        def cls(p: Path) -> int:
            v = table.get(p.name)
            if v is None:
                raise BadParameter(f"{f}: no label for {p.name}")
            cid = names.get(v, v) if isinstance(v, str) else v
            if not isinstance(cid, int) or not 0 <= cid < len(classes):
                raise BadParameter(f"{f}: label {v!r} of {p.name} is not a class of the model")
            return cid
        return cls

    def seg(p: Path) -> np.ndarray:
        from PIL import Image
        for cand in (folder / f"{p.stem}_labels.png", folder / f"{p.stem}.png"):
            if cand.is_file():
                return np.asarray(Image.open(cand))
        raise BadParameter(f"--labels {labels}: no {p.stem}_labels.png or {p.stem}.png")
    return seg


# ----------------------------------------------------------------- features
def _pool(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area fractions of a boolean mask [H, W] on a coarser grid [h, w]."""
    H, W = mask.shape
    h, w = hw
    if H % h == 0 and W % w == 0:
        return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3), dtype=np.float32)
    from ..images import resize_map
    return resize_map(mask.astype(np.float32), hw)


def normalise_features(parts: list[np.ndarray]) -> np.ndarray:
    """Per layer: L1-normalise over its filters, times its channel count; concatenated."""
    out = []
    for x in parts:
        s = x.sum(axis=-1, keepdims=True)
        out.append(np.where(s > 0, x / np.where(s > 0, s, 1) * x.shape[-1], 0).astype(np.float32))
    return np.concatenate(out, axis=-1)


def batch_features(logits: np.ndarray, acts: dict[str, np.ndarray], layers: Sequence[str], task: str,
                   truth: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [S, F], labels [S], image index within the batch [S]) of one batch."""
    sq = [acts[l].astype(np.float32) ** 2 for l in layers]
    if task == "classification":
        labels = np.array([t if t is not None else int(np.argmax(z)) for z, t in
                           zip(logits, truth or [None] * len(logits))], np.int32)
        return normalise_features([s.sum(axis=(2, 3)) for s in sq]), labels, np.arange(len(logits), dtype=np.int32)
    feats, labels, index = [], [], []
    for n in range(len(logits)):
        lab = truth[n] if truth and truth[n] is not None else np.argmax(logits[n], axis=0)
        ids, counts = np.unique(lab, return_counts=True)
        for c, k in zip(ids, counts):
            if c >= logits.shape[1] or k < MIN_REGION * lab.size:
                continue
            mask = lab == c
            parts = []
            for s in sq:
                m = _pool(mask, s.shape[2:])
                parts.append(np.einsum("khw,hw->k", s[n], m))
            feats.append(parts)
            labels.append(int(c))
            index.append(n)
    if not feats:
        return np.zeros((0, sum(s.shape[1] for s in sq)), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    per_layer = [np.stack([f[i] for f in feats]) for i in range(len(layers))]
    return normalise_features(per_layer), np.array(labels, np.int32), np.array(index, np.int32)


def batch_atlas(acts: dict[str, np.ndarray], layers: Sequence[str], first_image: int) -> dict[str, np.ndarray]:
    """Per filter the top-ATLAS_K (value, image, row, col) of this batch's maxima."""
    values, images, rows, cols = [], [], [], []
    for l in layers:
        a = acts[l]                                  # [N, K, h, w]
        N, K, h, w = a.shape
        flat = a.reshape(N, K, h * w)
        pos = flat.argmax(axis=2)                    # [N, K]
        val = np.take_along_axis(flat, pos[..., None], 2)[..., 0]
        values.append(val.T)
        images.append(np.broadcast_to(np.arange(N)[None] + first_image, (K, N)))
        rows.append((pos // w).T)
        cols.append((pos % w).T)
    return merge_atlas({"value": np.concatenate(values), "image": np.concatenate(images),
                        "row": np.concatenate(rows), "col": np.concatenate(cols)})


def merge_atlas(a: dict[str, np.ndarray], k: int = ATLAS_K) -> dict[str, np.ndarray]:
    """Keep the top-k columns by value per filter row, sorted descending."""
    order = np.argsort(-a["value"], axis=1, kind="stable")[:, :k]
    return {"value": np.take_along_axis(a["value"], order, 1).astype(np.float32),
            **{key: np.take_along_axis(a[key], order, 1).astype(np.int32) for key in ("image", "row", "col")}}


# ----------------------------------------------------------------- the run
def interpret(explainer, *, set_name: str | None = None, images: str | None = None, labels: str | None = None,
              out: str | Path, layers: Sequence[str] | None = None, mu: float = DEFAULT_MU, count: int | None = None,
              batch: int | None = None, progress: Progress | None = None,
              relevance_images: int | None = None) -> Interpretation:
    """Run (or continue) the interpretation of `explainer`'s model and save it in `out`.
    `relevance_images` (default relevance.RELEVANCE_IMAGES; 0: none): the first images whose
    samples get an LRP backward for the per-class atlas and the class averages."""
    from .relevance import RELEVANCE_IMAGES, relevance_pass
    t0 = time.perf_counter()
    backend = explainer.backend
    task = explainer.task
    if set_name is None and images is None:
        raise BadParameter("give --set NAME or --images DIR")
    if set_name is not None and images is not None:
        raise BadParameter("give either --set or --images, not both")
    if mu <= 0:
        raise BadParameter(f"--mu must be > 0, got {mu}")
    n_rel = RELEVANCE_IMAGES if relevance_images is None else relevance_images
    if n_rel < 0:   # checked before the forward pass, not after it
        raise BadParameter(f"--relevance-images must be >= 0, got {n_rel}")
    all_layers = {l.name: l for l in backend.layers()}
    layers = list(layers) if layers else default_layers(all_layers.values())
    for l in layers:
        if l not in all_layers or not all_layers[l].spatial:
            raise BadParameter(f"--layers: {l!r} is not a spatial layer of {explainer.spec.name}")
    items, source = set_items(set_name, images, labels, count, task, explainer.classes)
    H, W = explainer.spec.input_size
    batch = batch or max(1, min(16, (8 * 256 * 512) // (H * W)))
    out = Path(out)
    partial = out / "partial"
    state = {"model": explainer.spec.name, "layers": layers, "source": source, "batch": batch,
             "input_size": [H, W]}
    done_time = 0.0
    if partial.is_dir():
        try:
            old = json.loads((partial / "state.json").read_text())
        except (OSError, ValueError):
            old = None
        if old is None or {k: old.get(k) for k in state} != state:
            shutil.rmtree(partial)          # another model, layers or set: start afresh
        else:
            done_time = float(old.get("time_s", 0.0))
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "state.json").write_text(json.dumps({**state, "time_s": done_time}))

    n_batches = (len(items) + batch - 1) // batch
    todo = [b for b in range(n_batches) if not (partial / f"batch-{b:05d}.npz").is_file()]

    def load(b: int):
        """The batch's model input and truth (generating or reading the images: ~1/3 of
        the time per scene, done by a second thread while the model runs the batch before)."""
        chunk = items[b * batch:(b + 1) * batch]
        rgb = np.stack([_resize(it.load(), (H, W)) for it in chunk])
        truth = [it.truth() for it in chunk] if chunk[0].truth else None
        if truth and task == "segmentation":
            from ..images import resize_labels
            truth = [resize_labels(t, (H, W)) for t in truth]
        return explainer.preprocess_rgb(rgb), truth

    def forward_batch(k, b, x, truth):
        """Batch `b`, the k-th of this run (a rerun skips the batches already written)."""
        f = partial / f"batch-{b:05d}.npz"
        logits, acts = layer_outputs(backend, x, layers)
        X, lab, idx = batch_features(logits, acts, layers, task, truth)
        atlas = batch_atlas(acts, layers, b * batch)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, X=X, labels=lab, image=idx + b * batch, **{f"atlas_{k}": v for k, v in atlas.items()})
        tmp.replace(f)
        del acts, logits
        if progress is not None:
            done = min(len(items), (b + 1) * batch)
            rate = (time.perf_counter() - started) / ((k + 1) * batch)   # this run's batches only
            eta = rate * batch * (len(todo) - k - 1)
            if progress(done / len(items), f"{done}/{len(items)} images, ETA {_fmt(eta)}") is False:
                (partial / "state.json").write_text(json.dumps(
                    {**state, "time_s": done_time + time.perf_counter() - t0}))
                raise Cancelled(f"interpret cancelled after {done} images; rerun to continue")

    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interpret-load")
    ahead = pool.submit(load, todo[0]) if todo else None      # one batch ahead: memory stays flat
    started = time.perf_counter()
    try:
        for k, b in enumerate(todo):
            x, truth = ahead.result()
            ahead = pool.submit(load, todo[k + 1]) if k + 1 < len(todo) else None
            forward_batch(k, b, x, truth)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # merge the batches
    Xs, labs, idxs, atlas = [], [], [], None
    for b in range(n_batches):
        with np.load(partial / f"batch-{b:05d}.npz") as z:
            Xs.append(z["X"]); labs.append(z["labels"]); idxs.append(z["image"])   # noqa: E702
            a = {k: z[f"atlas_{k}"] for k in ("value", "image", "row", "col")}
        atlas = a if atlas is None else merge_atlas({k: np.concatenate([atlas[k], a[k]], 1) for k in a})
    X, lab, idx = np.concatenate(Xs), np.concatenate(labs), np.concatenate(idxs)
    present = sorted(int(c) for c in np.unique(lab))
    if progress is not None:
        progress(1.0, f"lasso for {len(present)} classes")
    Wm = fit_classes(X, lab, present, mu)
    infos = [{"name": l, "channels": int(all_layers[l].shape[0]), "stride": int(all_layers[l].stride)} for l in layers]
    it = Interpretation(explainer.spec.name, task, infos, {}, float(mu), source, len(items), 0.0,
                        X=X, labels=lab, sample_image=idx, W=Wm, atlas=atlas or {})
    for row, c in enumerate(present):
        w = Wm[row]
        nz = np.flatnonzero(w)
        nz = nz[np.argsort(-w[nz], kind="stable")]
        filters = []
        for j in nz:
            layer, ch = it.filter_of(int(j))
            filters.append({"layer": layer, "channel": ch, "weight": round(float(w[j]), 6)})
        it.classes[explainer.classes[c]] = {"class_id": c, "samples": int((lab == c).sum()), "filters": filters}
    it.time_s = done_time + time.perf_counter() - t0
    it.extra = {"batch": batch, "input_size": [H, W], "feature_scaling": "L1 per layer x channels",
                "samples": int(len(lab)), "atlas_k": ATLAS_K}
    it.save(out)          # usable already; the partial batches stay until the relevance is in
    if n_rel:
        t1 = time.perf_counter()
        relevance_pass(explainer, it, items, n_rel, progress)
        it.time_s += time.perf_counter() - t1
        it.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    return it


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from ..images import resize_rgb
    return img if img.shape[:2] == tuple(size) else resize_rgb(img, size)


def _fmt(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def source_items(it: Interpretation) -> list[Item]:
    """The items of the interpretation's image set, in its order (images regenerated or read)."""
    from ..images import load_image
    src = it.source
    if "set" in src:
        items, _ = set_items(src["set"], count=src.get("count") or len(src.get("images", [])) or None)
        return items
    return [Item(Path(p).name, lambda p=p: load_image(p)) for p in src.get("images", [])]


def iter_atlas_crops(it: Interpretation, layer: str, channel: int, size: int = 64,
                     class_name: str | None = None) -> Iterator[tuple[np.ndarray, float]]:
    """The top atlas crops (uint8 [size, size, 3], value) of one filter, regenerated from
    the interpretation's image set: a window of 3 strides (at least 48 px) around the
    position of the maximum, at model resolution. With `class_name`: the positions where
    the filter is most LRP-relevant for that class (value: its relevance share)."""
    from PIL import Image
    j = it.filter_index(layer, channel)
    if class_name is None:
        atlas = {k: it.atlas[k][j] for k in ("value", "image", "row", "col")} if it.atlas else None
    else:
        c = it.class_row(class_name)
        atlas = {k: it.relevance_atlas[k][c, j] for k in ("value", "image", "row", "col")} if it.relevance_atlas else None
    if atlas is None:
        return
    stride = next(l["stride"] for l in it.layers if l["name"] == layer)
    H, W = it.extra.get("input_size", [None, None])
    items = source_items(it)
    half = max(24, 3 * stride // 2)
    for v, i, r, c in zip(*(atlas[k] for k in ("value", "image", "row", "col"))):
        if v <= 0 or i >= len(items):
            continue
        img = _resize(items[int(i)].load(), (H, W))
        cy, cx = int(r) * stride + stride // 2, int(c) * stride + stride // 2
        y0, x0 = max(0, cy - half), max(0, cx - half)
        crop = img[y0:min(H, cy + half), x0:min(W, cx + half)]
        yield np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)), float(v)
