"""DriveSceneSeg: the demo driving-scene segmenter (MobileNetV2 backbone + LR-ASPP head).

The backbone is the ImageNet MobileNetV2 ``features`` (torchvision module names) cut
after block 13, the last block at output stride 16 (96 channels); block 6 (stride 8,
32 channels) feeds the high-resolution skip. The head is LR-ASPP (Howard et al.,
"Searching for MobileNetV3"):

    high = cbr(f16) * scale(f16)          cbr: 1x1 conv-BN-ReLU; scale: global average
                                          pool -> 1x1 conv -> sigmoid (attention)
    logits = low_classifier(f8) + high_classifier(upsample(high) to f8's size)
    out = upsample(logits) to the input size (bilinear, align_corners=False)

Every activation is a module (ReLU6 / ReLU / Sigmoid, none in place) so the
explanation engine's hooks see them. Fully convolutional; the attention pool is a plain
global average, so the Keras port (`neuroscope.archs.drivescene_keras`) matches exactly
for inputs whose sides are multiples of 16.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from neuroscope.archs.mobilenet_v2 import mobilenet_v2

#: Backbone taps: the last block at stride 8 (skip) and at stride 16 (deep features).
SKIP_BLOCK, DEEP_BLOCK = 6, 13
SKIP_CHANNELS, DEEP_CHANNELS = 32, 96
HEAD_CHANNELS = 128


class LRASPPHead(nn.Module):
    """Lite R-ASPP: attention-gated deep features plus a linear stride-8 skip."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=False),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # global average: equal to Keras' GlobalAveragePooling2D
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class DriveSceneSeg(nn.Module):
    """``features`` (MobileNetV2 blocks 0..13) -> ``head`` -> logits [N, C, H, W] at input size."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        backbone = mobilenet_v2()
        # Keep torchvision's names features.0 .. features.13 so ImageNet weights load as is.
        self.features = nn.Sequential(*list(backbone.features.children())[: DEEP_BLOCK + 1])
        self.head = LRASPPHead(SKIP_CHANNELS, DEEP_CHANNELS, num_classes, HEAD_CHANNELS)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = None
        for i, block in enumerate(self.features):
            x = block(x)
            if i == SKIP_BLOCK:
                low = x
        out = self.head(low, x)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def load_imagenet_backbone(model: DriveSceneSeg, path: str | os.PathLike) -> None:
    """Initialise ``model.features`` from torchvision's ImageNet MobileNetV2 state dict."""
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    wanted = {k: v for k, v in state.items()
              if k.startswith("features.") and int(k.split(".")[1]) <= DEEP_BLOCK}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    if unexpected or any(k.startswith("features.") for k in missing):
        raise ValueError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}")


def drivescene_seg(num_classes: int = 19, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build DriveSceneSeg; with ``weights`` (a state-dict file, float16 or float32) load
    it strictly. Returns the model in eval mode, float32."""
    model = DriveSceneSeg(num_classes=num_classes)
    if weights is not None:
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    return model.eval()
