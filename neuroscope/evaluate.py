"""Moved to the package `neuroscope.evaluation` (sets, runs, reports); kept so old imports work."""
from __future__ import annotations

from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
from .evaluation.reports import fmt_value as _fmt  # noqa: F401
from .evaluation.runs import resolve_item as _resolve_item  # noqa: F401
from .evaluation.sets import SCENE_SEED0, SCENE_SIZE  # noqa: F401
from .evaluation.cli import run_cli  # noqa: F401
