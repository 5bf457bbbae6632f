"""MobileNetV2 in plain torch, module-for-module compatible with torchvision's `mobilenet_v2`.

torchvision does not import beside this project's torch, so the architecture lives here.
Module names match torchvision exactly (``features.0.0`` conv, ``features.0.1`` BN,
``features.0.2`` ReLU6, ``features.N.conv.*`` inverted residuals, ``classifier.1``
Linear), so torchvision's ImageNet state dict loads with ``strict=True``. Every
activation is an ``nn.ReLU6`` module (never a functional call) because the explanation
engine hooks modules. Two parameter-free modules, ``pool`` and ``flatten``, replace
torchvision's functional pooling so that the head shows up as layers too; the Keras port
(`neuroscope.convert`) uses the same names.

For segmentation nets built on the backbone: ``model.features`` is an ``nn.Sequential``
of 19 blocks; `STAGE_ENDS` names the last block at each output stride.
"""
from __future__ import annotations

import os

import torch
from torch import nn

#: (expand ratio t, output channels c, repeats n, first stride s) per stage, as in the paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FIRST_CHANNELS = 32
LAST_CHANNELS = 1280

#: Index into ``features`` of the last block at each output stride (stride -> index):
#: the usual skip-connection taps for a segmentation decoder.
STAGE_ENDS: dict[int, int] = {2: 1, 4: 3, 8: 6, 16: 13, 32: 18}


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6; children named 0, 1, 2 like torchvision's
    ``Conv2dNormActivation``. Padding is (k - 1) // 2 on every side."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=False),  # not inplace: hooks must see the activation unchanged
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear); residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0): ``features`` -> ``pool`` -> ``flatten`` -> ``classifier``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU(3, FIRST_CHANNELS, stride=2)]
        in_ch = FIRST_CHANNELS
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        blocks.append(ConvBNReLU(in_ch, LAST_CHANNELS, kernel_size=1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(LAST_CHANNELS, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained net behaves like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def mobilenet_v2(num_classes: int = 1000, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build MobileNetV2; with ``weights`` (a torchvision-layout state-dict file) load it
    strictly. Returns the model in eval mode."""
    model = MobileNetV2(num_classes=num_classes)
    if weights is not None:
        # weights_only: a state dict needs no code, and this refuses pickled objects.
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
