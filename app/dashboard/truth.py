"""Ground-truth label images and the segmentation scores the Ground truth page shows."""
from __future__ import annotations

import numpy as np

from neuroscope.errors import BadImage
from neuroscope.images import load_labels
from neuroscope.evaluation import reports as scores
from neuroscope.evaluation.reports import iou, normalise_rows  # noqa: F401  (the page's names)

IGNORE = 255


def read_labels(data: bytes) -> np.ndarray:
    """A label PNG (uint8 trainIds, 255 = ignore; CONTRACT.md §6) -> uint8 [H, W] (size
    limits and one-line errors: `neuroscope.images.load_labels`)."""
    return load_labels(data, "the label image")


def confusion(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """Counts [truth class, predicted class] over pixels whose truth is a class (< n)."""
    if pred.shape != truth.shape:
        raise BadImage(f"the label image is {truth.shape[1]}x{truth.shape[0]} but the image is "
                       f"{pred.shape[1]}x{pred.shape[0]}; upload the labels of this image")
    return scores.confusion(pred, truth, n)


def error_map(pred: np.ndarray, truth: np.ndarray, class_id: int) -> np.ndarray:
    """RGB picture of one class: correct (green), missed (blue), false alarm (red), else black."""
    p, t = pred == class_id, truth == class_id
    out = np.zeros((*pred.shape, 3), np.uint8)
    out[p & t] = (40, 170, 70)
    out[t & ~p] = (40, 90, 230)
    out[p & ~t & (truth != IGNORE)] = (230, 50, 40)
    return out
