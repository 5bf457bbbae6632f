"""Applying a `propagation.Composite` in the Keras backend's graph walk.

The walker (keras_backend._GraphWalker) re-calls every layer on fresh symbolic tensors;
under a composite, `RuleApplier.apply` returns each layer's output wrapped in a
``tf.custom_gradient`` op whose backward is the layer's rule. The flat model built from
that walk is traced once per composite and cached by the backend; the user's model, its
variables and TF's gradient registry are never touched. BatchNorms are merged into the
linear layer before them lazily: the linear layer's backward (traced after the walk)
reads the merged parameters from a box the BatchNorm fills in during the walk.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import keras
import tensorflow as tf
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.ops import numpy as knp

from ..errors import BadParameter
from ..propagation.canonizers import MergeBatchNorm
from ..propagation.composites import Composite
from ..propagation.kinds import ACTIVATION
from ..propagation.rules import ActSpec, Flat, Pass, stabilize


class TfOps:
    """The array namespace rules are written against (see propagation.rules)."""

    @staticmethod
    def clamp(t, lo=None, hi=None):
        if lo is not None:
            t = tf.maximum(t, lo)
        if hi is not None:
            t = tf.minimum(t, hi)
        return t

    where = staticmethod(tf.where)
    ones_like = staticmethod(tf.ones_like)
    zeros_like = staticmethod(tf.zeros_like)
    sqrt = staticmethod(tf.sqrt)

    @staticmethod
    def per_channel(values, like):
        return tf.ones_like(like) * tf.constant(values, like.dtype)   # channels last: broadcasts


OPS = TfOps()

_AVG = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
        keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalAveragePooling3D)
_MAX = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
        keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)
_IDENTITY = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
             keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
             keras.layers.AlphaDropout, keras.layers.Flatten, keras.layers.Reshape, keras.layers.ZeroPadding1D,
             keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D, keras.layers.Cropping1D,
             keras.layers.Cropping2D, keras.layers.Cropping3D, keras.layers.Identity, keras.layers.InputLayer)
_ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU,
                      keras.layers.ELU, keras.layers.Softmax, keras.layers.Rescaling)


def classify(op: Any, relu_spec: Callable) -> str:
    """The layer kind (propagation.kinds) of a graph operation (layer or keras.ops call)."""
    if isinstance(op, BaseConvTranspose):
        return "conv-transpose"
    if isinstance(op, (BaseConv, BaseDepthwiseConv)):
        return "conv"
    if isinstance(op, keras.layers.Dense):
        return "dense"
    if isinstance(op, keras.layers.BatchNormalization):
        return "batchnorm"
    if relu_spec(op) is not None:
        return "relu"
    if isinstance(op, _ACTIVATION_LAYERS) or type(op).__module__.startswith("keras.src.ops.nn") \
            or type(op).__module__.startswith("keras.src.activations"):
        return "activation"
    if isinstance(op, _AVG):
        return "avgpool"
    if isinstance(op, _MAX):
        return "maxpool"
    if isinstance(op, (keras.layers.Add, knp.Add)):
        return "sum"
    if isinstance(op, (keras.layers.Concatenate, knp.Concatenate)):
        return "concat"
    if isinstance(op, (keras.layers.Multiply, knp.Multiply)):
        return "gate"
    if isinstance(op, (keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
                       keras.layers.Resizing)):
        return "upsample"
    if isinstance(op, _IDENTITY):
        return "identity"
    return f"unknown:{type(op).__name__}"


def act_spec(spec: Any) -> ActSpec | None:
    """ActSpec of the backend's _ReluSpec (None: not ReLU-like)."""
    if spec is None:
        return None
    return ActSpec(0.0, float(spec.threshold), float("inf") if spec.max_value is None else float(spec.max_value))


def _with_bias(f: Callable) -> Callable:
    """f(x, w) as f(x, w, b): plus the bias when there is one."""
    def fn(x, w, b):
        y = f(x, w)
        return y if b is None else y + b
    return fn


def _linear_fn(op: Any) -> tuple[Callable, Any, Any, Callable]:
    """(f(x, w, b), kernel, bias, shape a per-output-channel vector for the kernel)."""
    if isinstance(op, BaseConvTranspose):
        return (_with_bias(lambda x, w: keras.ops.conv_transpose(x, w, op.strides, op.padding, op.output_padding,
                                                                 op.data_format, op.dilation_rate)),
                op.kernel, op.bias, lambda v, w: tf.reshape(v, [-1, 1]))
    if isinstance(op, BaseDepthwiseConv):
        return (_with_bias(lambda x, w: keras.ops.depthwise_conv(x, w, op.strides, op.padding, op.data_format,
                                                                 op.dilation_rate)),
                op.kernel, op.bias, lambda v, w: tf.reshape(v, w.shape[-2:]))
    if isinstance(op, BaseConv):
        return _with_bias(op.convolution_op), op.kernel, op.bias, lambda v, w: v
    return _with_bias(keras.ops.matmul), op.kernel, op.bias, lambda v, w: v


def _basic_backward(rule, fn: Callable, params: tuple, xs: list, relevance: tf.Tensor) -> list:
    ins, outs = [], []
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        for in_mod, param_mod in rule.passes():
            xi = [in_mod(x, OPS) for x in xs]
            for t in xi:
                tape.watch(t)
            if rule.needs_params and params:
                w, b = params
                out = fn(*xi, param_mod(w, "weight", OPS), None if b is None else param_mod(b, "bias", OPS))
            else:
                out = fn(*xi)
            ins.append(xi)
            outs.append(out)
    mapped = rule.mapper(relevance, outs, OPS)
    n = len(xs)
    by_pass = [[tf.zeros_like(t) for t in xi] for xi in ins]
    for k, g in enumerate(mapped):
        if g is None:
            continue
        grads = tape.gradient(outs[k], ins[k], output_gradients=g)
        by_pass[k] = [tf.zeros_like(t) if d is None else d for t, d in zip(ins[k], grads)]
    del tape
    return [rule.reduce([ins[k][j] for k in range(len(ins))], [by_pass[k][j] for k in range(len(ins))], OPS)
            for j in range(n)]


class _Backward(keras.layers.Layer):
    """Output = y (the layer's own output, unchanged); backward = `backward(dy, xs)` -> the
    gradients of xs. With `forward=True`, `backward(xs, y)` is called in the forward and
    returns that function (what it computes there, e.g. a rule's totals, is its state)."""

    def __init__(self, backward: Callable, forward: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backward_fn, self.forward = backward, forward

    def call(self, inputs: list) -> tf.Tensor:
        *xs, y = inputs
        backward_fn = self.backward_fn(xs, y) if self.forward else self.backward_fn

        @tf.custom_gradient
        def op(*args):
            *xs, y = args

            def backward(dy):
                return (*backward_fn(dy, list(xs)), tf.zeros_like(y))

            return tf.identity(y), backward

        return op(*xs, tf.stop_gradient(y))

    def compute_output_shape(self, input_shape: list) -> tuple:
        return input_shape[-1]


def _dgrad(fn: Callable, g: tf.Tensor, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """d f(x, w) / dx for the output gradient g: the linear op's data-gradient (the
    forward this tape records is unused and pruned from the traced graph)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        out = fn(x, w, None)
    return tape.gradient(out, x, output_gradients=g)


def _sign_groups(groups: list, eps: float, fn: Callable, params: Callable, nonneg: bool) -> Callable:
    """A sign-split rule (z+, alpha-beta, gamma; rules.SignGroup) on one linear layer, for
    `_Backward(..., forward=True)`: the groups' totals are computed in the forward with the
    stabiliser folded into the bias, only the x+ pass where the input is a ReLU output;
    the backward is a division and the data-gradients."""
    def forward(xs: list, y: tf.Tensor) -> Callable:
        w, b, scale, shift = params()
        b0 = tf.zeros([tf.shape(y)[-1]], y.dtype) if b is None else b
        x = tf.stop_gradient(xs[0])
        xp, xn = (x, None) if nonneg else (tf.maximum(x, 0.0), tf.minimum(x, 0.0))
        parts = []
        for grp in groups:
            wa, wb = grp.pos(w, "weight", OPS), grp.neg(w, "weight", OPS)
            t = fn(xp, wa, grp.pos(b0, "bias", OPS) + grp.sign * eps)
            if xn is not None:
                t = t + fn(xn, wb, None)
            parts.append((grp, wa, wb, t))
        z = None
        if any(grp.select for grp in groups):   # the layer's own (merged) output
            z = tf.stop_gradient(y if scale is None else y * scale + shift)

        def backward(dy: tf.Tensor, xs: list) -> list:
            x = xs[0]
            da = db = None
            for grp, wa, wb, t in parts:
                g = dy / t
                if grp.coef != 1.0:
                    g = g * grp.coef
                if grp.select == ">":
                    g = tf.where(z > 0, g, tf.zeros_like(g))
                elif grp.select == "<":
                    g = tf.where(z < 0, g, tf.zeros_like(g))
                d = _dgrad(fn, g, x, wa)
                da = d if da is None else da + d
                if not nonneg:
                    d = _dgrad(fn, g, x, wb)
                    db = d if db is None else db + d
            return [x * da if nonneg else x * tf.where(x > 0, da, db)]
        return backward
    return forward


def _flat_conv(eps: float, fn: Callable, kernel_shape: tuple) -> Callable:
    """LRP-flat on an ungrouped convolution, for `_Backward(..., forward=True)`: all weights
    1 and no bias, so every output channel of the pass is the same and every input channel
    gets the same back-projection of the relevance summed over the output channels (one
    channel instead of all)."""
    def forward(xs: list, y: tf.Tensor) -> Callable:
        w1 = tf.ones([*kernel_shape[:-1], 1], y.dtype)
        z = fn(tf.ones_like(tf.stop_gradient(xs[0])), w1, None)
        inv = tf.stop_gradient(1.0 / stabilize(z, eps, OPS))

        def backward(dy: tf.Tensor, xs: list) -> list:
            return [_dgrad(fn, tf.reduce_sum(dy * inv, axis=-1, keepdims=True), xs[0], w1)]
        return backward
    return forward


class _Mask(keras.layers.Layer):
    """Identity forward; the backward keeps only `channels` (CRP's conditioning)."""

    def __init__(self, channels: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels

    def call(self, x: tf.Tensor) -> tf.Tensor:
        channels = self.channels

        @tf.custom_gradient
        def op(x):
            def backward(dy):
                depth = dy.shape[-1]
                mask = tf.reduce_sum(tf.one_hot(list(channels), depth, dtype=dy.dtype), axis=0)
                return dy * mask
            return tf.identity(x), backward

        return op(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def activation_name(op: Any) -> str:
    """What a warning calls an activation: the function of an Activation layer or of a
    fused `activation=` ("swish", "gelu"), else the layer type ("ELU", "Softmax")."""
    fn = getattr(op, "activation", None)
    name = getattr(fn, "__name__", None)
    return name if name and name != "linear" else type(op).__name__


class RuleApplier:
    """Per walk: which rule each layer call gets, and the wrapped outputs."""

    def __init__(self, composite: Composite, relu_spec: Callable) -> None:
        self.composite = composite
        self.relu_spec = relu_spec
        self.first_kinds = composite.first_kinds()
        self.first_done = False
        self.merge = composite.has(MergeBatchNorm)
        self.boxes: dict[int, dict] = {}      # id(linear output tensor) -> merge box
        self.pads: dict[int, tuple] = {}      # id(zero-padding output) -> (padding layer, its input)
        self.unapplied: Counter = Counter()
        self.nonneg: dict[int, Any] = {}      # id(tensor) -> tensor: known >= 0 (ReLU outputs)
        self.masks = dict(composite.masks)
        self.wants_activations = any(set(k) & set(ACTIVATION) for k, _ in composite.layer_map)

    def kind(self, op: Any) -> str:
        kind = classify(op, self.relu_spec)
        self.composite.check_kind(kind, getattr(op, "name", type(op).__name__), type(op).__name__)
        return kind

    def rule(self, kind: str, name: str):
        first = False
        if not self.first_done and kind in self.first_kinds:
            first = self.first_done = True
        return self.composite.rule_for(kind, name, first=first)

    def note_activation(self, kind: str, rule: Any, act: ActSpec | None, op: Any) -> None:
        if kind in ACTIVATION and self.wants_activations and (
                rule is None or (getattr(rule, "needs_relu", False) and act is None)):
            self.unapplied[activation_name(op)] += 1

    # ------------------------------------------------------------------ wrappers

    def elementwise(self, rule: Any, act: ActSpec | None, x: Any, y: Any) -> Any:
        def backward(dy, xs):
            g = rule.backward(dy, xs[0], act, OPS)
            return [dy if g is None else g]
        return _Backward(backward)([x, y])

    def padding(self, op: Any, x: Any, y: Any) -> None:
        """A zero-padding before a linear layer is folded into it (torch pads inside the
        convolution: rules that replace the input, flat and z-box, must not see the pad)."""
        if isinstance(op, (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)):
            self.pads[id(y)] = (op, x)

    def note_nonneg(self, t: Any) -> None:
        self.nonneg[id(t)] = t

    def is_nonneg(self, t: Any) -> bool:
        return id(t) in self.nonneg

    def linear(self, rule: Any, op: Any, x: Any, y: Any, single_consumer: bool = False) -> Any:
        fn, kernel, bias, shape_scale = _linear_fn(op)
        if id(x) in self.pads:
            pad, x = self.pads[id(x)]
            conv = fn

            def fn(t, w, b):
                return conv(pad(t), w, b)
        box: dict = {}
        merge_ok = self.merge and single_consumer   # a BatchNorm may merge only into its sole input

        def params():
            """(w, b, scale, shift): merged with the BatchNorm after the layer, if any
            (scale / shift None when there is none)."""
            w, b = tf.convert_to_tensor(kernel), None if bias is None else tf.convert_to_tensor(bias)
            bn = box.get("bn")
            scale = shift = None
            if bn is not None:
                gamma = bn.gamma if bn.scale else tf.ones_like(bn.moving_mean)
                beta = bn.beta if bn.center else tf.zeros_like(bn.moving_mean)
                scale, shift = MergeBatchNorm.affine(tf.convert_to_tensor(bn.moving_mean),
                                                     tf.convert_to_tensor(bn.moving_variance),
                                                     tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta),
                                                     float(bn.epsilon), OPS)
                w = w * shape_scale(scale, w)
                b = shift if b is None else b * scale + shift
            return w, b, scale, shift

        groups = rule.sign_groups()
        if groups is not None:
            out = _Backward(_sign_groups(groups, float(rule.stabilizer), fn, params, self.is_nonneg(x)),
                            forward=True)([x, y])
        elif type(rule) is Flat and isinstance(op, BaseConv) and getattr(op, "groups", 1) == 1 \
                and getattr(op, "data_format", "channels_last") == "channels_last":
            out = _Backward(_flat_conv(float(rule.stabilizer), fn, tuple(kernel.shape)), forward=True)([x, y])
        else:
            def backward(dy, xs):
                w, b, _, _ = params()
                return _basic_backward(rule, fn, (w, b), xs, dy)

            out = _Backward(backward)([x, y])
        if merge_ok:
            self.boxes[id(out)] = box
        return out

    def batchnorm(self, op: Any, x: Any, y: Any) -> Any | None:
        """The BatchNorm's output if it merges into the linear layer before it, else None."""
        box = self.boxes.get(id(x))
        axis = op.axis if isinstance(op.axis, int) else -1
        if box is None or axis not in (-1, len(x.shape) - 1):
            return None
        box["bn"] = op
        return self.elementwise(Pass(), None, x, y)

    def basic_op(self, rule: Any, fn: Callable, xs: list, y: Any) -> Any:
        def backward(dy, ins):
            return _basic_backward(rule, fn, (), ins, dy)
        return _Backward(backward)([*xs, y])

    def gate(self, xs: list, y: Any) -> Any:
        shapes = [tuple(t.shape) for t in xs]
        if len(xs) != 2 or shapes[0] == shapes[1]:
            if self.composite.strict:
                raise BadParameter(f"{self.composite.name}: a product of two activations {shapes} has no "
                                   "propagation rule")
            return y
        signal = 0 if shapes[0] == tuple(y.shape) else 1

        def backward(dy, ins):
            return [dy if i == signal else tf.zeros_like(t) for i, t in enumerate(ins)]
        return _Backward(backward)([*xs, y])

    def mask(self, name: str, y: Any) -> Any:
        channels = self.masks.get(name)
        return y if channels is None else _Mask(channels)(y)
