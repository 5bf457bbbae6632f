"""Evaluation sets with ground-truth evidence, metric runs over methods, and `neuroscope evaluate`.

Evaluation sets (`--set NAME`) are small and fixed, so numbers are comparable run to run:

- ``drivescene-eval`` (segmentation): 12 scenes from `neuroscope.synth.generate_scene`
  (seeds 1 000 000 and up, 256x512). Per scene one target object: on odd scenes the
  largest traffic sign when there is one (a connected component of the sign label,
  >= 150 px), otherwise the largest car (>= 400 px), else the largest person, truck or
  bus. The target is that class over the object's bounding box, restricted to the
  pixels predicted as the class (``--within-class``; the bare box when the model
  predicts none there); the evidence mask is the object's own pixels (instance mask).
  ``drivescene-mini`` is its first 3 scenes (tests, quick looks).
- ``photos-eval`` (classification, ImageNet class names): the bundled photos with
  hand-drawn boxes around the object of the named class (cat face and body, espresso
  cup, squirrel, the lemon and the orange half in the fruit photo). The cat fills most
  of its photo, so its pointing game is nearly free; the others cover 15-45 % of the
  image.

Scenes are regenerated from their seeds (no files), so the set is exactly as fixed as
the generator's code. `evaluate` runs every method on every item and averages the
metrics (`neuroscope.metrics`); the sanity check runs on the first item only.
A random map is the reference: its pointing game is the exact expectation
(`metrics.random_pointing_game`), its other metrics come from a seeded uniform map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from . import metrics
from .errors import BadParameter, BadTarget, Cancelled, NeuroscopeError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
Progress = Callable[[float, str], bool]
RANDOM = "random"


@dataclass
class EvalItem:
    """One image of an evaluation set: what to explain and where the evidence truly is."""

    name: str
    image: np.ndarray                                  # uint8 RGB [H, W, 3]
    target: object                                     # a `Target`
    evidence: np.ndarray | None = None                 # bool [H, W] in original pixels
    fallback_target: object | None = None              # used when `target` is empty for the model


@dataclass(frozen=True)
class EvalSet:
    name: str
    task: str
    description: str
    build: Callable[[], list[EvalItem]]


# ------------------------------------------------------------------ scene set
SCENE_SEED0 = 1_000_000
SCENE_SIZE = (256, 512)
CAR, TRAFFIC_SIGN = 13, 7
OTHER_THINGS = (11, 14, 15)  # person, truck, bus


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def scene_target(scene, prefer_sign: bool) -> tuple[int, np.ndarray] | None:
    """(class id, evidence mask) of the object to explain in a generated scene, or None."""
    things = []
    for obj in scene.objects:
        mask = scene.instances == obj["id"]
        things.append((int(obj["class_id"]), int(mask.sum()), mask))
    signs = []
    if not any(c == TRAFFIC_SIGN for c, _, _ in things):  # signs are "stuff": use connected components
        comp, n = ndimage.label(scene.labels == TRAFFIC_SIGN, structure=np.ones((3, 3), bool))
        for i in range(1, n + 1):
            mask = comp == i
            signs.append((TRAFFIC_SIGN, int(mask.sum()), mask))
    signs = [s for s in signs + [t for t in things if t[0] == TRAFFIC_SIGN] if s[1] >= 150]
    cars = [t for t in things if t[0] == CAR and t[1] >= 400]
    others = [t for t in things if t[0] in OTHER_THINGS and t[1] >= 400]
    for pool in ([signs, cars, others] if prefer_sign else [cars, others]):
        if pool:
            c, _, mask = max(pool, key=lambda t: t[1])
            return c, mask
    return None


def drivescene_items(n: int = 12) -> list[EvalItem]:
    from .synth import generate_scene
    from .targets import Target
    items, seed = [], SCENE_SEED0
    while len(items) < n and seed < SCENE_SEED0 + 50 * n:
        scene = generate_scene(seed, SCENE_SIZE)
        chosen = scene_target(scene, prefer_sign=len(items) % 2 == 1)
        if chosen is not None:
            cid, mask = chosen
            box = _box(mask)
            items.append(EvalItem(f"scene-{seed}", scene.image, Target.segmentation(cid, box, within_class=True),
                                  mask, Target.segmentation(cid, box)))
        seed += 1
    return items


# ----------------------------------------------------------------- photo set
#: photo, ImageNet class name, hand-drawn box [x0, y0, x1, y1) around the evidence.
PHOTO_BOXES: tuple[tuple[str, str, tuple[int, int, int, int]], ...] = (
    ("cat.jpg", "Egyptian cat", (0, 0, 400, 300)),
    ("coffee.jpg", "espresso", (170, 15, 425, 300)),
    ("squirrel.jpg", "fox squirrel", (130, 105, 360, 345)),
    ("fruits.jpg", "lemon", (320, 245, 512, 480)),
    ("fruits.jpg", "orange", (75, 45, 345, 470)),
)


def photo_items() -> list[EvalItem]:
    from .images import load_image
    from .targets import Target
    items = []
    for fname, cls, (x0, y0, x1, y1) in PHOTO_BOXES:
        image = load_image(ASSETS / "images" / fname)
        mask = np.zeros(image.shape[:2], bool)
        mask[y0:y1, x0:x1] = True
        items.append(EvalItem(f"{Path(fname).stem}:{cls}", image, Target.classification(cls), mask))
    return items


EVAL_SETS: dict[str, EvalSet] = {
    s.name: s for s in (
        EvalSet("drivescene-eval", "segmentation", "12 generated street scenes, one car or traffic sign each",
                lambda: drivescene_items(12)),
        EvalSet("drivescene-mini", "segmentation", "the first 3 scenes of drivescene-eval", lambda: drivescene_items(3)),
        EvalSet("photos-eval", "classification", "bundled ImageNet photos with hand-drawn object boxes", photo_items),
    )
}


def get_eval_set(name: str) -> EvalSet:
    if name not in EVAL_SETS:
        raise BadParameter(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")
    return EVAL_SETS[name]


# ------------------------------------------------------------------ running
@dataclass
class MethodReport:
    """A method's metrics averaged over the items, plus the per-item scores and mean curves."""

    method: str
    items: list[metrics.Scores] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        vals = [s.as_json().get(key) for s in self.items]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    def mean_curve(self, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
        curves = [getattr(s, kind) for s in self.items]
        if not curves:
            return None
        return curves[0].fractions, np.mean([c.scores for c in curves], axis=0)

    def as_json(self) -> dict:
        keys = ("deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "iou_best", "iou_mean",
                "time_ms")
        return {k: self.mean(k) for k in keys if self.mean(k) is not None}


@dataclass
class Report:
    """What `evaluate` returns: per-method reports, the random reference, sanity results."""

    methods: dict[str, MethodReport]
    random: MethodReport | None = None
    random_pointing_game: float | None = None
    sanity: dict[str, metrics.SanityResult] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        out: dict = {"methods": {n: r.as_json() for n, r in self.methods.items()}}
        if self.sanity:
            out["sanity"] = {n: s.as_json() for n, s in self.sanity.items()}
        return out

    def rows(self, with_random: bool = True) -> list[dict]:
        rows = [{"method": n, **r.as_json()} for n, r in self.methods.items()]
        if with_random and self.random is not None and self.random.items:
            row = {"method": RANDOM, **self.random.as_json()}
            row.pop("time_ms", None)
            if self.random_pointing_game is not None:
                row["pointing_game"] = self.random_pointing_game
            rows.append(row)
        return rows


def _resolve_item(explainer, item: EvalItem):
    """(prepared image, the Target used, its resolution): the fallback when the target is empty."""
    prep = explainer.prepare(item.image)
    try:
        return prep, item.target, explainer.resolve(prep, item.target)
    except BadTarget:
        if item.fallback_target is None:
            raise
        return prep, item.fallback_target, explainer.resolve(prep, item.fallback_target)


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def sanity_per_method(explainer, prep, rt, methods: Sequence[str], *, max_steps: int = 8,
                      params: dict[str, dict] | None = None, keep_maps: bool = False,
                      progress: Progress | None = None) -> tuple[dict[str, metrics.SanityResult], dict[str, str]]:
    """The sanity check one method at a time (the same seeded randomisation for each), so a
    failing method loses only its own row: (results, {method: error message})."""
    results, errors = {}, {}
    for i, name in enumerate(methods):
        part = None if progress is None else (
            lambda f, msg, i=i: progress((i + f) / len(methods), msg))
        try:
            results.update(metrics.sanity_check(explainer, prep, [name], rt, max_steps=max_steps, params=params,
                                                keep_maps=keep_maps, progress=part))
        except Cancelled:
            raise
        except NeuroscopeError as exc:
            errors[name] = str(exc)
    return results, errors


def evaluate(explainer, items: Sequence[EvalItem], methods: Sequence[str], *, steps: int = metrics.DEFAULT_STEPS,
             params: dict[str, dict] | None = None, layer: str | None = None, with_random: bool = False,
             sanity: bool = False, sanity_steps: int = 8, sanity_maps: bool = False,
             chunk: int = metrics.DEFAULT_CHUNK,
             progress: Progress | None = None, strict: bool = True) -> Report:
    """Run `methods` on every item and score their maps.

    `strict`: a method failing on an item raises; otherwise the error is recorded in its
    report and the method is scored on the other items. `sanity_maps` keeps the maps of
    every randomisation step (the app's strip). `progress(fraction, message)`
    returning False cancels.
    """
    from .methods.registry import get_method
    params = params or {}
    for name in methods:
        info, _ = get_method(name)  # unknown names fail before any work
        if explainer.task not in info.tasks:
            raise BadParameter(f"{name} is for {' and '.join(info.tasks)} models; "
                               f"{explainer.spec.name} is {explainer.task}")
    report = Report({n: MethodReport(n) for n in methods},
                    MethodReport(RANDOM) if with_random else None, items=[it.name for it in items])
    units = len(items) * (len(methods) + (1 if with_random else 0)) + (1 if sanity else 0)
    done = 0

    def sub(message: str):
        if progress is None:
            return None
        base = done
        return lambda f, msg: progress((base + f) / units, f"{message}: {msg}")

    pointing_refs = []
    for index, item in enumerate(items):
        prep, target, rt = _resolve_item(explainer, item)
        if item.evidence is not None:
            pointing_refs.append(metrics.random_pointing_game(item.evidence))
        for name in methods:
            try:
                info, _ = get_method(name)
                res = explainer.explain(prep, name, target=target, layer=layer if info.needs_layer else None,
                                        params=params.get(name))
                scores = metrics.evaluate_map(explainer, prep, res, rt, item.evidence, steps=steps, chunk=chunk,
                                              progress=sub(f"{item.name} {name}"))
                report.methods[name].items.append(scores)
            except NeuroscopeError as exc:
                if strict or isinstance(exc, Cancelled):
                    raise
                report.methods[name].errors.append(f"{item.name}: {exc}")
            done += 1
        if with_random:
            m = random_map(prep.rgb.shape[:2], seed=index)
            full = metrics.resize_map(m, prep.size)
            scores = metrics.evaluate_map(explainer, prep, _Map(full, m), rt, item.evidence, steps=steps,
                                          chunk=chunk, progress=sub(f"{item.name} random map"))
            report.random.items.append(scores)
            done += 1
    if pointing_refs:
        report.random_pointing_game = float(np.mean(pointing_refs))
    if sanity and items:
        item = items[0]
        prep, _, rt = _resolve_item(explainer, item)
        kw = dict(max_steps=sanity_steps, params=params, keep_maps=sanity_maps)
        if strict:
            report.sanity = metrics.sanity_check(explainer, prep, list(methods), rt, progress=sub("sanity check"),
                                                 **kw)
        else:
            report.sanity, errors = sanity_per_method(explainer, prep, rt, methods, progress=sub("sanity check"),
                                                      **kw)
            for name, error in errors.items():
                report.methods[name].errors.append(f"sanity check: {error}")
    if progress is not None:
        progress(1.0, "done")
    return report


@dataclass
class _Map:
    """A bare map dressed as an `Explanation` (the random reference)."""

    map: np.ndarray
    map_model: np.ndarray
    meta: dict = field(default_factory=lambda: {"time_ms": 0.0})


# ------------------------------------------------------------------ output
COLUMNS = ("method", "deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "iou_best",
           "iou_mean", "time_ms")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def markdown(report: Report, with_random: bool = True, flag_pointing: bool = True) -> str:
    """The metric table (and the sanity table when present) as Markdown."""
    rows = report.rows(with_random)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    ref = report.random_pointing_game
    head = ["| " + " | ".join(cols) + (" | note |" if flag_pointing and ref is not None else " |"),
            "|" + "---|" * (len(cols) + (1 if flag_pointing and ref is not None else 0))]
    lines = []
    for r in rows:
        cells = [_fmt(r.get(c)) for c in cols]
        if flag_pointing and ref is not None:
            note = ""
            if r["method"] == RANDOM:
                note = "reference (pointing game = expected hit rate)"
            elif r.get("pointing_game") is not None and r["pointing_game"] <= ref:
                note = "does not beat a random map on pointing game"
            cells.append(note)
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(head + lines)
    if report.sanity:
        out += "\n\n" + sanity_markdown(report.sanity)
    return out


def sanity_markdown(sanity: dict[str, metrics.SanityResult]) -> str:
    lines = ["| method | rank correlation per step (top layer first) | final | sanity |", "|---|---|---|---|"]
    for name, s in sanity.items():
        steps = ", ".join(f"{v:.2f}" for v in s.rank_corr)
        lines.append(f"| {name} | {steps} | {s.final:.3f} | {'pass' if s.passed else 'FAIL (map ignores the weights)'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI
def run_cli(args) -> tuple[dict, str]:
    """`neuroscope evaluate` (CONTRACT.md §3): returns (JSON document, Markdown table)."""
    from .cli import CliError, _explainer, _target
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    if not methods:
        raise CliError("--methods needs at least one method name, e.g. --methods grad-cam,saliency")
    if len(set(methods)) != len(methods):
        raise CliError("--methods names a method twice")
    if (args.image is None) == (args.eval_set is None):
        raise CliError("evaluate needs either IMAGE or --set NAME (not both)")
    from .methods.registry import get_method
    for name in methods:
        get_method(name)
    if args.eval_set is not None:
        eval_set = get_eval_set(args.eval_set)
        if args.class_id is not None or args.region is not None:
            raise CliError("--class and --region apply to a single IMAGE; an evaluation set fixes its own targets")
        ex = _explainer(args)
        if ex.task != eval_set.task:
            raise CliError(f"set {eval_set.name} is for {eval_set.task} models; {ex.spec.name} is {ex.task}")
        items = eval_set.build()
    else:
        ex = _explainer(args)
        from .images import load_image
        items = [EvalItem(Path(args.image).name, load_image(args.image), _target(args, ex.task))]
    report = evaluate(ex, items, methods, sanity=bool(args.sanity))
    what = f"set {args.eval_set} ({len(items)} items)" if args.eval_set else args.image
    title = f"{ex.spec.name} on {what}: deletion AUC lower is better, insertion AUC higher is better"
    return report.as_json(), title + "\n\n" + markdown(report, with_random=False, flag_pointing=False)
