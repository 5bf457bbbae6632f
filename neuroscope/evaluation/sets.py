"""Evaluation sets: fixed images with targets and ground-truth evidence.

Evaluation sets (`--set NAME`) are small and fixed, so numbers are comparable run to run:

- ``drivescene-eval`` (segmentation): 12 scenes from `neuroscope.synth.generate_scene`
  (seeds 1 000 000 and up, 256x512). Per scene one target object: on odd scenes the
  largest traffic sign when there is one (a connected component of the sign label,
  >= 150 px), otherwise the largest car (>= 400 px), else the largest person, truck or
  bus. The target is that class over the object's bounding box, restricted to the
  pixels predicted as the class (``--within-class``; the bare box when the model
  predicts none there); the evidence mask is the object's own pixels (instance mask).
  ``drivescene-mini`` is its first 3 scenes (tests, quick looks).
- ``photos-eval`` (classification, ImageNet class names): the bundled photos with
  hand-drawn boxes around the object of the named class (cat face and body, espresso
  cup, squirrel, the lemon and the orange half in the fruit photo). The cat fills most
  of its photo, so its pointing game is nearly free; the others cover 15-45 % of the
  image.

Scenes are regenerated from their seeds (no files), so the set is exactly as fixed as
the generator's code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import BadParameter

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@dataclass
class EvalItem:
    """One image of an evaluation set: what to explain and where the evidence truly is."""

    name: str
    image: np.ndarray                                  # uint8 RGB [H, W, 3]
    target: object                                     # a `Target`
    evidence: np.ndarray | None = None                 # bool [H, W] in original pixels
    fallback_target: object | None = None              # used when `target` is empty for the model


@dataclass(frozen=True)
class EvalSet:
    name: str
    task: str
    description: str
    build: Callable[[], list[EvalItem]]


# ------------------------------------------------------------------ scene set
SCENE_SEED0 = 1_000_000
SCENE_SIZE = (256, 512)
CAR, TRAFFIC_SIGN = 13, 7
OTHER_THINGS = (11, 14, 15)  # person, truck, bus


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def scene_target(scene, prefer_sign: bool) -> tuple[int, np.ndarray] | None:
    """(class id, evidence mask) of the object to explain in a generated scene, or None."""
    things = []
    for obj in scene.objects:
        mask = scene.instances == obj["id"]
        things.append((int(obj["class_id"]), int(mask.sum()), mask))
    signs = []
    if not any(c == TRAFFIC_SIGN for c, _, _ in things):  # signs are "stuff": use connected components
        comp, n = ndimage.label(scene.labels == TRAFFIC_SIGN, structure=np.ones((3, 3), bool))
        for i in range(1, n + 1):
            mask = comp == i
            signs.append((TRAFFIC_SIGN, int(mask.sum()), mask))
    signs = [s for s in signs + [t for t in things if t[0] == TRAFFIC_SIGN] if s[1] >= 150]
    cars = [t for t in things if t[0] == CAR and t[1] >= 400]
    others = [t for t in things if t[0] in OTHER_THINGS and t[1] >= 400]
    for pool in ([signs, cars, others] if prefer_sign else [cars, others]):
        if pool:
            c, _, mask = max(pool, key=lambda t: t[1])
            return c, mask
    return None


def drivescene_items(n: int = 12) -> list[EvalItem]:
    from ..synth import generate_scene
    from ..targets import Target
    items, seed = [], SCENE_SEED0
    while len(items) < n and seed < SCENE_SEED0 + 50 * n:
        scene = generate_scene(seed, SCENE_SIZE)
        chosen = scene_target(scene, prefer_sign=len(items) % 2 == 1)
        if chosen is not None:
            cid, mask = chosen
            box = _box(mask)
            items.append(EvalItem(f"scene-{seed}", scene.image, Target.segmentation(cid, box, within_class=True),
                                  mask, Target.segmentation(cid, box)))
        seed += 1
    return items


# ----------------------------------------------------------------- photo set
#: photo, ImageNet class name, hand-drawn box [x0, y0, x1, y1) around the evidence.
PHOTO_BOXES: tuple[tuple[str, str, tuple[int, int, int, int]], ...] = (
    ("cat.jpg", "Egyptian cat", (0, 0, 400, 300)),
    ("coffee.jpg", "espresso", (170, 15, 425, 300)),
    ("squirrel.jpg", "fox squirrel", (130, 105, 360, 345)),
    ("fruits.jpg", "lemon", (320, 245, 512, 480)),
    ("fruits.jpg", "orange", (75, 45, 345, 470)),
)


def photo_items() -> list[EvalItem]:
    from ..images import load_image
    from ..targets import Target
    items = []
    for fname, cls, (x0, y0, x1, y1) in PHOTO_BOXES:
        image = load_image(ASSETS / "images" / fname)
        mask = np.zeros(image.shape[:2], bool)
        mask[y0:y1, x0:x1] = True
        items.append(EvalItem(f"{Path(fname).stem}:{cls}", image, Target.classification(cls), mask))
    return items


# ----------------------------------------------------------------- an8 set
def an8_items(n: int = 40) -> list[EvalItem]:
    """Held-out an8 images (`neuroscope.synth.an8`, seeds from TEST_SEED0): the true class,
    evidence = the exact mask of the class-discriminative part (the roof sign)."""
    from ..synth.an8 import CLASSES, TEST_SEED0, an8_sample
    from ..targets import Target
    items = []
    for seed in range(TEST_SEED0, TEST_SEED0 + n):
        s = an8_sample(seed)
        items.append(EvalItem(f"an8-{seed}", s.image, Target.classification(CLASSES[s.label]), s.part))
    return items


EVAL_SETS: dict[str, EvalSet] = {
    s.name: s for s in (
        EvalSet("drivescene-eval", "segmentation", "12 generated street scenes, one car or traffic sign each",
                lambda: drivescene_items(12)),
        EvalSet("drivescene-mini", "segmentation", "the first 3 scenes of drivescene-eval", lambda: drivescene_items(3)),
        EvalSet("photos-eval", "classification", "bundled ImageNet photos with hand-drawn object boxes", photo_items),
        EvalSet("an8-eval", "classification", "40 held-out an8 cars (class = roof-sign colour); evidence: the sign",
                lambda: an8_items(40)),
    )
}


def get_eval_set(name: str) -> EvalSet:
    if name not in EVAL_SETS:
        raise BadParameter(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")
    return EVAL_SETS[name]


