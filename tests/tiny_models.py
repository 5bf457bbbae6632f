"""Tiny torch models with known answers, shared by the engine tests."""
from __future__ import annotations

import torch
from torch import nn


class QuadrantNet(nn.Module):
    """Class 1's logit depends only on the top-left quadrant; class 0's on nothing spatial."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.fill_(0.0)
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1] = 1.0

    def forward(self, x):
        h, w = x.shape[-2:]
        mask = torch.zeros_like(x[:, :1])
        mask[..., : h // 2, : w // 2] = 1.0
        a = self.relu(self.conv(x * mask))
        return self.fc(torch.flatten(self.pool(a), 1))


class LinearNet(nn.Module):
    """logits = W · flatten(x): saliency of class c must equal W[c]."""

    def __init__(self, h: int, w: int, classes: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * h * w, classes, bias=True)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, 3 * h * w, generator=g))

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


class TinySegNet(nn.Module):
    """Small fully convolutional segmenter with residual + in-place ReLUs, dict output."""

    def __init__(self, classes: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(8, classes, 1)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        a = self.stem(x)
        b = self.block(a)
        b += a  # in-place residual: the engine must still capture `block` correctly
        out = self.head(self.act(b))
        return {"out": nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False),
                "aux": out}


def tiny_seg_net(num_classes: int = 4) -> nn.Module:
    """Factory for spec files in tests/fixtures (architecture = "tiny_models:tiny_seg_net")."""
    return TinySegNet(classes=num_classes)
