"""Our gradient, CAM and occlusion maps agree with Captum's (Pearson >= 0.99) on the same
preprocessed tensor with matched settings: on the real ImageNet MobileNetV2, on a small
segmentation net (Captum driven by the same region-summed target) and, for the ReLU
rules, on a plain ReLU network. On MobileNetV2 (ReLU6) Captum's guided backprop silently
falls back to the plain gradient; ours applies the rule."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from neuroscope import Explainer, Target, load_model  # noqa: E402
from neuroscope.methods.gradient import signed_max_abs  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "assets" / "images"

R_MIN = 0.99


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """CONTRACT.md §7: Pearson r on flattened maps (neither may be constant here)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    for m in (a, b):
        assert np.ptp(m) > 1e-6 * np.abs(m).max() > 0, "a constant map proves nothing here"
    return float(np.corrcoef(a, b)[0, 1])


def to_map(attr: torch.Tensor, reduce: str) -> np.ndarray:
    """Captum's [1, 3, H, W] attribution -> our [H, W] reduction."""
    a = attr.detach()[0].permute(1, 2, 0).numpy()
    return signed_max_abs(a) if reduce == "max-abs" else a.sum(axis=-1)


def upsampled_cam(cam: torch.Tensor, size) -> np.ndarray:
    up = captum_attr.LayerAttribution.interpolate(cam.detach(), tuple(size), interpolate_mode="bilinear")
    return up[0, 0].numpy()


class Case:
    """One model + image + target, seen by us and by Captum."""

    def __init__(self, explainer: Explainer, image, target: Target | None):
        self.ex = explainer
        self.image = image
        self.target = target
        self.resolved = explainer.resolve(image, target)
        self.module = explainer.backend.module
        self.x = torch.from_numpy(explainer.prepare(image).x).permute(0, 3, 1, 2).contiguous()
        obj = self.resolved.objective
        if explainer.task == "classification":
            self.forward, self.captum_target = self.module, int(self.resolved.class_id)
        else:  # Captum sees the region-summed target as a scalar-output model
            weights = torch.from_numpy(np.asarray(obj.class_weights, np.float32))
            mask = torch.from_numpy(np.asarray(obj.mask, np.float32))

            def forward(inp):
                z = self.module(inp)
                z = nn.functional.interpolate(z, size=inp.shape[-2:], mode="bilinear", align_corners=False)
                return ((z * weights[None, :, None, None]).sum(1) * mask).sum(dim=(1, 2))

            self.forward, self.captum_target = forward, None

    def ours(self, method: str, **kw) -> np.ndarray:
        return self.ex.explain(self.image, method, target=self.target, **kw).map_model

    def layer(self, name: str) -> nn.Module:
        return dict(self.module.named_modules())[name]

    def baseline(self) -> torch.Tensor:
        """Black in uint8 RGB (CONTRACT.md §1), preprocessed."""
        h, w = self.x.shape[-2:]
        b = self.ex.preprocess_rgb(np.zeros((1, h, w, 3), np.float32))
        return torch.from_numpy(b).permute(0, 3, 1, 2).contiguous()


def check_common_methods(case: Case, layer: str, occlusion: dict, ig_steps: int) -> dict[str, float]:
    ca, x, t = captum_attr, case.x, case.captum_target
    r = {}
    theirs = to_map(ca.Saliency(case.forward).attribute(x, target=t, abs=False), "max-abs")
    r["saliency"] = pearson(case.ours("saliency"), theirs)
    theirs = to_map(ca.InputXGradient(case.forward).attribute(x, target=t), "sum")
    r["gradient-x-input"] = pearson(case.ours("gradient-x-input"), theirs)
    theirs = to_map(ca.IntegratedGradients(case.forward).attribute(
        x, baselines=case.baseline(), target=t, n_steps=ig_steps, method="riemann_right"), "sum")
    r["integrated-gradients"] = pearson(case.ours("integrated-gradients", params={"steps": ig_steps}), theirs)
    cam = ca.LayerGradCam(case.forward, case.layer(layer)).attribute(x, target=t, relu_attributions=True)
    r["grad-cam"] = pearson(case.ours("grad-cam", layer=layer), upsampled_cam(cam, x.shape[-2:]))
    w, s = occlusion["window"], occlusion["stride"]
    theirs = ca.Occlusion(case.forward).attribute(
        x, sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=case.baseline(), target=t,
        perturbations_per_eval=4)
    # Captum adds the drop to all 3 channels of each window: one channel is the map.
    r["occlusion"] = pearson(case.ours("occlusion", params=occlusion), theirs.detach()[0, 0].numpy())
    return r


# ---------------------------------------------------------------- MobileNetV2 (ReLU6)

@pytest.fixture(scope="module")
def mobilenet() -> Case:
    ex = Explainer(load_model("mobilenet_v2-imagenet"))
    return Case(ex, str(IMAGES / "coffee.jpg"), None)  # espresso, p = 0.99


def test_mobilenet_agrees_with_captum(mobilenet):
    r = check_common_methods(mobilenet, layer="features", occlusion={"window": 64, "stride": 32}, ig_steps=16)
    assert min(r.values()) >= R_MIN, r


def test_mobilenet_grad_cam_at_a_middle_layer_agrees(mobilenet):
    cam = captum_attr.LayerGradCam(mobilenet.module, mobilenet.layer("features.13")).attribute(
        mobilenet.x, target=mobilenet.captum_target, relu_attributions=True)
    ours = mobilenet.ours("grad-cam", layer="features.13")
    assert pearson(ours, upsampled_cam(cam, (224, 224))) >= R_MIN


def test_guided_backprop_applies_to_relu6_where_captum_silently_does_not(mobilenet):
    x, t = mobilenet.x, mobilenet.captum_target
    plain = to_map(captum_attr.Saliency(mobilenet.module).attribute(x, target=t, abs=False), "max-abs")
    captum_guided = to_map(captum_attr.GuidedBackprop(mobilenet.module).attribute(x, target=t), "max-abs")
    captum_deconv = to_map(captum_attr.Deconvolution(mobilenet.module).attribute(x, target=t), "max-abs")
    # Captum hooks nn.ReLU only: on a ReLU6 network its "guided" map IS the gradient.
    np.testing.assert_allclose(captum_guided, plain, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(captum_deconv, plain, rtol=1e-4, atol=1e-6)
    ours = mobilenet.ours("guided-backprop")
    assert pearson(ours, plain) < 0.5
    ours_deconv = mobilenet.ours("deconvnet", params={"fix": False})
    assert pearson(ours_deconv, plain) < 0.5


# ---------------------------------------------------------------- small segmentation net

def small_segmenter(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(24, num_classes, 1),
    ).eval()


@pytest.fixture(scope="module")
def segmenter() -> Case:
    net = small_segmenter()
    with torch.no_grad():  # non-trivial BN statistics
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    ex = Explainer(load_model(net, task="segmentation", input_size=(64, 128), num_classes=4,
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    return Case(ex, str(IMAGES / "dashcam-highway-cars.jpg"), Target.segmentation(region="predicted"))


def test_segmentation_region_target_agrees_with_captum(segmenter):
    assert 0 < segmenter.resolved.objective.mask.sum() < 64 * 128  # a real region, not the whole image
    r = check_common_methods(segmenter, layer="5", occlusion={"window": 16, "stride": 8}, ig_steps=16)
    assert min(r.values()) >= R_MIN, r


# ---------------------------------------------------------------- ReLU network: the rules

def relu_classifier() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


@pytest.fixture(scope="module")
def relu_net() -> Case:
    ex = Explainer(load_model(relu_classifier(), task="classification", input_size=(64, 64), num_classes=10))
    return Case(ex, str(IMAGES / "cat.jpg"), None)  # its top class: Grad-CAM is not all zero


def test_relu_rules_agree_with_captum(relu_net):
    x, t = relu_net.x, relu_net.captum_target
    guided = to_map(captum_attr.GuidedBackprop(relu_net.module).attribute(x, target=t), "max-abs")
    assert pearson(relu_net.ours("guided-backprop"), guided) >= R_MIN
    deconv = to_map(captum_attr.Deconvolution(relu_net.module).attribute(x, target=t), "max-abs")
    assert pearson(relu_net.ours("deconvnet", params={"fix": False}), deconv) >= R_MIN
    layer = "6"
    ggc = captum_attr.GuidedGradCam(relu_net.module, relu_net.layer(layer)).attribute(
        x, target=t, interpolate_mode="bilinear")
    assert pearson(relu_net.ours("guided-grad-cam", layer=layer), to_map(ggc, "max-abs")) >= R_MIN
