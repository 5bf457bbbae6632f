"""Keras backend: flat layer listing, one-pass capture, objectives, backward rules,
forward from a layer, threads. Tiny models built here; numbers checked by hand or tape."""
from __future__ import annotations

import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from neuroscope.backends.base import LayerInfo, Objective  # noqa: E402
from neuroscope.backends.keras_backend import KerasBackend  # noqa: E402
from neuroscope.errors import BadModel, BadParameter  # noqa: E402


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype(np.float32)


def one_hot(c: int, n: int, contrast: int | None = None) -> np.ndarray:
    weights = np.zeros(n, np.float32)
    weights[c] = 1
    if contrast is not None:
        weights[contrast] = -1
    return weights


def nested_classifier() -> keras.Model:
    """A functional backbone used as a layer, a layer shared by two calls, a head."""
    keras.utils.set_random_seed(1)
    b_in = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="b_conv1")(b_in)
    h = keras.layers.ReLU(max_value=6, name="b_relu6")(h)
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="b_conv2")(h)
    backbone = keras.Model(b_in, h, name="backbone")
    inputs = keras.Input((16, 16, 3))
    shared = keras.layers.Conv2D(6, 1, name="shared")
    h = shared(shared(backbone(inputs)))
    h = keras.layers.Activation("relu", name="act")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(h), name="outer")


def test_nested_model_is_listed_flat_in_execution_order():
    backend = KerasBackend(nested_classifier(), (16, 16), "classification")
    assert backend.layers() == [
        LayerInfo("b_conv1", "Conv2D", (4, 8, 8), True, 2),
        LayerInfo("b_relu6", "ReLU", (4, 8, 8), True, 2),
        LayerInfo("b_conv2", "Conv2D", (6, 4, 4), True, 4),
        LayerInfo("backbone", "Functional", (6, 4, 4), True, 4),
        LayerInfo("shared", "Conv2D", (6, 4, 4), True, 4),
        LayerInfo("shared#1", "Conv2D", (6, 4, 4), True, 4),
        LayerInfo("act", "Activation", (6, 4, 4), True, 4),
        LayerInfo("gap", "GlobalAveragePooling2D", (6,), False, None),
        LayerInfo("head", "Dense", (5,), False, None),
    ]
    assert backend.framework == "keras" and backend.device in ("/CPU:0", "/GPU:0")


def test_nested_sequential_is_flattened_too():
    keras.utils.set_random_seed(2)
    inner = keras.Sequential([keras.layers.Conv2D(3, 3, padding="same", name="s_conv"),
                              keras.layers.MaxPooling2D(name="s_pool")], name="inner")
    model = keras.Sequential([keras.Input((8, 8, 3)), inner, keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(4, name="dense")])
    backend = KerasBackend(model, (8, 8), "classification")
    assert [(i.name, i.shape, i.stride) for i in backend.layers()] == [
        ("s_conv", (3, 8, 8), 1), ("s_pool", (3, 4, 4), 2), ("inner", (3, 4, 4), 2),
        ("flat", (48,), None), ("dense", (4,), None)]
    x = images(2, 8, 8)
    np.testing.assert_allclose(backend.forward(x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_capture_equals_gradient_tape_on_the_direct_computation():
    model = nested_classifier()
    backend = KerasBackend(model, (16, 16), "classification")
    x = images(1, 16, 16)
    weights = one_hot(2, 5, contrast=0)
    names = ["b_conv1", "b_relu6", "b_conv2", "shared", "shared#1", "act", "head"]
    cap = backend.capture(x, Objective(weights), names)

    backbone, shared = model.get_layer("backbone"), model.get_layer("shared")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        a = [backbone.get_layer("b_conv1")(xt)]
        a.append(backbone.get_layer("b_relu6")(a[-1]))
        a.append(backbone.get_layer("b_conv2")(a[-1]))
        a.append(shared(a[-1]))
        a.append(shared(a[-1]))
        a.append(model.get_layer("act")(a[-1]))
        a.append(model.get_layer("head")(model.get_layer("gap")(a[-1])))
        y = tf.reduce_sum(a[-1] * weights)
    grads = tape.gradient(y, [xt, *a])

    assert cap.score == pytest.approx(float(y), rel=1e-5)
    np.testing.assert_allclose(cap.output, a[-1].numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap.input_grad, grads[0].numpy()[0], rtol=1e-4, atol=1e-6)
    for name, act, grad in zip(names, a, grads[1:]):
        expected_act, expected_grad = act.numpy()[0], grad.numpy()[0]
        if expected_act.ndim == 3:   # channels-last -> channels-first
            expected_act, expected_grad = expected_act.transpose(2, 0, 1), expected_grad.transpose(2, 0, 1)
        np.testing.assert_allclose(cap.activations[name], expected_act, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cap.gradients[name], expected_grad, rtol=1e-4, atol=1e-6)
    assert np.abs(cap.gradients["shared"]).max() > 0   # the objective reaches the layers
    assert set(cap.activations) == set(names)
    assert not cap.activations["act"].flags.writeable   # zero-copy views, safe to cache
    for subset in (["shared#1"], ["head", "b_conv1"]):   # one trace serves every subset
        part = backend.capture(x, Objective(weights), subset, input_grad=False)
        assert set(part.gradients) == set(subset) and part.input_grad is None
        for name in subset:
            np.testing.assert_array_equal(part.gradients[name], cap.gradients[name])
            np.testing.assert_array_equal(part.activations[name], cap.activations[name])


def test_linear_model_input_gradient_is_its_weights():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4, 5, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, bias_initializer="random_normal")])
    backend = KerasBackend(model, (4, 5), "classification")
    kernel, bias = (v.numpy() for v in model.layers[-1].weights)
    x = images(3, 4, 5)
    weights = one_hot(1, 3, contrast=2)
    grads, scores = backend.input_gradients(x, Objective(weights))
    expected = (kernel @ weights).reshape(4, 5, 3)
    for g in grads:
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, (x.reshape(3, -1) @ kernel + bias) @ weights, rtol=1e-5)
    cap = backend.capture(x[:1], Objective(weights), input_grad=False)
    assert cap.input_grad is None and cap.score == pytest.approx(scores[0], rel=1e-5)


def segmenter() -> keras.Model:
    """Output at half the input resolution: the backend upsamples it."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((12, 16, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="enc")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1, name="classifier")(h))


def test_segmentation_upsamples_then_applies_the_mask():
    model = segmenter()
    backend = KerasBackend(model, (12, 16), "segmentation")
    x = images(2, 12, 16)
    mask = np.zeros((12, 16), np.float32)
    mask[3:9, 2:7] = 1
    weights = one_hot(1, 4, contrast=3)

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = tf.image.resize(model(xt), (12, 16), method="bilinear")
        y = tf.reduce_sum(tf.tensordot(z, weights, 1) * mask, axis=[1, 2])
    expected_grads = tape.gradient(y, xt).numpy()
    z = z.numpy()

    logits = backend.forward(x)
    assert logits.shape == (2, 4, 12, 16)
    np.testing.assert_allclose(logits, z.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    grads, scores = backend.input_gradients(x, Objective(weights, mask))
    np.testing.assert_allclose(scores, y.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-4, atol=1e-6)
    assert np.abs(grads[:, :, 12:]).max() < np.abs(grads[:, 3:9, 2:7]).max()   # mask matters

    cap = backend.capture(x[:1], Objective(weights, mask), ["enc"])
    assert cap.output.shape == (4, 12, 16) and cap.activations["enc"].shape == (8, 6, 8)
    assert cap.score == pytest.approx(float(y[0]), rel=1e-5)

    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    expected_prob = (probs @ weights * mask).sum(axis=(1, 2)) / mask.sum()
    np.testing.assert_allclose(backend.scores(x, Objective(weights, mask), "prob"), expected_prob,
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(BadParameter, match="mask must have shape"):
        backend.scores(x, Objective(weights, mask[:6]))


def test_segmentation_upsampling_matches_torch_align_corners_false():
    torch = pytest.importorskip("torch")
    model = segmenter()
    x = images(1, 12, 16)
    coarse = model(x).numpy().transpose(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(12, 16),
                                               mode="bilinear", align_corners=False).numpy()
    logits = KerasBackend(model, (12, 16), "segmentation").forward(x)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_dict_and_list_outputs_are_selected():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    logits = keras.layers.Dense(4, name="logits")(h)
    aux = keras.layers.Dense(2, name="aux")(h)
    x = images(2, 6, 6)

    model = keras.Model(inputs, {"aux": aux, "logits": logits})
    backend = KerasBackend(model, (6, 6), "classification", output="logits")
    np.testing.assert_allclose(backend.forward(x), model(x)["logits"].numpy(), rtol=1e-5, atol=1e-6)
    assert backend.num_classes == 4
    assert KerasBackend(model, (6, 6), "classification", output="aux").forward(x).shape == (2, 2)
    with pytest.raises(BadModel, match="aux"):
        KerasBackend(model, (6, 6), "classification", output="nope")
    with pytest.raises(BadModel, match="out of range"):
        KerasBackend(keras.Model(inputs, [aux, logits]), (6, 6), "classification", output=2)

    listed = keras.Model(inputs, [aux, logits])
    np.testing.assert_allclose(KerasBackend(listed, (6, 6), "classification", output=1).forward(x),
                               listed(x)[1].numpy(), rtol=1e-5, atol=1e-6)


def test_probability_outputs_are_explained_through_their_log():
    keras.utils.set_random_seed(6)
    # the softmax is hidden in a Lambda: its logits cannot be reached (a visible one is
    # explained through its logits: test_own_models.py)
    model = keras.Sequential([keras.Input((5, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(4),
                              keras.layers.Lambda(lambda t: keras.ops.softmax(t))])
    backend = KerasBackend(model, (5, 5), "classification", output_kind="probabilities")
    x = images(2, 5, 5)
    weights = one_hot(0, 4)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        p = model(xt)
        y = tf.reduce_sum(tf.math.log(tf.maximum(p, 1e-12)) * weights, axis=1)
    np.testing.assert_allclose(backend.forward(x), np.log(np.maximum(p.numpy(), 1e-12)), rtol=1e-5)
    grads, scores = backend.input_gradients(x, Objective(weights))
    np.testing.assert_allclose(scores, y.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grads, tape.gradient(y, xt).numpy(), rtol=1e-4, atol=1e-6)
    # the prob form re-normalises the log-probabilities: softmax(log p) = p
    np.testing.assert_allclose(backend.scores(x, Objective(weights), "prob"), p.numpy()[:, 0], rtol=1e-5)


# ---------------------------------------------------------------------------- ReLU rules

def relu6_model(variant: str) -> keras.Model:
    """Flatten -> Dense d1 -> ReLU6 (written four ways) -> Dense out. Scaled weights put
    pre-activations both below 0 and above 6, so the ReLU6 upper cut-off matters."""
    keras.utils.set_random_seed(7)
    init = keras.initializers.RandomNormal(stddev=0.8)
    inputs = keras.Input((2, 2, 3))
    h = keras.layers.Flatten()(inputs)
    fused = "relu6" if variant == "fused" else None
    h = keras.layers.Dense(32, activation=fused, kernel_initializer=init, name="d1")(h)
    if variant == "layer":
        h = keras.layers.ReLU(max_value=6, name="r6")(h)
    elif variant == "activation":
        h = keras.layers.Activation("relu6", name="r6")(h)
    elif variant == "op":
        h = keras.ops.relu6(h)
    return keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=init, name="out")(h))


def reference_relu6_input_gradient(model: keras.Model, x: np.ndarray, weights: np.ndarray,
                                   rule: str | None, upper_cutoff: bool = True) -> np.ndarray:
    """d(weights . logits)/dx written out by hand for Dense -> ReLU6 -> Dense."""
    (w1, b1), (w2, _) = model.get_layer("d1").get_weights(), model.get_layer("out").get_weights()
    z = x.reshape(1, -1) @ w1 + b1
    dy = weights @ w2.T                                   # gradient arriving at the ReLU6
    derivative = (z > 0) & ((z < 6) if upper_cutoff else True)
    if rule is None:
        dz = dy * derivative
    elif rule == "guided":
        dz = dy * (dy > 0) * derivative
    else:
        dz = dy * (dy > 0)
    return (dz @ w1.T).reshape(x.shape[1:])


@pytest.mark.parametrize("variant", ["layer", "activation", "fused", "op"])
def test_relu6_rules_match_hand_written_backward(variant):
    model = relu6_model(variant)
    backend = KerasBackend(model, (2, 2), "classification")
    x = images(1, 2, 2) * 2
    weights = one_hot(1, 3, contrast=0)
    w1, b1 = model.get_layer("d1").get_weights()
    z = x.reshape(1, -1) @ w1 + b1
    assert (z < 0).any() and ((z > 0) & (z < 6)).any() and (z > 6).any()   # all three pieces

    plain = backend.capture(x, Objective(weights)).input_grad
    guided = backend.capture(x, Objective(weights), rule="guided").input_grad
    deconv, _ = backend.input_gradients(x, Objective(weights), rule="deconvnet")
    for rule, got in ((None, plain), ("guided", guided), ("deconvnet", deconv[0])):
        np.testing.assert_allclose(got, reference_relu6_input_gradient(model, x, weights, rule),
                                   rtol=1e-4, atol=1e-5, err_msg=str(rule))
    assert not np.allclose(guided, plain, atol=1e-3)
    assert not np.allclose(guided, reference_relu6_input_gradient(model, x, weights, "guided",
                                                                  upper_cutoff=False), atol=1e-3)


def test_guided_calls_leave_the_users_model_untouched():
    keras.utils.set_random_seed(8)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.ReLU(max_value=6, name="r6")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    conv = model.get_layer("conv")
    x = images(2, 8, 8)
    weights = one_hot(2, 3)
    before_weights = [w.copy() for w in model.get_weights()]
    before_out = model(x).numpy()
    xt = tf.constant(x)

    def plain_gradient() -> np.ndarray:
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = tf.reduce_sum(model(xt) * weights)
        return tape.gradient(y, xt).numpy()

    before_grad = plain_gradient()
    backend = KerasBackend(model, (8, 8), "classification")
    guided, _ = backend.input_gradients(x, Objective(weights), rule="guided")
    backend.capture(x[:1], Objective(weights), ["conv", "r6"], rule="deconvnet")
    assert not np.allclose(guided, before_grad, atol=1e-4)

    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before_weights))
    np.testing.assert_array_equal(model(x).numpy(), before_out)
    np.testing.assert_allclose(plain_gradient(), before_grad, rtol=1e-6, atol=1e-7)
    assert conv.activation is keras.activations.relu
    assert model.get_layer("r6").max_value == 6 and model.get_layer("r6").negative_slope == 0
    np.testing.assert_allclose(backend.input_gradients(x, Objective(weights))[0], before_grad,
                               rtol=1e-4, atol=1e-6)

    # The rule model computes with the user's variables, not a stale copy of them.
    conv.kernel.assign(conv.kernel.numpy() * -2)
    cap = backend.capture(x[:1], Objective(weights), ["conv"], rule="guided")
    np.testing.assert_allclose(cap.output, model(x[:1]).numpy()[0], rtol=1e-5, atol=1e-6)


def test_lambda_layers_are_reported_and_bad_requests_fail_clearly():
    inputs = keras.Input((4, 4, 3))
    h = keras.layers.Lambda(lambda t: tf.nn.relu(t), name="hidden_relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    backend = KerasBackend(model, (4, 4), "classification")
    assert backend.warnings == ["Lambda layer hidden_relu may hide ReLUs"]
    x = images(1, 4, 4)
    with pytest.raises(BadParameter, match="unknown layer"):
        backend.capture(x, Objective(one_hot(0, 2)), ["nope"])
    with pytest.raises(BadParameter, match="unknown ReLU rule"):
        backend.capture(x, Objective(one_hot(0, 2)), rule="lrp")
    with pytest.raises(BadParameter, match="class_weights"):
        backend.scores(x, Objective(one_hot(0, 3)))
    with pytest.raises(BadParameter, match="input must be"):
        backend.forward(images(1, 5, 4))
    with pytest.raises(BadParameter, match=r"\[1, H, W, C\]"):
        backend.capture(images(2, 4, 4), Objective(one_hot(0, 2)))


def test_concurrent_captures_equal_sequential_ones():
    requests = [(c % 5, rule) for c, rule in zip(range(8), [None, "guided", "deconvnet", None] * 2)]
    names = ["b_relu6", "shared#1", "act"]
    x = images(1, 16, 16)

    reference = KerasBackend(nested_classifier(), (16, 16), "classification")
    expected = [reference.capture(x, Objective(one_hot(c, 5)), names, rule=rule) for c, rule in requests]

    backend = KerasBackend(nested_classifier(), (16, 16), "classification")   # cold: builds race
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def work(i: int) -> None:
        barrier.wait()
        c, rule = requests[i]
        results[i] = backend.capture(x, Objective(one_hot(c, 5)), names, rule=rule)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for want, got in zip(expected, results):
        assert got is not None
        assert got.score == pytest.approx(want.score, rel=1e-6)
        np.testing.assert_allclose(got.input_grad, want.input_grad, rtol=1e-5, atol=1e-7)
        for name in names:
            np.testing.assert_allclose(got.activations[name], want.activations[name], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got.gradients[name], want.gradients[name], rtol=1e-5, atol=1e-7)
    assert not np.allclose(results[0].input_grad, results[1].input_grad)   # rules differ


def test_deconvnet_fixed_backprojects_strided_convolutions_at_stride_one():
    keras.utils.set_random_seed(9)
    inputs = keras.Input((9, 9, 3))
    h = keras.layers.Conv2D(2, 3, strides=2, name="conv")(inputs)      # 4x4 out; 7x7 at stride 1
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(h)))
    backend = KerasBackend(model, (9, 9), "classification")
    assert "deconvnet-fixed" in backend.rules
    x = images(1, 9, 9)
    weights = one_hot(0, 3, contrast=2)

    kernel, bias = model.get_layer("conv").get_weights()
    dy = (model.get_layer("fc").get_weights()[0] @ weights).reshape(4, 4, 2)
    rows = np.floor(np.arange(7) * 4 / 7).astype(int)                 # torch's "nearest"
    up = dy[rows][:, rows]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y1 = tf.nn.conv2d(xt, kernel, strides=1, padding="VALID") + bias
    expected = tape.gradient(y1, xt, output_gradients=up[None]).numpy()[0]

    fixed, _ = backend.input_gradients(x, Objective(weights), rule="deconvnet-fixed")
    np.testing.assert_allclose(fixed[0], expected, rtol=1e-4, atol=1e-6)
    plain = backend.capture(x, Objective(weights)).input_grad
    assert not np.allclose(fixed[0], plain, atol=1e-3)                # zeros inserted vs not


def residual_classifier() -> keras.Model:
    keras.utils.set_random_seed(10)
    inputs = keras.Input((8, 8, 3))
    c1 = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    c2 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(c1)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Add(name="add")([c1, c2]))
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(h))


def test_forward_from_a_layer_runs_only_what_is_above_it_where_it_can():
    model = residual_classifier()
    backend = KerasBackend(model, (8, 8), "classification")
    x = images(1, 8, 8)
    weights = one_hot(1, 3)
    cap = backend.capture(x, Objective(weights), ["c1", "c2"])
    assert backend.can_cut("c1") and not backend.can_cut("c2")   # the skip bypasses c2

    np.testing.assert_allclose(backend.forward_from("c1", cap.activations["c1"][None]),
                               backend.forward(x), rtol=1e-5, atol=1e-6)
    batch = np.stack([cap.activations["c2"], np.zeros_like(cap.activations["c2"])])
    got = backend.forward_from("c2", batch, x=x)
    c1 = model.get_layer("c1")(tf.constant(x)).numpy()
    fc = model.get_layer("fc")
    np.testing.assert_allclose(got[0], backend.forward(x)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], fc(c1.mean(axis=(1, 2))).numpy()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.scores_from("c2", batch, Objective(weights), x=x),
                               got @ weights, rtol=1e-5, atol=1e-6)
    with pytest.raises(BadParameter, match="needs the input x"):
        backend.forward_from("c2", batch)
    with pytest.raises(BadParameter, match="do not fit"):
        backend.forward_from("c1", batch[:, :2])


def test_a_deep_layer_capture_stops_its_backward_at_a_depth_bucket():
    model = nested_classifier()
    backend = KerasBackend(model, (16, 16), "classification")
    x, weights = images(1, 16, 16, seed=3), one_hot(1, 5)
    full = backend.capture(x, Objective(weights), ["b_conv1", "act"])
    deep = backend.capture(x, Objective(weights), ["act"], input_grad=False)
    starts = {key[3] for key in backend._functions if key[0] == "capture"}
    # the first capture needed the input gradient (start None); the deep one stops at
    # the first stride-4 tensor, so its trace is a different, shallower backward
    assert None in starts and any(s is not None and s > 0 for s in starts)
    np.testing.assert_allclose(deep.gradients["act"], full.gradients["act"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(deep.activations["act"], full.activations["act"])
    assert np.abs(deep.gradients["act"]).max() > 0
