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
from ..propagation.rules import ActSpec, BasicRule, Flat, Norm, Pass, Rule, _keep, _same, stabilize


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
    kernel: "LinearKernel | None" = None  # linear layers with a data-gradient primitive
    nonneg: bool = False                # its input is a ReLU / ReLU6 output (probe)


@dataclass(frozen=True)
class Chain:
    """linear -> merged BatchNorm -> pass activation, each the sole consumer of the one
    before: one autograd Function from the last output to the linear layer's input."""

    members: tuple[str, ...]

    @property
    def start(self) -> str:
        return self.members[0]

    @property
    def end(self) -> str:
        return self.members[-1]


@dataclass
class RulePlan:
    """Which rule each module gets under one composite (built once per backend)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    unapplied: dict[str, int] = field(default_factory=dict)   # activation type -> count without a rule
    residual: bool = False
    chains: dict[str, Chain] = field(default_factory=dict)     # member name -> its chain


def build_plan(backend: Any, composite: Composite) -> RulePlan:
    layers = backend.layers()   # execution order
    executed = list(dict.fromkeys(info.name.split("#")[0] for info in layers))
    plan = RulePlan(residual=composite.has(ExplicitResidual))
    first_kinds = composite.first_kinds()
    first = None
    pairs = bn_pairs(backend) if composite.has(MergeBatchNorm) else {}
    flow = data_flow(backend)
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
            if _dgrad_fn(module) is not None:
                entry.kernel = LinearKernel(rule, module, entry.merge)
                entry.nonneg = name in flow.nonneg
        if kind in ACTIVATION and wants_activations and (
                rule is None or (getattr(rule, "needs_relu", False) and act is None)):
            missing[type(module).__name__] += 1
        plan.entries[name] = entry
    plan.unapplied = dict(missing)
    for name, entry in plan.entries.items():   # linear -> merged BatchNorm -> pass activation
        if entry.kernel is None:
            continue
        members = [name]
        if entry.merge is not None:
            bn = pairs[name]
            if flow.feeds.get(name) != bn:
                continue
            members.append(bn)
        nxt = flow.feeds.get(members[-1])
        after = plan.entries.get(nxt) if nxt is not None else None
        if after is not None and after.kind in ACTIVATION and isinstance(after.rule, Pass) and flow.calls.get(nxt) == 1:
            members.append(nxt)   # (a shared activation module, e.g. torchvision's one `relu`: the chain stops before it)
        if len(members) > 1 and all(flow.calls.get(m) == 1 for m in members):
            chain = Chain(tuple(members))
            for m in members:
                plan.chains[m] = chain
    return plan


def bn_pairs(backend: Any) -> dict[str, str]:
    """{linear module: BatchNorm module} where the BatchNorm's input is the linear module's
    output (`data_flow`'s probe), each called once (a shared module is not merged: its
    BatchNorms may differ per call)."""
    flow = data_flow(backend)
    return {lin: bn for lin, bn in flow.bn_after.items() if flow.calls[lin] == 1 and flow.calls[bn] == 1}


@dataclass
class Flow:
    """What one probe forward with autograd tells about the model's data flow."""

    feeds: dict[str, str] = field(default_factory=dict)   # module -> the module that is the SOLE consumer of its output
    nonneg: set[str] = field(default_factory=set)         # modules whose input is a ReLU / ReLU6 output
    calls: Counter = field(default_factory=Counter)       # module -> calls in one forward
    bn_after: dict[str, str] = field(default_factory=dict) # linear module -> the BatchNorm taking its output


def data_flow(backend: Any) -> Flow:
    """One probe forward of zeros with autograd (cached on the backend): which module
    consumes which module's output alone (consumers counted on the autograd graph, so
    functional uses count too), and which inputs are ReLU outputs (non-negative)."""
    cached = getattr(backend, "_flow", None)
    if cached is not None:
        return cached
    owner = threading.get_ident()
    flow = Flow()
    # (name, input tensor, the input's node when this module took it, output tensor, output node):
    # a tensor object keeps its id through in-place ops (`y += shortcut`), its node does not
    calls: list = []
    relu_outs: dict[int, Any] = {}      # id(ReLU output) -> its node
    taken: dict[str, list] = {}         # module -> its input's node before each of its calls
    handles = []

    def pre(name):
        def hook(module, inputs):
            if threading.get_ident() == owner:
                x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                taken.setdefault(name, []).append(None if x is None else x.grad_fn)
        return hook

    def post(name):
        def hook(module, inputs, out):
            if threading.get_ident() != owner:
                return
            flow.calls[name] += 1
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            xnode = taken[name].pop()    # an in-place module has changed its input by now
            if isinstance(out, torch.Tensor):
                calls.append((name, x, xnode, out, out.grad_fn))
                spec = act_spec(module)
                if spec is not None and spec.slope == 0.0 and spec.threshold == 0.0:
                    relu_outs[id(out)] = out.grad_fn
        return hook

    H, W = backend.input_size
    x = backend._to_tensor(torch.zeros(1, H, W, backend.channels).numpy(), requires_grad=True)
    try:
        for name, module in backend._by_name.items():
            if classify(module) is not None:
                handles.append(module.register_forward_pre_hook(pre(name)))
                handles.append(module.register_forward_hook(post(name)))
        with torch.enable_grad():
            out = backend.module(x)
    finally:
        for h in handles:
            h.remove()
    consumers: Counter = Counter()
    seen: set = set()
    stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                consumers[nxt] += 1
                stack.append(nxt)
    made = {(id(o), node): name for name, _, _, o, node in calls}   # an in-place module's output: its own node
    signed: set[str] = set()            # modules with at least one call on a possibly negative input
    for name, xin, xnode, _, _ in calls:
        if xin is None:
            continue
        # the very output, not changed in place since (same node)
        if id(xin) in relu_outs and relu_outs[id(xin)] is xnode:
            flow.nonneg.add(name)
        else:
            signed.add(name)
        src = made.get((id(xin), xnode))
        if src is None or src == name or xnode is None:
            continue
        if consumers[xnode] == 1:
            flow.feeds[src] = name
        if classify(backend._by_name[name]) == "batchnorm" and classify(backend._by_name[src]) in LINEAR \
                and _out_axis_shape(backend._by_name[src]) is not None:
            flow.bn_after[src] = name
    flow.nonneg -= signed
    del calls, out
    backend._flow = flow
    return flow


def _tensors(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return [t for t in (getattr(out, k, None) for k in ("out", "logits")) if isinstance(t, torch.Tensor)]


# ------------------------------------------------------------------ linear kernels

_CONV_T = {1: nn.functional.conv_transpose1d, 2: nn.functional.conv_transpose2d, 3: nn.functional.conv_transpose3d}
_CONV = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}


def _dgrad_fn(module: nn.Module) -> Callable | None:
    """d(g, x, w): the gradient w.r.t. x of the module's f(x, w, b) for the output
    gradient g, by the data-gradient primitive (no autograd graph); None when the
    module pads by itself (padding_mode, padding="same"): the autograd path then."""
    if isinstance(module, nn.Linear):
        return lambda g, x, w: g.matmul(w)
    if not isinstance(module, nn.modules.conv._ConvNd) or module.padding_mode != "zeros":
        return None
    nd = len(module.kernel_size)
    padding = module.padding
    if isinstance(padding, str):
        if padding != "valid":
            return None
        padding = (0,) * nd
    stride, dilation, groups, k = module.stride, module.dilation, module.groups, module.kernel_size
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        conv = _CONV[nd]
        return lambda g, x, w: conv(g, w, None, stride, padding, dilation, groups)
    conv_t = _CONV_T[nd]

    def dgrad(g, x, w):
        extra = [x.shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
                 for i in range(nd)]
        return conv_t(g, w, None, stride, padding, extra, groups, dilation)
    return dgrad


def _version_key(tensors: list) -> tuple:
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


def _pointwise(module: nn.Module) -> bool:
    """A 1x1 convolution with stride 1 and no padding: a matrix product per pixel."""
    return (type(module) is nn.Conv2d and tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1)
            and module.padding in ((0, 0), "valid") and module.groups == 1)


# A pointwise kernel keeps its weights as [Cin, Cout] (contiguous: x @ w is a faster
# product than linear's x @ w.T), and a bias the product adds as [w ; b] (see _with_ones).

def _right(w: torch.Tensor) -> torch.Tensor:
    """A pointwise weight [Cout, Cin, 1, 1] as [Cin, Cout]."""
    return w.reshape(w.shape[0], -1).t().contiguous()


def _pointwise_fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    # NCHW in channels_last memory is NHWC: the product runs on it without a copy
    y = x.permute(0, 2, 3, 1).matmul(w)
    if b is not None:
        y.add_(b)   # (an addmm first copies the broadcast bias into the output: slower)
    return y.permute(0, 3, 1, 2)


def _pointwise_dgrad(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return g.permute(0, 2, 3, 1).matmul(w.t()).permute(0, 3, 1, 2)


def _with_ones(x: torch.Tensor, split: bool) -> torch.Tensor:
    """NHWC [x | 1], or [x+ | x- | 1] with `split`, written into one new buffer: its
    product with [w ; b] adds the bias in the product, not in a pass over the output."""
    xh = x.permute(0, 2, 3, 1)
    c = xh.shape[-1]
    k = 2 * c if split else c
    buf = xh.new_empty((*xh.shape[:-1], k + 1))
    if split:
        torch.clamp(xh, min=0, out=buf[..., :c])
        torch.clamp(xh, max=0, out=buf[..., c:k])
    else:
        buf[..., :c] = xh
    buf[..., k] = 1.0
    return buf


def _selected(t: torch.Tensor, sign: torch.Tensor, select: str | None) -> torch.Tensor:
    """A sign group's total `t` (in place) where the layer's output has the sign the group
    selects (`sign` = +1 for ">", -1 for "<"), +inf / -inf elsewhere, so that the
    backward's R / t is 0 there (no torch.where, no bool mask: ~10x a product on the CPU)."""
    if select is None:
        return t
    # (sign - 0.5) * -inf: -inf where sign = +1 (max keeps t), +inf elsewhere; (sign + 0.5) * -inf likewise
    off = sign.add(-0.5 if select == ">" else 0.5).mul_(-float("inf"))
    return torch.maximum(t, off, out=t) if select == ">" else torch.minimum(t, off, out=t)


def _remember(cache: dict, key: tuple, value: torch.Tensor) -> torch.Tensor:
    """cache[key] = value, keeping at most 8 entries (input shapes) per layer."""
    if len(cache) >= 8:
        cache.clear()
    cache[key] = value
    return value


class LinearKernel:
    """A basic rule on one linear layer without autograd: the passes' outputs are
    computed in the forward (no graph), the backward maps the relevance and takes the
    input gradients with the data-gradient primitive. The modified (and BatchNorm-
    merged) parameters are cached until the module's or the BatchNorm's tensors change
    (data pointer or version counter); the user's weights are never written."""

    def __init__(self, rule: Rule, module: nn.Module, bn: nn.Module | None) -> None:
        self.rule, self.module, self.bn = rule, module, bn
        pointwise = self.pointwise = _pointwise(module)
        self.fn = _pointwise_fn if pointwise else _linear_fn(module)
        self.dgrad = _pointwise_dgrad if pointwise else _dgrad_fn(module)
        self.groups = rule.sign_groups() if isinstance(rule, BasicRule) else None
        # flat on an ungrouped convolution: all weights 1, so every input channel gets the
        # same back-projection of the relevance summed over the output channels
        self.flat = (type(rule) is Flat and type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
                     and module.groups == 1 and not pointwise)
        self._cache: tuple | None = None

    def params(self) -> dict:
        m, bn = self.module, self.bn
        mp = m._parameters
        # (a parametrised weight is not in _parameters: read each call, it never hits the cache)
        tensors = [mp["weight"] if "weight" in mp else m.weight, mp["bias"] if "bias" in mp else m.bias]
        if bn is not None:
            bp, bb = bn._parameters, bn._buffers
            tensors += [bb.get("running_mean"), bb.get("running_var"), bp.get("weight"), bp.get("bias")]
        key = _version_key(tensors)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            w, b = _merged_params(m, bn)
            w, b = w.detach(), None if b is None else b.detach()
            value = {"w": w, "b": b, "constant": {}}
            if self.groups is not None:
                eps = float(self.rule.stabilizer)
                transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
                out_ch = w.shape[1] * m.groups if transposed else w.shape[0]
                b0 = torch.zeros(out_ch, dtype=w.dtype, device=w.device) if b is None else b
                # (w for x+, w for x-, bias + the stabiliser of T's sign)
                value["groups"] = [(grp.pos(w, "weight", OPS), grp.neg(w, "weight", OPS),
                                    grp.pos(b0, "bias", OPS) + grp.sign * eps) for grp in self.groups]
            else:
                value["passes"] = [(param_mod(w, "weight", OPS), None if b is None else param_mod(b, "bias", OPS))
                                   for _, param_mod in self.rule.passes()]
            if self.pointwise:
                self._pointwise_params(value)
        self._cache = (key, value)
        return value

    @staticmethod
    def _pointwise_params(value: dict) -> None:
        """The parameters of a pointwise kernel as [Cin, Cout] (see _right), with the
        bias as a last row where the product adds it (see _with_ones): in [w for x+ ;
        w for x- ; bias] (one product over [x+ | x- | 1] per sign group) and, when the
        output is at least twice as wide as the input, in [w ; b] for the layer's own
        output."""
        w, b = value["w"], value["b"]
        value["w"] = _right(w)
        if b is not None and w.shape[0] >= 2 * w.shape[1]:
            value["w_b"] = torch.cat([value["w"], b.reshape(1, -1)])
        if "groups" in value:
            value["groups"] = [(_right(wa), _right(wb), ba) for wa, wb, ba in value["groups"]]
            value["cat"] = [torch.cat([wa, wb, ba.reshape(1, -1)]) for wa, wb, ba in value["groups"]]
        else:
            value["passes"] = [(_right(pw), pb) for pw, pb in value["passes"]]

    def output(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """The layer's own (BatchNorm-merged) output with the parameters `p`."""
        if "w_b" in p:
            return _with_ones(x, False).matmul(p["w_b"]).permute(0, 3, 1, 2)
        return self.fn(x, p["w"], p["b"])

    def forward(self, x: torch.Tensor, actual: torch.Tensor | None, nonneg: bool, p: dict | None = None) -> tuple:
        """The state the backward needs (computed without autograd). `actual`: the
        layer's own (merged) output when known; `nonneg`: x >= 0 is known; `p`: the
        parameters of this call when already looked up."""
        if p is None:
            p = self.params()
        fn = self.fn
        with torch.no_grad():
            if self.groups is not None:
                kappa = self.rule.totals_sum()
                n = len(self.groups) if kappa is None else 1   # (the second: kappa z - the first)
                totals = []
                if not nonneg and self.pointwise:
                    xc = _with_ones(x, True)
                    totals = [xc.matmul(wc).permute(0, 3, 1, 2) for wc in p["cat"][:n]]
                    c = x.shape[1]   # x+ and x- kept for the backward (views)
                    xp, xn = xc[..., :c].permute(0, 3, 1, 2), xc[..., c:2 * c].permute(0, 3, 1, 2)
                else:
                    xp, xn = (x, None) if nonneg else (x.clamp(min=0), x.clamp(max=0))
                    for wa, wb, ba in p["groups"][:n]:
                        t = fn(xp, wa, ba)
                        if xn is not None:
                            t += fn(xn, wb, None)
                        totals.append(t)
                selects = any(grp.select for grp in self.groups)
                if kappa is not None or selects:
                    z = actual if actual is not None else self.output(x, p)
                if kappa is not None:
                    totals.append(torch.mul(z, kappa).sub_(totals[0]))
                if selects:
                    sign = z.sign()
                    totals = [_selected(t, sign, grp.select) for grp, t in zip(self.groups, totals)]
                return (p, nonneg, (totals, xp, xn))
            outs = []
            for (in_mod, param_mod), (w, b) in zip(self.rule.passes(), p["passes"]):
                if nonneg and getattr(in_mod, "negative_part", False) and getattr(param_mod, "zero_bias", False):
                    outs.append(None)     # x <= 0 is 0 and the bias is 0: the pass is exactly 0
                elif in_mod is _same and param_mod is _keep:
                    outs.append(actual if actual is not None else fn(x, w, b))
                elif nonneg and getattr(in_mod, "positive_part", False):
                    outs.append(fn(x, w, b))
                elif self.flat:   # the backward needs 1 / stabilize(z) only, cached per input shape
                    key = ("inv", tuple(x.shape), x.dtype, x.device)
                    outs.append(None if key in p["constant"] else fn(in_mod(x, OPS), w, b))
                elif getattr(in_mod, "constant", False):   # the same for every input of this shape
                    key = (len(outs), tuple(x.shape), x.dtype, x.device)
                    out = p["constant"].get(key)
                    if out is None:
                        out = _remember(p["constant"], key, fn(in_mod(x, OPS), w, b))
                    outs.append(out)
                else:
                    outs.append(fn(in_mod(x, OPS), w, b))
            return (p, nonneg, outs)

    def backward(self, state: tuple, relevance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p, nonneg, outs = state
        dgrad = self.dgrad
        if self.flat:
            key = (tuple(x.shape), x.dtype, x.device)
            inv = p["constant"].get(("inv",) + key)
            if inv is None:   # 1 / stabilize(z) of the ones pass: the same for every input of this shape
                z = outs[0]
                if z is None:   # evicted since the forward (another input shape, another thread)
                    z = self.fn(torch.ones_like(x), *p["passes"][0])
                # (z counts the taps in each receptive field: the same in every output channel)
                inv = _remember(p["constant"], ("inv",) + key,
                                1.0 / stabilize(z[:, :1], self.rule.stabilizer, OPS))
            w1 = p.get("flat_w")
            if w1 is None:
                w = p["w"]
                w1 = p["flat_w"] = torch.ones((1, 1, *w.shape[2:]), dtype=w.dtype, device=w.device)
            # one input channel's back-projection (all weights 1), the same in every input channel
            return dgrad(relevance.sum(dim=1, keepdim=True).mul_(inv), x, w1).expand_as(x).contiguous()
        if self.groups is not None:
            totals, xp, xn = outs
            gs = []
            for grp, t in zip(self.groups, totals):
                g = relevance / t
                if grp.coef != 1.0:
                    g.mul_(grp.coef)
                gs.append(g)
            da = db = None
            if xn is not None and self.pointwise:   # [d for x+ | d for x-] in one product per group
                for g, wc in zip(gs, p["cat"]):
                    d = g.permute(0, 2, 3, 1).matmul(wc[:-1].t())
                    da = d if da is None else da.add_(d)
                da = da.permute(0, 3, 1, 2)
                da, db = da[:, :x.shape[1]], da[:, x.shape[1]:]
            else:
                for g, (wa, wb, _) in zip(gs, p["groups"]):
                    d = dgrad(g, x, wa)
                    da = d if da is None else da.add_(d)
                    if xn is not None:
                        d = dgrad(g, x, wb)
                        db = d if db is None else db.add_(d)
                if xn is None:
                    return da.mul_(x)
            # x+ da + x- db (a torch.where(x > 0, da, db) costs ~10x a product on the CPU)
            return torch.mul(xp, da).addcmul_(xn, db)
        zero = 0.0
        mapped = self.rule.mapper(relevance, [zero if o is None else o for o in outs], OPS)
        ins, grads = [], []
        for (in_mod, _), (w, _), out, g in zip(self.rule.passes(), p["passes"], outs, mapped):
            if out is None or g is None:
                ins.append(zero)
                grads.append(zero)
                continue
            grads.append(dgrad(g, x, w))
            if nonneg and getattr(in_mod, "positive_part", False):
                ins.append(x)
            else:
                ins.append(in_mod(x, OPS))
        return self.rule.reduce(ins, grads, OPS)


class _Rule(torch.autograd.Function):
    """Output = the (chain's) own output, boxed in `holder`; backward = the kernel's."""

    @staticmethod
    def forward(ctx, state, x):  # noqa: D401
        ctx.state = state
        ctx.save_for_backward(x)
        out, state.out = state.out, None
        return out

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        st = ctx.state
        ctx.state = None
        return None, st.kernel.backward(st.state, relevance, x)


class _State:
    """The kernel and its forward state: one opaque object for Function.apply (whose
    argument walk would otherwise visit every cached tensor)."""

    __slots__ = ("kernel", "state", "out")

    def __init__(self, kernel: "LinearKernel", state: tuple, out: torch.Tensor) -> None:
        self.kernel, self.state, self.out = kernel, state, out


def apply_kernel(entry: Entry, x: torch.Tensor, out: torch.Tensor, actual: torch.Tensor | None,
                 params: dict | None = None) -> torch.Tensor:
    """`out` carrying the entry's linear rule back to `x` (the fast path)."""
    state = entry.kernel.forward(x, actual, entry.nonneg, params)
    return _Rule.apply(_State(entry.kernel, state, out.detach()), x)


class _NormSum(torch.autograd.Function):
    """a + b (the value `holder` boxes) whose backward is the Norm rule:
    R_a = a R / stabilize(a + b), R_b likewise."""

    @staticmethod
    def forward(ctx, eps, holder, a, b):  # noqa: D401
        out = holder[0]
        with torch.no_grad():   # out + eps, out - eps where out < 0 (no torch.where: ~10x slower on the
            # CPU); at out = -0.0 (both addends zero: zero relevance either way) -eps, not +eps
            ctx.den = out.abs().add_(eps).copysign_(out)
        ctx.save_for_backward(a, b)
        return out

    @staticmethod
    def backward(ctx, relevance):
        a, b = ctx.saved_tensors
        g = relevance / ctx.den
        ctx.den = None
        return None, None, a * g, b * g


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
        if entry.kernel is not None:
            return apply_kernel(entry, x, out, None if entry.merge is not None else out.detach())
        if entry.fn is not None:
            params = _merged_params(module, entry.merge)
            return _Basic.apply(rule, entry.fn, params, [out.detach()], x)
        return _Basic.apply(rule, module.forward, (), [out.detach()], x)   # avg pooling: Norm
    return out


# ------------------------------------------------------------------ residuals (function mode)

_ADDS = {"add", "__add__", "__radd__", "add_", "__iadd__"}
_MULS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__"}


_LINEAR_FUNCS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}


# plain torch layers whose forward is one F.convNd / F.linear call with the module's own
# weight, and one F.batch_norm call on its input: the function mode sees all of a chain
_CHAIN_STARTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CHAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def mode_runs(chain: Chain, plan: RulePlan, by_name: dict) -> bool:
    """The function mode can run `chain` in this call: its linear layer is a plain torch
    layer (not a subclass, not parametrised: same class) and its BatchNorm, if any, a
    plain one in eval mode."""
    entry = plan.entries[chain.start]
    return type(by_name[chain.start]) in _CHAIN_STARTS and (
        entry.merge is None or (type(entry.merge) in _CHAIN_NORMS and not entry.merge.training))


class ChainCalls:
    """Per call: the chain whose linear module is about to run (`armed`, set by its
    pre-hook), the chains begun (chain -> (input, merged output, kernel parameters)),
    and the merged output the next BatchNorm call passes on (`made`). Only the chain's
    last module has a forward hook: it applies the kernel (see _RuleMode)."""

    def __init__(self) -> None:
        self.armed: tuple | None = None     # (chain, entry, module)
        self.begun: dict = {}
        self.made: torch.Tensor | None = None


class _RuleMode(TorchFunctionMode):
    """Thread-local: `a + b` of two activations -> sum layer; `a * gate` -> gate layer
    (when the composite makes residuals explicit); and the armed chain start's linear
    call computes the BatchNorm-merged output directly (the canonized model), whose
    BatchNorm call then returns it unchanged."""

    def __init__(self, composite: Composite, residual: bool, calls: ChainCalls | None):
        super().__init__()
        self.composite = composite
        self.residual = residual
        self.calls = calls
        self.sum_rule = composite.rule_for("sum") or Norm()
        self.gate_rule = composite.rule_for("gate")
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        calls = self.calls
        if calls is not None:
            armed = calls.armed
            if armed is not None and name in _LINEAR_FUNCS and len(args) >= 2 and args[1] is armed[2].weight:
                calls.armed = None
                chain, entry, _ = armed
                x = args[0]
                if chain not in calls.begun and torch.is_grad_enabled() and x.requires_grad:
                    with torch.no_grad():
                        p = entry.kernel.params()
                        y = entry.kernel.output(x, p)
                    calls.begun[chain] = (x, y, p)
                    calls.made = y if entry.merge is not None else None
                    return y
            if name == "batch_norm" and calls.made is not None and args and args[0] is calls.made:
                calls.made = None
                return args[0]       # merged into the convolution before it
        if self.residual and (name in _ADDS or name in _MULS) and len(args) == 2 and not kwargs \
                and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args) \
                and torch.is_grad_enabled():
            a, b = args
            plain = {"add_": "add", "__iadd__": "__add__", "mul_": "mul", "__imul__": "__mul__"}.get(name)
            out = getattr(torch.Tensor, plain)(a, b) if plain else func(a, b)   # never in place
            if name in _ADDS:
                self.counts["sum"] += 1
                if type(self.sum_rule) is Norm:
                    return _NormSum.apply(float(self.sum_rule.epsilon), [out.detach()], a, b)
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
def rule_mode(plan: RulePlan, composite: Composite, calls: ChainCalls | None) -> Iterator[None]:
    if not plan.residual and calls is None:
        yield
        return
    with _RuleMode(composite, plan.residual, calls):
        yield
