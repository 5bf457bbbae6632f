"""The backend contract: everything an explanation method needs from a framework.

Methods are written once against this protocol; `torch_backend` and `keras_backend`
implement it. All arrays crossing this boundary are numpy float32, images are
channels-last ``[N, H, W, 3]`` *preprocessed* model inputs (see `neuroscope.images`),
feature maps are channels-first ``[K, h, w]`` without the batch dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

#: Backward rules: `Backend.capture(rule=...)` / `input_gradients(rule=...)` take a
#: `neuroscope.propagation.Composite` (rules, composites and canonizers as objects; see
#: docs/architecture.md) or one of these strings, shorthands for the composites
#: `propagation.LEGACY_RULES` (GUIDED, DECONVNET, DECONVNET_FIXED). A backend also offers
#: ``unapplied(rule) -> {activation type: count}``: activations the composite has no rule
#: for (e.g. SiLU under guided backprop), which keep their plain gradient (warn about them).
#: "guided": dy * [dy > 0] * f'(x)   (guided backpropagation)
#: "deconvnet": dy * [dy > 0]         (deconvnet; f'(x) ignored)
RULES = ("guided", "deconvnet")

#: Rules a backend MAY offer beyond RULES; it lists what it implements in its ``rules``
#: attribute (absent = RULES only), and methods check there before asking for one.
#: "deconvnet-fixed": "deconvnet", and every convolution with stride s > 1 back-projects
#: the top signal resized (nearest) to its stride-1 output size with stride 1, instead of
#: inserting zeros (the strided-artefact fix of Oramas et al. 2019, METHODS.md §2).
OPTIONAL_RULES = ("deconvnet-fixed",)


@dataclass(frozen=True)
class LayerInfo:
    """One layer (module) whose output can be captured."""

    name: str                                  # torch: module path; keras: layer name ("name#k" for reuse k>0)
    type: str                                  # class name, e.g. "Conv2d", "ReLU6"
    shape: tuple[int, ...] | None              # output shape channels-first, no batch dim ([C,H,W] or [C]); None if not a tensor
    spatial: bool                              # output has H >= 2 and W >= 2
    stride: int | None                         # round(input H / output H) for spatial layers, else None


@dataclass(frozen=True)
class Objective:
    """The scalar being explained, in framework-neutral form.

    logit form:  y = sum_c class_weights[c] * sum_p mask[p] * z[c, p]
    prob  form:  y = sum_c class_weights[c] * sum_p mask[p] * P[c, p] / sum_p mask[p]
    where z are the model's logits (log of its output when the model outputs
    probabilities) and P = softmax(z) over the class axis. For classification
    ``mask`` is None and the sums over p vanish. ``mask`` is float32 [h, w] at the
    resolution of the model output (= model input size; backends upsample a coarser
    segmentation output bilinearly before applying it).
    """

    class_weights: np.ndarray                  # float32 [C]: +1 for the class, -1 for a contrast class
    mask: np.ndarray | None = None             # float32 [h, w] region weights (segmentation)


@dataclass
class Capture:
    """Result of ONE forward + ONE backward pass (see `Backend.capture`)."""

    output: np.ndarray                         # logits of the input, [C] or [C, H, W]
    score: float                               # objective (logit form) at the input
    activations: dict[str, np.ndarray] = field(default_factory=dict)   # name -> [K, h, w] (or [K])
    gradients: dict[str, np.ndarray] = field(default_factory=dict)     # name -> d score / d activation, same shape
    input_grad: np.ndarray | None = None       # d score / d input, [H, W, 3]
    # Optional: per-channel means of the spatial gradients, name -> [K], computed by the
    # backend while each gradient is fresh (Grad-CAM's weights; a layer sweep needs no
    # second read of ~260 MB of gradients). Methods fall back to computing them.
    gradient_means: dict[str, np.ndarray] = field(default_factory=dict)


class Backend(Protocol):
    """What every framework adapter provides. Implementations must be thread-safe:
    a Streamlit server calls one backend from many threads at once, and every hook or
    gradient override a call installs must act only for that call and be removed even
    when it raises."""

    framework: str                             # "torch" | "keras"
    device: str                                # e.g. "cpu", "cuda:0", "/GPU:0"
    input_size: tuple[int, int]                # (H, W) the model is run at
    task: str                                  # "classification" | "segmentation"

    def layers(self) -> list[LayerInfo]:
        """All capturable layers in execution order (order outputs are produced)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch x [N, H, W, 3]: [N, C] or [N, C, H, W]. No gradients."""

    def scores(self, x: np.ndarray, objective: Objective, kind: str = "logit") -> np.ndarray:
        """Objective value per batch item, [N]; kind "logit" or "prob" (see Objective)."""

    def capture(self, x: np.ndarray, objective: Objective, layers: Sequence[str] = (),
                input_grad: bool = True, rule: str | None = None, gradients: bool = True) -> Capture:
        """ONE forward pass of x [1, H, W, 3] recording the outputs of `layers`, and ONE
        backward pass of the objective (logit form) giving their gradients and, if
        asked, the input gradient. `objective` may also be a callable taking the
        logits of this forward pass ([C] or [C, H, W] numpy) and returning the
        Objective: the target is then decided without a second forward pass. `rule` (a
        Composite or a RULES string) applies its rules to the backward for this call only;
        under an LRP composite the backward signal is relevance, so `gradients[layer]` is
        the relevance at that layer's output and `input_grad` the input relevance.
        `gradients=False`: the caller reads only `gradient_means` (zeros for a layer the
        objective does not depend on); the backend may then leave `gradients` empty and
        free each layer gradient as soon as the backward is past it."""

    def input_gradients(self, x: np.ndarray, objective: Objective,
                        rule: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batched input gradients: (grads [N, H, W, 3], scores [N]) of the objective
        (logit form) for each item of x [N, H, W, 3]."""

    # Optional (methods check with hasattr and fall back, or say the backend lacks it):
    #
    # def forward_from(self, layer: str, activations: np.ndarray,
    #                  x: np.ndarray | None = None) -> np.ndarray:
    #     """Logits [N, C] or [N, C, H, W] of the model continued from `layer`, whose
    #     output is replaced by `activations` [N, K, h, w] (channels-first, one per item).
    #     Where the graph has a sequential cut at `layer`, only the layers above it run;
    #     otherwise the backend re-runs the full forward of `x` [1, H, W, 3] (the input
    #     the activations came from) with the layer's output replaced, for this call only.
    #     `can_cut(layer)` tells which of the two happens."""
    #
    # def scores_from(self, layer: str, activations: np.ndarray, objective: Objective,
    #                 kind: str = "logit", x: np.ndarray | None = None) -> np.ndarray:
    #     """Objective per item, [N], of `forward_from`'s logits (see `scores`)."""
    #
    # def can_cut(self, layer: str) -> bool:
    #     """True when `forward_from(layer, ...)` runs only the layers above `layer`."""
