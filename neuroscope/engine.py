"""The Explainer: one per loaded model; device placement, caches, thread-safe explanations."""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .backends.base import Capture, LayerInfo
from .errors import BadModel, BadParameter, Cancelled
from .images import (ImageLike, blur, channels_to_rgb, image_hash, load_image, normalize, normalize_scale,
                     resize_labels, resize_map, resize_maps, resize_rgb, to_channels)
from .limits import check_passes, limit
from .methods.registry import MethodInfo, check_fits, check_params, get_method
from .targets import ResolvedTarget, Target, resolve_target
from .zoo import Model, default_palette, load_model

Progress = Callable[[float, str], bool]


def default_layer(layers: Sequence[LayerInfo], num_classes: int | None = None) -> str | None:
    """Among spatial layers with the largest stride, the last in execution order (CONTRACT.md §3).
    With `num_classes`, a layer with one channel per class there (a segmentation head's
    class scores, DeepLab / FCN `classifier`) is passed over when a feature layer is there too."""
    spatial = [l for l in layers if l.spatial]
    if not spatial:
        return None
    top = max(l.stride for l in spatial)
    candidates = [l for l in spatial if l.stride == top]
    if num_classes:
        features = [l for l in candidates if not (l.shape and l.shape[0] == num_classes)]
        candidates = features or candidates
    return candidates[-1].name


@dataclass
class Prepared:
    """An image read and preprocessed once (cached by content hash)."""

    image: np.ndarray            # original RGB uint8 [H, W, 3]
    hash: str
    rgb: np.ndarray              # resized to the model input, uint8 [h, w, 3]
    x: np.ndarray                # preprocessed float32 [1, h, w, 3]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


class Prediction:
    """Model output for one image, in original pixels where it is spatial.

    `probs` (softmax) and `labels` (argmax at original size) are computed on first use:
    an explanation needs neither, and on a 19x256x512 output they cost more than a
    Grad-CAM's arithmetic.
    """

    def __init__(self, task: str, classes: list[str], shape: tuple[int, int], logits: np.ndarray,
                 label_map: np.ndarray | None = None, multilabel: bool = False):
        self.task, self.classes, self.shape = task, classes, shape
        self.multilabel = multilabel             # sigmoid outputs: probs are per label
        self.logits = logits                     # [C] or [C, h, w]
        self.label_map = label_map               # argmax at model resolution [h, w] (segmentation)
        self._probs: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def probs(self) -> np.ndarray:
        """Softmax over classes (sigmoid per label for multi-label models); [C] or [C, h, w]."""
        with self._lock:
            if self._probs is None and self.multilabel:
                self._probs = (0.5 * (1.0 + np.tanh(0.5 * self.logits))).astype(np.float32)   # stable sigmoid
            if self._probs is None:
                z = self.logits - self.logits.max(axis=0, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=0, keepdims=True)
                self._probs = p
            return self._probs

    @property
    def labels(self) -> np.ndarray | None:
        """Argmax resized to the original image (nearest) [H, W] (segmentation)."""
        if self.label_map is None:
            return None
        with self._lock:
            if self._labels is None:
                self._labels = resize_labels(self.label_map, self.shape)
            return self._labels

    def top(self, k: int = 5) -> list[dict]:
        order = np.argsort(-self.probs)[:k]
        return [{"class_id": int(i), "name": self.classes[i], "prob": float(self.probs[i])} for i in order]

    def pixel_shares(self) -> list[dict]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes)) / self.labels.size
        order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        return [{"class_id": i, "name": self.classes[i], "pixel_share": float(counts[i])} for i in order]

    def as_json(self) -> dict:
        if self.task == "classification":
            return {"task": self.task, "top": self.top(5)}
        return {"task": self.task, "shape": list(self.shape), "classes": self.pixel_shares()}


@dataclass
class Explanation:
    """A map at original resolution plus what produced it."""

    map: np.ndarray                              # float32 [H, W]
    meta: dict
    map_model: np.ndarray | None = None          # float32 [h, w] at model resolution

    def as_json(self) -> dict:
        m = self.map
        return {"method": self.meta["method"], "layer": self.meta["layer"], "target": self.meta["target"],
                "shape": list(m.shape), "min": float(m.min()), "max": float(m.max()),
                "time_ms": self.meta["time_ms"],
                "meta": {"params": self.meta["params"], **self.meta["extra"],
                         **{k: self.meta[k] for k in ("output_kind", "score", "notes", "warnings") if k in self.meta}}}


class CachePool:
    """A byte budget shared by the caches of several Explainers (e.g. every model a server
    has loaded): when the total is over `max_bytes`, the least recently used entry of ANY
    member cache goes, so the server's cached arrays stay bounded however many models it
    holds (each cache keeps its own entry and byte limits too)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.lock = threading.RLock()
        self._order: OrderedDict = OrderedDict()     # (id(cache), key) -> (cache, nbytes), oldest first
        self._total = 0

    def _touch(self, cache: "_LRU", key) -> None:
        k = (id(cache), key)
        if k in self._order:
            self._order.move_to_end(k)

    def _put(self, cache: "_LRU", key, nbytes: int) -> None:
        k = (id(cache), key)
        old = self._order.pop(k, None)
        if old is not None:
            self._total -= old[1]
        self._order[k] = (cache, nbytes)
        self._total += nbytes
        while self._total > self.max_bytes and len(self._order) > 1:
            (_, okey), (ocache, _) = next(iter(self._order.items()))
            ocache._evict(okey)

    def _forget(self, cache: "_LRU", key) -> None:
        old = self._order.pop((id(cache), key), None)
        if old is not None:
            self._total -= old[1]

    @property
    def nbytes(self) -> int:
        with self.lock:
            return self._total


class _LRU:
    """A small thread-safe LRU bounded by entry count and (optionally) bytes, and by a
    `CachePool` shared with other caches when given one."""

    def __init__(self, max_items: int, max_bytes: int | None = None, pool: CachePool | None = None):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._d: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._pool = pool
        self._lock = pool.lock if pool is not None else threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                if self._pool is not None:
                    self._pool._touch(self, key)
                return self._d[key]
        return None

    def _evict(self, key) -> None:   # under the lock
        self._d.pop(key, None)
        self._sizes.pop(key, None)
        if self._pool is not None:
            self._pool._forget(self, key)

    def put(self, key, value, nbytes: int = 0) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            self._sizes[key] = nbytes
            while len(self._d) > max(0, self.max_items) or (
                    self.max_bytes is not None and sum(self._sizes.values()) > self.max_bytes):
                self._evict(next(iter(self._d)))
            if self._pool is not None and key in self._d:
                self._pool._put(self, key, nbytes)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def clear(self) -> None:
        with self._lock:
            for key in list(self._d):
                self._evict(key)


def _capture_bytes(cap: Capture) -> int:
    return (sum(a.nbytes for a in cap.activations.values()) + sum(g.nbytes for g in cap.gradients.values())
            + np.asarray(cap.output).nbytes + (0 if cap.input_grad is None else cap.input_grad.nbytes))


def _nbytes(obj: Any) -> int:
    """Bytes of the arrays a cache entry holds (a Prediction counts its lazily computed
    probabilities and labels up front: they are filled in after it is cached)."""
    if isinstance(obj, Prediction):
        extra = obj.logits.nbytes + (0 if obj.label_map is None else obj.shape[0] * obj.shape[1] * obj.label_map.itemsize)
        return obj.logits.nbytes + (0 if obj.label_map is None else obj.label_map.nbytes) + extra
    if isinstance(obj, Explanation):
        return obj.map.nbytes + (0 if obj.map_model is None else obj.map_model.nbytes) + 4096
    if isinstance(obj, Prepared):
        return obj.image.nbytes + obj.rgb.nbytes + obj.x.nbytes
    if isinstance(obj, ResolvedTarget):
        m = obj.objective.mask
        return (0 if obj.mask is None else obj.mask.nbytes) + (0 if m is None else m.nbytes) + 1024
    return 0


class MethodContext:
    """What a method sees: the prepared image, the resolved target, the layer, the
    parameters, cached captures, and a progress/cancel hook."""

    def __init__(self, explainer: "Explainer", prep: Prepared, target: ResolvedTarget, layer: str | None,
                 params: dict, progress: Progress | None, info: MethodInfo):
        self.explainer, self.prep, self.target, self.layer, self.params = explainer, prep, target, layer, params
        self.info = info
        self._progress = progress
        self.extra: dict[str, Any] = {}
        self.rules: list = []                     # backward rules the method used (rule warnings)
        self.warnings: list[str] = []             # meta["warnings"]: what could not be done as asked
        #: Set (and `target` None) for a method with `MethodInfo.decides_target` when the
        #: prediction is not cached: decide(logits of the method's own forward on x) -> the
        #: resolved target (also sets ctx.target and caches the prediction).
        self.decide: Callable[[np.ndarray], ResolvedTarget] | None = None

    def note_rule(self, rule) -> None:
        """The method runs a backward with `rule` (the engine warns about activations it misses)."""
        if rule is not None and rule not in self.rules:
            self.rules.append(rule)

    @property
    def backend(self):
        return self.explainer.backend

    @property
    def spec(self):
        return self.explainer.spec

    @property
    def x(self) -> np.ndarray:
        return self.prep.x

    @property
    def rgb(self) -> np.ndarray:
        return self.prep.rgb

    @property
    def objective(self):
        return self.target.objective

    @property
    def model_size(self) -> tuple[int, int]:
        return self.prep.rgb.shape[0], self.prep.rgb.shape[1]

    def capture(self, layers: Sequence[str] = (), input_grad: bool = False, rule: str | None = None,
                gradients: bool | None = None) -> Capture:
        """`gradients` (default: the method's `MethodInfo.layer_gradients`): False when only
        `gradient_means` are read (see `Backend.capture`)."""
        if gradients is None:
            gradients = self.info.layer_gradients
        self.note_rule(rule)
        if self.target is None and self.decide is not None:   # a `decides_target` method, prediction not cached
            return self.explainer._capture_deciding(self.prep, self.decide, tuple(layers), input_grad, rule,
                                                    gradients)
        return self.explainer._capture(self.prep, self.target, tuple(layers), input_grad, rule, gradients)

    def relevance(self, layer: str, composite: Any = None, channels: Sequence[int] = (),
                  spatial: bool = False) -> np.ndarray:
        """LRP relevance at `layer` (per channel [K], or [K, h, w] with `spatial`) from one
        backward under `composite` (a name of propagation.COMPOSITES or a Composite;
        default: the `composite` parameter, else epsilon-plus-flat). See methods/propagation.py."""
        from .methods.propagation import layer_relevance
        return layer_relevance(self, layer, composite, channels, spatial)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """uint8-range RGB batch [N, h, w, 3] (float ok, unclipped) -> model input."""
        return self.explainer.preprocess_rgb(rgb)

    def baseline_rgb(self, kind: str) -> np.ndarray:
        """Perturbation baseline in uint8-range RGB at model size (CONTRACT.md §1)."""
        return self.explainer.baseline_rgb(self.prep, kind)

    def upsample(self, m: np.ndarray) -> np.ndarray:
        """A map at layer resolution -> model resolution (the shared resize). A method may
        also return its layer-resolution map: the engine resizes whatever comes back."""
        return resize_map(m, self.model_size)

    def rng(self, seed: int = 0) -> np.random.Generator:
        return np.random.default_rng(seed)

    def tick(self, fraction: float, message: str = "") -> None:
        """Report progress; raises `Cancelled` when the callback returns False."""
        if self._progress is not None and self._progress(float(min(1.0, max(0.0, fraction))), message) is False:
            raise Cancelled(f"{self.info.name} cancelled")


class Explainer:
    """Explanations for one model. Thread-safe: share one per model across sessions.

    Nothing here holds a lock during a model pass, so a long Score-CAM never blocks
    another caller's Grad-CAM; caches are bounded LRUs keyed by content.
    """

    def __init__(self, model: Any, *, device: str | None = None, input_size: tuple[int, int] | None = None,
                 cache_size: int = 128, capture_cache_bytes: int = 1 << 30, cache_pool: CachePool | None = None,
                 kept_graphs: int = 0, **load_kwargs):
        if not isinstance(model, Model):
            model = load_model(model, device=device, input_size=input_size, **load_kwargs)
        elif input_size is not None and tuple(input_size) != tuple(model.spec.input_size):
            model = load_model(model.spec, device=device, input_size=input_size)
        self.model = model
        self.spec = model.spec
        self.backend = model.backend
        self.task = model.spec.task
        self.classes = model.spec.classes
        self.palette = model.spec.palette or default_palette(len(self.classes))
        self.device = getattr(self.backend, "device", "cpu")
        self.channels = int(getattr(self.backend, "channels", 3))
        self.multilabel = getattr(self.backend, "output_kind", "logits") == "sigmoid"
        self.stats: Counter = Counter()          # model passes by kind (tests count them)
        self._stats_lock = threading.Lock()
        # Every cache is bounded in entries AND bytes (limits "cache_bytes", shared out below):
        # a segmenter's entries are large (logits and probabilities [C, h, w], masks and maps
        # at original size), so entry counts alone let a long session grow by GBs.
        # `cache_pool` (a CachePool) bounds the caches of all Explainers sharing it together.
        budget = limit("cache_bytes")
        self._prepared = _LRU(32, budget // 8, cache_pool)
        self._predictions = _LRU(32, budget // 4, cache_pool)
        self._resolved = _LRU(64, budget // 8, cache_pool)      # (image hash, Target.key()) -> ResolvedTarget
        self._captures = _LRU(16, capture_cache_bytes, cache_pool)
        # (image hash, layer) -> the graph of a one-layer capture, kept (torch; `kept_graphs`
        # images: an interactive front end's next click on the same image is a backward only)
        self._tails = _LRU(max(0, int(kept_graphs)), capture_cache_bytes, cache_pool)
        self._results = _LRU(cache_size, budget // 2, cache_pool)

    # ----------------------------------------------------------- basics
    def _count(self, kind: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[kind] += n

    def layers(self) -> list[LayerInfo]:
        return self.backend.layers()

    def spatial_layers(self) -> list[LayerInfo]:
        return [l for l in self.layers() if l.spatial]

    def default_layer(self) -> str | None:
        return default_layer(self.layers(), len(self.classes))

    def preprocess_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """uint8-range RGB [..., 3] -> model input [..., C] (C = the model's input channels)."""
        s = self.spec
        rgb = to_channels(np.asarray(rgb, np.float32), self.channels)
        return normalize(rgb, s.value_range, s.mean, s.std)

    def prepare(self, image: ImageLike | Prepared) -> Prepared:
        if isinstance(image, Prepared):
            return image
        img = load_image(image)
        key = image_hash(img)
        prep = self._prepared.get(key)
        if prep is None:
            rgb = resize_rgb(img, self.spec.input_size)
            prep = Prepared(img, key, rgb, self.preprocess_rgb(rgb)[None])
            self._prepared.put(key, prep, _nbytes(prep))
        return prep

    def baseline_rgb(self, prep: Prepared, kind: str) -> np.ndarray:
        if kind == "black":
            return np.zeros_like(prep.rgb, dtype=np.float32)
        if kind == "blur":
            return blur(prep.rgb).astype(np.float32)
        if kind == "mean":
            lo, hi = self.spec.value_range
            colour = channels_to_rgb((np.asarray(self.spec.mean, np.float32) - lo) * 255.0 / (hi - lo))
            return np.broadcast_to(colour, prep.rgb.shape).astype(np.float32)
        raise BadParameter(f"unknown baseline {kind!r}; expected black, blur or mean")

    # ----------------------------------------------------------- predict
    def predict(self, image: ImageLike | Prepared) -> Prediction:
        prep = self.prepare(image)
        pred = self._predictions.get(prep.hash)
        if pred is not None:
            return pred
        self._count("forward")
        pred = self._prediction_from_logits(prep, self.backend.forward(prep.x)[0])
        self._predictions.put(prep.hash, pred, _nbytes(pred))
        return pred

    def _prediction_from_logits(self, prep: Prepared, logits: np.ndarray,
                                labels: np.ndarray | None = None) -> Prediction:
        """`labels`: a segmenter's argmax label map when the caller has it already (a
        batched pass takes it for the whole batch in one threaded op)."""
        if not np.all(np.isfinite(logits)):
            raise BadModel("the model produced NaN or infinite outputs for this image; check its weights and preprocessing")
        if logits.shape[0] != len(self.classes):
            raise BadModel(f"the model outputs {logits.shape[0]} classes but its spec names {len(self.classes)}")
        if self.task == "classification":
            return Prediction(self.task, self.classes, prep.size, logits, multilabel=self.multilabel)
        return Prediction(self.task, self.classes, prep.size, logits,
                          _argmax_classes(logits) if labels is None else labels, multilabel=self.multilabel)

    def _prefetch(self, prep: Prepared, target: Target | None, layers: tuple[str, ...], input_grad: bool,
                  gradients: bool = True) -> None:
        """Predict, resolve the target and capture in ONE forward + backward pass.

        Without this, an uncached explanation would run a forward for the prediction
        (the default target depends on it) and then a forward + backward.
        """
        if self._can_defer(prep):
            self._capture_deciding(prep, lambda logits: self._decide(prep, target, logits), layers, input_grad,
                                   None, gradients)

    def _can_defer(self, prep: Prepared) -> bool:
        """True when the prediction of `prep` is not cached and can come from a method's own
        forward pass (the backend's `deferred_objective`)."""
        return self._predictions.get(prep.hash) is None and getattr(self.backend, "deferred_objective", False)

    def _decide(self, prep: Prepared, target: Target | None, logits: np.ndarray,
                labels: np.ndarray | None = None) -> ResolvedTarget:
        """The prediction (from `logits` [C] or [C, H, W] of a pass on prep.x; `labels`: their
        argmax when known; the cached one when there is one: several targets decided from one
        pass share it) and the resolved target, both cached as `predict` and `resolve` would."""
        pred = self._predictions.get(prep.hash)
        if pred is None:
            pred = self._prediction_from_logits(prep, logits, labels)
            self._predictions.put(prep.hash, pred, _nbytes(pred))   # kept when the target fails (empty region)
        rt = resolve_target(target, self.task, self.classes, probs=pred.probs if self.task == "classification" else None,
                            label_map=pred.label_map, image_size=prep.size)
        self._resolved.put(_target_key(prep, target), rt, _nbytes(rt))
        return rt

    def resolve(self, image: ImageLike | Prepared, target: Target | None = None) -> ResolvedTarget:
        """The target for this image (cached: a region mask is resized to the original image
        and hashed, and every explain call -- cached results included -- resolves first)."""
        prep = self.prepare(image)
        key = _target_key(prep, target)
        rt = self._resolved.get(key)
        if rt is None:
            pred = self.predict(prep)
            rt = resolve_target(target, self.task, self.classes,
                                probs=pred.probs if self.task == "classification" else None,
                                label_map=pred.label_map, image_size=prep.size)
            self._resolved.put(key, rt, _nbytes(rt))
        return rt

    # ----------------------------------------------------------- captures
    def _capture(self, prep: Prepared, target: ResolvedTarget, layers: tuple[str, ...], input_grad: bool,
                 rule: str | None, gradients: bool = True) -> Capture:
        key = (prep.hash, target.key(), rule)
        cached = self._captures.get(key)
        if (cached is not None and set(layers) <= cached.activations.keys()
                and (not gradients or set(layers) <= cached.gradients.keys())
                and (cached.input_grad is not None or not input_grad)):
            return cached
        cap = self._run_capture(prep, target.objective, layers, input_grad, rule, gradients)
        if cached is not None:  # merge: keep what the earlier pass had
            cap.activations = {**cached.activations, **cap.activations}
            cap.gradients = {**cached.gradients, **cap.gradients}
            cap.gradient_means = {**cached.gradient_means, **cap.gradient_means}
            if cap.input_grad is None:
                cap.input_grad = cached.input_grad
        self._captures.put(key, cap, _capture_bytes(cap))
        return cap

    def _capture_deciding(self, prep: Prepared, decide: Callable[[np.ndarray], ResolvedTarget],
                          layers: tuple[str, ...], input_grad: bool, rule, gradients: bool) -> Capture:
        """A capture whose target `decide` takes from the logits of this very forward (the
        backends' deferred objective): prediction, target and capture in one pass."""
        resolved: list[ResolvedTarget] = []

        def objective(logits: np.ndarray):
            resolved.append(decide(logits))
            return resolved[0].objective
        cap = self._run_capture(prep, objective, layers, input_grad, rule, gradients)
        self._captures.put((prep.hash, resolved[0].key(), rule), cap, _capture_bytes(cap))
        return cap

    def _run_capture(self, prep: Prepared, objective, layers: tuple[str, ...], input_grad: bool, rule,
                     gradients: bool) -> Capture:
        """The backend's capture (counted), or, for one layer without the input gradient or a
        rule, through a kept graph of this image (`backend.capture_tail`, torch, with
        `kept_graphs`): the first call runs the full pass and keeps its graph from the layer
        up; later ones (other targets: a new click on the picture) run only a backward of the
        model above the layer. A callable `objective` (decided from the logits of this very
        pass) always runs the full pass."""
        self._count("capture")
        capture_tail = getattr(self.backend, "capture_tail", None)
        if capture_tail is None or self._tails.max_items <= 0 or input_grad or rule is not None or len(layers) != 1:
            return self.backend.capture(prep.x, objective, list(layers), input_grad=input_grad, rule=rule,
                                        gradients=gradients)
        key = (prep.hash, layers[0])
        tail = self._tails.get(key) if not callable(objective) else None
        if tail is not None:
            return tail.capture(objective, gradients)
        cap, tail = capture_tail(prep.x, objective, layers[0], gradients)
        if tail is not None and tail.nbytes <= KEPT_GRAPH_BYTES:
            self._tails.put(key, tail, tail.nbytes)
        return cap

    def capture(self, image: ImageLike | Prepared, target: Target | None = None,
                layers: Sequence[str] | None = None) -> Capture:
        """Activations and gradients of `layers` (default: all spatial layers) in one pass."""
        prep = self.prepare(image)
        rt = self.resolve(prep, target)
        names = [l.name for l in self.spatial_layers()] if layers is None else list(layers)
        return self._capture(prep, rt, tuple(names), True, None)

    def relevance(self, image: ImageLike | Prepared, target: Target | None, layer: str,
                  composite: Any = "epsilon-plus-flat", channels: Sequence[int] = (),
                  spatial: bool = False) -> np.ndarray:
        """LRP relevance at `layer` for `target`: per channel [K] (or [K, h, w])."""
        from .methods.propagation import layer_relevance
        from .methods.registry import get_method
        info, _ = get_method("lrp")
        prep = self.prepare(image)
        ctx = MethodContext(self, prep, self.resolve(prep, target), layer, {}, None, info)
        return layer_relevance(ctx, self.check_layer(layer, info), composite, channels, spatial)

    # ----------------------------------------------------------- explain
    def check_layer(self, layer: str | None, info: MethodInfo) -> str | None:
        if not info.needs_layer:
            if layer is None:
                return None
        if layer is None:
            layer = self.default_layer()
            if layer is None:
                raise BadParameter(f"{info.name} needs a layer with spatial output, and this model has none")
            return layer
        by_name = {l.name: l for l in self.layers()}
        if layer not in by_name:
            raise BadParameter(f"unknown layer {layer!r}; `neuroscope layers {self.spec.name}` lists them")
        if not by_name[layer].spatial:
            raise BadParameter(f"layer {layer!r} has no spatial output (shape {by_name[layer].shape}); pick a spatial layer")
        return layer

    def explain(self, image: ImageLike | Prepared, method: str, target: Target | None = None,
                layer: str | None = None, params: dict | None = None, progress: Progress | None = None) -> Explanation:
        """One map, float32 at original resolution, with metadata (CONTRACT.md §5)."""
        t0 = time.perf_counter()
        info, fn = get_method(method)
        check_fits(info, self.task, self.backend.framework, self.spec.name)
        params = check_params(info, params)
        layer = self.check_layer(layer, info)
        check_passes(method, params, explainer=self, layer=layer)   # before any pass (limits.py)
        prep = self.prepare(image)
        if info.family in ("cam", "activation") and not info.batched_gradient and layer is not None:
            self._prefetch(prep, target, (layer,), False, info.layer_gradients)
        elif info.name == "saliency" and not params.get("smooth"):
            self._prefetch(prep, target, (), True)
        if info.decides_target and self._can_defer(prep):
            # the method's own forward gives the prediction and the target (ctx.decide)
            rt = None
        else:
            rt = self.resolve(prep, target)
            hit = self._results.get((prep.hash, method, layer, rt.key(), repr(sorted(params.items()))))
            if hit is not None:
                return hit
        self._count("explain")
        ctx = MethodContext(self, prep, rt, layer, params, progress, info)
        if rt is None:
            def decide(logits: np.ndarray) -> ResolvedTarget:
                ctx.target = self._decide(prep, target, logits)
                return ctx.target
            ctx.decide = decide
        if info.batched_gradient:
            m = _run_gradient(fn, ctx)
        else:
            m = fn(ctx)
        if ctx.target is None:   # the method did not call ctx.decide
            ctx.target = self.resolve(prep, target)
        rt = ctx.target
        key = (prep.hash, method, layer, rt.key(), repr(sorted(params.items())))
        m = np.asarray(m, np.float32)
        if m.shape != ctx.model_size:
            m = resize_map(m, ctx.model_size)
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
        full = resize_map(m, prep.size)
        elapsed = (time.perf_counter() - t0) * 1000.0
        meta = {"method": method, "layer": layer, "target": rt.as_json(), "params": params,
                "time_ms": round(elapsed, 3), "signed": info.signed, "extra": ctx.extra,
                **self.model_meta()}
        warnings = ctx.warnings + [w for rule in ctx.rules for w in self.rule_warnings(method, rule)]
        if warnings:
            meta["warnings"] = warnings
        res = Explanation(full, meta, m)
        self._results.put(key, res, _nbytes(res))
        ctx.tick(1.0, "done")
        return res

    def rule_warnings(self, method: str, rule) -> list[str]:
        """One line when activations of the model get no `rule` (e.g. SiLU under guided
        backprop): there the map is the plain gradient (README "Your own model")."""
        backend = self.backend
        missing: dict[str, int] = {}
        unapplied = getattr(backend, "unapplied", None)
        if unapplied is not None:
            missing.update(unapplied(rule) or {})
        else:   # a backend without rule objects: activation modules the ReLU rules do not know
            for info in self.layers():
                if "#" not in info.name and info.type in _NO_RELU_RULE:
                    missing[info.type] = missing.get(info.type, 0) + 1
        covered = getattr(backend, "functional_rule_kinds", ())   # F.relu & co. get the rule
        for name, n in getattr(backend, "functional_activations", {}).items():
            if name not in covered:
                missing[f"functional {name}"] = missing.get(f"functional {name}", 0) + n
        if not missing:
            return []
        label = {"guided": "guided", "deconvnet": "deconvnet", "deconvnet-fixed": "deconvnet"}.get(
            rule, getattr(rule, "name", str(rule)))
        parts = [f"{n} {kind}" for kind, n in missing.items()]
        total = sum(missing.values())
        what = " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
        verb = "activation has" if total == 1 else "activations have"
        return [f"{method}: {what} {verb} no {label} rule; the map equals the gradient there"]

    def model_meta(self) -> dict:
        """What every explanation's meta says about the model: its output kind, what the
        explained scalar is ("logit" or "log-probability"), and notes (e.g. one image
        per pass)."""
        backend = self.backend
        out = {"output_kind": getattr(backend, "output_kind", "logits"),
               "score": getattr(backend, "score_kind", "logit")}
        notes = []
        if getattr(backend, "max_batch", None) == 1:
            notes.append("the model takes one image per pass (it failed on a batch of 2): "
                         "batched passes ran one image at a time")
        if notes:
            out["notes"] = notes
        return out

    def sweep(self, image: ImageLike | Prepared, target: Target | None = None, method: str = "grad-cam",
              layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """A CAM map (model resolution) for every spatial layer, all from ONE capture."""
        info, fn = get_method(method)
        if info.family != "cam" or info.slow or info.batched_gradient:
            raise BadParameter(f"the layer sweep needs a one-pass CAM method, not {method}")
        prep = self.prepare(image)
        rt = self.resolve(prep, target)
        names = [l.name for l in self.spatial_layers()] if layers is None else list(layers)
        self._capture(prep, rt, tuple(names), False, None, info.layer_gradients)
        params = check_params(info, {})

        def maps(part: Sequence[str]) -> list[np.ndarray]:
            # layer-resolution maps (see cam.py), resized in one batch
            cams = [fn(MethodContext(self, prep, rt, name, params, None, info)) for name in part]
            return resize_maps(cams, prep.rgb.shape[:2])

        # Reading ~65M activation floats and writing ~85 MB of maps is memory-bound numpy
        # work: a second thread takes every other layer (163 layers: ~3 ms less).
        parts = [names[0::2], names[1::2]]
        first, second = _in_two_threads(maps, parts)
        done = dict(zip(parts[0] + parts[1], first + second))
        return {name: done[name] for name in names}

    def cache_bytes(self) -> dict[str, int]:
        """Bytes held by each cache (bounded by limits "cache_bytes" and capture_cache_bytes)."""
        return {name: getattr(self, f"_{name}").nbytes
                for name in ("prepared", "predictions", "resolved", "captures", "results")}

    def clear_caches(self, keep_predictions: bool = False) -> None:
        """Empty the caches; `keep_predictions` keeps the predictions and resolved targets
        (so the targets are known, as a peer library is handed them) and drops everything else."""
        for c in (self._prepared, self._captures, self._tails, self._results):
            c.clear()
        if not keep_predictions:
            self._predictions.clear()
            self._resolved.clear()


#: Activation layer types with no ReLU rule (they keep their gradient under guided
#: backprop / deconvnet), for backends that do not count them themselves.
_NO_RELU_RULE = frozenset({"SiLU", "GELU", "Mish", "Hardswish", "ELU", "SELU", "CELU", "Softplus", "Tanh",
                           "Hardsigmoid", "PReLU", "RReLU"})


#: A one-layer capture's graph is kept (`Explainer(kept_graphs=...)`) only up to this many
#: estimated bytes: drivescene-seg at 256x512 from its default layer 0.4 MB, from
#: features.7 47 MB, from features.1 209 MB (an early layer: most of the forward, and its
#: click's backward is most of a full pass anyway).
KEPT_GRAPH_BYTES = 64 << 20


def _target_key(prep: Prepared, target: Target | None) -> tuple:
    return prep.hash, None if target is None else target.key()


def _argmax_classes(logits: np.ndarray) -> np.ndarray:
    """np.argmax(logits, axis=0) (first maximum wins) as uint8/int32. Logits laid out
    channels-last in memory (torch's channels_last outputs, Keras' moved axes) take one
    argmax over the contiguous class axis per pixel (128x256, 19 classes: 1.8 ms; the
    per-class loop below read them strided in 3.9 ms); [C, h, w] contiguous ones go one class
    at a time: numpy's argmax over the leading axis is strided and ~1.6x slower."""
    dtype = np.uint8 if len(logits) < 256 else np.int32
    if logits.ndim == 3 and logits.strides[0] < logits.strides[2]:
        return np.argmax(np.moveaxis(logits, 0, -1), axis=-1).astype(dtype)
    best = logits[0].copy()
    out = np.zeros(logits.shape[1:], dtype)
    for c in range(1, len(logits)):
        better = logits[c] > best
        out[better] = c
        np.maximum(best, logits[c], out=best)
    return out


def _in_two_threads(fn: Callable, parts: Sequence) -> list:
    """[fn(part) for part in parts] (two parts), the second one in a helper thread: for
    memory-bound numpy work that releases the GIL (the sweep's CAMs and resizes). An
    exception in either is raised in the caller."""
    first, second = parts
    box: list = []

    def helper() -> None:
        try:
            box.append(fn(second))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
            box.append(exc)

    thread = threading.Thread(target=helper, name="neuroscope-helper", daemon=True)
    thread.start()
    try:
        done = fn(first)
    finally:
        thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return [done, box[0]]


def standard_normal_f32(rng: np.random.Generator, out: np.ndarray, scale: np.ndarray | None = None,
                        offset: np.ndarray | None = None) -> np.ndarray:
    """Fill the 1-D float32 `out` with standard normal draws z from `rng` -- or with
    offset + scale * z, `scale` repeating along `out` (per colour channel of a flattened
    HWC image). Box-Muller on float32 uniforms, z = sqrt(-2 ln u1) (cos, sin)(2 pi u2),
    u1 in (0, 1]: numpy's SIMD log / sin / cos make it ~3.5x faster than
    `rng.standard_normal(dtype=float32)` (its ziggurat: ~8 ns a draw). The tails end at
    5.8 sigma (u1 >= 2**-24)."""
    n = out.shape[0]
    m = (n + 1) // 2
    u = rng.random((2, m), dtype=np.float32)
    r, angle = u
    np.subtract(np.float32(1.0), r, out=r)
    np.log(r, out=r)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    k = 1 if scale is None else len(scale)
    folded = scale is not None and n == 2 * m and m % k == 0   # z[i] and z[m + i] share a channel
    if folded:
        r.reshape(-1, k)[...] *= scale
    angle *= np.float32(2.0 * np.pi)
    np.cos(angle, out=out[:m])
    out[:m] *= r
    np.sin(angle[:n - m], out=out[m:])
    out[m:] *= r[:n - m]
    if scale is not None and not folded:
        out.reshape(-1, k)[...] *= scale
    if offset is not None:
        out += offset
    return out


def _run_gradient(fn: Callable, ctx: MethodContext) -> np.ndarray:
    """Run a batched gradient method, as SmoothGrad when `smooth` > 0 (one wrapper for all)."""
    n = int(ctx.params.get("smooth", 0))
    if n <= 0:
        return fn(ctx, ctx.x)[0]
    # Noise of std 0.15 * 255 on the uint8-range RGB values (CONTRACT.md §1); the
    # preprocessing is affine, so it is added to the preprocessed image scaled per channel.
    scale = normalize_scale(ctx.spec.value_range, ctx.spec.std) * np.float32(0.15 * 255.0)
    # One seeded stream per sample (spawned from the method's generator): the same noise
    # whatever the chunking.
    streams = ctx.rng(0).spawn(n)
    total = np.zeros(ctx.model_size, np.float64)
    chunk = 4
    for start in range(0, n, chunk):
        batch = np.empty((min(chunk, n - start), *ctx.x.shape[1:]), np.float32)   # memory bounded by the chunk
        for i in range(len(batch)):   # x + scale * noise
            standard_normal_f32(streams[start + i], batch[i].reshape(-1), scale, ctx.x[0].reshape(-1))
        total += fn(ctx, batch).sum(axis=0)
        ctx.tick((start + len(batch)) / n, "SmoothGrad samples")
    ctx.extra["smooth_samples"] = n
    return (total / n).astype(np.float32)
