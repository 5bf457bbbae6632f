"""Errors with one-line messages: what went wrong and what to do (CLI exit 2, st.error in the app)."""
from __future__ import annotations


class NeuroscopeError(Exception):
    """Base class: every expected failure (bad input, bad model, bad target)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class BadImage(NeuroscopeError):
    """The image cannot be read or is unusable."""


class BadModel(NeuroscopeError):
    """The model or its spec cannot be loaded, or it produces unusable output."""


class BadTarget(NeuroscopeError):
    """The class, region or contrast does not make sense for this model and image."""


class BadParameter(NeuroscopeError):
    """Unknown method, layer or parameter, or a parameter of the wrong type."""


class Cancelled(NeuroscopeError):
    """The progress callback asked to stop."""
