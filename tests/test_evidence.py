"""Evidence analysis (pda, evidence): signed log-odds maps that are zero where a window cannot
change the prediction, and a first-order variant whose gradient is the exact log-odds gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neuroscope.backends.base import Objective
from neuroscope.engine import Explainer, MethodContext
from neuroscope.methods import evidence as ev
from neuroscope.methods.registry import check_params, get_method
from neuroscope.targets import Target
from neuroscope.zoo import load_model

SIZE = 32
BOX = (8, 8, 20, 20)   # x0, y0, x1, y1


class BoxBrightness(nn.Module):
    """Class 0's logit is the brightness inside BOX (through a 1x1 conv layer `conv`)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.zero_()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        x0, y0, x1, y1 = BOX
        mask[..., y0:y1, x0:x1] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        s = (self.conv(x) * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum() * 3.0 - 4.5
        return torch.stack([s, torch.zeros_like(s), -s], dim=1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_CACHE", str(tmp_path))


@pytest.fixture(scope="module")
def box_setup():
    ex = Explainer(load_model(BoxBrightness(), task="classification", input_size=(SIZE, SIZE), num_classes=3))
    image = np.random.default_rng(0).integers(200, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    inside = np.zeros((SIZE, SIZE), bool)
    x0, y0, x1, y1 = BOX
    inside[y0:y1, x0:x1] = True
    return ex, image, inside


@pytest.mark.parametrize("sampler", ["marginal", "conditional"])
def test_pda_is_positive_on_the_evidence_and_zero_where_nothing_matters(box_setup, sampler):
    ex, image, inside = box_setup
    if sampler == "conditional":  # a bright box on a darker textured ground: the ring predicts less
        image = np.random.default_rng(1).integers(100, 150, size=(SIZE, SIZE, 3)).astype(np.uint8)
        image[inside] = 250
    res = ex.explain(image, "pda", Target.classification(0),
                     params={"window": 4, "stride": 4, "samples": 2, "sampler": sampler})
    m = res.map
    touching = np.zeros_like(inside)   # windows overlapping the box (the box is window-aligned)
    touching[8:20, 8:20] = True
    assert np.abs(m[~touching]).max() < 1e-6
    if sampler == "marginal":  # bank photos are darker than this image: removing brightness is evidence
        assert m[inside].mean() > 0.05 and (m[inside] > 0).mean() > 0.9
    else:
        assert m[inside].mean() > 0.05 and (m[inside] > 0).mean() > 0.9
    assert res.meta["extra"]["windows"] == 64 and res.meta["signed"]


def test_pda_evidence_against_is_negative(box_setup):
    ex, image, inside = box_setup
    m = ex.explain(image, "pda", Target.classification(2),   # class 2's logit falls with brightness
                   params={"window": 4, "stride": 4, "samples": 2, "sampler": "marginal"}).map
    assert m[inside].mean() < -0.05


def test_conditional_gaussian_is_cached_on_disk_and_samples_fit_the_ring(tmp_path):
    ev._memo.pop(("gauss", 4, 2), None)
    g = ev.PatchGaussian.load(4, 2)
    assert (tmp_path / "pda-gauss-k4-p2-v1.npz").is_file()
    ev._memo.pop(("gauss", 4, 2))
    again = ev.PatchGaussian.load(4, 2)             # from the file
    assert np.allclose(again.a, g.a) and np.allclose(again.chol, g.chol)
    ring_dark = np.full(int((~g.inner).sum()), 30.0, np.float32)
    ring_bright = np.full_like(ring_dark, 220.0)
    rng = np.random.default_rng(0)
    dark, bright = g.sample(ring_dark, 64, rng), g.sample(ring_bright, 64, rng)
    assert dark.shape == (64, 4, 4, 3)
    assert dark.mean() < 80 and bright.mean() > 170     # the window follows its surroundings


def test_efficient_evidence_lives_on_the_box_in_both_variants(box_setup):
    ex, image, inside = box_setup
    t = Target.classification(0)
    first = ex.explain(image, "evidence", t, layer="conv", params={"window": 4, "stride": 4}).map
    assert np.abs(first[~inside]).max() < 0.05 * np.abs(first).max()
    assert first[inside].mean() > 0
    if not hasattr(ex.backend, "scores_from"):
        pytest.skip("this torch backend cannot run a model from a layer")
    sampled = ex.explain(image, "evidence", t, layer="conv",
                         params={"window": 4, "stride": 4, "variant": "sampled", "samples": 4}).map
    assert sampled[inside].mean() > 0
    assert np.corrcoef(first.ravel(), sampled.ravel())[0, 1] > 0.8


def _context(ex, image, target, layer):
    info, _ = get_method("evidence")
    prep = ex.prepare(image)
    return MethodContext(ex, prep, ex.resolve(prep, target), layer, check_params(info, {}), None, info)


def _laplace_lo(p, k):
    p = (p * ev.LAPLACE_N + 1.0) / (ev.LAPLACE_N + k)
    return np.log2(p / (1 - p))


def test_first_order_gradient_is_the_exact_log_odds_gradient_for_classification():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    ex = Explainer(load_model(net, task="classification", input_size=(8, 8), num_classes=3))
    image = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ctx = _context(ex, image, Target.classification(1), "1")
    a = ctx.capture(["1"]).activations["1"].astype(np.float64)
    w, b = net[4].weight.detach().numpy().astype(np.float64), net[4].bias.detach().numpy().astype(np.float64)

    def lo(act):
        z = w @ act.mean(axis=(1, 2)) + b
        p = np.exp(z - z.max())
        return _laplace_lo(p[1] / p.sum(), 3)

    _, g = ev._log_odds_gradient(ctx, ev._prob_objective(ctx), a.shape)
    eps = 1e-4
    for idx in [(0, 0, 0), (2, 3, 5), (3, 7, 7)]:
        d = np.zeros_like(a)
        d[idx] = eps
        assert g[idx] == pytest.approx((lo(a + d) - lo(a - d)) / (2 * eps), rel=1e-3, abs=1e-7)


def test_first_order_gradient_is_the_exact_log_odds_gradient_for_a_segmentation_region():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    ex = Explainer(load_model(net, task="segmentation", input_size=(8, 8), num_classes=3))
    image = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    t = Target.segmentation(0, region="all")
    ctx = _context(ex, image, t, "1")
    a = ctx.capture(["1"]).activations["1"].astype(np.float64)
    w = net[2].weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    b = net[2].bias.detach().numpy().astype(np.float64)

    def lo(act):
        z = np.einsum("jk,khw->jhw", w, act) + b[:, None, None]
        p = np.exp(z - z.max(axis=0))
        p /= p.sum(axis=0)
        return _laplace_lo(p[0].mean(), 3)

    _, g = ev._log_odds_gradient(ctx, ev._prob_objective(ctx), a.shape)
    eps = 1e-4
    for idx in [(0, 0, 0), (1, 4, 2), (3, 7, 6)]:
        d = np.zeros_like(a)
        d[idx] = eps
        assert g[idx] == pytest.approx((lo(a + d) - lo(a - d)) / (2 * eps), rel=1e-3, abs=1e-7)


def test_contrast_targets_and_bad_parameters_are_refused(box_setup):
    from neuroscope.errors import BadParameter
    ex, image, _ = box_setup
    with pytest.raises(BadParameter, match="contrast"):
        ex.explain(image, "pda", Target.classification(0, contrast=1), params={"window": 4, "stride": 4})
    with pytest.raises(BadParameter, match="sampler"):
        ex.explain(image, "pda", Target.classification(0), params={"sampler": "uniform"})
    with pytest.raises(BadParameter, match="variant"):
        ex.explain(image, "evidence", Target.classification(0), layer="conv", params={"variant": "exact"})
