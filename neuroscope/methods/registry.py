"""The method registry: metadata the CLI and the app read, and the parameter parser."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import BadParameter

FAMILIES = ("activation", "gradient", "cam", "perturbation", "feature", "segmentation", "evidence", "propagation", "interpretation")


@dataclass(frozen=True)
class MethodInfo:
    """What a method is (the `methods` JSON of CONTRACT.md §3)."""

    name: str
    family: str
    needs_layer: bool
    signed: bool
    params: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("classification", "segmentation")
    frameworks: tuple[str, ...] = ("torch", "keras")
    description: str = ""
    #: True for gradient maps: the method is a batched fn(ctx, x) -> maps [N, h, w] and
    #: gets the SmoothGrad parameter `smooth` from the engine (one wrapper for all).
    batched_gradient: bool = False
    #: True when the method perturbs inputs many times (progress bar, cancellable).
    slow: bool = False
    #: False when the method reads no layer gradient beyond its per-channel means
    #: (Grad-CAM, activation-only methods): its captures (`ctx.capture`, the engine's
    #: prefetch, the sweep) keep none, so torch frees each layer gradient during the
    #: backward (a 163-layer sweep: ~8 ms less).
    layer_gradients: bool = True
    #: True when the method's own forward reaches the logits: on an image whose prediction
    #: is not cached, the engine runs it with `ctx.target` None and `ctx.decide` set (the
    #: prediction and target come from that forward: no separate prediction pass).
    decides_target: bool = False
    #: {parameter: {allowed value: what it is for}} for parameters with a fixed set of
    #: values (the dashboard shows a choice list with each value's help text)
    choices: dict[str, dict[str, str]] = field(default_factory=dict)

    def all_params(self) -> dict[str, Any]:
        return {**self.params, **({"smooth": 0} if self.batched_gradient else {})}

    def as_json(self) -> dict:
        return {"name": self.name, "family": self.family, "tasks": list(self.tasks),
                "frameworks": list(self.frameworks), "needs_layer": self.needs_layer,
                "signed": self.signed, "params": self.all_params()}


_REGISTRY: dict[str, tuple[MethodInfo, Callable]] = {}
_loaded = False  # not "registry non-empty": importing one family module must not hide the others


def register(info: MethodInfo) -> Callable[[Callable], Callable]:
    """Decorator: make `fn` the method `info.name`."""
    def deco(fn: Callable) -> Callable:
        if info.name in _REGISTRY:
            raise ValueError(f"method {info.name!r} registered twice")
        _REGISTRY[info.name] = (info, fn)
        return fn
    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    from . import activation, cam, gradient, segmentation  # noqa: F401  (registration side effects)
    for optional in ("perturbation", "feature", "evidence", "segmented", "propagation", "relevant_filters"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise
    _loaded = True


def get_method(name: str) -> tuple[MethodInfo, Callable]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadParameter(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[MethodInfo]:
    _load_all()
    return [info for info, _ in _REGISTRY.values()]


def misfit(info: MethodInfo, task: str, framework: str, model: str = "this model") -> str | None:
    """Why the method cannot explain a `task` model of `framework` (None when it fits).

    The one answer to "does this method fit this model" for the engine, the evaluation,
    the batch runner, the app pages and the scripts."""
    if task not in info.tasks:
        return f"{info.name} is for {' and '.join(info.tasks)} models; {model} is {task}"
    if framework not in info.frameworks:
        return f"{info.name} is not available for {framework} models"
    return None


def check_fits(info: MethodInfo, task: str, framework: str, model: str = "this model") -> None:
    """`misfit` as a `BadParameter`."""
    reason = misfit(info, task, framework, model)
    if reason is not None:
        raise BadParameter(reason)


def methods_for(task: str, framework: str) -> list[MethodInfo]:
    """Every registered method that fits a `task` model of `framework`, in registry order."""
    return [m for m in list_methods() if misfit(m, task, framework) is None]


def parse_value(text: str) -> Any:
    """CLI text -> int, float, bool or a comma list (CONTRACT.md §3)."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if "," in t:
        return [parse_value(p) for p in t.split(",") if p.strip()]
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def check_params(info: MethodInfo, given: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with `given`, each checked against its default's type."""
    defaults = info.all_params()
    out = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise BadParameter(f"method {info.name} has no parameter {key!r} (parameters: {known})")
        if isinstance(value, str) and not isinstance(defaults[key], str):
            value = parse_value(value)
        out[key] = _coerce(info.name, key, value, defaults[key])
        _check_range(info.name, key, out[key])
    return out


#: Allowed values of numeric parameters, by name, for every method that has one:
#: (low, high, low excluded). A method with another range checks it itself.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "steps": (1, None, False), "smooth": (0, None, False), "window": (1, None, False),
    "stride": (1, None, False), "masks": (1, None, False), "cells": (1, 64, False), "p": (0.0, 1.0, True),
    "samples": (1, None, False), "top": (0, None, False), "seed": (0, 2**63 - 1, False),
    "channel": (-1, None, False),
}


def _check_range(method: str, key: str, value: Any) -> None:
    if key not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi, open_lo = RANGES[key]
    if (lo is not None and (value <= lo if open_lo else value < lo)) or (hi is not None and value > hi):
        what = (f"> {lo}" if open_lo else f">= {lo}") if lo is not None else ""
        what += (" and " if what and hi is not None else "") + (f"<= {hi}" if hi is not None else "")
        extra = " (-1 = the channel mean)" if key == "channel" else " (0 = off)" if key == "smooth" else ""
        raise BadParameter(f"parameter {key} of {method} must be {what}{extra}, got {value!r}")


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    bad = BadParameter(f"parameter {key} of {method} must be {type(default).__name__} "
                       f"(default {default!r}), got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            value = [value]
        return list(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    return value
