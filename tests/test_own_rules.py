"""Guided backprop / deconvnet on the activations users' models have (issue #15 item 2):
functional F.relu gets the rule; activations without one (SiLU, GELU, Keras swish) give
a warning in meta["warnings"] instead of a silent plain gradient."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import user_zoo as zoo
from neuroscope import Explainer, Target

SIZE = zoo.SIZE


def torch_input(ex: Explainer, image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(ex.prepare(image).x).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------ 2. guided rules: coverage or a warning

class _GuidedRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, guided):
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        g = dy.clamp(min=0)
        return (g * (x > 0) if ctx.guided else g), None


def _reference_rule_map(net, x: torch.Tensor, cls: int, guided: bool) -> np.ndarray:
    """Guided backprop / deconvnet of ActivationNet("functional") by hand."""
    from neuroscope.methods.gradient import signed_max_abs
    x = x.clone().requires_grad_(True)
    a = _GuidedRelu.apply(net.bn1(net.conv1(x)), guided)
    a = _GuidedRelu.apply(net.bn2(net.conv2(a)), guided)
    y = net.fc(F.adaptive_avg_pool2d(a, 1).flatten(1))[0, cls]
    (g,) = torch.autograd.grad(y, x)
    return signed_max_abs(g[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("method", ["guided-backprop", "deconvnet"])
def test_functional_relu_gets_the_rule(method):
    net = zoo.ActivationNet("functional")
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=3)
    image = zoo.images(1, seed=11)[0]
    params = {"fix": False} if method == "deconvnet" else None
    res = ex.explain(image, method, target=Target.classification(1), params=params)
    want = _reference_rule_map(net.eval(), torch_input(ex, image), 1, guided=method == "guided-backprop")
    np.testing.assert_allclose(res.map_model, want, rtol=1e-4, atol=1e-6)
    plain = ex.explain(image, "saliency", target=Target.classification(1)).map_model
    assert np.corrcoef(plain.ravel(), res.map_model.ravel())[0, 1] < 0.99
    assert not res.meta.get("warnings")


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_guided_backprop_warns_about_activations_without_a_rule(act):
    net = zoo.ActivationNet(act)
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=3)
    image = zoo.images(1, seed=12)[0]
    res = ex.explain(image, "guided-backprop")
    name = {"silu": "SiLU", "gelu": "GELU"}[act]
    assert res.meta["warnings"] == [f"guided-backprop: 2 {name} activations have no guided rule; "
                                    "the map equals the gradient there"]
    assert "warnings" in res.as_json()["meta"]
    assert not ex.explain(image, "saliency").meta.get("warnings")


def test_keras_guided_backprop_warns_about_swish():
    import keras
    keras.utils.set_random_seed(9)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="swish", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    ex = Explainer(keras.Model(inp, out), task="classification", num_classes=3)
    res = ex.explain(zoo.images(1)[0], "guided-backprop")
    assert res.meta["warnings"] == ["guided-backprop: 1 silu activation has no guided rule; "
                                    "the map equals the gradient there"]
