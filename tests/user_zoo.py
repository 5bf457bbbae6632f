"""Small models of the kinds users bring (issue #15), hand-made analogues of the
torchvision / keras.applications patterns that broke: functional and in-place
activations, softmax / log-softmax / sigmoid heads, grayscale and 4-channel inputs,
batch-of-one reshapes, DeepLab / FCN heads, bare `+` residuals, factories.

Random weights; BatchNorm statistics calibrated on a few images (`calibrate_bn`) so
activations neither vanish nor explode. Everything is tiny: inputs of 16-32 pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIZE = 24


def images(n: int = 4, size: int = SIZE, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random images, uint8 [n, size, size, 3] (structure for CAMs to find)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 6, 6, channels))
    idx = np.minimum((np.arange(size) * 6) // size, 5)
    return coarse[:, idx][:, :, idx].astype(np.uint8)


def calibrate_bn(model: nn.Module, channels: int = 3, size: int = SIZE) -> nn.Module:
    """Sets BatchNorm running statistics from a few random images, then eval mode."""
    x = torch.from_numpy(images(8, size, channels).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None            # cumulative average over the calibration batches
            m.reset_running_stats()
    with torch.no_grad():
        try:
            model(x)
        except RuntimeError:             # batch-of-one models: one image at a time
            for i in range(len(x)):
                model(x[i:i + 1])
    return model.eval()


def seeded(seed: int):
    torch.manual_seed(seed)


class FunctionalReluNet(nn.Module):
    """DenseNet's ending: `F.relu(features, inplace=True)` then bare functional ops, so no
    module runs between the in-place change of `bn2`'s output and its death."""

    def __init__(self, classes: int = 3):
        super().__init__()
        seeded(1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, classes)
        calibrate_bn(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class ActivationNet(nn.Module):
    """conv-bn-act x2 with SiLU / GELU modules (EfficientNet / ConvNeXt style), or
    functional F.relu (no ReLU module at all)."""

    def __init__(self, act: str = "silu", classes: int = 3):
        super().__init__()
        seeded(2)
        self.kind = act
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act1 = {"silu": nn.SiLU(), "gelu": nn.GELU()}.get(act, nn.Identity())
        self.act2 = {"silu": nn.SiLU(), "gelu": nn.GELU()}.get(act, nn.Identity())
        self.fc = nn.Linear(8, classes)
        calibrate_bn(self)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = F.relu(x) if self.kind == "functional" else self.act1(x)
        x = self.bn2(self.conv2(x))
        x = F.relu(x) if self.kind == "functional" else self.act2(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class HeadNet(nn.Module):
    """A classifier ending in a Softmax module (head="softmax"), functional log-softmax
    (the PyTorch MNIST example), a sigmoid (multi-label), or logits."""

    def __init__(self, head: str = "softmax", classes: int = 4, channels: int = 3):
        super().__init__()
        seeded(3)
        self.head = head
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, classes)
        self.softmax = nn.Softmax(dim=1)
        with torch.no_grad():
            self.fc.weight.mul_(4.0)         # logits far enough apart that a 2nd softmax shows
        calibrate_bn(self, channels)

    def logits(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    def forward(self, x):
        z = self.logits(x)
        if self.head == "softmax":
            return self.softmax(z)
        if self.head == "log_softmax":
            return F.log_softmax(z, dim=1)
        if self.head == "sigmoid":
            return torch.sigmoid(z)
        return z


class BatchOfOneNet(nn.Module):
    """Flattens with `reshape(1, -1)`: runs one image at a time, fails on a batch."""

    def __init__(self, classes: int = 3, size: int = 16):
        super().__init__()
        seeded(4)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * (size // 2) ** 2, classes)

    def forward(self, x):
        a = F.relu(self.conv(x))
        return self.fc(a.reshape(1, -1))


class DeepLabLike(nn.Module):
    """torchvision DeepLabV3 / FCN shape: backbone -> classifier (conv-bn-relu, then a
    1x1 conv to the classes), dict output {"out": upsampled logits}. The class-score
    layers (`classifier`, `classifier.3`) are at the output stride, after the features."""

    def __init__(self, num_classes: int = 5, weights_backbone=None, **kwargs):
        super().__init__()
        if weights_backbone is not None:
            raise RuntimeError(f"would download backbone weights {weights_backbone!r} (no internet)")
        seeded(5)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, num_classes, 1))
        calibrate_bn(self)

    def forward(self, x):
        out = self.classifier(self.backbone(x))
        return {"out": F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def deeplab_like(num_classes: int = 21, weights_backbone: str | None = "DEFAULT", **kwargs) -> nn.Module:
    """A torchvision-style segmentation factory: without factory_kwargs it "downloads"."""
    return DeepLabLike(num_classes=num_classes, weights_backbone=weights_backbone)


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 1000, channels: int = 3):
        super().__init__()
        seeded(6)
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, num_classes)
        calibrate_bn(self, channels)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.relu(self.bn(self.conv(x))), 1).flatten(1))


def kwargs_factory(**kwargs) -> nn.Module:
    """torchvision's factories take num_classes through **kwargs."""
    return SmallNet(**kwargs)


class FailingNet(nn.Module):
    """A layer that raises a multi-line framework error when gradients are on."""

    def __init__(self):
        super().__init__()
        seeded(6)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bad = _Bad()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.bad(F.relu(self.conv(x))), 1).flatten(1))


class _Bad(nn.Module):
    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED (pretend)\n  second line of the trace")
        return x


# ------------------------------------------------------------------------- Keras

def keras_head_model(head: str = "softmax", classes: int = 4, channels: int = 3, size: int = SIZE):
    """keras.applications style: conv features, GAP, Dense(classes, activation=head)."""
    import keras
    keras.utils.set_random_seed(7)
    inp = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    dense = keras.layers.Dense(classes, activation=None if head in ("logits", "layer") else head,
                               name="predictions",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=2.0, seed=1))
    x = dense(x)
    if head == "layer":
        x = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inp, x, name=f"keras_{head}")


def keras_residual_model(size: int = SIZE, classes: int = 3):
    """ConvNeXt's block ending `inputs + layer(x)` (a bare `+`, no Add layer)."""
    import keras
    keras.utils.set_random_seed(8)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inp)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block_conv")(x)
    y = keras.layers.Activation("linear", name="block_identity")(y)
    x = x + y
    x = keras.layers.GlobalAveragePooling2D(name="head_gap")(x)
    out = keras.layers.Dense(classes, name="head_dense")(x)
    return keras.Model(inp, out, name="keras_residual")
