"""Canonizers: rewrite a model for the duration of one call, never in place.

Zennit's canonizers change the module's weights and restore them afterwards; here the
backends instead compute with the rewritten parameters on the side (torch: functional
calls with the merged tensors; Keras: a traced graph that reads the merged values), so
the shared model is never modified, not even for the length of a call, and concurrent
callers (a Streamlit server) cannot see a half-rewritten model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Canonizer:
    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class MergeBatchNorm(Canonizer):
    """A BatchNorm that directly follows a convolution / dense layer (and is that
    layer's only consumer) is merged into it: the linear layer's rule runs with
    ``w' = w * s``, ``b' = b * s + t`` (``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean * s``), which computes exactly the BatchNorm's output, and the
    BatchNorm itself passes the relevance through unchanged."""

    @staticmethod
    def affine(mean: Any, var: Any, gamma: Any, beta: Any, eps: float, ops: Any) -> tuple[Any, Any]:
        """(scale, shift) per channel of the BatchNorm y = x * scale + shift."""
        scale = gamma / ops.sqrt(var + eps)
        return scale, beta - mean * scale


@dataclass(frozen=True)
class ExplicitResidual(Canonizer):
    """Residual adds and concatenations become layers a rule can attach to. Keras graphs
    have them as nodes already (Add, Concatenate, ``x + y``); torch models write them as
    ``x + y`` / ``torch.cat`` in ``forward``, so the torch backend intercepts those calls
    with a thread-local ``TorchFunctionMode`` for the duration of one call: an add of two
    activations is a ``sum`` layer (Norm rule), a product with a broadcast gate a ``gate``
    layer (Gate rule), a concatenation stays the gradient (a split: conservative)."""
