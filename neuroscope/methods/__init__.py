"""Explanation methods: one small module per family, all registered in `registry`."""
from .registry import MethodInfo, get_method, list_methods, register  # noqa: F401
