"""Torch -> Keras 3 conversion: MobileNetV2 rebuilt from built-in Keras layers, weights copied by name.

The Keras port is the SAME network as `neuroscope.archs.mobilenet_v2` (numerically equal
to ~1e-5 on real photos) and its layers carry the torch module names, so a layer name
means the same tensor in both frameworks (CONTRACT.md §3 `layers`):

- ``features.0.0`` Conv2D, ``features.0.1`` BatchNormalization, ``features.0.2`` ReLU(6),
  ``features.N.conv.K.0`` / ``.1`` / ``.2`` inside inverted residual N, ``pool``
  (global average, kept as [1, 1, C] like torch's ``AdaptiveAvgPool2d``), ``flatten``,
  ``classifier.0`` Dropout, ``classifier.1`` Dense.
- Layers torch does not have: ``input``; ``<conv>.pad``, a ZeroPadding2D before every
  stride-2 3x3 conv (torch pads 1 pixel on every side, Keras ``"same"`` pads only
  bottom/right at stride 2); and the residual Add of block N, named ``features.N``
  because it produces exactly what torch's ``features.N`` module returns.
- Dots in layer names are accepted by Keras 3.15 and survive ``.keras`` save/load.
- Only built-in layers, so ``keras.saving.load_model(path, safe_mode=True)`` needs no
  custom objects.

Reusing the backbone (e.g. a segmentation net)::

    x = keras.Input((None, None, 3), name="input")
    feats = keras_mobilenet_v2_features(x, prefix="features")
    # feats: {"features.0": ..., ..., "features.18": ...} block outputs in execution
    # order; STAGE_ENDS (neuroscope.archs.mobilenet_v2) names the taps per stride,
    # e.g. feats[f"features.{STAGE_ENDS[8]}"] has stride 8.
    ... build the head with layer names equal to the torch module names ...
    copy_torch_weights(torch_net, keras_model)   # matches layers to modules by name

``prefix`` is the torch path of the ``features`` Sequential in the torch net (e.g.
``"backbone.features"``). `copy_torch_weights` handles Conv2d (plain, grouped and
depthwise), BatchNorm2d/1d and Linear; any Keras layer with weights must have a torch
module of the same name, and (``strict``) every torch module with parameters must be
copied.
"""
from __future__ import annotations

import keras
import numpy as np
import torch
from torch import nn

from neuroscope.archs.mobilenet_v2 import (
    FIRST_CHANNELS,
    INVERTED_RESIDUAL_SETTING,
    LAST_CHANNELS,
)

#: torch's BatchNorm default; Keras' default (1e-3) would shift every output slightly.
BN_EPSILON = 1e-5


def keras_conv_bn_relu(x, filters: int, name: str, kernel_size: int = 1, stride: int = 1,
                       depthwise: bool = False, relu: bool = True):
    """Conv (no bias) -> BN [-> ReLU6] with layers ``name.0``, ``name.1``, ``name.2`` —
    the Keras twin of torch's ``ConvBNReLU`` (padding (k - 1) // 2 on every side)."""
    padding = "same"
    if kernel_size > 1 and stride > 1:
        # Keras "same" is asymmetric at stride 2; pad like torch, then convolve "valid".
        p = (kernel_size - 1) // 2
        x = keras.layers.ZeroPadding2D(((p, p), (p, p)), name=f"{name}.0.pad")(x)
        padding = "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel_size, stride, padding, use_bias=False, name=f"{name}.0")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, stride, padding, use_bias=False, name=f"{name}.0")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}.1")(x)
    if relu:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}.2")(x)
    return x


def keras_inverted_residual(x, in_ch: int, out_ch: int, stride: int, expand_ratio: int, name: str):
    """Inverted residual block ``name`` (torch's ``InvertedResidual``): layers
    ``name.conv.K.*``; with a residual, the Add is named ``name`` (the block's output)."""
    hidden = int(round(in_ch * expand_ratio))
    y = x
    k = 0
    if expand_ratio != 1:
        y = keras_conv_bn_relu(y, hidden, f"{name}.conv.{k}", kernel_size=1)
        k += 1
    y = keras_conv_bn_relu(y, hidden, f"{name}.conv.{k}", kernel_size=3, stride=stride, depthwise=True)
    # The projection is conv + BN without activation; torch numbers them conv.{k+1}, conv.{k+2}.
    y = keras.layers.Conv2D(out_ch, 1, use_bias=False, name=f"{name}.conv.{k + 1}")(y)
    y = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}.conv.{k + 2}")(y)
    if stride == 1 and in_ch == out_ch:
        y = keras.layers.Add(name=name)([x, y])
    return y


def keras_mobilenet_v2_features(x, prefix: str = "features") -> dict[str, object]:
    """Apply the MobileNetV2 backbone to Keras tensor ``x`` (channels-last RGB,
    normalised like the torch model's input).

    Returns the output of every block, keyed ``f"{prefix}.{i}"`` for i = 0..18 in
    execution order (a dict keeps insertion order); the last entry is the final
    1280-channel feature map at stride 32."""
    out: dict[str, object] = {}
    x = keras_conv_bn_relu(x, FIRST_CHANNELS, f"{prefix}.0", kernel_size=3, stride=2)
    out[f"{prefix}.0"] = x
    in_ch, i = FIRST_CHANNELS, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for j in range(n):
            x = keras_inverted_residual(x, in_ch, c, s if j == 0 else 1, t, f"{prefix}.{i}")
            out[f"{prefix}.{i}"] = x
            in_ch, i = c, i + 1
    x = keras_conv_bn_relu(x, LAST_CHANNELS, f"{prefix}.{i}", kernel_size=1)
    out[f"{prefix}.{i}"] = x
    return out


def keras_mobilenet_v2(num_classes: int = 1000, input_shape: tuple = (224, 224, 3),
                       include_top: bool = True, name: str = "mobilenet_v2") -> keras.Model:
    """MobileNetV2 as a Keras functional model with torch's layer names (untrained;
    fill it with `copy_torch_weights`). Without the top, the output is the final
    feature map and ``input_shape`` may be ``(None, None, 3)``."""
    inputs = keras.Input(shape=input_shape, name="input")
    feats = keras_mobilenet_v2_features(inputs, prefix="features")
    x = list(feats.values())[-1]
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dropout(0.2, name="classifier.0")(x)
        x = keras.layers.Dense(num_classes, name="classifier.1")(x)
    return keras.Model(inputs, x, name=name)


def _leaf_layers(model: keras.Model):
    """All non-model layers, stepping into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _keras_weights_for(module: nn.Module, layer) -> list[np.ndarray]:
    """torch module parameters in the layout of Keras ``layer`` (channels-last)."""
    where = f"layer {layer.name!r}"
    if isinstance(module, nn.Conv2d):
        if tuple(layer.strides) != tuple(module.stride) or tuple(layer.dilation_rate) != tuple(module.dilation):
            raise ValueError(f"{where}: strides/dilation {layer.strides}/{layer.dilation_rate} "
                             f"differ from torch's {module.stride}/{module.dilation}")
        if layer.use_bias != (module.bias is not None):
            raise ValueError(f"{where}: use_bias={layer.use_bias} but torch bias is {module.bias is not None}")
        w = _np(module.weight)                                   # [out, in/groups, kh, kw]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            if module.groups != module.in_channels:
                raise ValueError(f"{where}: DepthwiseConv2D needs groups == in_channels, torch has groups={module.groups}")
            mult = module.out_channels // module.in_channels
            # torch output channel g*mult+m comes from input g: Keras kernel [kh, kw, in, mult].
            kernel = w.reshape(module.in_channels, mult, *w.shape[2:]).transpose(2, 3, 0, 1)
        elif isinstance(layer, keras.layers.Conv2D):
            if getattr(layer, "groups", 1) != module.groups:
                raise ValueError(f"{where}: groups={getattr(layer, 'groups', 1)} but torch has {module.groups}")
            kernel = w.transpose(2, 3, 1, 0)                     # [kh, kw, in/groups, out]
        else:
            raise TypeError(f"{where}: a {type(layer).__name__} cannot take torch Conv2d weights")
        return [kernel] + ([_np(module.bias)] if module.bias is not None else [])
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TypeError(f"{where}: a {type(layer).__name__} cannot take BatchNorm weights")
        if not np.isclose(layer.epsilon, module.eps, rtol=0, atol=1e-12):
            raise ValueError(f"{where}: epsilon {layer.epsilon} differs from torch's {module.eps}")
        if not (module.affine and layer.center and layer.scale and module.track_running_stats):
            raise ValueError(f"{where}: only affine BatchNorm with running statistics is supported")
        return [_np(module.weight), _np(module.bias), _np(module.running_mean), _np(module.running_var)]
    if isinstance(module, nn.Linear):
        if not isinstance(layer, keras.layers.Dense):
            raise TypeError(f"{where}: a {type(layer).__name__} cannot take Linear weights")
        return [_np(module.weight).T] + ([_np(module.bias)] if module.bias is not None else [])
    raise TypeError(f"{where}: no conversion from torch {type(module).__name__}")


def copy_torch_weights(torch_module: nn.Module, keras_model: keras.Model, strict: bool = True) -> list[str]:
    """Copy parameters and BN statistics from ``torch_module`` into ``keras_model``,
    matching Keras layer names to torch module names (nested Keras models flattened).

    Raises ValueError when a Keras layer with weights has no torch twin, when shapes or
    settings (stride, groups, epsilon, bias) disagree, and — with ``strict`` — when a
    torch module with parameters was not copied. Returns the names copied."""
    modules = dict(torch_module.named_modules())
    copied: list[str] = []
    for layer in _leaf_layers(keras_model):
        if not layer.weights:
            continue
        module = modules.get(layer.name)
        if module is None:
            raise ValueError(f"Keras layer {layer.name!r} has weights but the torch model has no module of that name")
        weights = _keras_weights_for(module, layer)
        expected = [tuple(v.shape) for v in layer.weights]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"layer {layer.name!r}: torch weights {[w.shape for w in weights]} do not fit Keras {expected}")
        layer.set_weights(weights)
        copied.append(layer.name)
    if strict:
        done = set(copied)
        left = [n for n, m in modules.items()
                if n not in done and any(True for _ in m.parameters(recurse=False))]
        if left:
            raise ValueError(f"torch modules with parameters not copied (no Keras layer of that name): {left}")
    return copied
