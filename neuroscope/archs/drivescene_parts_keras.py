"""DriveSceneParts in Keras 3: the twin of `neuroscope.archs.drivescene_parts`, torch layer names.

Backbone blocks ``features.0`` .. ``features.13`` (`neuroscope.convert`'s builders), decoder
``decoder.d16`` / ``ctx.j`` (dilated) / ``d8`` / ``d4`` / ``d2`` / ``d1`` (3x3 Conv2D, "same" padding = torch's
padding 1 at stride 1), ``decoder.out`` (1x1), ``decoder.relu*``, ``decoder.up*`` (``UpSampling2D(2)``, nearest:
the same operation as torch's ``interpolate(scale_factor=2, mode="nearest")``) and
``decoder.cat*`` (Concatenate on channels, upsampled first, as torch's ``cat``; ``cat1``
joins the input itself). Only
built-in layers: loads with ``keras.saving.load_model(path, safe_mode=True)``.
"""
from __future__ import annotations

import keras

from neuroscope.archs.drivescene import DEEP_BLOCK
from neuroscope.archs.drivescene_parts import CONTEXT, FULL_WIDTH, TAPS, WIDTHS
from neuroscope.archs.mobilenet_v2 import FIRST_CHANNELS, INVERTED_RESIDUAL_SETTING
from neuroscope.convert import keras_conv_bn_relu, keras_inverted_residual


def keras_drivescene_parts(num_parts: int, input_shape: tuple = (None, None, 3),
                           name: str = "drivescene_parts") -> keras.Model:
    """The untrained Keras parts module (fill it with `neuroscope.convert.copy_torch_weights`).
    Input: channels-last normalised RGB; output: part logits [N, H, W, num_parts]."""
    inputs = keras.Input(shape=input_shape, name="input")
    x = keras_conv_bn_relu(inputs, FIRST_CHANNELS, "features.0", kernel_size=3, stride=2)
    in_ch, i, taps = FIRST_CHANNELS, 1, []
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for j in range(n):
            if i > DEEP_BLOCK:
                break
            x = keras_inverted_residual(x, in_ch, c, s if j == 0 else 1, t, f"features.{i}")
            if i in TAPS:
                taps.append(x)
            in_ch, i = c, i + 1
    f2, f4, f8, f16 = taps
    conv = lambda w, n, k=3: keras.layers.Conv2D(w, k, padding="same", name=f"decoder.{n}")  # noqa: E731
    relu = lambda n: keras.layers.ReLU(name=f"decoder.relu{n}")  # noqa: E731
    up = lambda n: keras.layers.UpSampling2D(2, name=f"decoder.up{n}")  # noqa: E731
    cat = lambda n: keras.layers.Concatenate(axis=-1, name=f"decoder.cat{n}")  # noqa: E731
    w16, w8, w4, w2 = WIDTHS
    x = relu(16)(conv(w16, "d16")(f16))
    for j, d in enumerate(CONTEXT):
        x = keras.layers.Conv2D(w16, 3, padding="same", dilation_rate=d, name=f"decoder.ctx.{j}")(x)
        x = keras.layers.ReLU(name=f"decoder.ctx_relu.{j}")(x)
    x = relu(8)(conv(w8, "d8")(cat(8)([up(8)(x), f8])))
    x = relu(4)(conv(w4, "d4")(cat(4)([up(4)(x), f4])))
    x = relu(2)(conv(w2, "d2")(cat(2)([up(2)(x), f2])))
    x = relu(1)(conv(FULL_WIDTH, "d1")(cat(1)([up(1)(x), inputs])))
    out = conv(num_parts, "out", 1)(x)
    return keras.Model(inputs, out, name=name)
