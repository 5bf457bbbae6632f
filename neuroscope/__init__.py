"""Neuroscope: explanations for CNN classifiers and segmenters, PyTorch and Keras.

The public API (CONTRACT.md §5): `load_model`, `Explainer`, `Target`. Frameworks are
imported lazily, so `import neuroscope` and `neuroscope --help` stay instant.
"""
from __future__ import annotations

import os

# TensorFlow's BFC allocator on the CPU keeps freed activation buffers for reuse; without it
# a capture of every layer spends as long in page faults as in the backward (measured
# 1.5-2.0x vs 1.3x a bare forward+backward on MobileNetV2 at 256x512). Effective only when
# set before TensorFlow is imported, which neuroscope does lazily.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from .runtime import configure_threads, limit_blas_threads, tune_allocator  # noqa: E402

configure_threads()   # OpenMP workers sleep instead of spinning: a busy shared machine does not collapse

tune_allocator()      # the same for numpy and torch buffers (see runtime.py)
limit_blas_threads()  # numpy's OpenBLAS must not spin on the cores the model passes use

from .errors import BadImage, BadModel, BadParameter, BadTarget, Cancelled, NeuroscopeError  # noqa: F401

__all__ = ["load_model", "Explainer", "Target", "NeuroscopeError", "BadImage", "BadModel", "BadParameter",
           "BadTarget", "Cancelled", "list_models", "list_methods", "default_layer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Explainer", "default_layer", "Explanation", "Prediction"):
        from . import engine
        return getattr(engine, name)
    if name in ("load_model", "list_models"):
        from . import zoo
        return getattr(zoo, name)
    if name == "Target":
        from .targets import Target
        return Target
    if name == "list_methods":
        from .methods.registry import list_methods
        return list_methods
    raise AttributeError(f"module 'neuroscope' has no attribute {name!r}")
