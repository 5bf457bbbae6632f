"""DriveSceneParts: the parts detection module (Harada et al. 2020) on drivescene-seg's backbone.

The frozen MobileNetV2 blocks ``features.0`` .. ``features.13`` of drivescene-seg (the
same weights) feed a small decoder that upsamples stepwise, like a segmentation decoder,
so part masks come out sharp at the input resolution::

    d16 = relu(conv3x3(f16))                         features.13, stride 16, 96 ch
    d16 = relu(conv3x3_dilated(d16)) per CONTEXT     dilations 2, 4: context (whose pole is it?)
    d8  = relu(conv3x3(concat(up2(d16), f8)))        skip features.6,  stride 8, 32 ch
    d4  = relu(conv3x3(concat(up2(d8),  f4)))        skip features.3,  stride 4, 24 ch
    d2  = relu(conv3x3(concat(up2(d4),  f2)))        skip features.1,  stride 2, 16 ch
    d1  = relu(conv3x3(concat(up2(d2),  x)))         skip: the input itself, stride 1, 3 ch
    out = conv1x1(d1)                                part logits [N, K, H, W]

The dilated stride-16 convolutions widen the view (a pole pixel far below its sign or
traffic light); the input skip (the preprocessed RGB at full resolution) gives the last step pixel-sharp
edges for thin and small parts (poles, arms, lamps, plates) that the stride-2 taps blur.

``up2`` is nearest-neighbour x2 (Keras ``UpSampling2D(2)`` is the same operation, so the
Keras port `neuroscope.archs.drivescene_parts_keras` matches exactly). Input sides must
be multiples of 16. K = `neuroscope.synth.parts.NUM_PARTS` (part 0 = no part).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from neuroscope.archs.drivescene import DEEP_BLOCK, DriveSceneSeg

#: Backbone taps (block index -> channels) from stride 2 to stride 16.
TAPS = {1: 16, 3: 24, 6: 32, DEEP_BLOCK: 96}
#: Decoder widths at strides 16, 8, 4, 2.
WIDTHS = (96, 64, 32, 16)
#: Dilations of the context convolutions at stride 16 (after d16, width WIDTHS[0]).
CONTEXT = (2, 4)
#: Width of the full-resolution step (upsampled d2 + the input RGB).
FULL_WIDTH = 16


class PartsDecoder(nn.Module):
    """Stepwise x2 upsampling + 3x3 convolutions with skip connections."""

    def __init__(self, num_parts: int):
        super().__init__()
        w16, w8, w4, w2 = WIDTHS
        self.d16 = nn.Conv2d(TAPS[DEEP_BLOCK], w16, 3, padding=1)
        self.ctx = nn.ModuleList(nn.Conv2d(w16, w16, 3, padding=d, dilation=d) for d in CONTEXT)
        self.ctx_relu = nn.ModuleList(nn.ReLU() for _ in CONTEXT)
        self.d8 = nn.Conv2d(w16 + TAPS[6], w8, 3, padding=1)
        self.d4 = nn.Conv2d(w8 + TAPS[3], w4, 3, padding=1)
        self.d2 = nn.Conv2d(w4 + TAPS[1], w2, 3, padding=1)
        self.d1 = nn.Conv2d(w2 + 3, FULL_WIDTH, 3, padding=1)
        self.out = nn.Conv2d(FULL_WIDTH, num_parts, 1)
        self.relu16, self.relu8, self.relu4, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.relu1 = nn.ReLU()

    def context(self, f16: torch.Tensor) -> torch.Tensor:
        """The stride-16 step: d16 and the dilated context convolutions."""
        h = self.relu16(self.d16(f16))
        for conv, relu in zip(self.ctx, self.ctx_relu):
            h = relu(conv(h))
        return h

    def forward(self, x, f2, f4, f8, f16, h16=None):
        """``x``: the module's (preprocessed) input; ``f2`` .. ``f16``: its backbone taps;
        ``h16``: `context(f16)` when already computed (training computes it on whole scenes
        and crops it)."""
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        h = self.context(f16) if h16 is None else h16
        h = self.relu8(self.d8(torch.cat([up(h), f8], 1)))
        h = self.relu4(self.d4(torch.cat([up(h), f4], 1)))
        h = self.relu2(self.d2(torch.cat([up(h), f2], 1)))
        h = self.relu1(self.d1(torch.cat([up(h), x], 1)))
        return self.out(h)


class DriveSceneParts(nn.Module):
    """``features`` (frozen drivescene-seg blocks 0..13) -> ``decoder`` -> part logits."""

    def __init__(self, num_parts: int):
        super().__init__()
        self.features = DriveSceneSeg().features
        self.decoder = PartsDecoder(num_parts)
        self.num_parts = num_parts
        for p in self.features.parameters():
            p.requires_grad_(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features at strides 2, 4, 8, 16."""
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x, *self.taps(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: BatchNorm keeps drivescene-seg's statistics
        return self


def drivescene_parts(backbone: str | os.PathLike, decoder: str | os.PathLike | None = None,
                     num_parts: int | None = None) -> DriveSceneParts:
    """Build the module: backbone weights from a drivescene-seg state dict, decoder weights
    (a state dict of ``decoder.*``) when given. Eval mode, float32."""
    from neuroscope.synth.parts import NUM_PARTS
    model = DriveSceneParts(num_parts or NUM_PARTS)
    state = torch.load(os.fspath(backbone), map_location="cpu", weights_only=True)
    feats = {k[len("features."):]: v.float() if v.is_floating_point() else v
             for k, v in state.items() if k.startswith("features.")}
    model.features.load_state_dict(feats, strict=True)
    if decoder is not None:
        dec = torch.load(os.fspath(decoder), map_location="cpu", weights_only=True)
        dec = {k.removeprefix("decoder."): v.float() for k, v in dec.items()}
        model.decoder.load_state_dict(dec, strict=True)
    return model.eval()
