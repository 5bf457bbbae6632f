"""Faithfulness and localisation metrics of explanation maps (METHODS.md §9).

Every metric works for both tasks and both frameworks: model passes go through the
`Explainer` and its backend only. The scalar tracked by the perturbation metrics is the
*probability form* of the target (CONTRACT.md §2): the softmax probability of the class,
or for segmentation its mean probability over the region, the region fixed from the
clean image.

- `deletion_curve` / `insertion_curve` (Petsiuk et al. 2018): rank pixels by map value,
  highest first (ties broken by a seeded permutation, so a flat map is a random order
  and not a raster scan); in `steps` steps replace the top fraction by the baseline
  (deletion: black or blur) or reveal it on the blurred image (insertion), at model
  resolution in uint8-range RGB before normalisation; AUC = trapezoid of p over [0, 1].
- `pointing_game` (TorchRay's protocol: hit when the map's arg-max lies within
  `tolerance` = 15 px of the ground-truth region; a flat map is a miss) and
  `energy_pointing_game` (share of the positive map mass inside the region).
  `random_pointing_game` is the exact expected hit rate of a random map (its arg-max is
  uniform over the pixels): the bar a method must beat.
- `localisation_iou`: the map divided by max |map| (sign kept) thresholded at several
  levels, IoU with the evidence mask; best and mean over the levels (an8Flower).
- `pearson`, `sim`, `spearman`: map similarity (a flat map shares no rank information:
  correlation 0 unless both maps are identical).
- `sanity_check` (Adebayo et al. 2018): cascading model-parameter randomisation on a
  COPY of the model, from the top layer down; Spearman rank correlation of each map with
  the original one per step. Randomisation redraws every trainable weight tensor of a
  layer from a Gaussian with that tensor's own mean and standard deviation (seeded
  numpy, so both frameworks draw alike): learned structure is destroyed but activation
  scales stay sane; BatchNorm running statistics are kept.

Maps for the perturbation metrics are taken at model resolution (an `Explanation`'s
`map_model`); maps for the localisation metrics at original resolution (the masks are
in original pixels).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage, stats

from .errors import BadParameter
from .images import resize_labels, resize_map

Progress = Callable[[float, str], bool]

#: Threshold levels of the localisation IoU (fractions of max |map|).
IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.1, 0.95, 0.1), 2))
POINTING_TOLERANCE = 15
DEFAULT_STEPS = 50
DEFAULT_CHUNK = 4


# ---------------------------------------------------------------------- curves
@dataclass
class Curve:
    """A deletion or insertion curve: probability of the target vs fraction of pixels."""

    kind: str                     # "deletion" | "insertion"
    fractions: np.ndarray         # [S + 1] in [0, 1]
    scores: np.ndarray            # [S + 1] probability form of the target
    auc: float

    def as_json(self) -> dict:
        return {"kind": self.kind, "fractions": self.fractions.tolist(), "scores": self.scores.tolist(),
                "auc": self.auc}


def pixel_order(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, highest map value first; ties in a seeded random order."""
    flat = np.asarray(saliency, np.float64).ravel()
    perm = np.random.default_rng(seed).permutation(flat.size)
    return perm[np.argsort(-flat[perm], kind="stable")]


def auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    return float(np.trapezoid(scores, fractions))


def _model_map(explainer, prep, saliency) -> np.ndarray:
    m = getattr(saliency, "map_model", None)
    if m is None:
        m = getattr(saliency, "map", saliency)
    m = np.nan_to_num(np.asarray(m, np.float32))
    size = prep.rgb.shape[:2]
    return m if m.shape == size else resize_map(m, size)


def _resolved(explainer, prep, target):
    from .targets import ResolvedTarget
    return target if isinstance(target, ResolvedTarget) else explainer.resolve(prep, target)


def perturbation_curve(explainer, image, saliency, target=None, kind: str = "deletion",
                       steps: int = DEFAULT_STEPS, baseline: str | None = None, chunk: int = DEFAULT_CHUNK,
                       seed: int = 0, progress: Progress | None = None) -> Curve:
    """Deletion or insertion curve of one map.

    `saliency`: an `Explanation` or a map (model or original resolution). `target`:
    a `Target`, a `ResolvedTarget` (kept as is) or None (the default target of the
    clean image). `baseline`: deletion "black" (default) or "blur"; insertion always
    starts from the blurred image (`baseline` may say "black" to start from black).
    """
    if kind not in ("deletion", "insertion"):
        raise BadParameter(f"curve kind must be deletion or insertion, got {kind!r}")
    if steps < 1:
        raise BadParameter(f"steps must be >= 1, got {steps}")
    prep = explainer.prepare(image)
    rt = _resolved(explainer, prep, target)
    m = _model_map(explainer, prep, saliency)
    baseline = baseline or ("black" if kind == "deletion" else "blur")
    clean = prep.rgb.astype(np.float32)
    base = explainer.baseline_rgb(prep, baseline)
    start, end = (clean, base) if kind == "deletion" else (base, clean)
    h, w = clean.shape[:2]
    rank = np.empty(h * w, np.int64)
    rank[pixel_order(m, seed)] = np.arange(h * w)
    rank = rank.reshape(h, w)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * h * w).astype(np.int64)
    scores = np.empty(steps + 1, np.float64)
    for s in range(0, steps + 1, chunk):
        n = counts[s:s + chunk]
        changed = rank[None] < n[:, None, None]                      # [k, h, w]: pixels switched to `end`
        batch = np.where(changed[..., None], end[None], start[None])
        scores[s:s + len(n)] = explainer.backend.scores(explainer.preprocess_rgb(batch), rt.objective, kind="prob")
        if progress is not None and progress(min(1.0, (s + len(n)) / (steps + 1)), kind) is False:
            from .errors import Cancelled
            raise Cancelled(f"{kind} curve cancelled")
    return Curve(kind, fractions, scores, auc(fractions, scores))


def deletion_curve(explainer, image, saliency, target=None, **kw) -> Curve:
    return perturbation_curve(explainer, image, saliency, target, kind="deletion", **kw)


def insertion_curve(explainer, image, saliency, target=None, **kw) -> Curve:
    return perturbation_curve(explainer, image, saliency, target, kind="insertion", **kw)


# ---------------------------------------------------------------- localisation
def _mask_for(saliency: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.shape != saliency.shape:
        mask = resize_labels(mask, saliency.shape)
    return mask


def _is_flat(m: np.ndarray) -> bool:
    return not np.isfinite(m).all() or float(np.ptp(m)) < 1e-12


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> float:
    """1.0 if the map's arg-max lies within `tolerance` px of the mask, else 0.0 (flat map: 0)."""
    m = np.asarray(saliency, np.float64)
    mask = _mask_for(m, mask)
    if _is_flat(m) or not mask.any():
        return 0.0
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    if mask[y, x]:
        return 1.0
    dist = ndimage.distance_transform_edt(~mask)
    return float(dist[y, x] <= tolerance)


def random_pointing_game(mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> float:
    """Expected pointing-game hit rate of a random map: the share of pixels within tolerance."""
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return 0.0
    return float((ndimage.distance_transform_edt(~mask) <= tolerance).mean())


def energy_pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive map mass inside the mask (0 when the map has no positive mass)."""
    m = np.maximum(np.asarray(saliency, np.float64), 0.0)
    mask = _mask_for(m, mask)
    total = m.sum()
    return float((m * mask).sum() / total) if total > 0 else 0.0


@dataclass
class IoU:
    best: float
    mean: float
    thresholds: tuple[float, ...]
    values: list[float]


def localisation_iou(saliency: np.ndarray, mask: np.ndarray,
                     thresholds: Sequence[float] = IOU_THRESHOLDS) -> IoU:
    """IoU of (map / max|map| >= t) with the mask for each t; best and mean over t."""
    m = np.asarray(saliency, np.float64)
    mask = _mask_for(m, mask)
    peak = float(np.abs(m).max()) if m.size else 0.0
    values = []
    for t in thresholds:
        if peak <= 0 or not np.isfinite(peak):
            values.append(0.0)
            continue
        b = m / peak >= t
        union = np.logical_or(b, mask).sum()
        values.append(float(np.logical_and(b, mask).sum() / union) if union else 0.0)
    return IoU(max(values) if values else 0.0, float(np.mean(values)) if values else 0.0, tuple(thresholds), values)


# ------------------------------------------------------------------ similarity
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two maps; a flat map gives 1 if both maps are equal, else 0."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise BadParameter(f"maps differ in size: {a.size} vs {b.size} pixels")
    if _is_flat(a) or _is_flat(b):
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson r of the ranks, ties averaged)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if _is_flat(a) or _is_flat(b):
        return 1.0 if np.allclose(a, b) else 0.0
    return pearson(stats.rankdata(a), stats.rankdata(b))


def sim(a: np.ndarray, b: np.ndarray) -> float:
    """SIM = sum min(A, B) with both maps clipped at 0 and scaled to sum 1 (0 if either is empty)."""
    a, b = np.maximum(np.asarray(a, np.float64), 0), np.maximum(np.asarray(b, np.float64), 0)
    sa, sb = a.sum(), b.sum()
    if sa <= 0 or sb <= 0:
        return 0.0
    return float(np.minimum(a / sa, b / sb).sum())


# ---------------------------------------------------------------- all at once
@dataclass
class Scores:
    """The metrics of one map (CONTRACT.md §3 `evaluate` keys) plus the curves."""

    deletion: Curve
    insertion: Curve
    time_ms: float
    pointing_game: float | None = None
    energy_pointing_game: float | None = None
    iou: IoU | None = None

    def as_json(self) -> dict:
        out = {"deletion_auc": self.deletion.auc, "insertion_auc": self.insertion.auc}
        if self.pointing_game is not None:
            out.update(pointing_game=self.pointing_game, energy_pointing_game=self.energy_pointing_game,
                       iou_best=self.iou.best, iou_mean=self.iou.mean)
        out["time_ms"] = self.time_ms
        return out


def evaluate_map(explainer, image, explanation, target=None, evidence: np.ndarray | None = None,
                 steps: int = DEFAULT_STEPS, baseline: str = "black", chunk: int = DEFAULT_CHUNK,
                 tolerance: float = POINTING_TOLERANCE, progress: Progress | None = None) -> Scores:
    """Every metric of one map. `explanation`: an `Explanation` (its `time_ms` is kept) or
    a map; `evidence`: the ground-truth mask (original pixels) or None (no localisation)."""
    prep = explainer.prepare(image)
    rt = _resolved(explainer, prep, target)
    half = (lambda f, msg: progress(0.5 * f, msg)) if progress else None
    rest = (lambda f, msg: progress(0.5 + 0.5 * f, msg)) if progress else None
    dele = deletion_curve(explainer, prep, explanation, rt, steps=steps, baseline=baseline, chunk=chunk, progress=half)
    ins = insertion_curve(explainer, prep, explanation, rt, steps=steps, chunk=chunk, progress=rest)
    meta = getattr(explanation, "meta", None) or {}
    out = Scores(dele, ins, float(meta.get("time_ms", 0.0)))
    if evidence is not None:
        full = getattr(explanation, "map", explanation)
        full = np.asarray(full, np.float32)
        if full.shape != prep.size:
            full = resize_map(full, prep.size)
        out.pointing_game = pointing_game(full, evidence, tolerance)
        out.energy_pointing_game = energy_pointing_game(full, evidence)
        out.iou = localisation_iou(full, evidence)
    return out


# ---------------------------------------------------------------- sanity check
@dataclass
class SanityResult:
    """Cascading randomisation of one method: rank correlation with the original map per step."""

    method: str
    steps: list[str]                          # the lowest layer randomised at each step (top first)
    rank_corr: list[float]
    original: np.ndarray | None = None        # model-resolution maps, for the app's strip
    maps: list[np.ndarray] = field(default_factory=list)

    @property
    def final(self) -> float:
        return self.rank_corr[-1] if self.rank_corr else float("nan")

    @property
    def passed(self) -> bool:
        """The map changes under full randomisation (rank correlation < 0.5)."""
        return self.final < 0.5

    def as_json(self) -> dict:
        return {"steps": list(self.steps), "rank_corr": [float(v) for v in self.rank_corr], "final": float(self.final)}


def copy_model(model):
    """An independent copy of a loaded `Model` (weights copied; never the shared one)."""
    from .zoo import Model, _backend
    backend = model.backend
    if backend.framework == "torch":
        module = copy.deepcopy(backend.module)
        return Model(model.spec, _backend(module, model.spec, getattr(backend, "device", None)))
    import keras
    src = backend.model
    try:
        clone = keras.models.clone_model(src)
        clone.set_weights(src.get_weights())
    except Exception as exc:  # subclassed models cannot be cloned from their config
        raise BadParameter(f"cannot copy this Keras model for the sanity check: {type(exc).__name__}: {exc}") from None
    return Model(model.spec, _backend(clone, model.spec, None))


def parameter_layers(model) -> list[tuple[str, object]]:
    """(name, layer) of every layer owning trainable weights, in execution order."""
    backend = model.backend
    if backend.framework == "torch":
        by_name = dict(backend.module.named_modules())
        order, seen = [], set()
        names = [l.name.split("#")[0] for l in backend.layers()] + list(by_name)  # unused modules last
        for name in names:
            mod = by_name.get(name)
            if name in seen or mod is None:
                continue
            seen.add(name)
            if any(p.numel() for p in mod.parameters(recurse=False)):
                order.append((name, mod))
        return order
    out = []

    def walk(layer) -> None:
        inner = getattr(layer, "layers", None)
        if inner:  # a (nested) model: its layers in topological order
            for sub in inner:
                walk(sub)
        elif layer.trainable_weights:
            out.append((layer.name, layer))

    walk(backend.model)
    return out


def _randomise(layer, framework: str, rng: np.random.Generator) -> None:
    if framework == "torch":
        import torch
        with torch.no_grad():
            for p in layer.parameters(recurse=False):
                v = p.detach().cpu().numpy().astype(np.float64)
                sd = float(v.std()) if v.size > 1 else 0.0
                sd = sd if sd > 0 else max(abs(float(v.mean())), 1e-2)
                new = rng.normal(float(v.mean()), sd, size=v.shape).astype(np.float32)
                p.copy_(torch.from_numpy(new).to(p.device, p.dtype))
        return
    for var in layer.trainable_weights:
        v = np.asarray(var.numpy(), np.float64)
        sd = float(v.std()) if v.size > 1 else 0.0
        sd = sd if sd > 0 else max(abs(float(v.mean())), 1e-2)
        var.assign(rng.normal(float(v.mean()), sd, size=v.shape).astype(np.float32))


def cascade_groups(n_layers: int, max_steps: int) -> list[np.ndarray]:
    """Split layer indices 0..n-1 (top first) into at most `max_steps` contiguous groups."""
    if n_layers == 0:
        return []
    return [g for g in np.array_split(np.arange(n_layers), min(n_layers, max(1, max_steps))) if len(g)]


def _fixed_explainer(model, resolved):
    """A fresh explainer whose target is fixed: a randomised model must not pick its own."""
    from .engine import Explainer
    ex = Explainer(model)
    ex.resolve = lambda image, target=None: resolved
    ex._can_defer = lambda prep: False   # no prediction (and no target) from a method's own pass
    return ex


def sanity_check(explainer, image, methods: Sequence[str], target=None, max_steps: int = 8,
                 seed: int = 0, params: dict[str, dict] | None = None, keep_maps: bool = False,
                 progress: Progress | None = None) -> dict[str, SanityResult]:
    """Cascading randomisation (top layer down) on a copy of the model.

    Returns per method the step names (lowest layer randomised so far; the last step is
    full randomisation) and the Spearman rank correlation of the map with the original
    at each step. The target (class and region) is fixed from the original model.
    """
    prep = explainer.prepare(image)
    rt = _resolved(explainer, prep, target)
    model = copy_model(explainer.model)
    framework = model.backend.framework
    layers = list(reversed(parameter_layers(model)))          # top first
    groups = cascade_groups(len(layers), max_steps)
    rng = np.random.default_rng(seed)
    params = params or {}
    total = (len(groups) + 1) * max(1, len(methods))
    done = 0

    def explain_all(ex) -> dict[str, np.ndarray]:
        nonlocal done
        out = {}
        for name in methods:
            out[name] = ex.explain(prep.image, name, params=params.get(name)).map_model
            done += 1
            if progress is not None and progress(done / total, f"sanity: {name}") is False:
                from .errors import Cancelled
                raise Cancelled("sanity check cancelled")
        return out

    original = explain_all(_fixed_explainer(model, rt))
    results = {n: SanityResult(n, [], [], original[n] if keep_maps else None) for n in methods}
    for group in groups:
        for i in group:
            _randomise(layers[i][1], framework, rng)
        maps = explain_all(_fixed_explainer(model, rt))  # fresh caches: the weights changed
        for n in methods:
            r = results[n]
            r.steps.append(layers[group[-1]][0])
            r.rank_corr.append(spearman(original[n], maps[n]))
            if keep_maps:
                r.maps.append(maps[n])
    return results
