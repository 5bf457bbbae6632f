"""Shared test set-up: quiet TensorFlow, fixed seeds, paths to bundled assets."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
IMAGES = ASSETS / "images"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
