"""PyTorch adapter of the backend contract (`neuroscope.backends.base`).

Hooks are installed per call, act only for the thread that installed them, and are
removed in ``finally`` — a Streamlit server shares one module between sessions, so
nothing may leak from one request into another.
"""
from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import BadModel, BadParameter, Cancelled
from ..propagation.composites import Composite, composite_for
from ..propagation.rules import ActSpec
from .base import OPTIONAL_RULES, RULES, Capture, LayerInfo, Objective
from .torch_model import (OUTPUT_KINDS, RELU_LIKE, CallerError, FunctionalRules, HeadMode, InplaceWatch, guarded,
                          head_kind, is_activation_module, model_error, private_copy)
from .torch_rules import (RulePlan, _Elementwise, ChainCalls, apply_entry, apply_kernel, build_plan, mode_runs,
                          rule_mode)


class _MaskChannels(torch.autograd.Function):
    """Identity forward; the backward keeps only the given channels (CRP's conditioning)."""

    @staticmethod
    def forward(ctx, x, channels):  # noqa: D401
        ctx.channels = channels
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        mask = torch.zeros(g.shape[1], dtype=g.dtype, device=g.device)
        mask[list(ctx.channels)] = 1
        return g * mask.reshape([1, -1] + [1] * (g.dim() - 2)), None


def _mask_channels(out: torch.Tensor, channels) -> torch.Tensor:
    return _MaskChannels.apply(out, tuple(channels))


def _concat(parts: list):
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts))
    return np.concatenate(parts)


def _first_conv_channels(module: nn.Module) -> int:
    """Input channels of the model: those of its first 2-D convolution (registration
    order), 3 when it has none."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) or (getattr(m, "original_name", None) == "Conv2d"
                                         and hasattr(m, "in_channels")):   # TorchScript
            return int(m.in_channels)
    return 3


def _functional_relu_rule(composite: Composite | None):
    """The composite's rule for ReLU-likes when it is elementwise (guided, deconvnet):
    what functional F.relu calls get (torch_model.FunctionalRules); else None."""
    if composite is None:
        return None
    rule = composite.rule_for("relu")
    return rule if rule is not None and getattr(rule, "kind", None) == "elementwise" else None


def _select_output(out, selector):
    if isinstance(out, dict):
        if selector is None:
            selector = "out" if "out" in out else next(iter(out))
        if selector not in out:
            raise BadModel(f"model output has no key {selector!r}; keys: {sorted(map(str, out))}")
        return out[selector]
    if isinstance(out, (tuple, list)):
        idx = 0 if selector is None else selector
        if isinstance(idx, bool) or not isinstance(idx, int) or not -len(out) <= idx < len(out):
            raise BadModel(f"model output has {len(out)} items; output index {idx} is out of range")
        return out[idx]
    if not isinstance(out, torch.Tensor):
        raise BadModel(f"model returned {type(out).__name__}; expected a tensor, a dict or a tuple of tensors")
    if selector is not None and selector not in (0, -1):
        raise BadModel(f"the spec names output {selector!r}, but the model returns a single tensor")
    return out


class _Headed:
    """A model output with (logits, trailing activation output) of the same pass."""

    __slots__ = ("out", "pair")

    def __init__(self, out, pair):
        self.out, self.pair = out, pair


class TorchBackend:
    """Backend for an ``nn.Module`` taking NCHW float input."""

    framework = "torch"
    deferred_objective = True  # capture() accepts an objective decided from its own forward pass
    rules = RULES + OPTIONAL_RULES
    functional_rule_kinds = RELU_LIKE   # functional activations the rules reach (torch_model.FunctionalRules)

    def __init__(self, module: nn.Module, input_size: tuple[int, int], task: str,
                 output: str | int | None = None, output_kind: str | None = "logits",
                 device: str | None = None, own: bool = False, channels: int | None = None):
        """`own=True`: the module is ours (built from a spec) and may be changed in
        place (eval mode, frozen, channels-last). Otherwise a user's module: we work on
        a private copy sharing its parameters (`torch_model.private_copy`) and never
        change the user's object. `output_kind` None: detected from the model's trailing
        activation. `channels`: input channels (default: the first convolution's)."""
        if not isinstance(module, nn.Module):
            raise BadModel(f"expected a torch.nn.Module, got {type(module).__name__}")
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise BadModel(f"output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.task = task
        self.output = output
        self.declared_kind = output_kind
        self.output_kind = output_kind or "logits"
        self.score_kind = "logit"              # what the explained scalar is (meta["score"])
        self.max_batch: int | None = None      # 1: the model runs one image per pass
        self.warnings: list[str] = []
        scripted = isinstance(module, torch.jit.ScriptModule)
        if scripted:
            if not own and module.training:
                raise BadModel("this TorchScript module is in training mode; call .eval() on it first "
                               "(Neuroscope does not change your module)")
            module.eval()
        elif own:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            module.to(self.device)
        else:
            module = private_copy(module, self.device).eval()
        if not scripted:
            # In-place activations would overwrite captured outputs and break the ReLU
            # rules; turning them off (in our copy) changes no result, only memory.
            for m in module.modules():
                if isinstance(getattr(m, "inplace", None), bool):
                    m.inplace = False
        self._channels_last = self.device == "cpu" and any(isinstance(m, nn.Conv2d) for m in module.modules())
        if self._channels_last and own:
            module.to(memory_format=torch.channels_last)   # never on a user's shared weights
        self.module = module
        self.channels = int(channels) if channels else _first_conv_channels(module)
        self.scripted = scripted               # TorchScript: no hooks, so no layers and no rules
        self._names = {} if scripted else {id(m): n for n, m in module.named_modules() if n}
        self._by_name = {} if scripted else {n: m for n, m in module.named_modules() if n}
        if scripted:
            self.warnings.append("TorchScript model: its layers cannot be listed or captured "
                                 "(gradient and perturbation methods only)")
        self._layers: list[LayerInfo] | None = None
        self._clone_on_capture: set[str] = set()  # outputs later modified in place by the model
        self._lock = threading.Lock()
        self._chains: dict[str, dict[str, list[str]] | None] | None = None  # module -> children in call order
        self._uppers: dict[str, list[nn.Module] | None] = {}                 # layer -> modules above a cut
        self._plans: dict[Composite, RulePlan] = {}                          # rule plans (torch_rules)
        self._head: tuple[str, str | None] | None = None   # (kind, module name or None = functional)
        self.functional_activations: dict[str, int] = {}   # F.relu / F.silu ... calls outside modules (probe)
        if output_kind != "logits":
            self.layers()        # the probe forward detects the output kind

    # ----------------------------------------------------------------- helpers
    def _to_tensor(self, x: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise BadParameter(f"expected input [N, H, W, {self.channels}], got {list(x.shape)}")
        t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
        if not self._channels_last:
            t = t.contiguous()
        if requires_grad:
            t = t.detach().requires_grad_(True)
        return t

    def _logits(self, out, hw: tuple[int, int], n: int | None = None) -> torch.Tensor:
        pair = None
        if isinstance(out, _Headed):
            out, pair = out.out, out.pair
        z = _select_output(out, self.output)
        if pair is not None and pair[1] is z:
            z = pair[0].float()                  # the logits the trailing activation was applied to
        else:
            z = z.float()
            if self.output_kind == "probabilities":
                z = torch.log(z.clamp_min(1e-12))
            elif self.output_kind == "sigmoid":  # the logit is the inverse of the sigmoid
                z = torch.log(z.clamp_min(1e-12)) - torch.log1p(-z.clamp(max=1.0 - 1e-7))
        if self.task == "segmentation":
            if z.ndim != 4:
                raise BadModel(f"a segmentation model must output [N, C, H, W]; got shape {list(z.shape)}")
            if tuple(z.shape[-2:]) != hw:
                z = nn.functional.interpolate(z, size=hw, mode="bilinear", align_corners=False)
        elif z.ndim != 2:
            raise BadModel(f"a classification model must output [N, C]; got shape {list(z.shape)}")
        if n is not None and z.shape[0] != n:
            raise BadModel(f"the model returned {z.shape[0]} outputs for a batch of {n} images")
        return z

    def _objective(self, z: torch.Tensor, objective: Objective, kind: str) -> torch.Tensor:
        w = torch.as_tensor(objective.class_weights, dtype=z.dtype, device=z.device)
        if w.shape[0] != z.shape[1]:
            raise BadParameter(f"objective has {w.shape[0]} class weights; model has {z.shape[1]} classes")
        if kind not in ("prob", "logit"):
            raise BadParameter(f"unknown score kind {kind!r}")
        idx = torch.nonzero(w).flatten().tolist()  # only the classes that matter
        if objective.mask is None:
            if kind == "prob":
                z = torch.sigmoid(z) if self.output_kind == "sigmoid" else torch.softmax(z, dim=1)
            return sum(w[c] * z[:, c] for c in idx)
        m = torch.as_tensor(objective.mask, dtype=z.dtype, device=z.device)
        if kind == "prob":
            # The softmax only where the mask is non-zero: for a region of a segmentation
            # output that is a fraction of the [N, C, H, W] softmax (same values).
            pos = torch.nonzero(m.flatten()).flatten()
            zp = z.flatten(2)[:, :, pos]
            p = torch.sigmoid(zp) if self.output_kind == "sigmoid" else torch.softmax(zp, dim=1)   # [N, C, P]
            mp = m.flatten()[pos]
            return sum(w[c] * (p[:, c] * mp).sum(dim=1) for c in idx) / m.sum()
        return sum(w[c] * (z[:, c] * m).sum(dim=(1, 2)) for c in idx)

    @contextmanager
    def _hooks(self, want: set[str], rule: str | None, records: dict, grad_from_want: bool = False) -> Iterator[None]:
        """Forward hooks for this thread only: record `want` outputs, apply `rule`.

        `grad_from_want`: the forward starts without autograd and switches it on at the
        first recorded output; a recorded output that does not depend on an earlier one
        becomes a leaf. Gradients w.r.t. the recorded outputs are unchanged, but nothing
        below them is kept for a backward (a 1024x2048 capture: ~1 GB instead of ~3)."""
        if rule is not None and self.scripted:
            raise BadParameter(f"the {rule} rule needs the model's activations, which a TorchScript "
                               "model hides; load the Python model (a spec) for this method")
        composite = composite_for(rule)
        plan = self._plan(composite) if composite is not None else None
        owner = threading.get_ident()
        counts: dict[str, int] = defaultdict(int)
        base_names = {k.split("#")[0] for k in want}
        masks = dict(composite.masks) if composite is not None else {}
        handles = []
        # linear -> merged BatchNorm -> pass activation chains (torch_rules.Chain) that no
        # recorded or masked layer is part of: the function mode computes the merged output
        # at the linear call (armed by its pre-hook) and passes it through the BatchNorm,
        # and one Function from the chain's end (its only forward hook) to its input
        # carries the linear rule; a chain the mode cannot run gets per-layer rules
        mask_names = {m.split("#")[0] for m in masks}
        blocked = base_names | mask_names
        chains = plan.chains if plan is not None else {}
        if chains:
            runs = {c: not set(c.members) & blocked and mode_runs(c, plan, self._by_name) for c in set(chains.values())}
            chains = {n: c for n, c in chains.items() if runs[c]}
        calls = ChainCalls() if chains else None

        def pre_hook(chain, entry):
            def hook(module, inputs):
                if threading.get_ident() == owner:
                    calls.armed = (chain, entry, module)
            return hook

        def make_hook(name: str, entry):
            chain = chains.get(name)

            def hook(module, inputs, out):
                if threading.get_ident() != owner:
                    return None
                with torch._C.DisableTorchFunction():   # our own tensor code: no residual / functional mode
                    return body(module, inputs, out)

            def body(module, inputs, out):
                k = counts[name]
                counts[name] += 1
                key = name if k == 0 else f"{name}#{k}"
                if chain is not None and k == 0:
                    begun = calls.begun.get(chain)
                    if begun is not None:   # (input, merged output, parameters)
                        calls.begun[chain] = None   # done: the chain begins once per call
                        return apply_kernel(plan.entries[chain.start], begun[0], out, begun[1], begun[2])
                replaced = None
                if entry is not None and entry.rule is not None:
                    new = apply_entry(entry, module, inputs, out)
                    if new is not out:
                        replaced = out = new
                if key in masks and isinstance(out, torch.Tensor) and out.requires_grad:
                    replaced = out = _mask_channels(out, masks[key])
                if key in want and isinstance(out, torch.Tensor):
                    if grad_from_want:
                        torch.set_grad_enabled(True)  # for the rest of this forward (restored by the caller)
                        if not out.requires_grad:
                            replaced = out = out.detach().requires_grad_(True)
                    records[key] = out
                    if key in self._clone_on_capture:
                        replaced = out.clone()  # the model modifies this output in place later
                return replaced
            return hook

        functional = nullcontext()
        relu_rule = _functional_relu_rule(composite)
        if relu_rule is not None and any(k in RELU_LIKE for k in self._probed().functional_activations):
            # F.relu & co. called by the model's forward (no module to hook): the same rule
            functional = FunctionalRules(lambda x, out, p: _Elementwise.apply(
                x, relu_rule, ActSpec(slope=p[0], upper=p[1]), [out.detach()]))
        try:
            for name, module in self._by_name.items():
                entry = plan.entries.get(name) if plan is not None else None
                chain = chains.get(name)
                if chain is not None and chain.start == name:
                    handles.append(module.register_forward_pre_hook(pre_hook(chain, entry)))
                if chain is not None and chain.end != name:
                    continue   # run by the function mode
                if name in base_names or (entry is not None and entry.rule is not None) or name in mask_names:
                    handles.append(module.register_forward_hook(make_hook(name, entry)))
            with rule_mode(plan, composite, calls) if plan is not None else nullcontext(), functional:
                yield
        finally:
            for h in handles:
                h.remove()

    def _probed(self) -> "TorchBackend":
        """Self, after the probe forward (layers, in-place outputs, functional activations)."""
        self.layers()
        return self

    def _plan(self, composite: Composite) -> RulePlan:
        """Which rule each module gets under `composite` (built once, cached)."""
        plan = self._plans.get(composite)
        if plan is None:
            plan = build_plan(self, composite)
            with self._lock:
                if len(self._plans) > 32:   # bounded: per-layer composites are many
                    self._plans.clear()
                self._plans[composite] = plan
        return plan

    def unapplied(self, rule) -> dict[str, int]:
        """{activation type: count} of activation modules the composite `rule` (or rule
        string) maps no rule to (e.g. SiLU under guided backprop): they keep their
        gradient. Functional calls outside modules (F.silu, ...) are listed apart in
        `functional_activations`; the ReLU-likes among them (`functional_rule_kinds`) get
        the composite's ReLU rule through `FunctionalRules`."""
        composite = composite_for(rule)
        return {} if composite is None else dict(self._plan(composite).unapplied)

    # ------------------------------------------------------------- contract
    def layers(self) -> list[LayerInfo]:
        with self._lock:
            if self._layers is None:
                self._layers = self._probe_layers()
            return list(self._layers)

    def _probe_layers(self) -> list[LayerInfo]:
        """One forward of zeros: the layers in execution order, the outputs the model
        modifies in place later (cloned on capture), and the trailing activation."""
        H, W = self.input_size
        # Outputs are watched through weak references, never held: holding every output of
        # a 1024x2048 forward would cost GBs. The watch checks their version counters after
        # every torch operation, so an output modified in place (`out += identity`,
        # `F.relu(x, inplace=True)`) is seen whatever runs next.
        watch = InplaceWatch()
        order: list[str] = []
        owner = threading.get_ident()
        counts: dict[str, int] = defaultdict(int)
        shapes: dict[str, object] = {}
        types: dict[str, str] = {}
        heads: list[tuple[str, str, weakref.ref]] = []   # (kind, module name, output)
        handles = []

        def make_hook(name: str):
            def hook(module, inputs, out):
                if threading.get_ident() != owner:
                    return None
                watch.check()
                k = counts[name]
                counts[name] += 1
                key = name if k == 0 else f"{name}#{k}"
                order.append(key)
                types[key] = type(module).__name__
                if isinstance(out, torch.Tensor):
                    shapes[key] = tuple(out.shape[1:])
                    watch.watch(key, out)
                    kind = head_kind(module)
                    if kind is not None:
                        heads.append((kind, name, weakref.ref(out)))
                else:
                    shapes[key] = None
                return None
            return hook

        def enter(module, inputs):
            if threading.get_ident() == owner:
                watch.in_activation += 1

        def leave(module, inputs, out):
            if threading.get_ident() == owner:
                watch.in_activation -= 1

        x = self._to_tensor(np.zeros((1, H, W, self.channels), np.float32))
        detect = self.declared_kind != "logits"
        head_mode = HeadMode()
        out = None
        try:
            for name, module in self._by_name.items():
                handles.append(module.register_forward_hook(make_hook(name)))
                if is_activation_module(module):
                    handles.append(module.register_forward_pre_hook(enter))
                    handles.append(module.register_forward_hook(leave))
            with torch.no_grad(), watch:
                if detect:
                    with head_mode:
                        out = self.module(x)
                else:
                    out = self.module(x)
            watch.check()
            selected = _select_output(out, self.output)
            if detect:
                self._detect_head(selected, heads, head_mode)
            self._logits(out, (H, W))  # validates the output
        except BadModel:
            raise
        except Exception as exc:  # a model that cannot run at its input size
            raise BadModel(f"model forward failed at input size {H}x{W} with {self.channels} input channel(s): "
                           f"{model_error(exc, 'probe forward', self._names)}") from None
        finally:
            for h in handles:
                h.remove()
        del out, head_mode
        self._clone_on_capture = watch.modified
        self.functional_activations = dict(watch.functional)
        infos = []
        for key in order:
            shape = shapes[key]
            spatial = shape is not None and len(shape) == 3 and shape[1] >= 2 and shape[2] >= 2
            stride = max(1, round(H / shape[1])) if spatial else None
            infos.append(LayerInfo(key, types[key], tuple(int(s) for s in shape) if shape is not None else None,
                                   spatial, stride))
        return infos

    def _detect_head(self, selected, heads: list, head_mode: HeadMode) -> None:
        """The output kind from the trailing activation (`selected` is the model output):
        an activation module whose output it is, else a functional softmax / log-softmax
        / sigmoid call whose output it is. Its input (the logits) is explained then."""
        found = None
        for kind, name, ref in reversed(heads):
            if ref() is selected:
                found = (kind, name)
                break
        if found is None and head_mode.last is not None and head_mode.last[2] is selected:
            found = (head_mode.last[0], None)
        declared = self.declared_kind
        if found is not None and declared is not None and found[0] != declared:
            found = None          # the spec says otherwise: its word, without the pre-activation
        if found is not None:
            self._head = found
            self.output_kind = found[0]
        self.score_kind = "log-probability" if (self._head is None and self.output_kind in
                                                ("probabilities", "log-probabilities")) else "logit"

    def _run(self, xt: torch.Tensor, fn=None):
        """The model's output on `xt` (or `fn(xt)`: the part of the model above a layer);
        with a detected trailing activation, paired with (logits, activation output) of
        this very pass (`_logits` takes the logits)."""
        fn = fn or self.module
        head = self._head
        if head is None:
            return fn(xt)
        kind, name = head
        if name is None:
            with HeadMode() as mode:
                out = fn(xt)
            return _Headed(out, mode.last[1:] if mode.last is not None else None)
        owner, box = threading.get_ident(), []

        def hook(module, inputs, out):
            if threading.get_ident() == owner:
                box.append((inputs[0], out))

        handle = self._by_name[name].register_forward_hook(hook)
        try:
            out = fn(xt)
        finally:
            handle.remove()
        return _Headed(out, box[-1] if box else None)

    def _batched(self, call: str, fn, x, *args):
        """fn(x, *args) for a batch x (items along the first axis); returns an array or a
        tuple of arrays, batch first. A framework error becomes a one-line `BadModel`
        naming the layer. A model that fails on a batch but runs one image (a reshape
        with batch 1) is detected once; from then on every pass takes one image."""
        n = len(x)
        if n > 1 and self.max_batch == 1:
            return _concat([guarded(call, self._names, fn, x[i:i + 1], *args) for i in range(n)])
        try:
            return fn(x, *args)
        except (BadParameter, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 -- a framework error, or a batch the model cannot take
            if n < 2:
                raise model_error(exc, call, self._names) from None
            error = model_error(exc, call, self._names)
        try:
            first = fn(x[:1], *args)
        except Exception:  # noqa: BLE001 -- one image fails too: the batch was not the problem
            raise error from None
        self.max_batch = 1
        return _concat([first] + [guarded(call, self._names, fn, x[i:i + 1], *args) for i in range(1, n)])

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._batched("forward", self._forward, x)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        xt = self._to_tensor(x)
        with torch.inference_mode():
            z = self._logits(self._run(xt), tuple(xt.shape[-2:]), len(x))
        return z.float().cpu().numpy()

    def scores(self, x: np.ndarray, objective: Objective, kind: str = "logit") -> np.ndarray:
        return self._batched("scores", self._scores, x, objective, kind)

    def _scores(self, x: np.ndarray, objective: Objective, kind: str) -> np.ndarray:
        xt = self._to_tensor(x)
        with torch.inference_mode():
            z = self._logits(self._run(xt), tuple(xt.shape[-2:]), len(x))
            y = self._objective(z, objective, kind)
        return y.float().cpu().numpy().reshape(-1)

    def capture(self, x: np.ndarray, objective: Objective, layers: Sequence[str] = (),
                input_grad: bool = True, rule: str | None = None, gradients: bool = True,
                tails: list | None = None) -> Capture:
        if x.shape[0] != 1:
            raise BadParameter("capture takes one image (batch of 1)")
        if layers:
            self.layers()  # learn which outputs need cloning before the first capture
        return guarded("capture", self._names, self._capture, x, objective, layers, input_grad, rule, gradients,
                       tails)

    def capture_tail(self, x: np.ndarray, objective: Objective, layer: str,
                     gradients: bool = True) -> tuple[Capture, "Tail | None"]:
        """`capture(x, objective, [layer], input_grad=False)`, plus the pass's autograd graph
        from `layer` up to the logits, kept (`Tail`): another objective on the same input
        (a new click) then needs only a backward of the part above the layer, no forward."""
        tails: list = []
        cap = self.capture(x, objective, [layer], input_grad=False, gradients=gradients, tails=tails)
        return cap, (tails[0] if tails else None)

    def _capture(self, x: np.ndarray, objective: Objective, layers: Sequence[str],
                 input_grad: bool, rule: str | None, gradients: bool, tails: list | None = None) -> Capture:
        want = set(layers)
        records: dict[str, torch.Tensor] = {}
        xt = self._to_tensor(x, requires_grad=input_grad)
        # Without the input gradient, autograd starts at the first requested layer.
        grad_mode = torch.enable_grad() if input_grad else torch.no_grad()
        with grad_mode, self._hooks(want, rule, records, grad_from_want=not input_grad):
            z = self._logits(self._run(xt), tuple(xt.shape[-2:]), 1)
            if callable(objective):  # decided from this very forward pass (no second forward)
                try:
                    objective = objective(z[0].detach().float().cpu().numpy())
                except Exception as exc:  # noqa: BLE001 -- the caller's, not the model's: raised as is
                    raise CallerError(exc) from exc
            y = self._objective(z, objective, "logit")
        missing = want - set(records)
        if missing:
            raise BadParameter(f"layer(s) not found or not a tensor output: {', '.join(sorted(missing))}")
        keys = [k for k in layers if records[k].requires_grad]
        if gradients:
            inputs = [records[k] for k in keys] + ([xt] if input_grad else [])
        else:  # only the leaves (the first recorded output, see _hooks): every other layer
            # gradient is freed once the backward is past it
            inputs = [xt] if input_grad else [records[k] for k in keys if records[k].grad_fn is None]
        means: dict[str, torch.Tensor] = {}

        def mean_hook(name: str):
            def hook(g: torch.Tensor) -> None:   # while the gradient is fresh in cache
                means[name] = g[0].float().mean(dim=(1, 2))
            return hook

        for k in keys:
            if records[k].dim() == 4:
                records[k].register_hook(mean_hook(k))   # dies with this call's tensor
        # `tails` (capture_tail: one layer, no input gradient, no rule): keep the graph when the
        # layer's output is its leaf
        keep = tails is not None and len(keys) == 1 and records[keys[0]].grad_fn is None and records[keys[0]].dim() == 4
        grads = torch.autograd.grad(y.sum(), inputs, allow_unused=True, retain_graph=keep) if inputs else []
        cap = Capture(output=z[0].detach().float().cpu().numpy(), score=float(y.detach().sum()))
        cap.gradient_means = {k: v.cpu().numpy() for k, v in means.items()}
        by_key = dict(zip(keys, grads))
        for k in layers:
            a = records[k].detach()[0].float()
            cap.activations[k] = a.cpu().numpy()
            if gradients:
                g = by_key.get(k)
                cap.gradients[k] = (torch.zeros_like(a) if g is None else g[0].float()).cpu().numpy()
            elif a.dim() == 3 and k not in cap.gradient_means:   # the objective does not depend on it
                cap.gradient_means[k] = np.zeros(a.shape[0], np.float32)
        if input_grad:
            g = grads[-1]
            g = torch.zeros_like(xt) if g is None else g
            cap.input_grad = g[0].permute(1, 2, 0).float().cpu().numpy()
        if keep:   # shares this capture's logits and activation arrays (nothing writes to them)
            tails.append(Tail(self, keys[0], records[keys[0]], z, cap,
                              self._graph_bytes(keys[0], tuple(xt.shape[-2:]))))
        return cap

    def _graph_bytes(self, layer: str, size: tuple[int, int]) -> int:
        """Estimated bytes a kept graph from `layer` to the logits holds: the float32
        outputs of every layer after it in the probe (nested modules counted again, so an
        overestimate), scaled from the probe's input size to `size`."""
        names = [l.name for l in self.layers()]
        after = self._layers[names.index(layer) + 1:] if layer in names else self._layers
        h, w = self.input_size
        scale = size[0] * size[1] / max(1, h * w)
        return int(4 * scale * sum(int(np.prod(l.shape)) for l in after if l.shape))

    def input_gradients(self, x: np.ndarray, objective: Objective,
                        rule: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._batched("input gradients", self._input_gradients, x, objective, rule)

    def _input_gradients(self, x: np.ndarray, objective: Objective,
                         rule: str | None) -> tuple[np.ndarray, np.ndarray]:
        xt = self._to_tensor(x, requires_grad=True)
        records: dict = {}
        with torch.enable_grad(), self._hooks(set(), rule, records):
            z = self._logits(self._run(xt), tuple(xt.shape[-2:]), len(x))
            y = self._objective(z, objective, "logit")
        (g,) = torch.autograd.grad(y.sum(), [xt])
        return g.permute(0, 2, 3, 1).float().cpu().numpy(), y.detach().float().cpu().numpy()

    # ------------------------------------------------- forward from a layer (optional)
    def can_cut(self, layer: str) -> bool:
        """True when the model is a chain of modules through `layer`, so that
        `forward_from` runs only the modules above it."""
        return self._upper(layer) is not None

    def forward_from(self, layer: str, activations: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Logits of the model continued from `layer`'s output replaced by `activations`
        [N, K, h, w] (see base.py)."""
        def run(a):
            with torch.inference_mode():
                return self._run_from(layer, a, x).float().cpu().numpy()
        return self._batched(f"forward from {layer}", run, activations)

    def scores_from(self, layer: str, activations: np.ndarray, objective: Objective,
                    kind: str = "logit", x: np.ndarray | None = None) -> np.ndarray:
        def run(a):
            with torch.inference_mode():
                y = self._objective(self._run_from(layer, a, x), objective, kind)
            return y.float().cpu().numpy().reshape(-1)
        return self._batched(f"scores from {layer}", run, activations)

    def _run_from(self, layer: str, activations: np.ndarray, x: np.ndarray | None) -> torch.Tensor:
        a = torch.from_numpy(np.ascontiguousarray(activations, dtype=np.float32)).to(self.device)
        if self._channels_last and a.ndim == 4:
            a = a.contiguous(memory_format=torch.channels_last)
        upper = self._upper(layer)
        n = a.shape[0]
        if upper is not None:
            def chain(t):
                for module in upper:
                    t = module(t)
                return t
            return self._logits(self._run(a, chain), self.input_size, n)
        if x is None:
            raise BadParameter(f"the model has no sequential cut at {layer!r}: forward_from needs the input x")
        if x.shape[0] != 1:
            raise BadParameter("forward_from takes the one input [1, H, W, 3] the activations came from")
        xt = self._to_tensor(np.broadcast_to(x, (a.shape[0], *x.shape[1:])))
        with self._replaced(layer, a):
            return self._logits(self._run(xt), tuple(xt.shape[-2:]), n)

    @contextmanager
    def _replaced(self, layer: str, value: torch.Tensor) -> Iterator[None]:
        """For this thread and this block only, `layer`'s output is `value`."""
        name, _, nth = layer.partition("#")
        if name not in self._by_name:
            raise BadParameter(f"unknown layer {layer!r}")
        want, owner, calls = int(nth or 0), threading.get_ident(), [0]

        def hook(module, inputs, out):
            if threading.get_ident() != owner:
                return None
            k = calls[0]
            calls[0] += 1
            if k != want:
                return None
            if tuple(out.shape) != tuple(value.shape):
                raise BadParameter(f"activations {list(value.shape)} do not fit layer {layer} "
                                   f"output {list(out.shape)}")
            return value

        handle = self._by_name[name].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _upper(self, layer: str) -> list[nn.Module] | None:
        """The modules above `layer` when the model is a chain through it (else None).

        A module is a *chain* when, in a probe forward, it called each of its children
        once, in order, the first on its own input, every next one on the previous
        one's output (the same tensor object: no operation in between), and returned
        the last one's output. Then the model above a layer is the remaining children
        of the layer's parent, then those of the grandparent, ... up to the root. The
        result is checked numerically once against a full forward.
        """
        with self._lock:
            if layer in self._uppers:
                return self._uppers[layer]
        upper = self._find_upper(layer)
        with self._lock:
            self._uppers[layer] = upper
        return upper

    def _find_upper(self, layer: str) -> list[nn.Module] | None:
        if "#" in layer or layer not in self._by_name:
            return None
        if self._chains is None:
            chains = self._probe_chains()
            with self._lock:
                self._chains = chains
        chains = self._chains
        upper: list[nn.Module] = []
        path = layer
        while path:
            parent = path.rpartition(".")[0]
            children = chains.get(parent)
            if children is None or path not in children:
                return None
            upper += [self._by_name[c] for c in children[children.index(path) + 1:]]
            path = parent
        # Verify once: the chain above must reproduce the full forward exactly.
        H, W = self.input_size
        x = np.random.default_rng(0).normal(size=(1, H, W, self.channels)).astype(np.float32)
        records: dict[str, torch.Tensor] = {}
        try:
            with torch.inference_mode(), self._hooks({layer}, None, records):
                full = self._logits(self._run(self._to_tensor(x)), (H, W))

            def chain(t):
                for module in upper:
                    t = module(t)
                return t
            with torch.inference_mode():
                cut = self._logits(self._run(records[layer], chain), (H, W))
        except Exception:
            return None
        tol = 1e-4 * float(full.abs().max()) + 1e-5
        if cut.shape != full.shape or float((cut - full).abs().max()) > tol:
            return None
        return upper

    def _probe_chains(self) -> dict[str, list[str] | None]:
        """One probe forward: for every module, its children in call order if it is a
        chain (see `_upper`), else None."""
        owner = threading.get_ident()
        frames: list[dict] = []
        result: dict[str, list[str] | None] = {}
        seen: set[str] = set()
        names = {id(self.module): "", **self._names}
        handles = []

        def pre(module, args, kwargs):
            if threading.get_ident() != owner:
                return None
            name = names.get(id(module))
            if name is None:
                return None
            if frames:
                parent = frames[-1]
                arg = args[0] if len(args) == 1 and not kwargs else None
                expected = parent["last"]() if parent["last"] is not None else parent["input"]()
                if (name.rpartition(".")[0] != parent["name"] or arg is None or arg is not expected):
                    parent["ok"] = False
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            frames.append({"name": name, "input": weakref.ref(first) if first is not None else (lambda: None),
                           "last": None, "children": [], "ok": first is not None and name not in seen})
            seen.add(name)
            return None

        def post(module, args, out):
            if threading.get_ident() != owner or names.get(id(module)) is None or not frames:
                return None
            frame = frames.pop()
            ok = frame["ok"] and bool(frame["children"]) and isinstance(out, torch.Tensor) \
                and frame["last"] is not None and out is frame["last"]()
            if frame["name"] in result:  # called twice
                ok = False
            result[frame["name"]] = list(frame["children"]) if ok else None
            if frames:
                parent = frames[-1]
                parent["children"].append(frame["name"])
                parent["last"] = weakref.ref(out) if isinstance(out, torch.Tensor) else (lambda: None)
            return None

        if self.scripted:
            return {}
        H, W = self.input_size
        x = self._to_tensor(np.zeros((1, H, W, self.channels), np.float32))
        try:
            for module in [self.module, *self._by_name.values()]:
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post))
            with torch.inference_mode():
                self.module(x)
        except Exception:
            return {}
        finally:
            for h in handles:
                h.remove()
        return result

    def hook_count(self) -> int:
        """Number of forward/backward hooks on the module (tests: nothing may leak)."""
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                   for m in self.module.modules())


class Tail:
    """The autograd graph of one capture from a layer's output up to the logits, kept
    (`retain_graph`): `capture(objective)` gives that layer's activation and gradient for
    another objective on the same input with one backward of the part above the layer.
    The engine keeps a few, bounded by `nbytes` (an estimate); dropping it frees the graph."""

    def __init__(self, backend: TorchBackend, layer: str, record: torch.Tensor, z: torch.Tensor, first: Capture,
                 nbytes: int):
        self.backend, self.layer, self.nbytes = backend, layer, nbytes
        self._record, self._z = record, z
        self._output, self._activation = first.output, first.activations[layer]   # the same for every objective
        self._lock = threading.Lock()   # one backward at a time through the shared graph

    def capture(self, objective: Objective, gradients: bool = True) -> Capture:
        return guarded("capture", self.backend._names, self._capture, objective, gradients)

    def _capture(self, objective: Objective, gradients: bool) -> Capture:
        with self._lock, torch.enable_grad():
            y = self.backend._objective(self._z, objective, "logit")
            (g,) = torch.autograd.grad(y.sum(), [self._record], retain_graph=True, allow_unused=True)
        g = torch.zeros_like(self._record) if g is None else g
        cap = Capture(output=self._output, score=float(y.detach().sum()))
        cap.activations[self.layer] = self._activation
        cap.gradient_means[self.layer] = g[0].float().mean(dim=(1, 2)).cpu().numpy()
        if gradients:
            cap.gradients[self.layer] = g[0].float().cpu().numpy()
        return cap
