"""Evaluation: sets (`sets`), metric runs over methods (`runs`), reports and segmentation
scores (`reports`), the `evaluate` command (`cli`). The CLI, the app and the scripts call
this package; "does this method fit this model" is `methods.registry.misfit`."""
from __future__ import annotations

from ..methods.registry import check_fits, methods_for, misfit
from .reports import (COLUMNS, confusion, iou, markdown, markdown_table, mean_iou, normalise_rows, pixel_share,
                      sanity_markdown, text_table)
from .runs import RANDOM, MethodReport, Report, evaluate, random_map, resolve_item, sanity_per_method
from .sets import EVAL_SETS, EvalItem, EvalSet, drivescene_items, get_eval_set, photo_items, scene_target

__all__ = ["check_fits", "methods_for", "misfit", "COLUMNS", "confusion", "iou", "markdown", "markdown_table",
           "mean_iou", "normalise_rows", "pixel_share", "sanity_markdown", "text_table", "RANDOM", "MethodReport",
           "Report", "evaluate", "random_map", "resolve_item", "sanity_per_method", "EVAL_SETS", "EvalItem", "EvalSet",
           "drivescene_items", "get_eval_set", "photo_items", "scene_target"]
