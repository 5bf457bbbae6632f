"""Keras/TensorFlow adapter of the backend contract: flat layer capture, ReLU rules, one-pass gradients.

How it works. A Keras model may nest functional or Sequential models (a backbone used as
a layer), whose inner layers cannot be reached with ``keras.Model(outer.inputs,
inner_layer.output)``. We therefore walk the model's functional graph ourselves, the way
``Functional._run_through_graph`` does, step into nested functional/Sequential models,
and re-call the *existing* layers on fresh symbolic tensors (shared weights, no copies).
The result is ONE flat multi-output ``keras.Model`` ``[model output, *layer outputs]``,
built once per model and cached. For a backward rule ("guided", "deconvnet",
"deconvnet-fixed") the same walk builds a second flat model in which every ReLU-like
activation (and, for "deconvnet-fixed", every strided convolution) is a
``tf.custom_gradient`` op with the rule's backward; TF's global gradient registry and the
user's model are never touched. The same walk, substituting an input for one layer's
output, gives `forward_from`. All computations run in ``tf.function``s traced once per
(backend, rule) with the objective passed as tensors, so a new class or region never
retraces.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras.src.activations.activations import ReLU as _ParametricReluOp  # activations.relu(x, ...)
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
from keras.src.models.functional import Functional
from keras.src.ops.nn import Relu as _ReluOp, Relu6 as _Relu6Op  # keras.ops.relu(x), relu6(x)
from keras.src.ops.nn import LogSoftmax as _LogSoftmaxOp, Sigmoid as _SigmoidOp, Softmax as _SoftmaxOp
from keras.src.ops.operation import Operation

from ..errors import BadModel, BadParameter, Cancelled, NeuroscopeError
from ..propagation.composites import Composite, composite_for
from ..propagation.kinds import ACTIVATION, LINEAR
from .base import RULES, Capture, LayerInfo, Objective
from .keras_rules import RuleApplier, act_spec

TASKS = ("classification", "segmentation")
OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities", "sigmoid")
#: activation function name -> the output kind it gives
_HEAD_ACTIVATIONS = {"softmax": "probabilities", "log_softmax": "log-probabilities", "sigmoid": "sigmoid"}
_EPS = 1e-12  # floor of probabilities before the log (CONTRACT.md §2: logits = log p)


# --------------------------------------------------------------------------- ReLU rules

@dataclass(frozen=True)
class _ReluSpec:
    """A ReLU-like activation: its forward and where its derivative is 1."""

    forward: Callable[[Any], Any]      # the user's own activation (identical forward values)
    threshold: float = 0.0             # f'(x) = [threshold < x < max_value]
    max_value: float | None = None     # 6 for ReLU6: the upper cut-off belongs to f'


def _activation_spec(fn: Any) -> _ReluSpec | None:
    """ReLU spec of an activation *function* (Activation layer, fused `activation=`)."""
    name = getattr(fn, "__name__", None)
    if fn is keras.activations.relu or name == "relu":
        return _ReluSpec(fn)
    if fn is keras.activations.relu6 or name == "relu6":
        return _ReluSpec(fn, max_value=6.0)
    return None


def _relu_spec(op: Any) -> _ReluSpec | None:
    """ReLU spec of a graph operation that is itself a ReLU-like activation, else None.
    Leaky variants (negative_slope != 0), ELU, GELU, ... keep their ordinary gradient."""
    if isinstance(op, (keras.layers.ReLU, _ParametricReluOp)):
        if op.negative_slope != 0:
            return None
        max_value = None if op.max_value is None else float(op.max_value)
        return _ReluSpec(op.call, float(op.threshold), max_value)
    if isinstance(op, _ReluOp):
        return _ReluSpec(op.call)
    if isinstance(op, _Relu6Op):
        return _ReluSpec(op.call, max_value=6.0)
    if isinstance(op, keras.layers.Activation):
        spec = _activation_spec(op.activation)
        return None if spec is None else _ReluSpec(op.call, spec.threshold, spec.max_value)
    return None


#: Layers whose `activation` is applied last, to their whole output: a copy with a linear
#: activation gives the pre-activation. (Not so for recurrent layers, which apply it per
#: step: their ReLUs keep the plain gradient, with a warning.)
_FUSED_ACTIVATION_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, BaseConv,
                            BaseConvTranspose, BaseDepthwiseConv, BaseSeparableConv)


def _is_merge(op: Any, args: tuple, kwargs: dict, output: Any) -> bool:
    """A bare keras.ops call combining two or more tensors into one (`x + y`, ops.add,
    ops.multiply, ...): residual sums are layers users explain (ConvNeXt's blocks end
    in one). Other bare ops (reshapes, casts, ...) are not listed."""
    if not isinstance(op, Operation) or not isinstance(output, keras.KerasTensor):
        return False
    tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
    return len(tensors) >= 2


def _fused_relu_spec(op: Any) -> _ReluSpec | None:
    """ReLU spec of a layer with a fused ``activation`` (Conv2D(..., activation="relu"))."""
    if not isinstance(op, _FUSED_ACTIVATION_LAYERS):
        return None
    return _activation_spec(getattr(op, "activation", None))


def _shared_twin(layer: keras.layers.Layer, args: tuple, kwargs: dict,
                 **config: Any) -> tuple[keras.layers.Layer, Any]:
    """A copy of `layer` with `config` overridden (activation="linear", strides=1) that
    computes with the SAME variables, not copies, so that weights changed later (the
    sanity check randomises them in place) stay in sync. Returns (twin, twin(*args))."""
    twin = type(layer).from_config({**layer.get_config(), **config})
    output = twin(*args, **kwargs)          # builds the twin (fresh variables) ...
    twin_vars, own_vars = twin.weights, layer.weights
    if [v.shape for v in twin_vars] != [v.shape for v in own_vars]:
        raise BadModel(f"cannot apply a backward rule to layer {layer.name!r}: its copy has other weights")
    swap = {id(t): o for t, o in zip(twin_vars, own_vars)}
    # ... which are then swapped for the layer's own. object.__setattr__ bypasses Keras'
    # tracking (the twin is built and locked); the stores are patched for consistency.
    for attr, value in list(vars(twin).items()):
        if isinstance(value, keras.Variable) and id(value) in swap:
            object.__setattr__(twin, attr, swap[id(value)])
    for store in (twin._trainable_variables, twin._non_trainable_variables):
        store[:] = [swap.get(id(v), v) for v in store]
    held = {id(v) for v in vars(twin).values() if isinstance(v, keras.Variable)}
    if held != {id(v) for v in own_vars}:   # never compute silently with fresh random weights
        raise BadModel(f"cannot apply a backward rule to layer {layer.name!r}: weights not shareable")
    return twin, output


def _sum(*xs: Any) -> Any:
    total = xs[0]
    for t in xs[1:]:
        total = total + t
    return total


def _is_strided_conv(op: Any) -> bool:
    return (isinstance(op, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
            and max(op.strides) > 1)


class _StridedDeconv(keras.layers.Layer):
    """Output = the strided convolution's output y, unchanged. Backward: the
    strided-artefact fix of Oramas et al. 2019 (METHODS.md §2): the top signal is resized
    (nearest, torch's convention) to the stride-1 output size and back-projected through
    the same convolution at stride 1, instead of inserting zeros between its values."""

    def __init__(self, unit_stride: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unit_stride = unit_stride     # the conv at stride 1, linear, sharing weights

    def call(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        unit_stride = self.unit_stride

        @tf.custom_gradient
        def strided_deconv(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, Callable]:
            def backward(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y1 = unit_stride(x)
                up = tf.raw_ops.ResizeNearestNeighbor(images=dy, size=tf.shape(y1)[1:3],
                                                      align_corners=False, half_pixel_centers=False)
                return tape.gradient(y1, x, output_gradients=up), tf.zeros_like(y)

            return tf.identity(y), backward

        # y's own (strided) backward is replaced, so it is not even computed
        return strided_deconv(x, tf.stop_gradient(y))

    def compute_output_shape(self, x_shape: tuple, y_shape: tuple) -> tuple:
        return y_shape


# ------------------------------------------------------------------------ graph walking

def _is_graph_model(op: Any) -> bool:
    """Models whose layers we can walk: functional models and Sequential models."""
    return isinstance(op, (Functional, keras.Sequential))


@dataclass
class _Record:
    name: str                 # "name", or "name#k" for the k-th re-use of a layer
    type: str
    output: Any               # KerasTensor, or a list of them (not capturable)


class _GraphWalker:
    """Re-runs a model's functional graph on new symbolic tensors, layer by layer,
    flattening nested models and recording each layer call's output. Optionally applies
    a backward rule (ReLU-like activations, strided convolutions) and substitutes given
    tensors for the outputs of named layers (`forward_from`)."""

    def __init__(self, rule: str | Composite | None = None, substitute: dict[str, Any] | None = None) -> None:
        self.rule = rule
        composite = composite_for(rule)
        self.applier = RuleApplier(composite, _relu_spec) if composite is not None else None
        self.substitute = substitute or {}
        self.records: list[_Record] = []
        self.warnings: list[str] = []
        self.consumers = 0                         # consumers of the node being called (original graph)
        self._calls: dict[int, int] = {}           # id(layer) -> calls so far
        self._owner: dict[str, int] = {}           # base name -> id(layer), to catch clashes
        self._twins: dict[tuple, keras.layers.Layer] = {}

    def run(self, model: keras.Model, inputs: list) -> list:
        """Output tensors (flat list, in `functional.outputs` order) of `model` on `inputs`."""
        functional = model._functional if isinstance(model, keras.Sequential) else model
        if functional is None:   # an unbuilt Sequential: its layers in order
            x = inputs[0]
            for layer in model.layers:
                self.consumers = 1
                x = self._call(layer, (x,), {})
            return keras.tree.flatten(x)
        # The traversal of keras' Functional._run_through_graph (Keras 3.15).
        tensors = {id(ref): new for ref, new in zip(functional.inputs, inputs)}
        uses: dict[int, int] = {}      # original tensor -> consumers in this graph (merge rules)
        for nodes in functional._nodes_by_depth.values():
            for node in nodes:
                for t in node.input_tensors:
                    uses[id(t)] = uses.get(id(t), 0) + 1
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(t) not in tensors for t in node.input_tensors):
                    continue
                args, kwargs = node.arguments.fill_in(tensors)
                self.consumers = uses.get(id(node.outputs[0]), 0) if len(node.outputs) == 1 else 0
                outputs = self._call(node.operation, args, kwargs)
                for ref, new in zip(node.outputs, keras.tree.flatten(outputs)):
                    tensors[id(ref)] = new
        return [tensors[id(t)] for t in functional.outputs]

    def _call(self, op: Any, args: tuple, kwargs: dict) -> Any:
        if _is_graph_model(op):
            outputs = self.run(op, keras.tree.flatten(args[0]))
            if len(outputs) == 1:    # the nested model is a block whose output is its last layer's
                outputs = [self._record(op, outputs[0])]
            return outputs
        output = self._apply(op, args, kwargs)
        if isinstance(op, keras.layers.Layer):
            output = self._record(op, output)
            self._check_opaque(op)
        elif _is_merge(op, args, kwargs, output):   # a bare `x + y` (ops.add, ...): listed as a layer
            output = self._record(op, output)
        return output

    def _apply(self, op: Any, args: tuple, kwargs: dict) -> Any:
        """op(*args, **kwargs), with the walk's composite (keras_rules) built in."""
        applier = self.applier
        if applier is None:
            return op(*args, **kwargs)
        name = self._next_name(op)
        kind = applier.kind(op)
        nonneg = False      # the output is known >= 0 (ReLU, or a pad / pool / reshape of one)
        if kind in LINEAR:
            output = self._apply_linear(op, args, kwargs, kind, name)
            nonneg = _fused_relu_spec(op) is not None
        else:
            output = op(*args, **kwargs)
            rule = applier.rule(kind, name)
            if kind in ACTIVATION:
                act = act_spec(_relu_spec(op))
                nonneg = act is not None and act.threshold >= 0.0   # (act_spec: slope 0, a ReLU)
                applier.note_activation(kind, rule, act, op)
                if rule is not None and rule.kind == "elementwise":
                    output = applier.elementwise(rule, act, args[0], output)
            elif kind == "batchnorm":
                merged = applier.batchnorm(op, args[0], output) if applier.merge else None
                if merged is not None:
                    output = merged
                elif rule is not None and rule.kind == "elementwise":
                    output = applier.elementwise(rule, None, args[0], output)
            elif kind == "identity":
                applier.padding(op, args[0], output)
            elif rule is not None and kind in ("sum", "gate", "avgpool"):
                xs = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
                if kind == "avgpool" and rule.kind == "basic":
                    output = applier.basic_op(rule, lambda t: op(t, **kwargs), xs[:1], output)
                elif kind == "sum" and rule.kind == "basic" and len(xs) >= 2:
                    output = applier.basic_op(rule, _sum, xs, output)
                elif kind == "gate" and rule.kind == "gate" and len(xs) >= 2:
                    output = applier.gate(xs, output)
            if kind in ("identity", "maxpool") and args and applier.is_nonneg(args[0]):
                nonneg = True   # a pad / pool of a non-negative input
        output = applier.mask(name, output) if isinstance(op, keras.layers.Layer) else output
        if nonneg:
            applier.note_nonneg(output)
        return output

    def _apply_linear(self, op: Any, args: tuple, kwargs: dict, kind: str, name: str) -> Any:
        """A convolution / dense layer under the composite: its pre-activation carries
        the layer's rule, a fused activation is split off and gets its own."""
        applier = self.applier
        rule = applier.rule(kind, name)
        if rule is not None and rule.kind == "strided-fix" and not _is_strided_conv(op):
            rule = None
        activation = getattr(op, "activation", None)
        fused = activation is not None and activation is not keras.activations.linear
        relu = _fused_relu_spec(op)
        act_kind = ("relu" if relu is not None else "activation") if fused else None
        act_rule = applier.composite.rule_for(act_kind, name) if fused else None
        if fused:
            applier.note_activation(act_kind, act_rule, act_spec(relu), op)
        if rule is None and (act_rule is None or act_rule.kind != "elementwise"):
            return op(*args, **kwargs)
        z = self._twin(op, args, kwargs, activation="linear")[1] if fused else op(*args, **kwargs)
        if rule is not None and rule.kind == "strided-fix":
            unit_stride, _ = self._twin(op, args, kwargs, activation="linear", strides=1)
            z = _StridedDeconv(unit_stride)(args[0], z)
        elif rule is not None and rule.kind == "basic":
            z = applier.linear(rule, op, args[0], z, single_consumer=self.consumers == 1)
        if not fused:
            return z
        y = keras.layers.Activation(activation)(z)
        if act_rule is not None and act_rule.kind == "elementwise":
            y = applier.elementwise(act_rule, act_spec(relu), z, y)
        return y

    def _next_name(self, op: Any) -> str:
        """The name `_record` will give this call of `op`."""
        name = getattr(op, "name", type(op).__name__)
        calls = self._calls.get(id(op), 0)
        return name if calls == 0 else f"{name}#{calls}"

    def _twin(self, op: keras.layers.Layer, args: tuple, kwargs: dict,
              **config: Any) -> tuple[keras.layers.Layer, Any]:
        """(twin, twin(*args)): one twin per (layer, config), re-called on later calls."""
        key = (id(op), tuple(sorted(config.items())))
        if key not in self._twins:
            self._twins[key], output = _shared_twin(op, args, kwargs, **config)
            return self._twins[key], output
        return self._twins[key], self._twins[key](*args, **kwargs)

    def _record(self, layer: keras.layers.Layer, output: Any) -> Any:
        """Records the call; returns its output, or the tensor substituted for it."""
        calls = self._calls.get(id(layer), 0)
        self._calls[id(layer)] = calls + 1
        if self._owner.setdefault(layer.name, id(layer)) != id(layer):
            raise BadModel(f"two different layers are named {layer.name!r} (e.g. two copies of "
                           "a nested model); give them unique names to explain this model")
        name = layer.name if calls == 0 else f"{layer.name}#{calls}"
        self.records.append(_Record(name, type(layer).__name__, output))
        return self.substitute.get(name, output)

    def _check_opaque(self, layer: keras.layers.Layer) -> None:
        """Warns about ReLUs a backward rule cannot reach (once per layer)."""
        if self._calls[id(layer)] > 1 or _relu_spec(layer) or _fused_relu_spec(layer):
            return
        if isinstance(layer, keras.layers.Lambda):
            self.warnings.append(f"Lambda layer {layer.name} may hide ReLUs")
        elif _activation_spec(getattr(layer, "activation", None)):     # e.g. SimpleRNN
            self.warnings.append(f"layer {layer.name} ({type(layer).__name__}) applies a ReLU "
                                 "inside; it keeps its plain gradient under ReLU rules")
        elif any(_relu_spec(sub) or _fused_relu_spec(sub)
                 for sub in layer._flatten_layers(include_self=False)):
            self.warnings.append(f"layer {layer.name} ({type(layer).__name__}) contains ReLUs that "
                                 "are not listed and keep their plain gradient under ReLU rules")


@dataclass
class _FlatGraph:
    """One flat model and how its outputs map to layers."""

    model: keras.Model               # outputs: [selected model output, *unique layer tensors]
    records: list[_Record]
    tensor_index: list[int | None]   # record -> index into model.outputs[1:], None if not a tensor
    warnings: list[str]
    unapplied: dict[str, int] = None  # activation type -> count the composite has no rule for


def _select_output(structure: Any, output: str | int | None) -> Any:
    """The tensor the logits come from: `output` is a dict key (default "out" if present,
    else the first key) or a list index (default 0), as in the torch backend."""
    if isinstance(structure, dict):
        key = output if output is not None else ("out" if "out" in structure else next(iter(structure)))
        if key not in structure:
            raise BadModel(f"model output has no key {key!r}; keys: {sorted(map(str, structure))}")
        return structure[key]
    if isinstance(structure, (list, tuple)):
        index = 0 if output is None else output
        if not isinstance(index, int) or not -len(structure) <= index < len(structure):
            raise BadModel(f"model output has {len(structure)} items; output index {index!r} "
                           "is out of range")
        return structure[index]
    if output is not None and output not in (0, -1):
        raise BadModel(f"the spec names output {output!r}, but the model has a single output tensor")
    return structure


def _model_inputs(model: keras.Model) -> list:
    """The model's symbolic inputs; empty for subclassed or not yet built models."""
    try:
        return list(model.inputs or ())
    except (AttributeError, ValueError):
        return []


# ---------------------------------------------------------------------------- backend

@dataclass
class _FromGraph:
    """The model continued from one layer, whose output is an input (`forward_from`)."""

    model: keras.Model               # inputs: activations (cut) or [x, activations]
    cut: bool                        # True: only the layers above run


def _depends_on(tensor: Any, source: Any) -> bool:
    """Whether the symbolic `tensor` is computed from `source` (walks Keras history)."""
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if t is source:
            return True
        if id(t) in seen or not hasattr(t, "_keras_history"):
            continue
        seen.add(id(t))
        op, node_index, _ = t._keras_history
        if op is not None:
            stack.extend(op._inbound_nodes[node_index].input_tensors)
    return False


class KerasBackend:
    """The `Backend` protocol (base.py) for a Keras 3 model on TensorFlow.

    Args:
        model: a functional, Sequential or subclassed `keras.Model` (never modified).
        input_size: (H, W) the model is run at.
        task: "classification" (output [N, C]) or "segmentation" (output [N, h, w, C];
            upsampled bilinearly to (H, W) when h, w differ).
        output: dict key or list index of the output to explain when the model has several.
        output_kind: "logits", or "probabilities" (softmax outputs; logits = log max(p, 1e-12)).

    `warnings` lists what may make ReLU rules incomplete (Lambda layers, opaque layers).
    Capture activations and gradients are read-only zero-copy views (safe to cache and
    share between threads); copy one before modifying it in place.
    """

    framework = "keras"
    deferred_objective = True  # capture() accepts an objective decided from its own forward pass
    rules = (*RULES, "deconvnet-fixed")   # "deconvnet-fixed": see base.OPTIONAL_RULES

    def __init__(self, model: keras.Model, input_size: tuple[int, int], task: str,
                 output: str | int | None = None, output_kind: str | None = "logits") -> None:
        if task not in TASKS:
            raise BadModel(f"task must be one of {TASKS}, got {task!r}")
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise BadModel(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        inputs = _model_inputs(model)
        if len(inputs) > 1:
            raise BadModel("models with several inputs are not supported")
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.task = task
        self.output = output
        self.declared_kind = output_kind          # None: detected from the trailing activation
        self.output_kind = output_kind or "logits"
        self.score_kind = "logit"                 # what the explained scalar is (meta["score"])
        self._head_reached: bool | None = None    # the logits under a trailing activation are used
        self.max_batch: int | None = None         # 1: the model runs one image per pass
        self.device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
        ref_shape = tuple(inputs[0].shape) if inputs else (None, None, None, None)
        if len(ref_shape) != 4:
            raise BadModel(f"the model takes input of shape {ref_shape}; expected images "
                           "[N, H, W, C] (channels last)")
        if any(d is not None and d != s for d, s in zip(ref_shape[1:3], self.input_size)):
            raise BadModel(f"the model's input is {ref_shape[1]}x{ref_shape[2]}; it cannot run "
                           f"at {self.input_size[0]}x{self.input_size[1]}")
        self._channels = int(ref_shape[3] or 3)
        self.channels = self._channels
        # Guards building and caching only; computations run concurrently. Re-entrant
        # because tracing a function builds its flat graph under the same lock.
        self._lock = threading.RLock()
        self._graphs: dict[str | None, _FlatGraph] = {}
        self._from_graphs: dict[str, _FromGraph] = {}
        self._functions: dict[tuple, Any] = {}
        self._starts: dict[str | None, list[int]] = {}
        self._deciders: dict[int, Callable] = {}        # call id -> objective decider (capture)
        self._call_ids = itertools.count(1)
        try:   # builds now: layers(), warnings and errors come early
            plain = self._graph(None)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise BadModel(f"cannot run this Keras model at {self.input_size[0]}x"
                           f"{self.input_size[1]}: {type(exc).__name__}: {exc}") from None
        self.warnings: list[str] = list(plain.warnings)
        self._layers = self._layer_infos(plain)
        self._layer_pos = {info.name: i for i, info in enumerate(self._layers)}
        self.num_classes = int(plain.model.outputs[0].shape[-1])

    # ------------------------------------------------------------------ building

    def _cached(self, cache: dict, key: Any, build: Callable[[], Any]) -> Any:
        """cache[key], built once under the lock (double-checked: reads need no lock)."""
        value = cache.get(key)
        if value is None:
            with self._lock:
                value = cache.get(key)
                if value is None:
                    value = cache[key] = build()
        return value

    def _graph(self, rule: str | Composite | None) -> _FlatGraph:
        if rule is not None and rule not in self._graphs and len(self._graphs) > 24:
            with self._lock:   # bounded: every composite (epsilon, channel mask) is a graph
                keep = {k: v for k, v in self._graphs.items() if not isinstance(k, Composite)}
                self._graphs.clear()
                self._graphs.update(keep)
                self._functions = {k: v for k, v in self._functions.items() if not isinstance(k[1], Composite)}
                self._starts = {k: v for k, v in self._starts.items() if not isinstance(k, Composite)}
        return self._cached(self._graphs, rule, lambda: self._build_graph(rule))

    def _new_input(self) -> Any:
        return keras.Input(shape=(*self.input_size, self._channels), name="neuroscope_input")

    def _walk(self, walker: _GraphWalker, inputs: Any) -> Any:
        """The selected output tensor of the model re-run by `walker` on `inputs`."""
        with tf.device(self.device):
            if _is_graph_model(self.model):
                functional = (self.model._functional if isinstance(self.model, keras.Sequential)
                              else self.model)
                outputs = walker.run(self.model, [inputs])
                structure = (keras.tree.pack_sequence_as(functional._outputs_struct, outputs)
                             if functional is not None else outputs)
            else:   # subclassed model: a black box without listable layers
                if walker.rule is not None:
                    raise BadParameter(f"rule {walker.rule!r} needs a functional or Sequential "
                                       f"model; {type(self.model).__name__} is subclassed")
                walker.warnings.append(f"subclassed model {type(self.model).__name__}: its "
                                       "layers cannot be listed or captured")
                structure = self.model(inputs)
            selected = _select_output(structure, self.output)
            if self.declared_kind != "logits":
                selected = self._pre_activation(selected, walker)
        rank = 4 if self.task == "segmentation" else 2
        if not isinstance(selected, keras.KerasTensor) or len(selected.shape) != rank:
            raise BadModel(f"a {self.task} model must output a tensor of rank {rank} "
                           f"(got {getattr(selected, 'shape', type(selected).__name__)})")
        return selected

    def _pre_activation(self, selected: Any, walker: _GraphWalker) -> Any:
        """The logits under the model's trailing softmax / log-softmax / sigmoid (an
        activation layer, a layer's fused `activation=`, or a keras.ops call) when there
        is one, else `selected`. Sets `output_kind` and `score_kind` (first graph built)."""
        history = getattr(selected, "_keras_history", None)
        found = None
        if history is not None and history[0] is not None:
            op, node_index, _ = history
            node = op._inbound_nodes[node_index]
            args, kwargs = node.arguments.args, node.arguments.kwargs
            kind = None
            last_axis = getattr(op, "axis", -1) in (-1, len(selected.shape) - 1)
            if isinstance(op, (keras.layers.Softmax, _SoftmaxOp)) and last_axis:
                kind = "probabilities"
            elif isinstance(op, _LogSoftmaxOp) and last_axis:
                kind = "log-probabilities"
            elif isinstance(op, _SigmoidOp):
                kind = "sigmoid"
            elif isinstance(op, keras.layers.Activation):
                kind = _HEAD_ACTIVATIONS.get(getattr(op.activation, "__name__", ""))
            if kind is not None and args and isinstance(args[0], keras.KerasTensor):
                found = (kind, args[0])
            elif isinstance(op, _FUSED_ACTIVATION_LAYERS):
                kind = _HEAD_ACTIVATIONS.get(getattr(getattr(op, "activation", None), "__name__", ""))
                if kind is not None:
                    _, logits = walker._twin(op, args, kwargs, activation="linear", name=f"{op.name}_logits")
                    found = (kind, logits)
        declared = self.declared_kind
        if found is not None and declared is not None and found[0] != declared:
            found = None              # the spec says otherwise: its word, without the pre-activation
        if self._head_reached is None:    # the first graph decides
            self._head_reached = found is not None
            if found is not None:
                self.output_kind = found[0]
            self.score_kind = ("log-probability" if not self._head_reached and self.output_kind in
                               ("probabilities", "log-probabilities") else "logit")
        if found is not None and self._head_reached:
            return found[1]
        return selected

    def _build_graph(self, rule: str | None) -> _FlatGraph:
        inputs = self._new_input()
        walker = _GraphWalker(rule)
        selected = self._walk(walker, inputs)
        unique: dict[int, int] = {}      # a nested model's output is its last layer's tensor
        tensors: list = []
        tensor_index: list[int | None] = []
        for record in walker.records:
            if isinstance(record.output, keras.KerasTensor):
                if id(record.output) not in unique:
                    unique[id(record.output)] = len(tensors)
                    tensors.append(record.output)
                tensor_index.append(unique[id(record.output)])
            else:
                tensor_index.append(None)
        label = rule.name if isinstance(rule, Composite) else rule
        flat = keras.Model(inputs, [selected, *tensors],
                           name=f"{self.model.name}_flat" + (f"_{label}" if label else ""))
        unapplied = dict(walker.applier.unapplied) if walker.applier is not None else {}
        return _FlatGraph(flat, walker.records, tensor_index, walker.warnings, unapplied)

    def _from_graph(self, layer: str) -> _FromGraph:
        info = self._tensor_layer(layer)

        def build() -> _FromGraph:
            shape = info.shape[1:] + info.shape[:1]      # channels last
            activations = keras.Input(shape=shape, name="neuroscope_activations")
            inputs = self._new_input()
            walker = _GraphWalker(substitute={layer: activations})
            selected = self._walk(walker, inputs)
            cut = not _depends_on(selected, inputs)
            model = keras.Model(activations if cut else [inputs, activations], selected,
                                name=f"{self.model.name}_from_{layer.replace('#', '_')}")
            return _FromGraph(model, cut)

        return self._cached(self._from_graphs, layer, build)

    def _layer_infos(self, graph: _FlatGraph) -> list[LayerInfo]:
        height = self.input_size[0]
        infos = []
        for record, index in zip(graph.records, graph.tensor_index):
            shape = stride = None
            if index is not None:
                dims = tuple(record.output.shape[1:])
                shape = (dims[-1], *dims[:-1]) if dims else ()   # channels first
            spatial = shape is not None and len(shape) == 3 and shape[1] >= 2 and shape[2] >= 2
            if spatial:
                stride = round(height / shape[1])
            infos.append(LayerInfo(record.name, record.type, shape, bool(spatial), stride))
        return infos

    def _tensor_layer(self, name: str) -> LayerInfo:
        if name not in self._layer_pos:
            raise BadParameter(f"unknown layer {name!r}; see layers()")
        info = self._layers[self._layer_pos[name]]
        if info.shape is None:
            raise BadParameter(f"layer {name!r} does not output a single tensor")
        return info

    def _function(self, kind: str, rule: str | None = None, layer: str | None = None,
                  start: int | None = None) -> Any:
        """The traced function `kind` (for `rule`, or continued from `layer`, or for a
        capture whose backward stops at layer tensor `start`), traced once."""
        def build() -> Any:
            fn = self._trace(kind, rule, layer, start)
            fn.get_concrete_function()     # trace now, under the lock, not in a racing caller
            return fn

        return self._cached(self._functions, (kind, rule, layer, start), build)

    def _depth_starts(self, rule: str | None) -> list[int]:
        """Where a capture's backward may stop: the first and the last layer tensor at
        each output stride (execution order). A capture whose layers all come at or after
        one of these needs no gradient below it, so a deep-layer Grad-CAM skips most of
        the backward, as autograd does in torch (the last tensor of the largest stride is
        the default Grad-CAM layer: its backward is the head's); a handful of traces
        serve every subset."""
        def build() -> list[int]:
            height = self.input_size[0]
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            for i, t in enumerate(self._graph(rule).model.outputs[1:]):
                if len(t.shape) == 4 and t.shape[1] and t.shape[1] >= 2:
                    stride = round(height / t.shape[1])
                    first.setdefault(stride, i)
                    last[stride] = i
            return sorted({*first.values(), *last.values()})

        return self._cached(self._starts, rule, build)

    def _capture_start(self, rule: str | None, indices: Sequence[int], input_grad: bool) -> int | None:
        """None: the backward reaches the input; else the depth bucket to stop at."""
        if input_grad or not indices:
            return None
        first = min(indices)
        below = [s for s in self._depth_starts(rule) if s <= first]
        return max(below) if below else None

    def _trace(self, kind: str, rule: str | None, layer: str | None, start: int | None = None) -> Any:
        height, width = self.input_size
        x_spec = tf.TensorSpec([None, height, width, self._channels], tf.float32)
        objective_specs = [tf.TensorSpec([self.num_classes], tf.float32)]
        if self.task == "segmentation":
            objective_specs.append(tf.TensorSpec([height, width], tf.float32))

        if layer is not None:   # continued from `layer`: (activations, x[1], objective...)
            graph = self._from_graph(layer)
            a_spec = tf.TensorSpec([None, *self._tensor_layer(layer).shape], tf.float32)
            signature = [a_spec, tf.TensorSpec([1, height, width, self._channels], tf.float32)]

            def logits_from(a: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
                a = tf.transpose(a, [0, 2, 3, 1]) if a.shape.rank == 4 else a
                if graph.cut:
                    return self._logits(graph.model(a, training=False))
                x = tf.repeat(x, tf.shape(a)[0], axis=0)   # one input for every item
                return self._logits(graph.model([x, a], training=False))

            if kind == "forward":
                def fn(a, x):
                    return _channels_first(logits_from(a, x))
            else:
                signature += objective_specs

                def fn(a, x, weights, *mask):
                    return self._objective(logits_from(a, x), weights, mask, kind)
            return tf.function(fn, input_signature=signature, reduce_retracing=True, autograph=False)

        flat = self._graph(rule).model
        signature = [x_spec] if kind == "forward" else [x_spec, *objective_specs]

        def logits_of(x: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
            outputs = keras.tree.flatten(flat(x, training=False))   # Keras unpacks a singleton
            return self._logits(outputs[0]), outputs[1:]

        if kind == "forward":
            def fn(x):
                return _channels_first(logits_of(x)[0])
        elif kind in ("logit", "prob"):
            def fn(x, weights, *mask):
                return self._objective(logits_of(x)[0], weights, mask, kind)
        elif kind == "input_gradients":
            def fn(x, weights, *mask):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    y = self._objective(logits_of(x)[0], weights, mask, "logit")
                return tape.gradient(y, x), y    # items are independent: grad of the sum
        elif kind in ("capture", "capture_deferred"):   # (x, sizes of the layer tensors, objective...)
            ranks = [len(t.shape) for t in flat.outputs[1:]]
            signature.insert(1, tf.TensorSpec([sum(ranks)], tf.int32))
            if kind == "capture_deferred":   # (x, sizes, call id): the objective is decided mid-pass
                signature = signature[:2] + [tf.TensorSpec([], tf.int64)]

            def fn(x, sizes, *objective):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    z, layer_outputs = logits_of(x)
                    if kind == "capture_deferred":
                        objective = self._decided_objective(objective[0], z)
                    y = self._objective(z, objective[0], tuple(objective[1:]), "logit")
                # ONE backward to the input and every layer output: these gradients are
                # computed on the way to the input anyway. One trace serves every subset
                # of layers: each tensor comes back whole (`sizes` = its shape) or empty
                # (zeros), so the unwanted ones are freed as soon as the pass is done
                # with them, which keeps a one-layer capture at the cost of a bare
                # forward + backward. A full tf.slice returns its input's buffer: no copy.
                # With a `start`, the sources are the layer tensors from `start` on: the
                # backward stops there (no input gradient, none for earlier layers).
                sources = [x, *layer_outputs] if start is None else layer_outputs[start:]
                grads = tape.gradient(y, sources)
                if start is not None:
                    grads = [None] * (1 + start) + list(grads)
                sizes = tf.split(sizes, ranks) if ranks else []
                origin = {r: tf.zeros([r], tf.int32) for r in set(ranks)}
                # a missing gradient is zeros of the kept size only (a zeros_like of every
                # skipped layer tensor would write ~all activations' worth of zeros)
                kept = [tf.zeros(n, t.dtype) if g is None else tf.slice(g, origin[r], n)
                        for t, g, n, r in zip(layer_outputs, grads[1:], sizes, ranks)]
                # per-channel gradient means of the kept spatial layers (Grad-CAM weights),
                # computed in the graph while the gradients are at hand
                means = [tf.reduce_mean(g, axis=[1, 2]) if r == 4 else tf.zeros([0, 0])
                         for g, r in zip(kept, ranks)]
                return (_channels_first(z), y, tf.zeros_like(x) if grads[0] is None else grads[0],
                        [tf.slice(t, origin[r], n) for t, n, r in zip(layer_outputs, sizes, ranks)],
                        kept, means)
        else:
            raise ValueError(f"unknown function {kind!r}")
        return tf.function(fn, input_signature=signature, reduce_retracing=True, autograph=False)

    # ----------------------------------------------------------------- pieces

    def _logits(self, out: tf.Tensor) -> tf.Tensor:
        """Logits, channels-last, at input resolution."""
        z = out
        if not self._head_reached:
            if self.output_kind == "probabilities":
                z = tf.math.log(tf.maximum(out, _EPS))
            elif self.output_kind == "sigmoid":    # the logit is the inverse of the sigmoid
                z = tf.math.log(tf.maximum(out, _EPS)) - tf.math.log1p(-tf.minimum(out, 1.0 - 1e-7))
        if self.task == "segmentation" and tuple(z.shape[1:3]) != self.input_size:
            # bilinear, half-pixel centres: torch's interpolate(align_corners=False)
            z = tf.image.resize(z, self.input_size, method="bilinear")
        return z

    def _decided_objective(self, call_id: tf.Tensor, z: tf.Tensor) -> list[tf.Tensor]:
        """Inside a traced capture: ask the caller's Python decider (looked up by call id,
        so concurrent callers never mix) for the objective given these logits. The
        objective is a constant of the pass: no gradient flows through the decision."""
        seg = self.task == "segmentation"

        def decide(cid, logits):
            objective = self._deciders[int(cid.numpy())](logits.numpy()[0])
            tensors = self._objective_tensors(objective)
            return tensors if seg else [tensors[0], tf.zeros([0, 0], tf.float32)]

        weights, mask = tf.py_function(decide, [call_id, _channels_first(z)], [tf.float32, tf.float32])
        weights = tf.ensure_shape(tf.stop_gradient(weights), [self.num_classes])
        if not seg:
            return [weights]
        return [weights, tf.ensure_shape(tf.stop_gradient(mask), list(self.input_size))]

    def _objective(self, z: tf.Tensor, weights: tf.Tensor, mask: tuple, kind: str) -> tf.Tensor:
        """Objective per batch item, [N] (see `Objective`)."""
        if kind == "prob":
            values = tf.nn.sigmoid(z) if self.output_kind == "sigmoid" else tf.nn.softmax(z, axis=-1)
        else:
            values = z
        per_position = tf.tensordot(values, weights, axes=[[-1], [0]])   # [N] or [N, H, W]
        if self.task == "classification":
            return per_position
        (m,) = mask
        y = tf.reduce_sum(per_position * m, axis=[1, 2])
        return y / tf.reduce_sum(m) if kind == "prob" else y

    def _objective_tensors(self, objective: Objective) -> list[tf.Tensor]:
        weights = np.asarray(objective.class_weights, np.float32)
        if weights.shape != (self.num_classes,):
            raise BadParameter(f"class_weights must have shape ({self.num_classes},), "
                               f"got {weights.shape}")
        tensors = [tf.constant(weights)]
        if self.task == "segmentation":
            mask = (np.ones(self.input_size, np.float32) if objective.mask is None
                    else np.asarray(objective.mask, np.float32))
            if mask.shape != self.input_size:
                raise BadParameter(f"mask must have shape {self.input_size}, got {mask.shape}")
            tensors.append(tf.constant(mask))
        elif objective.mask is not None:
            raise BadParameter("a classification objective takes no mask")
        return tensors

    def _batch(self, x: np.ndarray, single: bool = False) -> tf.Tensor:
        x = np.asarray(x, np.float32)
        expected = (*self.input_size, self._channels)
        if x.ndim != 4 or x.shape[1:] != expected or (single and x.shape[0] != 1):
            want = "[1, H, W, C]" if single else "[N, H, W, C]"
            raise BadParameter(f"input must be {want} with (H, W, C) = {expected}, got {x.shape}")
        return tf.constant(x)

    def _check_rule(self, rule: str | Composite | None) -> None:
        if rule is not None and not isinstance(rule, Composite) and rule not in self.rules:
            raise BadParameter(f"unknown ReLU rule {rule!r}; expected one of {self.rules}")

    def unapplied(self, rule: str | Composite | None) -> dict[str, int]:
        """{activation type: count} of activations the composite `rule` (or rule string)
        maps no rule to (e.g. SiLU under guided backprop): they keep their gradient."""
        self._check_rule(rule)
        return {} if rule is None else dict(self._graph(rule).unapplied or {})

    def _check_kind(self, kind: str) -> None:
        if kind not in ("logit", "prob"):
            raise BadParameter(f"unknown score kind {kind!r}; expected 'logit' or 'prob'")

    # ----------------------------------------------------------------- protocol

    def layers(self) -> list[LayerInfo]:
        """All layers in execution order, nested models flattened, InputLayers excluded."""
        return list(self._layers)

    def _batched(self, call: str, fn: Callable, x: np.ndarray, *args: Any) -> Any:
        """fn(x, *args) for a batch x (items along the first axis); returns an array or a
        tuple of arrays, batch first. A framework error becomes a one-line `BadModel`. A
        model that fails on a batch but runs one image is detected once; from then on
        every pass takes one image."""
        n = len(x)
        if n > 1 and self.max_batch == 1:
            return _concat([_guarded(call, fn, x[i:i + 1], *args) for i in range(n)])
        try:
            return fn(x, *args)
        except (BadParameter, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 -- a framework error, or a batch the model cannot take
            error = _model_error(exc, call)
            if n < 2 or self.max_batch == 1:
                raise error from None
        try:
            first = fn(x[:1], *args)
        except Exception:  # noqa: BLE001 -- one image fails too: the batch was not the problem
            raise error from None
        self.max_batch = 1
        return _concat([first] + [_guarded(call, fn, x[i:i + 1], *args) for i in range(1, n)])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, C] or [N, C, H, W]."""
        fn = self._function("forward")

        def run(xb: np.ndarray) -> np.ndarray:
            with tf.device(self.device):
                return _checked(fn(self._batch(xb)).numpy(), len(xb))
        return self._batched("forward", run, x)

    def scores(self, x: np.ndarray, objective: Objective, kind: str = "logit") -> np.ndarray:
        """Objective value per batch item, [N]; kind "logit" or "prob"."""
        self._check_kind(kind)
        fn = self._function(kind)
        tensors = self._objective_tensors(objective)

        def run(xb: np.ndarray) -> np.ndarray:
            with tf.device(self.device):
                return _checked(fn(self._batch(xb), *tensors).numpy(), len(xb))
        return self._batched("scores", run, x)

    def capture(self, x: np.ndarray, objective: Objective, layers: Sequence[str] = (),
                input_grad: bool = True, rule: str | None = None, gradients: bool = True) -> Capture:
        """ONE forward + ONE backward of x [1, H, W, C]; see `Backend.capture`. The traced
        graph returns every gradient either way (views, no copies), so `gradients` is
        accepted and the full gradients are always given."""
        self._check_rule(rule)
        for name in layers:
            self._tensor_layer(name)
        graph = self._graph(rule)
        indices = {name: graph.tensor_index[self._layer_pos[name]] for name in layers}
        wanted = set(indices.values())
        sizes = [d for i, t in enumerate(graph.model.outputs[1:])        # whole or empty
                 for d in ((1, *t.shape[1:]) if i in wanted else (0,) * len(t.shape))]
        start = self._capture_start(rule, sorted(wanted), input_grad)
        with self.decider(objective if callable(objective) else None) as call_id:
            if call_id is not None:   # decided from this very forward pass (no second forward)
                tail = [tf.constant(call_id, tf.int64)]
                fn = self._function("capture_deferred", rule, start=start)
            else:
                tail = self._objective_tensors(objective)
                fn = self._function("capture", rule, start=start)
            with tf.device(self.device):
                z, y, x_grad, outputs, grads, means = _guarded(
                    "capture", fn, self._batch(x, single=True), tf.constant(sizes, tf.int32), *tail)
        capture = Capture(output=z.numpy()[0], score=float(y.numpy()[0]),
                          input_grad=x_grad.numpy()[0] if input_grad else None)
        for name, index in indices.items():   # views, not copies (see _to_numpy_channels_first)
            capture.activations[name] = _to_numpy_channels_first(outputs[index])
            capture.gradients[name] = _to_numpy_channels_first(grads[index])
            if len(graph.model.outputs[1 + index].shape) == 4:
                capture.gradient_means[name] = np.asarray(means[index])[0]
        return capture

    @contextmanager
    def decider(self, decide: Callable | None) -> Iterator[int | None]:
        """Register `decide(logits)` for one traced call that asks it mid-pass (a
        `tf.py_function` looks it up in `_deciders` by the yielded call id; None: nothing to
        register). An exception it raised inside TensorFlow is re-raised after the call as
        itself, not as TensorFlow's wrapper."""
        if decide is None:
            yield None
            return
        call_id, errors = next(self._call_ids), []

        def deciding(logits: np.ndarray):
            try:
                return decide(logits)
            except BaseException as exc:   # re-raised below, outside TensorFlow
                errors.append(exc)
                raise
        self._deciders[call_id] = deciding
        try:
            yield call_id
        except Exception:
            if errors:
                raise errors[0] from None
            raise
        finally:
            self._deciders.pop(call_id, None)

    def input_gradients(self, x: np.ndarray, objective: Objective,
                        rule: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(grads [N, H, W, C], scores [N]) of the logit-form objective, per item."""
        self._check_rule(rule)
        fn = self._function("input_gradients", rule)
        tensors = self._objective_tensors(objective)

        def run(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with tf.device(self.device):
                grads, y = fn(self._batch(xb), *tensors)
            return grads.numpy(), _checked(y.numpy(), len(xb))
        return self._batched("input gradients", run, x)

    # ------------------------------------------------- forward from a layer (optional)

    def can_cut(self, layer: str) -> bool:
        """True when the output depends on the input only through `layer`, so that
        `forward_from` runs only the layers above it."""
        return self._from_graph(layer).cut

    def forward_from(self, layer: str, activations: np.ndarray,
                     x: np.ndarray | None = None) -> np.ndarray:
        """Logits [N, C] or [N, C, H, W] of the model continued from `layer`'s output
        replaced by `activations` [N, K, h, w] (see base.py)."""
        fn = self._function("forward", layer=layer)

        def run(a: np.ndarray) -> np.ndarray:
            with tf.device(self.device):
                return _checked(fn(*self._from_args(layer, a, x)).numpy(), len(a))
        return self._batched(f"forward from {layer}", run, activations)

    def scores_from(self, layer: str, activations: np.ndarray, objective: Objective,
                    kind: str = "logit", x: np.ndarray | None = None) -> np.ndarray:
        """Objective per item, [N], of `forward_from`'s logits (see `scores`)."""
        self._check_kind(kind)
        fn = self._function(kind, layer=layer)
        tensors = self._objective_tensors(objective)

        def run(a: np.ndarray) -> np.ndarray:
            with tf.device(self.device):
                return _checked(fn(*self._from_args(layer, a, x), *tensors).numpy(), len(a))
        return self._batched(f"scores from {layer}", run, activations)

    def _from_args(self, layer: str, activations: np.ndarray,
                   x: np.ndarray | None) -> tuple[tf.Tensor, tf.Tensor]:
        info = self._tensor_layer(layer)
        a = np.asarray(activations, np.float32)
        if a.shape[1:] != tuple(info.shape):
            raise BadParameter(f"activations {list(a.shape)} do not fit layer {layer} "
                               f"output {[None, *info.shape]}")
        if self._from_graph(layer).cut:   # x is not used: any image of the right size
            return tf.constant(a), tf.zeros([1, *self.input_size, self._channels])
        if x is None:
            raise BadParameter(f"the model has no sequential cut at {layer!r}: "
                               "forward_from needs the input x")
        if np.shape(x)[0] != 1:
            raise BadParameter("forward_from takes the one input [1, H, W, 3] the "
                               "activations came from")
        return tf.constant(a), self._batch(x, single=True)


def _concat(parts: list) -> Any:
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)


def _checked(values: np.ndarray, n: int) -> np.ndarray:
    if len(values) != n:
        raise BadModel(f"the model returned {len(values)} outputs for a batch of {n} images")
    return values


def _model_error(exc: BaseException, call: str) -> NeuroscopeError:
    """A framework error of a model pass as a one-line `BadModel` naming the call (and
    the layer, when TensorFlow's message names the node)."""
    if isinstance(exc, NeuroscopeError):
        return exc
    text = str(getattr(exc, "message", "") or exc).strip()
    first = (text.splitlines()[0] if text else "")[:300]
    import re
    node = re.search(r"[Nn]ode[: ]+'?([\w./-]+)", text)
    where = f" near {node.group(1)}" if node else ""
    return BadModel(f"the model failed ({call}){where}: {type(exc).__name__}: {first}")


def _guarded(call: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except NeuroscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any framework error of a model pass
        raise _model_error(exc, call) from None


def _channels_first(z: tf.Tensor) -> tf.Tensor:
    return tf.transpose(z, [0, 3, 1, 2]) if z.shape.rank == 4 else z


def _to_numpy_channels_first(t: tf.Tensor) -> np.ndarray:
    """Batch item 0 of a channels-last tensor as channels-first numpy ([K, h, w] or [K]).

    Zero-copy on CPU: `np.asarray` views the tensor's buffer (read-only) and `moveaxis`
    is a view too. Copying out every layer of a capture would cost more than the capture.
    """
    return np.moveaxis(np.asarray(t)[0], -1, 0)
