"""The scene generator: seeded, labelled exactly, colours that match their classes, files that round-trip."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from neuroscope.synth import CLASS_NAMES, PALETTE, Scene, generate_scene, load_scene, save_scene

SEEDS = range(20)
RENDERED = ["road", "sidewalk", "building", "fence", "pole", "traffic light", "traffic sign",
            "vegetation", "terrain", "sky", "person", "car", "truck", "bus"]
THINGS = [CLASS_NAMES.index(n) for n in ("person", "rider", "car", "truck", "bus", "train",
                                         "motorcycle", "bicycle")]


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [generate_scene(s) for s in SEEDS]


def test_class_table_is_cityscapes_trainids():
    assert len(CLASS_NAMES) == 19 and len(PALETTE) == 19
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[6] == "traffic light" and CLASS_NAMES[18] == "bicycle"
    assert PALETTE[0] == (128, 64, 128) and PALETTE[10] == (70, 130, 180) and PALETTE[13] == (0, 0, 142)


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = generate_scene(123), generate_scene(123), generate_scene(124)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.instances, b.instances) and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


def test_shapes_and_dtypes_follow_the_size_argument():
    s = generate_scene(5, size=(128, 256))
    assert s.image.shape == (128, 256, 3) and s.image.dtype == np.uint8
    assert s.labels.shape == (128, 256) and s.labels.dtype == np.uint8
    assert s.instances.shape == (128, 256) and s.instances.dtype == np.uint16
    assert set(np.unique(s.labels)) <= set(range(19)) | {255}


def test_every_rendered_class_appears_across_twenty_seeds(scenes):
    seen = set()
    for s in scenes:
        seen |= set(np.unique(s.labels).tolist())
    missing = [n for n in RENDERED if CLASS_NAMES.index(n) not in seen]
    assert not missing


def _class_pixels(scenes, name):
    cid = CLASS_NAMES.index(name)
    return np.concatenate([s.image[s.labels == cid] for s in scenes]).astype(np.float64)


def test_label_regions_have_their_class_colours(scenes):
    sky, road, veg = (_class_pixels(scenes, n) for n in ("sky", "road", "vegetation"))
    sky_m, road_m, veg_m = sky.mean(0), road.mean(0), veg.mean(0)
    # Sky: bright and bluish; road: grey (low saturation) and darker than sky; vegetation: green.
    assert sky_m.mean() > 150 and sky_m[2] > sky_m[0]
    road_sat = (road_m.max() - road_m.min()) / road_m.max()
    assert road_sat < 0.1 and road_m.mean() < sky_m.mean() - 30
    assert veg_m[1] > veg_m[0] and veg_m[1] > veg_m[2]


def test_labels_follow_the_drawn_edges(scenes):
    # The label map and the image come from the same polygons: image gradients sit on
    # label boundaries far more often than off them.
    on, off = [], []
    for s in scenes[:8]:
        g = s.image.astype(np.float64).mean(2)
        grad = np.abs(np.diff(g, axis=1))
        edge = s.labels[:, 1:] != s.labels[:, :-1]
        on.append(grad[edge].mean())
        off.append(grad[~edge].mean())
    assert np.mean(on) > 3 * np.mean(off)


def test_instances_agree_with_objects_and_labels(scenes):
    for s in scenes:
        ids = set(np.unique(s.instances).tolist()) - {0}
        assert ids == {o["id"] for o in s.objects}
        for o in s.objects:
            mask = s.instances == o["id"]
            assert o["class_id"] in THINGS
            assert np.all(s.labels[mask] == o["class_id"])
            ys, xs = np.nonzero(mask)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        thing = np.isin(s.labels, THINGS)
        assert np.all(s.instances[thing] > 0) and np.all(s.instances[~thing] == 0)


def test_files_round_trip(tmp_path):
    s = generate_scene(42)
    paths = save_scene(s, tmp_path / "scene-42")
    assert sorted(p.name for p in paths.values()) == [
        "scene-42.png", "scene-42_instances.json", "scene-42_instances.png", "scene-42_labels.png",
        "scene-42_parts.png"]
    assert Image.open(paths["labels"]).mode == "L"
    assert Image.open(paths["instances"]).mode.startswith("I;16")
    objects = json.loads(paths["objects"].read_text())
    assert objects == s.objects and all(set(o) == {"id", "class_id", "bbox", "parts"} for o in objects)
    back = load_scene(tmp_path / "scene-42")
    assert np.array_equal(back.image, s.image)
    assert np.array_equal(back.labels, s.labels)
    assert np.array_equal(back.instances, s.instances)
    assert np.array_equal(back.parts, s.parts)
