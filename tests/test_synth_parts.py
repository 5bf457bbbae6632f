"""Generator part masks: exact, consistent with the labels, and the scenes themselves unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuroscope.synth import generate_scene
from neuroscope.synth.classes import BUS, CAR, PERSON, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, TRUCK
from neuroscope.synth.parts import (CLASS_PARTS, NUM_PARTS, PART_NAMES, object_masks, part_id)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "images"

# sha256 (first 16 hex) of image + labels + instances bytes, computed on main BEFORE the part
# map was added to the generator (commit b6f45dd): the part map must not change a single pixel.
BEFORE_PARTS = {
    (0, (256, 512)): "845da9802fd5f4e8",
    (1, (256, 512)): "959880b06a6e080a",
    (7, (256, 512)): "6de38985e7cb9775",
    (123, (256, 512)): "aa670c1dc08b1627",
    (99, (128, 256)): "d29e9d9b6b2580b3",
    (5, (384, 640)): "754e938523ae259b",
}


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s) for s in range(12)]


@pytest.mark.parametrize("seed,size", sorted(BEFORE_PARTS))
def test_scenes_are_bit_identical_to_before_parts(seed, size):
    s = generate_scene(seed, size)
    h = hashlib.sha256(s.image.tobytes() + s.labels.tobytes() + s.instances.tobytes()).hexdigest()[:16]
    assert h == BEFORE_PARTS[(seed, size)]


@pytest.mark.parametrize("seed", [1000002, 1000007])
def test_bundled_scenes_are_reproduced_exactly(seed):
    s = generate_scene(seed)
    image = np.asarray(Image.open(ASSETS / f"scene-{seed}.png").convert("RGB"))
    labels = np.asarray(Image.open(ASSETS / f"scene-{seed}_labels.png"))
    assert np.array_equal(s.image, image) and np.array_equal(s.labels, labels)


def test_part_names_ids_and_class_table():
    assert PART_NAMES[0] == "none" and NUM_PARTS == 15 and len(set(PART_NAMES)) == NUM_PARTS
    assert part_id("Wheel") == 3 and part_id("light pole") == 14
    with pytest.raises(ValueError):
        part_id("tail")
    assert CLASS_PARTS[PERSON] == tuple(part_id(n) for n in ("head", "torso", "arm", "leg"))


def test_parts_sit_only_on_their_classes(scenes):
    veh = [part_id(n) for n in ("body", "window", "wheel", "light", "plate")]
    allowed = {k: {CAR, TRUCK, BUS} for k in veh}
    allowed.update({k: {PERSON} for k in CLASS_PARTS[PERSON]})
    allowed.update({part_id("sign plate"): {TRAFFIC_SIGN}, part_id("light housing"): {TRAFFIC_LIGHT},
                    part_id("lamp"): {TRAFFIC_LIGHT}, part_id("sign pole"): {POLE},
                    part_id("light pole"): {POLE}})
    for s in scenes:
        assert s.parts.shape == s.labels.shape and s.parts.dtype == np.uint8
        for k in range(1, NUM_PARTS):
            assert set(np.unique(s.labels[s.parts == k]).tolist()) <= allowed[k]
        # every vehicle and person pixel is one of its parts; signs and lights too
        for cls in (CAR, TRUCK, BUS, PERSON, TRAFFIC_SIGN, TRAFFIC_LIGHT):
            assert np.all(np.isin(s.parts[s.labels == cls], CLASS_PARTS[cls]))


def test_every_part_is_drawn_across_scenes(scenes):
    seen = set()
    for s in scenes:
        seen |= set(np.unique(s.parts).tolist())
    assert seen == set(range(NUM_PARTS))


def test_object_part_table_counts_pixels(scenes):
    n = 0
    for s in scenes:
        for o in s.objects:
            m = s.instances == o["id"]
            got = {p["name"]: p["pixels"] for p in o["parts"]}
            want = {PART_NAMES[k]: int(c) for k, c in enumerate(np.bincount(s.parts[m], minlength=NUM_PARTS))
                    if k and c}
            assert got == want and sum(got.values()) == int(m.sum())
            n += 1
    assert n > 30


def test_object_masks_cover_signs_with_their_poles(scenes):
    kinds = {}
    for s in scenes:
        for cls, m in object_masks(s.labels, s.instances, s.parts, s.objects):
            assert m.any() and np.all(np.isin(s.parts[m], CLASS_PARTS[cls]))
            kinds.setdefault(cls, []).append(set(np.unique(s.parts[m]).tolist()))
    assert {CAR, PERSON, TRAFFIC_SIGN, TRAFFIC_LIGHT} <= set(kinds)
    # most signs come with their pole, most lights with pole and housing
    assert np.mean([{10, 11} <= p for p in kinds[TRAFFIC_SIGN]]) > 0.5
    assert np.mean([{12, 14} <= p for p in kinds[TRAFFIC_LIGHT]]) > 0.5
