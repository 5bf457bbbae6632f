"""The bundled parts detection modules and how a segmentation model finds its own.

A parts module shares its backbone with one segmentation model (drivescene-seg: the torch
module reads the backbone from the segmenter's weights, the Keras port is one `.keras`
file). It sees the SAME preprocessed input as the segmenter (CONTRACT.md §1) and returns
part logits at model resolution; `labels` is their argmax.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadModel, BadTarget
from ..synth.parts import NUM_PARTS, PART_NAMES

WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "weights"


@dataclass(frozen=True)
class PartsSpec:
    name: str
    framework: str
    weights: Path                 # torch: the decoder state dict; keras: the whole .keras model
    backbone: Path | None = None  # torch: the segmenter's state dict (blocks features.0-13)


#: Segmentation model name -> its parts module.
BUNDLED: dict[str, PartsSpec] = {
    "drivescene-seg": PartsSpec("drivescene-parts", "torch", WEIGHTS / "drivescene-parts.pth",
                                WEIGHTS / "drivescene-seg.pth"),
    "drivescene-seg-keras": PartsSpec("drivescene-parts-keras", "keras", WEIGHTS / "drivescene-parts.keras"),
}


class PartsModule:
    """Part logits / labels for preprocessed inputs [N, h, w, 3] (channels-last, float32)."""

    part_names = PART_NAMES

    def __init__(self, spec: PartsSpec):
        self.spec = spec
        if not spec.weights.exists():
            raise BadModel(f"parts module weights {spec.weights.name} are missing; "
                           "train them with scripts/train_parts.py")
        if spec.framework == "torch":
            import torch
            from ..archs.drivescene_parts import drivescene_parts
            self._torch = torch
            self.net = drivescene_parts(spec.backbone, spec.weights, NUM_PARTS)
        else:
            import keras
            self.net = keras.saving.load_model(spec.weights, safe_mode=True, compile=False)
        self._lock = threading.Lock()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[N, h, w, 3] -> part logits [N, K, h, w]; sides must be multiples of 16."""
        x = np.asarray(x, np.float32)
        h, w = x.shape[1:3]
        if h % 16 or w % 16:
            raise BadTarget(f"the parts module needs input sides that are multiples of 16, got {h}x{w}")
        if self.spec.framework == "torch":
            torch = self._torch
            with torch.no_grad():
                out = self.net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        else:
            out = np.asarray(self.net(x, training=False)).transpose(0, 3, 1, 2)
        return out

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Argmax part ids [h, w] (uint8) of one preprocessed input [1, h, w, 3]."""
        return np.argmax(self.logits(x)[0], axis=0).astype(np.uint8)


_CACHE: dict[str, PartsModule] = {}
_CACHE_LOCK = threading.Lock()


def parts_module_for(explainer) -> PartsModule:
    """The bundled parts module of the explainer's model (loaded once per process)."""
    name = explainer.spec.name
    spec = BUNDLED.get(name)
    if spec is None:
        raise BadModel(f"no parts module for model {name!r}; parts modules exist for "
                       f"{', '.join(sorted(BUNDLED))}")
    with _CACHE_LOCK:
        mod = _CACHE.get(spec.name)
        if mod is None:
            mod = _CACHE[spec.name] = PartsModule(spec)
    return mod
