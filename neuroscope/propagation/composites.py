"""Composites: which rule on which layer (by name, then first layer, then kind).

A composite is a frozen dataclass: hashable and equal by value, so the backends cache
one traced graph (Keras) per composite and the engine one capture per composite. The
LRP composites are Zennit 0.5.1's, with the same rules on the same layer types and the
same first layer; the guided-backprop and deconvnet composites are what the strings
"guided", "deconvnet" and "deconvnet-fixed" of `Backend.capture(rule=...)` name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import BadParameter
from .canonizers import Canonizer, ExplicitResidual, MergeBatchNorm
from .kinds import ACTIVATION, CONVOLUTION, GRADIENT_KINDS, KINDS, LINEAR
from .rules import AlphaBeta, Deconvnet, Epsilon, Flat, Gamma, Gate, GuidedReLU, Norm, Pass, Rule, StridedFix, ZBox, \
    ZPlus

Map = tuple[tuple[tuple[str, ...], Rule], ...]


@dataclass(frozen=True)
class Composite:
    """Rules for layers. ``name_map`` entries match layer names, ``first_map`` entries
    the first layer (in execution order) whose kind they list, ``layer_map`` entries
    layer kinds (`kinds.KINDS`); the first match wins. ``strict``: a layer of a kind the
    backend cannot classify is an error (LRP), not a silent gradient."""

    name: str
    layer_map: Map = ()
    first_map: Map = ()
    name_map: Map = ()
    canonizers: tuple[Canonizer, ...] = ()
    strict: bool = False
    #: ((layer, channels), ...): the backward keeps only these channels of that layer's
    #: output signal (concept-conditional relevance, CRP)
    masks: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def rule_for(self, kind: str, name: str = "", first: bool = False) -> Rule | None:
        """The rule for one layer, or None: the layer keeps its gradient."""
        base = name.split("#")[0]
        for names, rule in self.name_map:
            if name in names or base in names:
                return rule
        if first:
            for kinds, rule in self.first_map:
                if kind in kinds:
                    return rule
        for kinds, rule in self.layer_map:
            if kind in kinds:
                return rule
        return None

    def first_kinds(self) -> set[str]:
        """Kinds that may be 'the first layer' of `first_map`."""
        return {k for kinds, _ in self.first_map for k in kinds}

    def has(self, canonizer: type) -> bool:
        return any(isinstance(c, canonizer) for c in self.canonizers)

    def check_kind(self, kind: str, name: str, type_name: str) -> None:
        """Under a strict composite, a layer of unknown kind is a one-line error."""
        if self.strict and kind not in KINDS:
            raise BadParameter(f"{self.name}: layer {name} ({type_name}) has no propagation rule; "
                               f"supported: {', '.join(sorted(KINDS))}")

    def with_names(self, name_map: Map) -> "Composite":
        """This composite with `name_map` entries in front (per-layer overrides)."""
        return replace(self, name_map=tuple(name_map) + self.name_map)

    def with_mask(self, layer: str, channels: Sequence[int]) -> "Composite":
        """This composite whose backward keeps only `channels` of `layer`'s output."""
        return replace(self, masks=self.masks + ((layer, tuple(int(c) for c in channels)),))

    @property
    def gradient_kinds(self) -> tuple[str, ...]:
        return GRADIENT_KINDS


# ---------------------------------------------------------------- guided / deconvnet

GUIDED = Composite("guided-backprop", layer_map=((("relu",), GuidedReLU()),))
DECONVNET = Composite("deconvnet", layer_map=((("relu",), Deconvnet()),))
#: StridedFix applies to "conv" layers with stride > 1 (the backends check the stride).
DECONVNET_FIXED = Composite("deconvnet-fixed", layer_map=((("relu",), Deconvnet()), (("conv",), StridedFix())))

#: The rule strings of `Backend.capture(rule=...)` (backends/base.py RULES).
LEGACY_RULES = {"guided": GUIDED, "deconvnet": DECONVNET, "deconvnet-fixed": DECONVNET_FIXED}


def composite_for(rule: "str | Composite | None") -> Composite | None:
    """A backend's `rule` argument (a legacy string or a Composite) as a Composite."""
    if rule is None or isinstance(rule, Composite):
        return rule
    try:
        return LEGACY_RULES[rule]
    except (KeyError, TypeError):
        raise BadParameter(f"unknown rule {rule!r}; expected one of {sorted(LEGACY_RULES)} "
                           "or a propagation.Composite") from None


# ---------------------------------------------------------------- LRP (Zennit 0.5.1)

#: name -> what it is for (the method's help text).
LRP_COMPOSITES = {
    "epsilon-plus-flat": "LRP-z+ in convolutions, LRP-epsilon in dense layers, flat in the first layer: "
                         "positive evidence, smooth and robust (recommended default).",
    "epsilon-plus": "LRP-z+ in convolutions, LRP-epsilon in dense layers: positive evidence with "
                    "pixel detail from the input layer.",
    "epsilon-alpha2-beta1-flat": "alpha=2, beta=1 in convolutions (positive AND negative evidence), "
                                 "epsilon in dense layers, flat in the first layer.",
    "epsilon-alpha2-beta1": "alpha=2, beta=1 in convolutions, epsilon in dense layers: signed evidence "
                            "with pixel detail.",
    "epsilon-gamma-box": "LRP-gamma in convolutions, epsilon in dense layers, z-box (pixel bounds) in the "
                         "first convolution: Montavon et al.'s recommended composite, sharpest maps.",
}
COMPOSITES = tuple(LRP_COMPOSITES)


def _base(stabilizer: float) -> Map:
    """Zennit's layer_map_base, plus the gate of attention blocks."""
    return ((ACTIVATION, Pass()), (("sum",), Norm(stabilizer)), (("avgpool",), Norm(stabilizer)),
            (("batchnorm",), Pass()), (("gate",), Gate()))


def lrp_composite(name: str, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                  low: Sequence[float] | None = None, high: Sequence[float] | None = None) -> Composite:
    """Zennit's composite `name` (with dashes). `low` / `high`: per-channel model-input
    bounds for epsilon-gamma-box's z-box (preprocessed pixel 0 and 255)."""
    if name not in LRP_COMPOSITES:
        raise BadParameter(f"unknown composite {name!r}; expected one of {', '.join(COMPOSITES)}")
    dense = (("dense",), Epsilon(float(epsilon)))
    first: Map = ()
    if name in ("epsilon-plus", "epsilon-plus-flat"):
        conv = (CONVOLUTION, ZPlus(stabilizer))
    elif name.startswith("epsilon-alpha2-beta1"):
        conv = (CONVOLUTION, AlphaBeta(2.0, 1.0, stabilizer))
    else:
        conv = (CONVOLUTION, Gamma(float(gamma), stabilizer))
        if low is None or high is None:
            raise BadParameter("epsilon-gamma-box needs the input bounds low / high")
        first = ((CONVOLUTION, ZBox(tuple(float(v) for v in low), tuple(float(v) for v in high), stabilizer)),)
    if name.endswith("-flat"):
        first = ((LINEAR, Flat(stabilizer)),)
    return Composite(name, layer_map=_base(stabilizer) + (conv, dense), first_map=first,
                     canonizers=(MergeBatchNorm(), ExplicitResidual()), strict=True)
