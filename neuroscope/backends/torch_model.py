"""How the torch backend takes a user's ``nn.Module`` without changing it, and what it
learns about it: input channels, the output's kind (logits, probabilities, ...), outputs
the model later modifies in place, and which layer a failing pass was in.

- `private_copy`: the module tree copied one level deep per module (new module objects,
  mode, flags and hook tables of our own) whose parameters are tensors *sharing storage*
  with the user's (``requires_grad=False`` views): the user's module keeps its mode, its
  flags, its ``requires_grad`` and its hooks, and training it later is seen by us.
- `HeadProbe` / `HeadMode`: the trailing Softmax / LogSoftmax / Sigmoid of the model
  (an ``nn`` module or a functional call) and the tensor it was applied to (the logits).
- `InplaceWatch`: a torch-function mode that, in the one probe forward, sees every
  operation and notes every recorded layer output whose version counter moved (modified
  in place later, by a module or a bare ``F.relu(x, inplace=True)`` / ``x += y``).
- `model_error`: a framework error of a model pass as a one-line `BadModel` naming the
  layer it was raised in (read from the traceback: nothing on the success path).
"""
from __future__ import annotations

import copy
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BadModel, NeuroscopeError

#: Output kinds (CONTRACT.md §6 `output_kind`): how the model's output relates to class logits.
OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities", "sigmoid")


# ------------------------------------------------------------------ private copy

def _shared(t: torch.Tensor | None, device: str, param: bool) -> torch.Tensor | None:
    """A tensor sharing `t`'s storage (and version counter) without autograd history."""
    if t is None:
        return None
    v = t.detach()
    if v.device != torch.device(device):
        v = v.to(device)          # another device cannot share memory: a copy there
    return nn.Parameter(v, requires_grad=False) if param else v


def private_copy(module: nn.Module, device: str) -> nn.Module:
    """Our own module tree over the user's parameters (see the module docstring)."""
    memo: dict[int, nn.Module] = {}

    def dup(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = copy.copy(m)                      # a new object whose __dict__ is a shallow copy
        memo[id(m)] = new
        d = new.__dict__
        for key, value in list(d.items()):
            if key in ("_modules", "_parameters", "_buffers"):
                continue
            if isinstance(value, dict) and key.startswith("_"):   # hook tables and the like
                d[key] = type(value)(value) if type(value) is not dict else dict(value)
        d["_parameters"] = {k: _shared(p, device, True) for k, p in m._parameters.items()}
        d["_buffers"] = {k: _shared(b, device, False) for k, b in m._buffers.items()}
        d["_modules"] = {k: (None if c is None else dup(c)) for k, c in m._modules.items()}
        for key, value in list(d.items()):      # plain lists of submodules (not ModuleList)
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, nn.Module) for v in value):
                d[key] = type(value)(dup(v) for v in value)
        return new

    return dup(module)


# ------------------------------------------------------------------ output head

_HEAD_FUNCTIONS: dict[Any, str] = {}


def _head_functions() -> dict[Any, str]:
    if not _HEAD_FUNCTIONS:
        F = nn.functional
        for fn in (F.softmax, torch.softmax, torch.Tensor.softmax):
            _HEAD_FUNCTIONS[fn] = "probabilities"
        for fn in (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax):
            _HEAD_FUNCTIONS[fn] = "log-probabilities"
        for fn in (torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid):
            _HEAD_FUNCTIONS[fn] = "sigmoid"
    return _HEAD_FUNCTIONS


def _softmax_dim(args: tuple, kwargs: dict) -> int | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim if isinstance(dim, int) else None


class HeadMode(TorchFunctionMode):
    """Notes the last Softmax / LogSoftmax / Sigmoid call: (kind, its input, its output).
    Only the last one is held (strongly): the logits and the output of one call."""

    def __init__(self) -> None:
        super().__init__()
        self.last: tuple[str, torch.Tensor, torch.Tensor] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _head_functions().get(func)
        if kind and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            if kind == "sigmoid" or _class_axis(args[0], _softmax_dim(args, kwargs)):
                self.last = (kind, args[0], out)
        return out


def _class_axis(x: torch.Tensor, dim: int | None) -> bool:
    """Whether a softmax over `dim` of `x` ([N, C] or [N, C, H, W]) is over the classes."""
    if dim is None:
        return x.dim() in (2, 4)        # torch's implicit dim: 1 for these ranks
    return dim % max(1, x.dim()) == 1


def head_kind(module: nn.Module) -> str | None:
    """Output kind of a trailing activation module, else None."""
    if isinstance(module, nn.Softmax):
        return "probabilities"
    if isinstance(module, nn.LogSoftmax):
        return "log-probabilities"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    return None


# ------------------------------------------------------------------ in-place watch

#: Functional activations counted by the probe when called outside an activation module
#: (torch function name -> what the warnings call it). ReLU-likes get the ReLU rules
#: through `functional_rules`; the others keep their gradient under them.
FUNCTIONAL_ACTIVATIONS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu",
                          "leaky_relu_": "leaky_relu", "hardtanh": "hardtanh", "hardtanh_": "hardtanh",
                          "silu": "silu", "gelu": "gelu", "mish": "mish", "hardswish": "hardswish",
                          "elu": "elu", "elu_": "elu", "selu": "selu", "celu": "celu"}
RELU_LIKE = ("relu", "relu6", "leaky_relu", "hardtanh")
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish,
                       nn.ELU, nn.SELU, nn.CELU, nn.PReLU, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid,
                       nn.Softmax, nn.LogSoftmax, nn.RReLU, nn.Threshold)


def is_activation_module(module: nn.Module) -> bool:
    return isinstance(module, _ACTIVATION_MODULES)


class InplaceWatch(TorchFunctionMode):
    """After every torch operation, checks the version counters of the watched layer
    outputs (weak references): an output modified in place by a later operation is
    noted in `modified`, whether or not a module call comes next and whether or not
    the tensor is still alive a moment later."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[str, tuple[weakref.ref, int]] = {}
        self.modified: set[str] = set()
        self._checking = False
        self.in_activation = 0                   # > 0 inside an activation module's forward
        self.functional: dict[str, int] = {}     # functional activation -> calls outside modules

    def watch(self, key: str, t: torch.Tensor) -> None:
        self.watched[key] = (weakref.ref(t), t._version)

    def check(self) -> None:
        if self._checking:       # reading `_version` is itself seen by the mode
            return
        self._checking = True
        try:
            for key, (ref, version) in list(self.watched.items()):
                t = ref()
                if t is None:
                    self.watched.pop(key, None)
                elif t._version != version:
                    self.modified.add(key)
                    self.watched.pop(key, None)
        finally:
            self._checking = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.in_activation and not self._checking:
            name = FUNCTIONAL_ACTIVATIONS.get(getattr(func, "__name__", ""))
            if name is not None:
                self.functional[name] = self.functional.get(name, 0) + 1
        if self.watched and not self._checking:
            self.check()
        return out


def _functional_relu(name: str, args: tuple, kwargs: dict) -> tuple[tuple[float, float], bool] | None:
    """((negative slope, upper cut-off), in place) of a functional ReLU-like call, else None."""
    def arg(i: int, key: str, default):
        return kwargs.get(key, args[i] if len(args) > i else default)

    if name == "relu":
        return (0.0, float("inf")), bool(arg(1, "inplace", False))
    if name == "relu6":
        return (0.0, 6.0), bool(arg(1, "inplace", False))
    if name == "leaky_relu":
        return (float(arg(1, "negative_slope", 0.01)), float("inf")), bool(arg(2, "inplace", False))
    if name == "hardtanh" and float(arg(1, "min_val", -1.0)) == 0.0:
        return (0.0, float(arg(2, "max_val", 1.0))), bool(arg(3, "inplace", False))
    return None


class FunctionalRules(TorchFunctionMode):
    """For one rule pass (thread-local, like every torch-function mode): a functional
    ReLU-like call (F.relu, torch.relu, x.relu_(), F.relu6, F.leaky_relu, F.hardtanh(0, m))
    returns its own values carrying the rule's backward, `apply(x, out, (slope, upper))`.
    An in-place call still changes its input in place (the caller may rely on it); the
    rule then starts from a copy of the input taken before. A call inside an nn.ReLU
    module is replaced again by the module's own rule hook (the same backward)."""

    def __init__(self, apply: Callable) -> None:
        super().__init__()
        self.apply = apply

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = FUNCTIONAL_ACTIVATIONS.get(getattr(func, "__name__", ""))
        x = args[0] if args else None
        if name not in RELU_LIKE or not isinstance(x, torch.Tensor) or not x.requires_grad \
                or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        found = _functional_relu(name, args, kwargs)
        if found is None:
            return func(*args, **kwargs)
        params, inplace = found
        if inplace or getattr(func, "__name__", "").endswith("_"):
            before = x.clone()
            out = func(*args, **kwargs)
            return self.apply(before, out, params)
        return self.apply(x, func(*args, **kwargs), params)


# ------------------------------------------------------------------ errors

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def model_error(exc: BaseException, call: str, names: dict[int, str]) -> NeuroscopeError:
    """`exc` raised in a model pass as a one-line `BadModel` naming the innermost module
    of the user's model that was running (from the traceback), or the call."""
    if isinstance(exc, NeuroscopeError):
        return exc
    where = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            where = names[id(owner)]
        tb = tb.tb_next
    place = f"in layer {where}" if where else f"in {call}"
    return BadModel(f"the model failed {place} ({call}): {type(exc).__name__}: {_first_line(exc)}")


class CallerError(Exception):
    """An exception of the caller's own code run inside a pass (an objective decider):
    `guarded` re-raises the original, unwrapped."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


def guarded(call: str, names: dict[int, str], fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) with framework errors turned into `model_error`."""
    try:
        return fn(*args, **kwargs)
    except CallerError as wrapped:
        raise wrapped.exc from None
    except NeuroscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any framework error of a model pass
        raise model_error(exc, call, names) from None
