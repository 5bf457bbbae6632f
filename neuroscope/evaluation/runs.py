"""Metric runs: every method on every item of a set, scored by `neuroscope.metrics`.

`evaluate` runs every method on every item and averages the metrics; the sanity check
runs on the first item only. A random map is the reference: its pointing game is the
exact expectation (`metrics.random_pointing_game`), its other metrics come from a seeded
uniform map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .. import metrics
from ..errors import BadTarget, Cancelled, NeuroscopeError
from ..methods.registry import check_fits, get_method
from .sets import EvalItem

Progress = Callable[[float, str], bool]
RANDOM = "random"


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


def resolve_item(explainer, item: EvalItem):
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
    params = params or {}
    for name in methods:  # unknown or unfit names fail before any work
        check_fits(get_method(name)[0], explainer.task, explainer.backend.framework, explainer.spec.name)
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
        prep, target, rt = resolve_item(explainer, item)
        if item.evidence is not None:
            pointing_refs.append(metrics.random_pointing_game(item.evidence))
        for name in methods:
            try:
                info = get_method(name)[0]
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
        prep, _, rt = resolve_item(explainer, item)
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


