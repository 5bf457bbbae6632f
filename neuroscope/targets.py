"""What is being explained: a class, a class over a region of pixels, or a contrast (CONTRACT.md §2)."""
from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
from scipy import ndimage

from .backends.base import Objective
from .errors import BadTarget
from .images import resize_labels

ClassRef = Union[int, str, None]
Region = Union[str, tuple]
REGION_MODES = ("all", "predicted")


@dataclass(frozen=True)
class Target:
    """A request: which class (id or name; None = default), which region, contrast.

    Regions (segmentation only): "all", "predicted" (default), a pixel (x, y) — the
    8-connected component of the class's predicted mask containing it — or a
    half-open box (x0, y0, x1, y1), all in original image pixels.
    """

    class_id: ClassRef = None
    region: Region | None = None
    within_class: bool = False
    contrast: ClassRef = None
    task: str | None = None

    @classmethod
    def classification(cls, class_id: ClassRef = None, contrast: ClassRef = None) -> "Target":
        return cls(class_id=class_id, contrast=contrast, task="classification")

    @classmethod
    def segmentation(cls, class_id: ClassRef = None, region: Region = "predicted",
                     within_class: bool = False, contrast: ClassRef = None) -> "Target":
        return cls(class_id=class_id, region=parse_region(region), within_class=within_class,
                   contrast=contrast, task="segmentation")

    def key(self) -> tuple:
        return (self.class_id, self.region, self.within_class, self.contrast, self.task)


def parse_region(region: Region | None) -> Region | None:
    """"all" | "predicted" | "X,Y" | "X0,Y0,X1,Y1" (or tuples) -> normalised form."""
    if region is None:
        return None
    if isinstance(region, str):
        text = region.strip().lower()
        if text in REGION_MODES:
            return text
        parts = text.replace(" ", "").split(",")
        try:
            values = tuple(int(round(float(p))) for p in parts)
        except (ValueError, OverflowError):   # also "inf", "nan", ""
            raise BadTarget(f"region {region!r} is not 'all', 'predicted', 'X,Y' or 'X0,Y0,X1,Y1' "
                            "(finite pixel coordinates)") from None
    else:
        try:
            values = tuple(int(v) for v in region)
        except (TypeError, ValueError, OverflowError):
            raise BadTarget(f"region {region!r} is not 'all', 'predicted', (x, y) or (x0, y0, x1, y1) "
                            "(finite pixel coordinates)") from None
    if len(values) not in (2, 4):
        raise BadTarget(f"region {region!r} is not 'all', 'predicted', 'X,Y' or 'X0,Y0,X1,Y1'")
    return values


def class_index(ref: ClassRef, classes: Sequence[str]) -> int:
    """Integer id or case-insensitive exact class name -> id (CONTRACT.md §2)."""
    n = len(classes)
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        idx = int(ref)
    else:
        text = str(ref).strip()
        try:
            idx = int(text)
        except ValueError:
            matches = [i for i, name in enumerate(classes) if name.lower() == text.lower()]
            if not matches:
                raise BadTarget(f"no class named {text!r}; use an id 0..{n - 1} or an exact class name") from None
            if len(matches) > 1:
                raise BadTarget(f"class name {text!r} matches several classes: ids {', '.join(map(str, matches))}") from None
            return matches[0]
    if not 0 <= idx < n:
        raise BadTarget(f"class id {idx} out of range: the model has {n} classes (0..{n - 1})")
    return idx


@dataclass
class ResolvedTarget:
    """A target made concrete for one image: the objective the backends differentiate."""

    task: str
    class_id: int
    class_name: str
    contrast_id: int | None
    region: str | None                       # text form: "all", "predicted", "x,y", "x0,y0,x1,y1"
    within_class: bool
    pixels: int | None                       # region size in original pixels (segmentation)
    objective: Objective
    mask: np.ndarray | None = None           # bool [H, W] region in original pixels (segmentation)
    extra: dict = field(default_factory=dict)
    _key: tuple | None = field(default=None, repr=False, compare=False)

    def key(self) -> tuple:
        """Cache key (computed once: hashing a full-size mask is not free)."""
        k = self._key
        if k is None:
            m = None if self.objective.mask is None else hashlib.blake2b(
                self.objective.mask.tobytes(), digest_size=16).hexdigest()
            k = self._key = (self.class_id, self.contrast_id, m)
        return k

    def as_json(self) -> dict:
        return {"class_id": self.class_id, "class_name": self.class_name,
                "region": self.region, "pixels": self.pixels}


def resolve_target(target: Target | None, task: str, classes: Sequence[str],
                   probs: np.ndarray | None = None, label_map: np.ndarray | None = None,
                   image_size: tuple[int, int] | None = None) -> ResolvedTarget:
    """Turn a `Target` into an objective for this image.

    classification: `probs` [C]; segmentation: `label_map` = argmax at model
    resolution [h, w] and `image_size` = original (H, W).
    """
    target = target or Target()
    n = len(classes)
    if target.task is not None and target.task != task:
        raise BadTarget(f"a {target.task} target cannot be used with a {task} model")
    contrast = None if target.contrast is None else class_index(target.contrast, classes)

    if task == "classification":
        if target.region is not None or target.within_class:
            raise BadTarget("--region applies to segmentation models only; this model is a classifier")
        cid = int(np.argmax(probs)) if target.class_id is None else class_index(target.class_id, classes)
        _check_contrast(cid, contrast)
        return ResolvedTarget(task, cid, classes[cid], contrast, None, False, None,
                              Objective(_weights(n, cid, contrast)))

    H, W = image_size
    h, w = label_map.shape
    region = parse_region(target.region if target.region is not None else "predicted")
    if isinstance(region, tuple) and len(region) == 2:
        x, y = region
        if not (0 <= x < W and 0 <= y < H):
            raise BadTarget(f"pixel {x},{y} is outside the image ({W}x{H})")
        my, mx = min(h - 1, y * h // H), min(w - 1, x * w // W)
        cid = int(label_map[my, mx]) if target.class_id is None else class_index(target.class_id, classes)
        class_mask = label_map == cid
        if not class_mask[my, mx]:
            raise BadTarget(f"pixel {x},{y} is predicted as {classes[int(label_map[my, mx])]!r}, "
                            f"not {classes[cid]!r}; click inside the class or choose another region")
        components, _ = ndimage.label(class_mask, structure=np.ones((3, 3), bool))
        mask_model = components == components[my, mx]
        mask_orig = resize_labels(mask_model, (H, W))
        text = f"{x},{y}"
    else:
        if target.class_id is None:
            counts = np.bincount(label_map.ravel(), minlength=n)
            cid = int(np.argmax(counts))
        else:
            cid = class_index(target.class_id, classes)
        class_mask = label_map == cid
        if region == "all":
            mask_model = np.ones((h, w), bool)
            mask_orig = np.ones((H, W), bool)
            text = "all"
        elif region == "predicted":
            mask_model = class_mask
            mask_orig = resize_labels(mask_model, (H, W))
            text = "predicted"
        else:
            x0, y0, x1, y1 = region
            if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
                raise BadTarget(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= X0 < X1 <= {W} and 0 <= Y0 < Y1 <= {H}")
            mask_orig = np.zeros((H, W), bool)
            mask_orig[y0:y1, x0:x1] = True
            mask_model = resize_labels(mask_orig, (h, w))
            text = f"{x0},{y0},{x1},{y1}"
        if target.within_class:
            mask_model = mask_model & class_mask
            mask_orig = mask_orig & resize_labels(class_mask, (H, W))
    if not mask_model.any():
        what = f"class {classes[cid]!r} is not predicted anywhere" if text == "predicted" else "the region is empty"
        raise BadTarget(f"empty target region: {what} at model resolution; pick another class or region")
    _check_contrast(cid, contrast)
    return ResolvedTarget(task, cid, classes[cid], contrast, text, bool(target.within_class),
                          int(mask_orig.sum()), Objective(_weights(n, cid, contrast), mask_model.astype(np.float32)),
                          mask=mask_orig)


def _check_contrast(cid: int, contrast: int | None) -> None:
    if contrast is not None and contrast == cid:
        raise BadTarget("--contrast must name a class other than the target class")


def _weights(n: int, cid: int, contrast: int | None) -> np.ndarray:
    w = np.zeros(n, np.float32)
    w[cid] = 1.0
    if contrast is not None:
        w[contrast] = -1.0
    return w
