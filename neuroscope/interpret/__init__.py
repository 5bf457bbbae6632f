"""Model interpretation (Oramas et al. 2019, METHODS.md §7): the relevant filters of each
class from a mu-lasso over per-filter energies, their atlas, and the store that
`relevant-filters` and the app read back."""
from .core import SETS, default_layers, interpret, iter_atlas_crops
from .lasso import mu_lasso
from .store import Interpretation, bundled_interpretation, load_interpretation

__all__ = ["SETS", "Interpretation", "bundled_interpretation", "default_layers", "interpret",
           "iter_atlas_crops", "load_interpretation", "mu_lasso"]
