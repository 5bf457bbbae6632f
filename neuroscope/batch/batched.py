"""Explanations of several prepared images at once (one method, a target per image)."""
from __future__ import annotations

from typing import Sequence

from ..errors import Cancelled, NeuroscopeError


def explain_many(ex, preps: Sequence, method: str, targets: Sequence, *, layer: str | None = None,
                 params: dict | None = None, batch: bool = True) -> list:
    """An `Explanation` or the exception, per image, in order."""
    out = []
    for prep, target in zip(preps, targets):
        try:
            out.append(ex.explain(prep, method, target=target, layer=layer, params=params))
        except Cancelled:
            raise
        except NeuroscopeError as exc:
            out.append(exc)
    return out
