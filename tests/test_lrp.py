"""LRP (methods/propagation.py on neuroscope/propagation): agreement with Zennit 0.5.1 per
composite, Keras == torch on the same weights (bundled classifier and segmenter, decoder
included), conservation of the epsilon rule, per-layer / channel-conditional relevance,
one-line errors for unsupported layers, and nothing left behind by a call that raises."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from neuroscope import Explainer, Target, load_model
from neuroscope.backends.base import Objective
from neuroscope.backends.torch_backend import TorchBackend
from neuroscope.errors import BadParameter
from neuroscope.propagation import COMPOSITES, lrp_composite

from conftest import IMAGES


def _stub_torchvision() -> None:
    """zennit imports torchvision.models.resnet at import time; torchvision does not
    import here, and zennit needs only the two block classes from it."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__file__"):
        return
    tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models",
                                                        "torchvision.models.resnet"))

    class _Block(nn.Module):
        pass

    resnet.BasicBlock, resnet.Bottleneck = _Block, type("Bottleneck", (nn.Module,), {})
    models.resnet, tv.models = resnet, models
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


_stub_torchvision()
zennit = pytest.importorskip("zennit")
import zennit.composites as zc  # noqa: E402
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.layer import Sum  # noqa: E402


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


LOW, HIGH = (-2.1, -2.0, -1.8), (2.2, 2.4, 2.6)


def zennit_composite(name: str, canonizers: list):
    cls = {"epsilon-plus-flat": zc.EpsilonPlusFlat, "epsilon-plus": zc.EpsilonPlus,
           "epsilon-alpha2-beta1-flat": zc.EpsilonAlpha2Beta1Flat, "epsilon-alpha2-beta1": zc.EpsilonAlpha2Beta1,
           "epsilon-gamma-box": zc.EpsilonGammaBox}[name]
    if name == "epsilon-gamma-box":
        low = torch.tensor(LOW).reshape(1, 3, 1, 1)
        high = torch.tensor(HIGH).reshape(1, 3, 1, 1)
        return cls(low=low, high=high, canonizers=canonizers)
    return cls(canonizers=canonizers)


def zennit_map(model: nn.Module, x: np.ndarray, onehot: np.ndarray, composite) -> np.ndarray:
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xt)
        (r,) = torch.autograd.grad(out, xt, torch.from_numpy(onehot)[None])
    return r[0].sum(0).numpy()


def ours(backend, x: np.ndarray, onehot: np.ndarray, name: str) -> np.ndarray:
    g, _ = backend.input_gradients(x, Objective(onehot), rule=lrp_composite(name, low=LOW, high=HIGH))
    return g[0].sum(-1)


def vgg_bn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))
    with torch.no_grad():
        for bn in (m[1], m[5], m[8]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.mark.parametrize("name", COMPOSITES)
def test_vgg_bn_maps_match_zennit(name):
    x = np.random.default_rng(0).normal(size=(1, 24, 24, 3)).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[3]
    backend = TorchBackend(vgg_bn(), (24, 24), "classification", device="cpu")
    reference = zennit_map(vgg_bn(), x, onehot, zennit_composite(name, [SequentialMergeBatchNorm()]))
    r = pearson(ours(backend, x, onehot, name), reference)
    assert r >= 0.99, f"{name}: r = {r:.5f}"


class _ResidualSum(AttributeCanonizer):
    """Zennit canonizer for our MobileNetV2's inverted residual: x + conv(x) as a Sum
    module (what zennit's ResNet canonizer does for torchvision's bottleneck)."""

    def __init__(self):
        from neuroscope.archs.mobilenet_v2 import InvertedResidual

        def attributes(name, module):
            if isinstance(module, InvertedResidual) and module.use_res_connect:
                def forward(self, x):
                    return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))
                return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
            return None

        super().__init__(attributes)


@pytest.fixture(scope="module")
def mobilenet_pair():
    """The bundled MobileNetV2 run at 112x112 (fully convolutional up to its global pool;
    a quarter of the time of 224x224), and a fresh copy of it for Zennit."""
    def fresh():
        return load_model("mobilenet_v2-imagenet", device="cpu").backend.module
    ex = Explainer(load_model("mobilenet_v2-imagenet", device="cpu"))
    backend = TorchBackend(fresh(), (112, 112), "classification", device="cpu")
    from PIL import Image
    rgb = np.asarray(Image.open(IMAGES / "cat.jpg").convert("RGB").resize((112, 112)))
    return backend, fresh, ex.preprocess_rgb(rgb[None].astype(np.float32))


@pytest.mark.parametrize("name", COMPOSITES)
def test_mobilenet_v2_maps_match_zennit(name, mobilenet_pair):
    backend, fresh, x = mobilenet_pair
    onehot = np.zeros(1000, np.float32)
    onehot[int(np.argmax(backend.forward(x)[0]))] = 1
    reference = zennit_map(fresh(), x, onehot, zennit_composite(name, [SequentialMergeBatchNorm(), _ResidualSum()]))
    r = pearson(ours(backend, x, onehot, name), reference)
    assert r >= 0.99, f"{name}: r = {r:.5f}"


def test_epsilon_conserves_relevance_on_a_bias_free_relu_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5, bias=False)).eval()
    backend = TorchBackend(net, (16, 16), "classification", device="cpu")
    x = np.random.default_rng(1).uniform(0, 1, size=(1, 16, 16, 3)).astype(np.float32)
    z = backend.forward(x)[0]
    c = int(np.argmax(z))
    onehot = np.eye(5, dtype=np.float32)[c]
    rule = lrp_composite("epsilon-plus").with_names((((
        "0", "2", "6"), lrp_composite("epsilon-plus").rule_for("dense")),))   # epsilon everywhere
    g, _ = backend.input_gradients(x, Objective(onehot * z[c]), rule=rule)   # output relevance = y = z_c
    total, y = float(g.sum()), float(z[c])
    assert abs(y) > 1e-3
    assert abs(total - y) / abs(y) < 1e-3, (total, y)


def test_explain_reports_conservation_and_layer_relevance():
    ex = Explainer(load_model("mobilenet_v2-imagenet", device="cpu"))
    image = IMAGES / "cat.jpg"
    e = ex.explain(image, "lrp", layer="features.16", params={"composite": "epsilon-plus"})
    extra = e.meta["extra"]
    assert extra["composite"] == "epsilon-plus"
    assert extra["relevance_out"] == 1.0
    assert np.isclose(extra["conservation"], e.map_model.sum() / extra["relevance_out"], rtol=1e-3)
    per_channel = ex.relevance(image, None, "features.16", "epsilon-plus")
    assert per_channel.shape == (160,)
    assert [k for k, _ in extra["top_channels"]][:3] == list(np.argsort(-per_channel)[:3])
    # conditioning on two channels: the input relevance is the part that flows through them
    k = [int(c) for c in np.argsort(-per_channel)[:2]]
    e2 = ex.explain(image, "lrp", layer="features.16", params={"composite": "epsilon-plus", "channels": k})
    assert e2.meta["extra"]["channels"] == k
    assert np.isclose(e2.meta["extra"]["channel_relevance"], per_channel[k].sum(), rtol=1e-4)
    assert 0 < e2.meta["extra"]["relevance_in"] < extra["relevance_in"] * 1.5
    assert pearson(e2.map, e.map) < 0.999


def test_fast_kernels_equal_the_autograd_rules_on_awkward_layers():
    """The linear rules run without autograd (passes in the forward, data-gradients in
    the backward, conv -> BatchNorm -> ReLU chains as one Function): the same maps as
    the re-forwarding autograd path, on strided odd sizes, grouped, 1x1, transposed,
    padding-mode and dense layers, signed and ReLU inputs, every composite."""
    from neuroscope.backends import torch_rules

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
            self.b2 = nn.BatchNorm2d(8)
            self.pw = nn.Conv2d(8, 12, 1)              # signed input (no ReLU before it)
            self.up = nn.ConvTranspose2d(12, 6, 3, stride=2, padding=1, output_padding=1)
            self.rf = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")   # autograd path
            self.fc = nn.Linear(6, 4)
            for bn in (self.b1, self.b2):
                with torch.no_grad():
                    bn.running_mean.uniform_(-0.5, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = self.b2(self.dw(x))
            x = torch.relu(self.up(self.pw(x)))
            return self.fc(self.rf(x).mean(dim=(2, 3)))

    backend = TorchBackend(Net().eval(), (13, 13), "classification", device="cpu")
    x = np.random.default_rng(2).normal(size=(1, 13, 13, 3)).astype(np.float32)
    onehot = np.eye(4, dtype=np.float32)[1]
    for name in COMPOSITES:
        comp = lrp_composite(name, low=LOW, high=HIGH)
        plan = backend._plan(comp)
        assert sum(e.kernel is not None for e in plan.entries.values()) == 5 and plan.chains   # not rf
        fast = ours(backend, x, onehot, name)
        kernels = {k: e.kernel for k, e in plan.entries.items()}
        chains = plan.chains
        try:
            for e in plan.entries.values():
                e.kernel = None
            plan.chains = {}
            slow = ours(backend, x, onehot, name)
        finally:
            for k, e in plan.entries.items():
                e.kernel = kernels[k]
            plan.chains = chains
        assert np.abs(slow).max() > 0
        np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5 * np.abs(slow).max(), err_msg=name)
    assert torch_rules.LinearKernel is not None


def test_unsupported_layer_is_a_one_line_error_naming_it():
    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    net = nn.Sequential(nn.Conv2d(3, 4, 3), Odd(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    backend = TorchBackend(net, (8, 8), "classification", device="cpu")
    with pytest.raises(BadParameter, match=r"layer 1 \(Odd\) has no propagation rule") as info:
        backend.input_gradients(np.zeros((1, 8, 8, 3), np.float32), Objective(np.array([1, 0], np.float32)),
                                rule=lrp_composite("epsilon-plus"))
    assert "\n" not in str(info.value)


def test_a_call_that_raises_leaves_no_hook_and_no_changed_weight():
    net = vgg_bn()
    backend = TorchBackend(net, (24, 24), "classification", device="cpu")
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def bad_objective(logits):
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):   # BadModel naming the call, or the error itself
        backend.capture(np.zeros((1, 24, 24, 3), np.float32), bad_objective, ["4"],
                        rule=lrp_composite("epsilon-gamma-box", low=LOW, high=HIGH))
    assert backend.hook_count() == 0
    assert not torch.overrides._is_torch_function_mode_enabled()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and the plain gradient afterwards is the plain gradient
    x = np.random.default_rng(0).normal(size=(1, 24, 24, 3)).astype(np.float32)
    g1, _ = backend.input_gradients(x, Objective(np.eye(10, dtype=np.float32)[2]))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    (g2,) = torch.autograd.grad(net(xt)[0, 2], xt)
    np.testing.assert_allclose(g1[0], g2[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- Keras == torch (bundled)

keras = pytest.importorskip("keras")


@pytest.mark.parametrize("model, size, target, names", [
    ("mobilenet_v2-imagenet", None, Target.classification(281), ("epsilon-plus-flat",)),
    # a clicked car, decoder included; gamma-box: five passes per convolution, the most
    # sensitive to a BatchNorm merged differently (the small parity net covers the rest)
    ("drivescene-seg", (128, 256), Target.segmentation(13, (880, 450)), ("epsilon-gamma-box",)),
])
def test_keras_maps_match_torch_on_the_bundled_models(model, size, target, names):
    image = IMAGES / "dashcam-highway-cars.jpg"
    explainers = [Explainer(load_model(spec, input_size=size)) for spec in (model, f"{model}-keras")]
    for name in names:
        maps = [ex.explain(image, "lrp", target=target, params={"composite": name}) for ex in explainers]
        r = pearson(maps[0].map_model, maps[1].map_model)
        assert r >= 0.99, f"{model} {name}: r = {r:.4f}"
        c = [m.meta["extra"]["conservation"] for m in maps]
        assert np.isclose(c[0], c[1], rtol=0.02, atol=1e-4), c


@pytest.mark.parametrize("model", ["mobilenet_v2-imagenet", "mobilenet_v2-imagenet-keras"])
def test_lrp_takes_prediction_and_target_from_its_own_forward(model):
    """On an image whose prediction is not known, `lrp` is ONE pass (MethodInfo.decides_target):
    no separate prediction forward, and the same target and map as after a prediction."""
    image = IMAGES / "cat.jpg"
    ex = Explainer(load_model(model))
    e = ex.explain(image, "lrp")
    assert ex.stats["forward"] == 0 and ex.stats["capture"] == 1, ex.stats
    known = Explainer(load_model(model))
    known.predict(image)
    e2 = known.explain(image, "lrp")
    assert e.meta["target"] == e2.meta["target"]
    np.testing.assert_allclose(e.map, e2.map, rtol=1e-4, atol=1e-5 * float(np.abs(e2.map).max()))
    assert ex.explain(image, "lrp") is e      # cached under the target decided in the pass


def test_an_in_place_add_breaks_the_chain_and_signed_calls_keep_their_negative_pass():
    """`y = bn(conv(x)); y += shortcut; act(y)`: bn's output object reaches act changed in
    place, so act is not bn's sole consumer (its rule must see the shortcut); a module called
    once on a ReLU output and once on a signed input is not marked non-negative."""
    from neuroscope.backends.torch_rules import data_flow

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
            self.relu, self.shared = nn.ReLU(), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = self.bn(self.conv(x))
            y += x
            y = self.act(y)
            return (self.shared(self.relu(y)) + self.shared(y - 1)).mean(dim=(2, 3))

    flow = data_flow(TorchBackend(Block().eval(), (8, 8), "classification", device="cpu"))
    assert flow.feeds.get("conv") == "bn" and "bn" not in flow.feeds
    assert "shared" not in flow.nonneg and "act" not in flow.nonneg
