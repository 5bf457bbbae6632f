"""DriveSceneSeg in Keras 3, built from built-in layers with the torch module names.

The twin of `neuroscope.archs.drivescene`: MobileNetV2 blocks ``features.0`` ..
``features.13`` (from `neuroscope.convert`'s builders), then the LR-ASPP head
``head.cbr.0/1/2``, ``head.scale.0/1/2`` (global average pool, 1x1 conv, sigmoid),
``head.low_classifier`` and ``head.high_classifier``. Layers torch has no module for:
``head.gate`` (the attention product), ``head.upsample`` (x2 to the stride-8 skip),
``head`` (the Add: the torch head's output) and ``upsample`` (x8 to the input size).
Upsampling is ``UpSampling2D(interpolation="bilinear")``, which equals torch's
``interpolate(..., align_corners=False)`` when the input sides are multiples of 16
(then every resize is an exact integer factor).

Only built-in layers: the saved ``.keras`` file loads with
``keras.saving.load_model(path, safe_mode=True)`` and no custom objects.
"""
from __future__ import annotations

import keras

from neuroscope.archs.drivescene import DEEP_BLOCK, HEAD_CHANNELS, SKIP_BLOCK
from neuroscope.archs.mobilenet_v2 import FIRST_CHANNELS, INVERTED_RESIDUAL_SETTING
from neuroscope.convert import BN_EPSILON, keras_conv_bn_relu, keras_inverted_residual

#: Output stride of the skip (stride-8) and deep (stride-16) taps.
SKIP_STRIDE, DEEP_STRIDE = 8, 16


def keras_drivescene_seg(num_classes: int = 19, input_shape: tuple = (None, None, 3),
                         name: str = "drivescene_seg") -> keras.Model:
    """The untrained Keras DriveSceneSeg (fill it with `neuroscope.convert.copy_torch_weights`).
    Input: channels-last normalised RGB; output: logits [N, H, W, num_classes]."""
    inputs = keras.Input(shape=input_shape, name="input")
    x = keras_conv_bn_relu(inputs, FIRST_CHANNELS, "features.0", kernel_size=3, stride=2)
    in_ch, i, low = FIRST_CHANNELS, 1, None
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for j in range(n):
            if i > DEEP_BLOCK:
                break
            x = keras_inverted_residual(x, in_ch, c, s if j == 0 else 1, t, f"features.{i}")
            if i == SKIP_BLOCK:
                low = x
            in_ch, i = c, i + 1
    high = x
    a = keras.layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="head.cbr.0")(high)
    a = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="head.cbr.1")(a)
    a = keras.layers.ReLU(name="head.cbr.2")(a)
    g = keras.layers.GlobalAveragePooling2D(keepdims=True, name="head.scale.0")(high)
    g = keras.layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="head.scale.1")(g)
    g = keras.layers.Activation("sigmoid", name="head.scale.2")(g)
    x = keras.layers.Multiply(name="head.gate")([a, g])
    x = keras.layers.UpSampling2D(DEEP_STRIDE // SKIP_STRIDE, interpolation="bilinear", name="head.upsample")(x)
    lo = keras.layers.Conv2D(num_classes, 1, name="head.low_classifier")(low)
    hi = keras.layers.Conv2D(num_classes, 1, name="head.high_classifier")(x)
    out = keras.layers.Add(name="head")([lo, hi])
    out = keras.layers.UpSampling2D(SKIP_STRIDE, interpolation="bilinear", name="upsample")(out)
    return keras.Model(inputs, out, name=name)
