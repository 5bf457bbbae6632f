"""Your own model, as users bring it (issue #15): each test is one case that failed or
gave wrong numbers before, on a small model of tests/user_zoo.py."""
from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import user_zoo as zoo
from neuroscope import Explainer, Target, load_model
from neuroscope.errors import BadModel, NeuroscopeError

ROOT = Path(__file__).resolve().parent.parent
SIZE = zoo.SIZE


def torch_input(ex: Explainer, image: np.ndarray) -> torch.Tensor:
    """The preprocessed model input of `image` as the user's NCHW tensor."""
    return torch.from_numpy(ex.prepare(image).x).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------- 1. output kind

def test_torch_softmax_module_head_is_detected_and_its_logits_explained():
    net = zoo.HeadNet("softmax")
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4)
    image = zoo.images(1)[0]
    x = torch_input(ex, image)
    with torch.no_grad():
        p = net(x)[0].numpy()
        z = net.logits(x)[0].numpy()
    assert ex.backend.output_kind == "probabilities" and ex.model.spec.output_kind == "probabilities"
    top = ex.predict(image).top(1)[0]
    # the model's own probability, not a softmax of probabilities
    assert top["class_id"] == int(p.argmax())
    assert top["prob"] == pytest.approx(float(p.max()), rel=1e-5)
    res = ex.explain(image, "saliency", target=Target.classification(1))
    assert res.meta["score"] == "logit" and res.meta["output_kind"] == "probabilities"
    # the explained scalar is the logit: its gradient, not that of the saturated probability
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net.logits(xg)[0, 1], xg)
    g = g[0].permute(1, 2, 0).numpy()
    from neuroscope.methods.gradient import signed_max_abs
    np.testing.assert_allclose(res.map_model, signed_max_abs(g), rtol=1e-4, atol=1e-6)


def test_torch_functional_log_softmax_head_reaches_the_logits():
    net = zoo.HeadNet("log_softmax")
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4)
    image = zoo.images(1, seed=1)[0]
    x = torch_input(ex, image)
    with torch.no_grad():
        z = net.logits(x)[0].numpy()
        logp = net(x)[0].numpy()
    assert ex.backend.output_kind == "log-probabilities"
    np.testing.assert_allclose(ex.backend.forward(ex.prepare(image).x)[0], z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.predict(image).probs, np.exp(logp), rtol=1e-5, atol=1e-6)
    res = ex.explain(image, "saliency")
    assert res.meta["score"] == "logit"


def test_torch_sigmoid_head_gives_per_label_probabilities():
    net = zoo.HeadNet("sigmoid")
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4)
    image = zoo.images(1, seed=2)[0]
    with torch.no_grad():
        p = net(torch_input(ex, image))[0].numpy()
    assert ex.backend.output_kind == "sigmoid"
    pred = ex.predict(image)
    np.testing.assert_allclose(pred.probs, p, rtol=1e-5, atol=1e-6)   # not renormalised
    assert pred.probs.sum() != pytest.approx(1.0, abs=1e-3)
    assert ex.explain(image, "grad-cam").meta["score"] == "logit"


def test_declared_output_kind_wins_and_logits_mean_no_detection():
    net = zoo.HeadNet("softmax")
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4, output_kind="logits")
    image = zoo.images(1)[0]
    with torch.no_grad():
        p = net(torch_input(ex, image))[0].numpy()
    assert ex.backend.output_kind == "logits"
    np.testing.assert_allclose(ex.backend.forward(ex.prepare(image).x)[0], p, rtol=1e-6)


def test_torch_output_kind_unreachable_head_explains_the_log_probability():
    class Hidden(nn.Module):   # the softmax inside a script: its input cannot be reached
        def __init__(self):
            super().__init__()
            self.net = zoo.HeadNet("logits")

        def forward(self, x):
            return torch.softmax(self.net(x), 1).clone()

    ex = Explainer(Hidden(), input_size=(SIZE, SIZE), task="classification", num_classes=4,
                   output_kind="probabilities")
    image = zoo.images(1)[0]
    res = ex.explain(image, "saliency")
    assert res.meta["score"] == "log-probability" and res.meta["output_kind"] == "probabilities"


def test_keras_softmax_head_is_detected_and_probabilities_not_softmaxed_twice():
    import keras
    model = zoo.keras_head_model("softmax")
    ex = Explainer(model, task="classification", num_classes=4)
    image = zoo.images(1, seed=3)[0]
    x = ex.prepare(image).x
    p = np.asarray(model(x))[0]
    assert ex.backend.output_kind == "probabilities"
    top = ex.predict(image).top(1)[0]
    assert top["prob"] == pytest.approx(float(p.max()), rel=1e-4)
    # logits = the Dense layer's pre-activation
    logits_model = keras.Model(model.inputs, model.get_layer("predictions").output)
    dense = model.get_layer("predictions")
    pre = np.asarray(dense.kernel).T @ np.asarray(model.get_layer("gap")(model.get_layer("conv2")(
        model.get_layer("conv1")(x))))[0] + np.asarray(dense.bias)
    del logits_model
    np.testing.assert_allclose(ex.backend.forward(x)[0], pre, rtol=1e-4, atol=1e-4)
    res = ex.explain(image, "grad-cam")
    assert res.meta["score"] == "logit" and res.meta["output_kind"] == "probabilities"


def test_keras_softmax_layer_and_sigmoid_heads():
    image = zoo.images(1, seed=4)[0]
    ex = Explainer(zoo.keras_head_model("layer"), task="classification", num_classes=4)
    assert ex.backend.output_kind == "probabilities" and ex.backend.score_kind == "logit"
    p = np.asarray(ex.model.backend.model(ex.prepare(image).x))[0]
    np.testing.assert_allclose(ex.predict(image).probs, p, rtol=1e-4, atol=1e-6)
    model = zoo.keras_head_model("sigmoid")
    ex = Explainer(model, task="classification", num_classes=4)
    p = np.asarray(model(ex.prepare(image).x))[0]
    assert ex.backend.output_kind == "sigmoid"
    np.testing.assert_allclose(ex.predict(image).probs, p, rtol=1e-4, atol=1e-6)


# ------------------------------------------------- 3. in-place safety, one-line errors

@pytest.mark.parametrize("method", ["grad-cam", "activation", "score-cam"])
def test_functional_inplace_relu_after_a_layer_is_safe(method):
    net = zoo.FunctionalReluNet()
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=3)
    image = zoo.images(1, seed=5)[0]
    layer = ex.default_layer()
    assert layer == "bn2"
    res = ex.explain(image, method, layer=layer)
    assert np.isfinite(res.map).all()
    # the captured activation is bn2's own output, before the model's in-place relu
    cap = ex.capture(image, layers=["bn2"])
    with torch.no_grad():
        x = torch_input(ex, image)
        a = net.bn2(net.conv2(F.relu(net.bn1(net.conv1(x)))))[0].numpy()
    assert (a < 0).any()
    np.testing.assert_allclose(cap.activations["bn2"], a, rtol=1e-4, atol=1e-5)


def test_framework_errors_become_one_line_errors_naming_the_layer():
    ex = Explainer(zoo.FailingNet(), input_size=(SIZE, SIZE), task="classification", num_classes=3)
    with pytest.raises(BadModel) as err:
        ex.explain(zoo.images(1)[0], "saliency")
    text = str(err.value)
    assert "\n" not in text and "layer bad" in text and "RuntimeError" in text


# ------------------------------------------------------------------- 4. channels

@pytest.mark.parametrize("channels", [1, 4])
def test_torch_grayscale_and_four_channel_models(channels):
    net = zoo.SmallNet(num_classes=3, channels=channels)
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=3)
    assert ex.backend.channels == channels and len(ex.spec.mean) == channels
    image = zoo.images(1, seed=6)[0]
    x = ex.prepare(image).x
    assert x.shape == (1, SIZE, SIZE, channels)
    if channels == 1:   # luma of the RGB image
        expected = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
        np.testing.assert_allclose(x[0, ..., 0], expected, atol=1e-5)
    else:
        np.testing.assert_allclose(x[0, ..., 3], 1.0)
    for method in ("saliency", "grad-cam", "occlusion", "integrated-gradients", "guided-backprop", "lrp"):
        res = ex.explain(image, method, params={"steps": 4} if method == "integrated-gradients" else None)
        assert res.map.shape == image.shape[:2] and np.isfinite(res.map).all() and np.ptp(res.map) > 0
    sm = ex.explain(image, "saliency", params={"smooth": 2})
    assert np.isfinite(sm.map).all()


def test_keras_grayscale_model():
    model = zoo.keras_head_model("logits", channels=1)
    ex = Explainer(model, task="classification", num_classes=4)
    image = zoo.images(1, seed=7)[0]
    assert ex.prepare(image).x.shape == (1, SIZE, SIZE, 1)
    for method in ("saliency", "grad-cam", "rise"):
        params = {"masks": 8} if method == "rise" else None
        assert np.isfinite(ex.explain(image, method, params=params).map).all()


def test_mean_of_the_wrong_length_is_a_clear_error():
    with pytest.raises(BadModel, match="mean has 3 values but the model takes 1"):
        load_model(zoo.SmallNet(num_classes=3, channels=1), input_size=(SIZE, SIZE), task="classification",
                   num_classes=3, mean=[0.5, 0.5, 0.5])


# ------------------------------------------------------------------ 5. batch of one

def test_batch_of_one_model_runs_batched_methods_one_image_at_a_time():
    net = zoo.BatchOfOneNet(size=16)
    ex = Explainer(net, input_size=(16, 16), task="classification", num_classes=3)
    image = zoo.images(1, size=16, seed=8)[0]
    res = ex.explain(image, "occlusion", params={"window": 8, "stride": 4})
    assert np.isfinite(res.map).all() and np.ptp(res.map) > 0
    assert ex.backend.max_batch == 1
    assert any("one image per pass" in n for n in res.meta["notes"])
    # the same numbers as feeding the model one image at a time by hand
    x = ex.prepare(image).x
    batch = np.concatenate([x, x * 0.5, x * 0.0])
    with torch.no_grad():
        want = np.concatenate([net(torch.from_numpy(b[None]).permute(0, 3, 1, 2)).numpy() for b in batch])
    np.testing.assert_allclose(ex.backend.forward(batch), want, rtol=1e-5, atol=1e-6)
    ig = ex.explain(image, "integrated-gradients", params={"steps": 3})
    assert np.isfinite(ig.map).all()


# ------------------------------------------------------- 6. the user's model unchanged

def test_load_model_never_changes_the_users_module_and_training_still_works():
    net = zoo.SmallNet(num_classes=3)
    net.train()
    relu_flag = net.relu.inplace
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ex = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=3)
    image = zoo.images(1, seed=9)[0]
    for method in ("grad-cam", "guided-backprop", "saliency"):
        ex.explain(image, method)
    # nothing of the user's module changed
    assert net.training and net.bn.training
    assert net.relu.inplace == relu_flag
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == hooks_before
    assert not net.conv.weight.is_contiguous(memory_format=torch.channels_last) or net.conv.weight.shape[-1] == 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    # the user trains a step: the weights change, and the explainer sees the new weights
    before = ex.backend.forward(ex.prepare(image).x).copy()
    x = torch.from_numpy(zoo.images(4, seed=10).astype(np.float32) / 255).permute(0, 3, 1, 2)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    with torch.no_grad():     # an SGD step (torch.optim imports dynamo: slow next to TensorFlow)
        for p in net.parameters():
            p -= 0.5 * p.grad
    assert not torch.equal(net.conv.weight, state["conv.weight"])
    after = ex.backend.forward(ex.prepare(image).x)
    assert np.abs(after - before).max() > 1e-4
    net.eval()
    with torch.no_grad():
        want = net(torch_input(ex, image)).numpy()
    np.testing.assert_allclose(after, want, rtol=1e-4, atol=1e-5)


def test_keras_model_still_trains_after_explaining():
    import keras
    model = zoo.keras_head_model("softmax")
    ex = Explainer(model, task="classification", num_classes=4)
    image = zoo.images(1)[0]
    ex.explain(image, "grad-cam")
    ex.explain(image, "guided-backprop")
    w0 = np.array(model.get_layer("predictions").kernel)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.fit(zoo.images(4).astype(np.float32) / 255, np.array([0, 1, 2, 3]), epochs=1, verbose=0)
    assert np.abs(np.array(model.get_layer("predictions").kernel) - w0).max() > 1e-6


# -------------------------------------------------------------------- 7. loading

def write_spec(tmp_path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_factory_with_kwargs_gets_num_classes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    spec = write_spec(tmp_path, 'framework = "torch"\ntask = "classification"\ninput_size = [24, 24]\n'
                                'classes = ["a", "b", "c"]\narchitecture = "user_zoo:kwargs_factory"\n')
    model = load_model(spec)
    assert model.backend.forward(np.zeros((1, 24, 24, 3), np.float32)).shape == (1, 3)


def test_factory_kwargs_pass_arguments_to_the_factory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    base = ('framework = "torch"\ntask = "segmentation"\ninput_size = [24, 24]\n'
            'classes = ["a", "b", "c", "d", "e"]\narchitecture = "user_zoo:deeplab_like"\n')
    with pytest.raises(BadModel, match="would download"):
        load_model(write_spec(tmp_path, base))
    model = load_model(write_spec(tmp_path, base + 'factory_kwargs = { weights_backbone = "None" }\n'))
    assert model.backend.forward(np.zeros((1, 24, 24, 3), np.float32)).shape == (1, 5, 24, 24)


def test_trusted_whole_model_pickle_and_torchscript(tmp_path):
    net = zoo.SmallNet(num_classes=3)
    pickle_path = tmp_path / "whole.pt"
    torch.save(net, pickle_path)
    with pytest.raises(BadModel, match="trusted=True"):
        load_model(pickle_path, input_size=(SIZE, SIZE))
    m = load_model(pickle_path, trusted=True, input_size=(SIZE, SIZE))
    assert m.task == "classification" and m.spec.num_classes == 3
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(m.backend.forward(x), want, rtol=1e-5, atol=1e-6)

    script_path = tmp_path / "scripted.pt"
    torch.jit.script(net.eval()).save(str(script_path))
    s = load_model(script_path, trusted=True, input_size=(SIZE, SIZE))
    np.testing.assert_allclose(s.backend.forward(x), want, rtol=1e-5, atol=1e-6)
    ex = Explainer(s)
    image = zoo.images(1)[0]
    assert np.isfinite(ex.explain(image, "saliency").map).all()
    with pytest.raises(NeuroscopeError):   # no listable layers inside TorchScript: a clear error
        ex.explain(image, "grad-cam")


def test_keras_file_honours_input_size_and_reads_num_classes(tmp_path):
    import keras
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "fcn.keras"
    keras.Model(inp, out).save(path)
    m = load_model(path, input_size=(32, 40))
    assert m.spec.input_size == (32, 40) and m.backend.input_size == (32, 40)
    assert m.spec.num_classes == 3 and m.task == "classification"


def test_in_memory_keras_model_needs_no_num_classes():
    m = load_model(zoo.keras_head_model("logits", classes=6))
    assert m.spec.num_classes == 6 and m.task == "classification" and m.spec.input_size == (SIZE, SIZE)


def test_in_memory_torch_model_needs_no_num_classes_or_task():
    m = load_model(zoo.DeepLabLike(num_classes=5), input_size=(SIZE, SIZE))
    assert m.task == "segmentation" and m.spec.num_classes == 5


# ---------------------------------------------------------------- 8. default layers

def test_deeplab_like_default_layer_is_a_feature_layer():
    ex = Explainer(zoo.DeepLabLike(num_classes=5), input_size=(SIZE, SIZE), task="segmentation", num_classes=5)
    layer = ex.default_layer()
    assert layer not in ("classifier", "classifier.3")
    info = {l.name: l for l in ex.layers()}[layer]
    assert info.shape[0] != 5 and info.stride == 4


def test_keras_bare_add_is_listed_and_is_the_default_layer():
    ex = Explainer(zoo.keras_residual_model(), task="classification", num_classes=3)
    names = [l.name for l in ex.layers()]
    adds = [l for l in ex.layers() if l.type == "Add"]
    assert len(adds) == 1 and adds[0].shape == (8, SIZE // 2, SIZE // 2)
    assert ex.default_layer() == adds[0].name
    assert names.index(adds[0].name) > names.index("block_identity")
    image = zoo.images(1)[0]
    cap = ex.capture(image, layers=[adds[0].name, "stem", "block_identity"])
    np.testing.assert_allclose(cap.activations[adds[0].name],
                               cap.activations["stem"] + cap.activations["block_identity"], rtol=1e-5, atol=1e-5)
    assert np.isfinite(ex.explain(image, "grad-cam").map).all()


# -------------------------------------------------------------------- 9. install

IMPORT_TO_DIST = {"PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("neuroscope", "dashboard",
                                                                              "app_pages", "__future__")}


def _dist(requirement: str) -> str:
    import re
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_pyproject_declares_what_the_package_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_dist(r) for r in project.get("dependencies", [])}
    extras = {name: {_dist(r) for r in reqs} for name, reqs in project.get("optional-dependencies", {}).items()}
    assert {"app", "keras", "ray"} <= set(extras)
    declared = core | set().union(*extras.values())
    for module in _third_party_imports(ROOT / "neuroscope"):
        dist = IMPORT_TO_DIST.get(module, module).lower().replace("_", "-")
        if module == "tensorflow":
            dist = "tensorflow"
        assert dist in declared, f"neuroscope imports {module} but pyproject.toml does not declare {dist}"
    for module in _third_party_imports(ROOT / "app"):
        dist = IMPORT_TO_DIST.get(module, module).lower().replace("_", "-")
        assert dist in core | extras["app"], f"the app imports {module}; not in the app extra"
    assert {"numpy", "pillow", "scipy", "matplotlib", "torch"} <= core
    # every declared distribution is in the tested, pinned set
    pinned = {_dist(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    pinned |= {"tensorflow"} if "tensorflow-cpu" in pinned else set()
    assert (core | extras["app"] | extras["keras"]) <= pinned


def test_missing_matplotlib_is_a_one_line_error(monkeypatch):
    from neuroscope import render
    render.colormap_lut.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(NeuroscopeError, match="pip install matplotlib"):
        render.colormap_lut("viridis")
    render.colormap_lut.cache_clear()


def test_keras_applications_softmax_head_is_reached():
    """A real keras.applications model (weights=None: nothing downloaded), tiny input:
    its Activation("softmax") head is detected and the logits under it are explained."""
    import keras
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4)
    ex = Explainer(model, num_classes=4)
    assert ex.backend.output_kind == "probabilities" and ex.backend.score_kind == "logit"
    x = ex.prepare(zoo.images(1, size=32)[0]).x
    z = ex.backend.forward(x)[0]
    p = np.asarray(model(x))[0]
    np.testing.assert_allclose(np.exp(z - z.max()) / np.exp(z - z.max()).sum(), p, rtol=1e-4, atol=1e-6)
    assert not np.allclose(z, np.log(p), atol=1e-3)      # logits, not log-probabilities



def test_batched_prefill_with_users_models():
    """The batch command's one-pass groups: a batch-of-one model falls back to one image
    at a time; a softmax head is explained through its logits as in the one-image pass."""
    from neuroscope.batch.batched import prefill
    ex = Explainer(zoo.BatchOfOneNet(size=16), input_size=(16, 16), task="classification", num_classes=3)
    preps = [ex.prepare(im) for im in zoo.images(3, size=16)]
    assert prefill(ex, preps, [None] * 3, ["grad-cam"]) == []
    assert np.isfinite(ex.explain(preps[0], "grad-cam").map).all()
    net = zoo.HeadNet("softmax")
    batched = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4)
    single = Explainer(net, input_size=(SIZE, SIZE), task="classification", num_classes=4)
    images = zoo.images(3, seed=13)
    preps = [batched.prepare(im) for im in images]
    assert prefill(batched, preps, [None] * 3, ["grad-cam"]) == ["grad-cam"]
    for prep, image in zip(preps, images):
        np.testing.assert_allclose(batched.explain(prep, "grad-cam").map, single.explain(image, "grad-cam").map,
                                   rtol=1e-4, atol=1e-6)


def test_segmentation_softmax_heads_in_both_frameworks():
    """U-Net style segmenters ending in a per-pixel softmax: the logits under it are
    explained, the predicted probabilities are the model's own."""
    import keras
    keras.utils.set_random_seed(10)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="seg_head")(x)
    kmodel = keras.Model(inp, out)
    tnet = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1), nn.Softmax(dim=1))
    image = zoo.images(1, seed=14)[0]
    for model, kwargs in ((kmodel, {}), (tnet, {"input_size": (SIZE, SIZE)})):
        ex = Explainer(model, task="segmentation", num_classes=3, **kwargs)
        assert ex.backend.output_kind == "probabilities"
        x = ex.prepare(image).x
        if model is kmodel:
            p = np.moveaxis(np.asarray(kmodel(x))[0], -1, 0)
        else:
            with torch.no_grad():
                p = tnet(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()
        np.testing.assert_allclose(ex.predict(image).probs, p, rtol=1e-4, atol=1e-6)
        res = ex.explain(image, "grad-cam", target=Target.segmentation(int(p.mean(axis=(1, 2)).argmax()), "all"))
        assert res.meta["score"] == "logit" and np.isfinite(res.map).all()


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_an_error_of_the_callers_objective_is_raised_as_is(framework):
    """Only the model's own failures become BadModel; a target decided mid-pass that fails
    (e.g. an empty region) raises its own error."""
    from neuroscope.errors import BadTarget
    model = zoo.SmallNet(num_classes=3) if framework == "torch" else zoo.keras_head_model("logits", classes=3)
    m = load_model(model, input_size=(SIZE, SIZE), task="classification", num_classes=3)

    def decide(logits):
        raise BadTarget("no such class here")

    with pytest.raises(BadTarget, match="no such class here"):
        m.backend.capture(np.zeros((1, SIZE, SIZE, 3), np.float32), decide, [])
