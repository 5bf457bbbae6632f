"""Parts visualisation (Harada et al. 2020, METHODS.md §8): a parts detection module on the
segmenter's frozen backbone (`module`), part contributions with measured drops and their
Spearman validity check (`contributions`), the `neuroscope parts` command (`cli`)."""
from __future__ import annotations

from .contributions import PartsResult, map_shares, object_parts, part_contributions, relevance_method, shares_of
from .module import BUNDLED, PartsModule, parts_module_for

__all__ = ["PartsResult", "map_shares", "object_parts", "part_contributions", "relevance_method", "shares_of",
           "BUNDLED", "PartsModule", "parts_module_for"]
