"""The roofsign-an8 classifier: a small plain CNN for the an8 set (`neuroscope.synth.an8`),
in torch and as its Keras twin with the same layer names (weights copied by name with
`neuroscope.convert.copy_torch_weights`).

    features.0  conv 3->16, 3x3          features.1 BN   features.2 ReLU    (stride 1)
    features.3  conv 16->32, 3x3, s2     features.4 BN   features.5 ReLU    (stride 2)
    features.6  conv 32->64, 3x3, s2     features.7 BN   features.8 ReLU    (stride 4)
    features.9  conv 64->64, 3x3         features.10 BN  features.11 ReLU   (stride 4)
    features.12 conv 64->128, 3x3, s2    features.13 BN  features.14 ReLU   (stride 8)
    pool (global MAX: the class is one small part somewhere) -> fc 128 -> 4
"""
from __future__ import annotations

import os

import torch
from torch import nn

CHANNELS = ((3, 16, 1), (16, 32, 2), (32, 64, 2), (64, 64, 1), (64, 128, 2))


class An8Net(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        layers = []
        for cin, cout, stride in CHANNELS:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(CHANNELS[-1][1], num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def an8_net(num_classes: int = 4, weights: str | os.PathLike | None = None) -> nn.Module:
    model = An8Net(num_classes)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def keras_an8_net(num_classes: int = 4, input_shape: tuple = (96, 96, 3)):
    """The Keras twin (built-in layers only: loads with safe_mode=True)."""
    import keras
    L = keras.layers
    x = inp = keras.Input(input_shape, name="input")
    for i, (_, cout, stride) in enumerate(CHANNELS):
        if stride == 1:
            x = L.Conv2D(cout, 3, padding="same", use_bias=False, name=f"features.{3 * i}")(x)
        else:   # torch's padding=1 with stride 2: pad both sides, then a valid conv
            x = L.ZeroPadding2D(1, name=f"features.{3 * i}.pad")(x)
            x = L.Conv2D(cout, 3, strides=stride, use_bias=False, name=f"features.{3 * i}")(x)
        x = L.BatchNormalization(epsilon=1e-5, name=f"features.{3 * i + 1}")(x)
        x = L.ReLU(name=f"features.{3 * i + 2}")(x)
    x = L.GlobalMaxPooling2D(name="pool")(x)
    x = L.Dense(num_classes, name="fc")(x)
    return keras.Model(inp, x, name="an8_parts")
