"""Backward rules as objects: rules, composites and canonizers (one mechanism for LRP,
guided backpropagation and deconvnet).

A *rule* says how the backward signal crosses one layer (`rules`). A *composite* maps
layers to rules by kind, by name, and for the first layer (`composites`). A *canonizer*
rewrites the model for the duration of one call without touching it (`canonizers`). The
backends apply a composite only inside one call: torch installs hooks for the calling
thread and removes them in ``finally``; Keras traces one flat graph per composite, cached.
Rules are written once, against the small array namespace of `ops` that each backend
provides (torch tensors or TF tensors).
"""
from .canonizers import Canonizer, ExplicitResidual, MergeBatchNorm
from .composites import (COMPOSITES, DECONVNET, DECONVNET_FIXED, GUIDED, LEGACY_RULES, LRP_COMPOSITES, Composite,
                         composite_for, lrp_composite)
from .kinds import KINDS
from .rules import (AlphaBeta, BasicRule, Deconvnet, ElementwiseRule, Epsilon, Flat, Gamma, Gate, GuidedReLU, Norm,
                    Pass, Rule, StridedFix, WSquare, ZBox, ZPlus)

__all__ = ["AlphaBeta", "BasicRule", "COMPOSITES", "Canonizer", "Composite", "DECONVNET", "DECONVNET_FIXED",
           "Deconvnet", "ElementwiseRule", "Epsilon", "ExplicitResidual", "Flat", "GUIDED", "Gamma", "Gate",
           "GuidedReLU", "KINDS", "LEGACY_RULES", "LRP_COMPOSITES", "MergeBatchNorm", "Norm", "Pass", "Rule",
           "StridedFix", "WSquare", "ZBox", "ZPlus", "composite_for", "lrp_composite"]
