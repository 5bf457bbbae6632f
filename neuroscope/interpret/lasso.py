"""The mu-lasso of Oramas et al. 2019 (METHODS.md §7), one class at a time.

    argmin_w || X w + b - l ||^2   s.t.  || w ||_1 <= mu,  w >= 0

with l the class's one-hot column and an unpenalised intercept b (X and l centred).
The constrained form is read off the exact lasso path (scikit-learn's `lars_path`,
positive=True): the path is piecewise linear in w, so the point where ||w||_1 reaches mu
is a linear interpolation between two of its knots. When the whole path stays below mu
(the least-squares fit is reached first), its end is the answer.
"""
from __future__ import annotations

import warnings

import numpy as np


def mu_lasso(X: np.ndarray, y: np.ndarray, mu: float, max_filters: int = 200) -> np.ndarray:
    """Non-negative weights w [F] with ||w||_1 <= mu for features X [n, F], target y [n]."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lars_path

    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    Xc = X - X.mean(axis=0)
    yc = y - y.mean()
    if not np.any(yc):
        return np.zeros(X.shape[1], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, _, coefs = lars_path(Xc, yc, method="lasso", positive=True, max_iter=max_filters)
    norms = np.abs(coefs).sum(axis=0)
    if norms[-1] <= mu:
        w = coefs[:, -1]
    else:
        k = int(np.searchsorted(norms, mu))          # norms[k - 1] < mu <= norms[k]
        lo, hi = norms[k - 1], norms[k]
        t = 0.0 if hi == lo else (mu - lo) / (hi - lo)
        w = coefs[:, k - 1] + t * (coefs[:, k] - coefs[:, k - 1])
    w = np.maximum(w, 0.0)
    w[w < 1e-9 * max(1.0, w.max(initial=0.0))] = 0.0
    return w.astype(np.float32)


def fit_classes(X: np.ndarray, labels: np.ndarray, classes: list[int], mu: float) -> np.ndarray:
    """W [len(classes), F]: one mu-lasso per class on its one-hot column of `labels`."""
    return np.stack([mu_lasso(X, (labels == c).astype(np.float64), mu) for c in classes]) if classes \
        else np.zeros((0, X.shape[1]), np.float32)
