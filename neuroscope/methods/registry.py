"""The method registry: metadata the CLI and the app read, and the parameter parser."""
from __future__ import annotations

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
    return out


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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
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
