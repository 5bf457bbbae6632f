"""Applying a `propagation.Composite` in the torch backend (one call, one thread).

`RulePlan` decides once per (backend, composite) which rule each module gets (kinds,
first layer, BatchNorm pairs to merge); `rule_hooks` installs it for one forward:
forward hooks that replace a module's output by the same values carrying the rule's
backward (autograd Functions), and, when the composite makes residuals explicit, a
thread-local `TorchFunctionMode` that turns ``a + b`` of two activations into a sum
layer and ``a * gate`` into a gate layer. Everything is removed in ``finally``; no
weight is ever written (merged BatchNorm parameters are computed on the side).
"""
from __future__ import annotations

import threading
import weakref
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BadParameter
from ..propagation.canonizers import ExplicitResidual, MergeBatchNorm
from ..propagation.composites import Composite
from ..propagation.kinds import ACTIVATION, LINEAR
from ..propagation.rules import ActSpec, Norm, Pass, Rule


class TorchOps:
    """The array namespace rules are written against (see propagation.rules)."""

    @staticmethod
    def clamp(t, lo=None, hi=None):
        return t.clamp(min=lo, max=hi)

    @staticmethod
    def where(cond, a, b):
        return torch.where(cond, a, b)

    ones_like = staticmethod(torch.ones_like)
    zeros_like = staticmethod(torch.zeros_like)
    sqrt = staticmethod(torch.sqrt)

    @staticmethod
    def per_channel(values, like):
        v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        shape = [1] * like.dim()
        shape[1] = -1
        return (v.reshape(shape) * torch.ones_like(like)) if v.numel() > 1 else torch.full_like(like, float(v.item()))


OPS = TorchOps()

_ACTIVATIONS = (nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid,
                nn.PReLU, nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Mish,
                nn.Softplus, nn.Softshrink, nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold, nn.Softmax,
                nn.LogSoftmax)
_IDENTITY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten, nn.Unflatten,
             nn.Identity, nn.ZeroPad2d, nn.ConstantPad2d)


def act_spec(module: nn.Module) -> ActSpec | None:
    """ActSpec if `module` is a ReLU-like activation, else None."""
    if isinstance(module, nn.ReLU):
        return ActSpec()
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0:  # ReLU6 is Hardtanh(0, 6)
        return ActSpec(upper=float(module.max_val))
    if isinstance(module, nn.LeakyReLU):
        return ActSpec(slope=float(module.negative_slope))
    return None


def classify(module: nn.Module) -> str | None:
    """The layer kind (propagation.kinds) of a module; None for containers."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "conv-transpose"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if act_spec(module) is not None:
        return "relu"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return "avgpool"
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return "maxpool"
    if isinstance(module, nn.Upsample):
        return "upsample"
    if isinstance(module, _IDENTITY):
        return "identity"
    if next(module.children(), None) is not None:
        return None   # a container: its children get the rules
    return f"unknown:{type(module).__name__}"


def _linear_fn(module: nn.Module) -> Callable:
    """f(x, w, b): the module's forward with the given parameters (no module state)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        fn = {1: nn.functional.conv_transpose1d, 2: nn.functional.conv_transpose2d,
              3: nn.functional.conv_transpose3d}[len(module.kernel_size)]
        return lambda x, w, b: fn(x, w, b, module.stride, module.padding, module.output_padding,
                                  module.groups, module.dilation)
    if isinstance(module, nn.modules.conv._ConvNd):
        return lambda x, w, b: module._conv_forward(x, w, b)
    return lambda x, w, b: nn.functional.linear(x, w, b)


def _out_axis_shape(module: nn.Module) -> list[int] | None:
    """How a per-output-channel vector broadcasts over the weight; None: cannot merge."""
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None if module.groups != 1 else [1, -1] + [1] * (w.dim() - 2)
    return [-1] + [1] * (w.dim() - 1)


@dataclass
class Entry:
    kind: str
    rule: Rule | None
    act: ActSpec | None = None
    fn: Callable | None = None          # linear layers: f(x, w, b)
    merge: nn.Module | None = None      # the BatchNorm merged into this layer


@dataclass
class RulePlan:
    """Which rule each module gets under one composite (built once per backend)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    unapplied: dict[str, int] = field(default_factory=dict)   # activation type -> count without a rule
    residual: bool = False


def build_plan(backend: Any, composite: Composite) -> RulePlan:
    layers = backend.layers()   # execution order
    executed = list(dict.fromkeys(info.name.split("#")[0] for info in layers))
    plan = RulePlan(residual=composite.has(ExplicitResidual))
    first_kinds = composite.first_kinds()
    first = None
    pairs = bn_pairs(backend) if composite.has(MergeBatchNorm) else {}
    merged_bns = set(pairs.values())
    missing: Counter = Counter()
    wants_activations = any(set(kinds) & set(ACTIVATION) for kinds, _ in composite.layer_map)
    for name in executed:
        module = backend._by_name[name]
        kind = classify(module)
        if kind is None:
            continue
        composite.check_kind(kind, name, type(module).__name__)
        if first is None and kind in first_kinds:
            first = name
        rule = composite.rule_for(kind, name, first=name == first)
        act = act_spec(module)
        if rule is not None and rule.kind == "strided-fix" and not max(module.stride) > 1:
            rule = None
        if name in merged_bns:
            rule = Pass()   # merged: its linear layer's rule computes with its parameters
        entry = Entry(kind, rule, act)
        if rule is not None and rule.kind == "basic" and kind in LINEAR:
            entry.fn = _linear_fn(module)
            entry.merge = backend._by_name[pairs[name]] if name in pairs else None
        if kind in ACTIVATION and wants_activations and (
                rule is None or (getattr(rule, "needs_relu", False) and act is None)):
            missing[type(module).__name__] += 1
        plan.entries[name] = entry
    plan.unapplied = dict(missing)
    return plan


def bn_pairs(backend: Any) -> dict[str, str]:
    """{linear module: BatchNorm module} where the BatchNorm's input is the linear
    module's output (one probe forward, cached on the backend)."""
    cached = getattr(backend, "_bn_pairs", None)
    if cached is not None:
        return cached
    owner = threading.get_ident()
    produced: dict[int, str] = {}
    pairs: dict[str, str] = {}
    used: Counter = Counter()
    handles = []

    def post(name):
        def hook(module, inputs, out):
            if threading.get_ident() != owner:
                return
            kind = classify(module)
            if kind == "batchnorm" and inputs and id(inputs[0]) in produced:
                lin = produced[id(inputs[0])]
                if _out_axis_shape(backend._by_name[lin]) is not None:
                    pairs[lin] = name
            if kind in LINEAR:
                produced[id(out)] = name
            used[name] += 1
        return hook

    H, W = backend.input_size
    x = backend._to_tensor(torch.zeros(1, H, W, 3).numpy())
    keep = []
    try:
        for name, module in backend._by_name.items():
            if classify(module) in (*LINEAR, "batchnorm"):
                handles.append(module.register_forward_hook(post(name)))
        with torch.no_grad():
            keep.append(backend.module(x))
    finally:
        for h in handles:
            h.remove()
    # a module called twice (shared) is not merged: its BatchNorms may differ per call
    pairs = {lin: bn for lin, bn in pairs.items() if used[lin] == 1 and used[bn] == 1}
    backend._bn_pairs = pairs
    return pairs


# ------------------------------------------------------------------ autograd Functions

def _basic_backward(rule, fn: Callable, params: tuple, xs: tuple, relevance: torch.Tensor) -> list:
    # A pass on the negative part of inputs without negatives (after a ReLU) with a zero
    # bias outputs exactly 0 and adds exactly 0: skipped (half of z+ / alpha-beta / gamma)
    passes = rule.passes()
    no_negatives = any(getattr(m, "negative_part", False) for m, _ in passes) \
        and all(not bool((x < 0).any()) for x in xs)
    with torch.enable_grad():
        ins, outs = [], []
        for in_mod, param_mod in passes:
            if no_negatives and getattr(in_mod, "negative_part", False) and getattr(param_mod, "zero_bias", False):
                ins.append(None)
                outs.append(0.0)
                continue
            if no_negatives and getattr(in_mod, "positive_part", False):
                xi = [x.detach().requires_grad_(True) for x in xs]   # x >= 0: its own positive part
            else:
                xi = [in_mod(x.detach(), OPS).detach().requires_grad_(True) for x in xs]
            if rule.needs_params and params:
                w, b = params
                w = param_mod(w, "weight", OPS)
                b = None if b is None else param_mod(b, "bias", OPS)
                outs.append(fn(*xi, w, b))
            else:
                outs.append(fn(*xi))
            ins.append(xi)
        mapped = rule.mapper(relevance, outs, OPS)
        sel = [k for k, g in enumerate(mapped) if g is not None and ins[k] is not None]
        flat_in = [t for k in sel for t in ins[k]]
        grads = torch.autograd.grad([outs[k] for k in sel], flat_in, [mapped[k] for k in sel], allow_unused=True)
    n = len(xs)
    by_pass: list = [[0.0] * n for _ in ins]
    ins = [[0.0] * n if xi is None else xi for xi in ins]
    for i, k in enumerate(sel):
        for j in range(n):
            g = grads[i * n + j]
            by_pass[k][j] = torch.zeros_like(ins[k][j]) if g is None else g
    return [rule.reduce([ins[k][j] for k in range(len(ins))], [by_pass[k][j] for k in range(len(ins))], OPS)
            for j in range(n)]


class _Basic(torch.autograd.Function):
    """Output = the layer's own output (boxed in `holder`); backward = a basic rule."""

    @staticmethod
    def forward(ctx, rule, fn, params, holder, *xs):  # noqa: D401
        ctx.rule, ctx.fn, ctx.params = rule, fn, params
        ctx.save_for_backward(*xs)
        return holder[0]

    @staticmethod
    def backward(ctx, relevance):
        xs = ctx.saved_tensors
        return (None, None, None, None, *_basic_backward(ctx.rule, ctx.fn, ctx.params, xs, relevance))


class _Elementwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, act, holder):  # noqa: D401
        ctx.rule, ctx.act = rule, act
        ctx.save_for_backward(x)
        return holder[0]

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return ctx.rule.backward(dy, x, ctx.act, OPS), None, None, None


class _Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, signal_index, holder, a, b):  # noqa: D401
        ctx.signal_index = signal_index
        ctx.save_for_backward(a, b)
        return holder[0]

    @staticmethod
    def backward(ctx, relevance):
        a, b = ctx.saved_tensors
        zeros = torch.zeros_like(b if ctx.signal_index == 0 else a)
        return (None, None, relevance, zeros) if ctx.signal_index == 0 else (None, None, zeros, relevance)


class _StridedDeconv(torch.autograd.Function):
    """A strided convolution's output (unchanged) whose backward is the strided-artefact
    fix of Oramas et al. 2019 (rules.StridedFix)."""

    @staticmethod
    def forward(ctx, x, conv, holder):  # noqa: D401
        ctx.conv, ctx.in_hw = conv, tuple(x.shape[-2:])
        return holder[0]

    @staticmethod
    def backward(ctx, dy):
        conv = ctx.conv
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        ph, pw = (0, 0) if conv.padding == "valid" else conv.padding
        h1 = ctx.in_hw[0] + 2 * ph - dh * (kh - 1)   # output size of the same conv at stride 1
        w1 = ctx.in_hw[1] + 2 * pw - dw * (kw - 1)
        sh, sw = conv.stride
        if (dh, dw) == (1, 1) and (h1, w1) == (sh * dy.shape[-2], sw * dy.shape[-1]):
            # nearest x s then a stride-1 transpose == a stride-s transpose with the kernel
            # summed over s x s shifts (exact; s^2 / ((k+s-1)/k)^2 fewer multiply-adds, no resize)
            dx = nn.functional.conv_transpose2d(dy, _box_kernel(conv, dy.dtype), None, stride=(sh, sw),
                                                padding=(ph, pw), groups=conv.groups)
            return dx, None, None
        up = nn.functional.interpolate(dy, size=(h1, w1), mode="nearest")
        dx = nn.functional.conv_transpose2d(up, conv.weight.to(dy.dtype), None, stride=1, padding=(ph, pw),
                                            groups=conv.groups, dilation=conv.dilation)
        return dx, None, None


_BOX: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _box_kernel(conv: nn.Module, dtype) -> torch.Tensor:
    """conv.weight [O, I, kh, kw] summed over the stride's s_h x s_w shifts: [O, I, kh+s_h-1,
    kw+s_w-1] (memoised per module, weight version and dtype)."""
    w = conv.weight
    key = (w._version, w.data_ptr(), dtype)
    got = _BOX.get(conv)
    if got is not None and got[0] == key:
        return got[1]
    sh, sw = conv.stride
    kh, kw = w.shape[-2:]
    with torch.no_grad():
        wd = w.detach().to(dtype)
        box = wd.new_zeros((*w.shape[:2], kh + sh - 1, kw + sw - 1))
        for u in range(sh):
            for v in range(sw):
                box[:, :, u:u + kh, v:v + kw] += wd
    _BOX[conv] = (key, box)
    return box


def _merged_params(module: nn.Module, bn: nn.Module | None) -> tuple:
    w, b = module.weight, module.bias
    if bn is None:
        return (w, b)
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale, shift = MergeBatchNorm.affine(mean, var, gamma, beta, bn.eps, OPS)
    w2 = w * scale.reshape(_out_axis_shape(module))
    b2 = shift if b is None else b * scale + shift
    return (w2.detach(), b2.detach())


def apply_entry(entry: Entry, module: nn.Module, inputs: tuple, out: Any) -> Any:
    """The module's output carrying its rule's backward (or `out` unchanged)."""
    rule = entry.rule
    if rule is None or not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(out, torch.Tensor):
        return out
    if not torch.is_grad_enabled():
        return out
    x = inputs[0]
    if rule.kind == "elementwise":
        return _Elementwise.apply(x, rule, entry.act, [out.detach()])
    if rule.kind == "strided-fix":
        return _StridedDeconv.apply(x, module, [out.detach()])
    if rule.kind == "basic":
        if entry.fn is not None:
            params = _merged_params(module, entry.merge)
            return _Basic.apply(rule, entry.fn, params, [out.detach()], x)
        return _Basic.apply(rule, module.forward, (), [out.detach()], x)   # avg pooling: Norm
    return out


# ------------------------------------------------------------------ residuals (function mode)

_ADDS = {"add", "__add__", "__radd__", "add_", "__iadd__"}
_MULS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__"}


class _ResidualMode(TorchFunctionMode):
    """Thread-local: `a + b` of two activations -> sum layer; `a * gate` -> gate layer."""

    def __init__(self, composite: Composite):
        super().__init__()
        self.composite = composite
        self.sum_rule = composite.rule_for("sum") or Norm()
        self.gate_rule = composite.rule_for("gate")
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (name in _ADDS or name in _MULS) and len(args) == 2 and not kwargs \
                and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args) \
                and torch.is_grad_enabled():
            a, b = args
            plain = {"add_": "add", "__iadd__": "__add__", "mul_": "mul", "__imul__": "__mul__"}.get(name)
            out = getattr(torch.Tensor, plain)(a, b) if plain else func(a, b)   # never in place
            if name in _ADDS:
                self.counts["sum"] += 1
                return _Basic.apply(self.sum_rule, lambda p, q: p + q, (), [out.detach()], a, b)
            if a.shape == b.shape:
                if self.composite.strict:
                    raise BadParameter(f"{self.composite.name}: a product of two activations "
                                       f"({list(a.shape)}) has no propagation rule")
                return out
            if self.gate_rule is None:
                return out
            signal = 0 if tuple(a.shape) == tuple(out.shape) else 1
            self.counts["gate"] += 1
            return _Gate.apply(signal, [out.detach()], a, b)
        return func(*args, **kwargs)


@contextmanager
def residual_mode(plan: RulePlan, composite: Composite) -> Iterator[None]:
    if not plan.residual:
        yield
        return
    with _ResidualMode(composite):
        yield
