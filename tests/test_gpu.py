"""On a CUDA GPU (`make gpu-check`; skipped on CPU): the maps equal the CPU's within 1e-3
relative, and the model and every pass's input stay on the device."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU (CUDA) on this machine")]

IMAGES = Path(__file__).resolve().parents[1] / "assets" / "images"
METHODS = ("grad-cam", "grad-cam++", "saliency", "guided-backprop", "integrated-gradients", "score-cam")


@pytest.mark.parametrize("model, image, size", [("drivescene-seg", "scene-1000002.png", (128, 256)),
                                                ("mobilenet_v2-imagenet", "cat.jpg", None)])
def test_cuda_maps_equal_cpu_maps(model, image, size):
    from neuroscope import Explainer
    cpu = Explainer(model, device="cpu", input_size=size)
    gpu = Explainer(model, device="cuda", input_size=size)
    path = str(IMAGES / image)
    for method in METHODS:
        a = cpu.explain(path, method).map
        b = gpu.explain(path, method).map
        scale = max(float(np.abs(a).max()), 1e-12)
        assert np.abs(a - b).max() <= 1e-3 * scale, method


def test_model_and_inputs_stay_on_the_device():
    from neuroscope import Explainer
    ex = Explainer("drivescene-seg", device="cuda", input_size=(128, 256))
    module = ex.backend.module
    assert all(p.device.type == "cuda" for p in module.parameters())
    seen = []
    first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].device.type))
    try:
        ex.explain(str(IMAGES / "scene-1000002.png"), "grad-cam")
        ex.explain(str(IMAGES / "scene-1000002.png"), "integrated-gradients")
    finally:
        handle.remove()
    assert seen and set(seen) == {"cuda"}
