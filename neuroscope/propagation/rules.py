"""Rules: how the backward signal crosses one layer. One small class per rule.

Rules are written once against a tiny array namespace ``ops`` that each backend passes
in (torch or TensorFlow tensors support ``+ - * / > >= <``; ``ops`` adds ``clamp``,
``where``, ``ones_like``, ``zeros_like`` and ``per_channel``).

Three shapes of rule, told apart by ``kind``:

* ``"basic"`` (Zennit's BasicHook; the LRP rules): for a layer ``z = f(x; w, b)`` the
  backend evaluates ``z_k = f(in_k(x); param_k(w), param_k(b))`` for every *pass* k the
  rule lists, maps the incoming relevance R to output gradients ``g_k = mapper(R, z)``,
  back-propagates them through f to get ``d_k`` and returns ``reduce(in(x), d)``.
  Layers with several inputs (a residual sum) are reduced per input.
* ``"elementwise"``: ``backward(dy, x, act, ops)`` for activations, where ``act`` is the
  activation's `ActSpec` (None when it is not ReLU-like); returning None means "this rule
  does not apply here" and the backend counts the layer as unapplied (a warning).
* ``"gate"`` / ``"strided-fix"``: the gate and deconvnet's stride fix, whose few lines of
  framework code live in the backends.

Rules whose passes split the input by sign (z+, alpha-beta, gamma) also describe
themselves as ``sign_groups()``: groups of two passes whose summed output has a known
sign, so that a backend may fold the stabiliser into the bias and compute only the
passes an input without negatives needs (one per group after a ReLU); the maps are the
same.

The LRP rules follow Zennit 0.5.1 exactly (same passes, same stabiliser: ``z + eps`` for
``z >= 0``, ``z - eps`` otherwise), so maps agree with Zennit's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ActSpec:
    """A ReLU-like activation: f'(x) = 1 for threshold < x < upper, slope below threshold."""

    slope: float = 0.0
    threshold: float = 0.0
    upper: float = float("inf")


def stabilize(z: Any, eps: float, ops: Any) -> Any:
    """z + eps * sign(z), with sign(0) = +1 (Zennit's `stabilize`)."""
    return ops.where(z >= 0, z + eps, z - eps)


def _same(t: Any, ops: Any) -> Any:
    return t


def _keep(p: Any, name: str, ops: Any) -> Any:
    return p


def _zero_bias(mod: Callable) -> Callable:
    def param(p: Any, name: str, ops: Any) -> Any:
        return ops.zeros_like(p) if name == "bias" else mod(p, name, ops)
    param.zero_bias = True   # with a zero input this pass contributes exactly nothing
    return param


def _positive(t: Any, ops: Any) -> Any:
    return ops.clamp(t, lo=0.0)


def _negative(t: Any, ops: Any) -> Any:
    return ops.clamp(t, hi=0.0)


_negative.negative_part = True   # backends may skip a zero-bias pass when the input has no negatives
_positive.positive_part = True   # ... and take the input itself as its positive part


def _param_positive(p: Any, name: str, ops: Any) -> Any:
    return ops.clamp(p, lo=0.0)


def _param_negative(p: Any, name: str, ops: Any) -> Any:
    return ops.clamp(p, hi=0.0)


class Rule:
    """Base class. Subclasses are frozen dataclasses: hashable, equal by value (a
    composite is a cache key of the backends)."""

    kind = "none"

    @property
    def name(self) -> str:
        return type(self).__name__


# ------------------------------------------------------------------ basic (LRP) rules

class BasicRule(Rule):
    """A rule of the BasicHook form (see the module docstring)."""

    kind = "basic"
    #: False for rules that use no weights (Norm): any linear layer, pooling or sum.
    needs_params = True

    def passes(self) -> list[tuple[Callable, Callable]]:
        """[(input modifier (x, ops) -> x', param modifier (p, name, ops) -> p'), ...];
        name is "weight" or "bias"."""
        return [(_same, _keep)]

    def mapper(self, out_grad: Any, outputs: list, ops: Any) -> list:
        """Output gradients, one per pass (None: that pass gets none)."""
        raise NotImplementedError

    def reduce(self, inputs: list, grads: list, ops: Any) -> Any:
        """Relevance at the input from the passes' inputs and input gradients."""
        return inputs[0] * grads[0]

    def sign_groups(self) -> list["SignGroup"] | None:
        """The same rule as sign groups (see SignGroup), or None."""
        return None

    def totals_sum(self) -> float | None:
        """k when the two sign groups' totals (stabilisers included) sum to k z (z: the
        layer's output), so that a backend may compute the second as k z - the first
        (one pass fewer); None otherwise."""
        return None


@dataclass(frozen=True)
class SignGroup:
    """Two passes of a sign-split rule: ``T = f(x+; pos(w, b)) + f(x-; neg(w), 0)``.
    ``sign`` is the sign T has wherever it matters (+1: T >= 0, so stabilize(T) =
    T + eps; -1: T <= 0 or the group's contributions vanish where T = 0), ``select``
    restricts the group to outputs with z > 0 (">") or z < 0 ("<") (z: the layer's own
    output), ``coef`` scales it. The relevance at the input is
    ``x+ * sum_k f'(coef_k g_k; pos_k(w)) + x- * sum_k f'(coef_k g_k; neg_k(w))`` with
    ``g_k = R / (T_k + sign_k eps)`` (zero outside ``select``)."""

    pos: Callable
    neg: Callable
    coef: float = 1.0
    select: str | None = None
    sign: int = 1


@dataclass(frozen=True)
class Epsilon(BasicRule):
    """LRP-epsilon: R_i = x_i * sum_j w_ij R_j / (z_j + eps sign z_j). epsilon=0: LRP-0."""

    epsilon: float = 1e-6

    def mapper(self, out_grad, outputs, ops):
        return [out_grad / stabilize(outputs[0], self.epsilon, ops)]


@dataclass(frozen=True)
class Norm(Epsilon):
    """Epsilon with a stabiliser only, for layers without weights: average pooling and
    residual sums (each addend gets relevance in proportion to its contribution)."""

    needs_params = False


@dataclass(frozen=True)
class ZPlus(BasicRule):
    """LRP-z+ (alpha=1, beta=0): only positive contributions x+ w+ and x- w- count."""

    stabilizer: float = 1e-6

    def passes(self):
        return [(_positive, _param_positive), (_negative, _zero_bias(_param_negative))]

    def mapper(self, out_grad, outputs, ops):
        g = out_grad / stabilize(outputs[0] + outputs[1], self.stabilizer, ops)
        return [g, g]

    def reduce(self, inputs, grads, ops):
        return inputs[0] * grads[0] + inputs[1] * grads[1]

    def sign_groups(self):
        return [SignGroup(_param_positive, _param_negative)]   # x+ w+ + x- w- >= 0


@dataclass(frozen=True)
class AlphaBeta(BasicRule):
    """LRP-alpha-beta: alpha times the positive minus beta times the negative
    contributions, each normalised by its own total (alpha - beta = 1)."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError("alpha-beta needs alpha, beta >= 0 and alpha - beta = 1")

    def passes(self):
        return [(_positive, _param_positive), (_negative, _zero_bias(_param_negative)),
                (_positive, _param_negative), (_negative, _zero_bias(_param_positive))]

    def mapper(self, out_grad, outputs, ops):
        pos = out_grad / stabilize(outputs[0] + outputs[1], self.stabilizer, ops)
        neg = out_grad / stabilize(outputs[2] + outputs[3], self.stabilizer, ops)
        return [pos, pos, neg, neg]

    def reduce(self, inputs, grads, ops):
        return (self.alpha * (inputs[0] * grads[0] + inputs[1] * grads[1])
                - self.beta * (inputs[2] * grads[2] + inputs[3] * grads[3]))

    def sign_groups(self):
        # the negative group is <= 0; where it is exactly 0 every x w term and the bias
        # are 0, so its stabiliser's sign changes nothing
        return [SignGroup(_param_positive, _param_negative, self.alpha),
                SignGroup(_param_negative, _param_positive, -self.beta, sign=-1)]


@dataclass(frozen=True)
class Gamma(BasicRule):
    """Generalised LRP-gamma: positive weights boosted by gamma (for positive outputs;
    negative ones for negative outputs), which favours positive evidence."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def _boost(self, lo, hi, zero_bias):
        g = self.gamma

        def param(p, name, ops):
            if zero_bias and name == "bias":
                return ops.zeros_like(p)
            return p + g * ops.clamp(p, lo=lo, hi=hi)
        param.zero_bias = zero_bias
        return param

    def passes(self):
        boost = self._boost
        return [(_positive, boost(0.0, None, False)), (_negative, boost(None, 0.0, True)),
                (_positive, boost(None, 0.0, False)), (_negative, boost(0.0, None, True)),
                (_same, _keep)]

    def sign_groups(self):
        # the positive group is z plus gamma times non-negative terms: > 0 where z > 0
        up, down = self._boost(0.0, None, False), self._boost(None, 0.0, False)
        return [SignGroup(up, down, select=">"), SignGroup(down, up, select="<", sign=-1)]

    def totals_sum(self):
        # up(p) + down(p) = (2 + gamma) p for weights and biases; the stabilisers +eps and
        # -eps cancel. Where each group is used (its selection) neither total is small
        # against the other (|ratio| <= (1 + gamma) / gamma): the difference loses little
        return 2.0 + self.gamma

    def mapper(self, out_grad, outputs, ops):
        zero = ops.zeros_like(out_grad)
        pos = ops.where(outputs[4] > 0, out_grad / stabilize(outputs[0] + outputs[1], self.stabilizer, ops), zero)
        neg = ops.where(outputs[4] < 0, out_grad / stabilize(outputs[2] + outputs[3], self.stabilizer, ops), zero)
        return [pos, pos, neg, neg, None]

    def reduce(self, inputs, grads, ops):
        return sum(inputs[k] * grads[k] for k in range(4))


@dataclass(frozen=True)
class ZBox(BasicRule):
    """LRP-z^B for the input layer of bounded pixels: ``low`` / ``high`` are the lowest
    and highest model-input values per input channel (preprocessed 0 and 255)."""

    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (1.0,)
    stabilizer: float = 1e-6

    def passes(self):
        low, high = self.low, self.high

        def lowest(x, ops):
            return ops.per_channel(low, x)

        def highest(x, ops):
            return ops.per_channel(high, x)
        lowest.constant = highest.constant = True
        return [(_same, _keep), (lowest, _param_positive), (highest, _param_negative)]

    def mapper(self, out_grad, outputs, ops):
        g = out_grad / stabilize(outputs[0] - outputs[1] - outputs[2], self.stabilizer, ops)
        return [g, g, g]

    def reduce(self, inputs, grads, ops):
        return inputs[0] * grads[0] - inputs[1] * grads[1] - inputs[2] * grads[2]


def _ones(t: Any, ops: Any) -> Any:
    return ops.ones_like(t)


_ones.constant = True   # depends on the input's shape only: backends may cache the pass


@dataclass(frozen=True)
class WSquare(BasicRule):
    """LRP-w^2: relevance spread in proportion to the squared weights (input-independent)."""

    stabilizer: float = 1e-6

    def passes(self):
        return [(_ones, lambda p, name, ops: p * p)]

    def mapper(self, out_grad, outputs, ops):
        return [out_grad / stabilize(outputs[0], self.stabilizer, ops)]

    def reduce(self, inputs, grads, ops):
        return grads[0]


@dataclass(frozen=True)
class Flat(BasicRule):
    """LRP-flat: relevance spread uniformly over each output's receptive field."""

    stabilizer: float = 1e-6

    def passes(self):
        return [(_ones, _zero_bias(lambda p, name, ops: ops.ones_like(p)))]

    def mapper(self, out_grad, outputs, ops):
        return [out_grad / stabilize(outputs[0], self.stabilizer, ops)]

    def reduce(self, inputs, grads, ops):
        return grads[0]


# ------------------------------------------------------------------ elementwise rules

class ElementwiseRule(Rule):
    kind = "elementwise"
    #: True: applies to ReLU-like activations only (others are reported as unapplied)
    needs_relu = False

    def backward(self, dy: Any, x: Any, act: ActSpec | None, ops: Any) -> Any:
        """Signal below the activation, or None when the rule does not apply to it."""
        raise NotImplementedError


@dataclass(frozen=True)
class Pass(ElementwiseRule):
    """The signal passes unchanged (LRP: activations, an unmerged BatchNorm)."""

    def backward(self, dy, x, act, ops):
        return dy


@dataclass(frozen=True)
class GuidedReLU(ElementwiseRule):
    """Guided backpropagation: dy * [dy > 0] * f'(x), on ReLU-like activations only."""

    needs_relu = True

    def backward(self, dy, x, act, ops):
        if act is None:
            return None
        zero = ops.zeros_like(dy)
        g = ops.clamp(dy, lo=0.0)           # dy * [dy > 0], as Deconvnet
        # f'(x): 1 above the threshold, the slope below it (0 for ReLU, leaky otherwise)
        g = ops.where(x > act.threshold, g, zero if act.slope == 0.0 else g * act.slope)
        if act.upper != float("inf"):
            g = ops.where(x < act.upper, g, zero)
        return g


@dataclass(frozen=True)
class Deconvnet(ElementwiseRule):
    """Deconvnet: dy * [dy > 0]; the activation's derivative is ignored."""

    needs_relu = True

    def backward(self, dy, x, act, ops):
        if act is None:
            return None
        return ops.clamp(dy, lo=0.0)        # dy * [dy > 0] in one op (a third of a where + zeros)


# ------------------------------------------------------------------ framework-coded rules

@dataclass(frozen=True)
class Gate(Rule):
    """Signal-take-all for ``y = a * g`` with a broadcast gate g ([N, C, 1, 1] attention,
    squeeze-excite): all relevance goes to the operand of the output's shape, none to the
    gate (Arras et al. 2017's rule for multiplicative gates)."""

    kind = "gate"


@dataclass(frozen=True)
class StridedFix(Rule):
    """Deconvnet's strided-artefact fix (Oramas et al. 2019): a convolution with stride
    s > 1 back-projects the signal resized (nearest) to its stride-1 output size with
    stride 1, instead of inserting zeros."""

    kind = "strided-fix"
