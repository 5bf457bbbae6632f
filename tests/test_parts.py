"""Parts visualisation: the parts module (shapes, frozen backbone, torch/Keras parity), part
contributions (sums, shares, drops), the validity statistic on generated objects, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroscope.archs.drivescene_parts import drivescene_parts
from neuroscope.metrics import spearman
from neuroscope.synth import generate_scene
from neuroscope.synth.classes import CAR, TRAFFIC_SIGN
from neuroscope.synth.parts import NUM_PARTS, PART_NAMES, object_masks, part_id

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "assets" / "weights"
SEED = 1_000_002          # bundled as assets/images/scene-1000002.png: cars, a truck, people


@pytest.fixture(scope="module")
def ex():
    from neuroscope import Explainer
    return Explainer("drivescene-seg")


@pytest.fixture(scope="module")
def scene():
    return generate_scene(SEED)


def _largest(scene, cls):
    masks = [m for c, m in object_masks(scene.labels, scene.instances, scene.parts, scene.objects) if c == cls]
    return max(masks, key=lambda m: int(m.sum()))


def _click(scene, mask, cls):
    from scipy import ndimage
    depth = ndimage.distance_transform_edt(mask & (scene.labels == cls))
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(x), int(y)


# ------------------------------------------------------------------ module
def test_module_shapes_and_frozen_backbone():
    m = drivescene_parts(WEIGHTS / "drivescene-seg.pth", WEIGHTS / "drivescene-parts.pth")
    seg = torch.load(WEIGHTS / "drivescene-seg.pth", weights_only=True)
    assert torch.equal(m.features[13].conv[0][0].weight, seg["features.13.conv.0.0.weight"].float())
    assert not any(p.requires_grad for p in m.features.parameters())
    assert all(p.requires_grad for p in m.decoder.parameters())
    m.train()
    assert not m.features.training and m.decoder.training   # BatchNorm statistics stay frozen
    m.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        taps = m.taps(x)
        out = m(x)
    assert [t.shape[-2:] for t in taps] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert out.shape == (2, NUM_PARTS, 64, 96)


def test_keras_port_matches_torch_on_a_scene(scene):
    import keras
    from neuroscope.images import normalize
    m = drivescene_parts(WEIGHTS / "drivescene-seg.pth", WEIGHTS / "drivescene-parts.pth")
    km = keras.saving.load_model(WEIGHTS / "drivescene-parts.keras", safe_mode=True, compile=False)
    x = normalize(scene.image[:128, 128:384], (0, 1), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[None]
    x = x.astype(np.float32)
    with torch.no_grad():
        t = m(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    k = np.asarray(km(x, training=False)).transpose(0, 3, 1, 2)
    assert k.shape == t.shape == (1, NUM_PARTS, 128, 256)
    assert np.abs(t - k).max() < 1e-3
    assert (t.argmax(1) == k.argmax(1)).mean() > 0.999


def test_module_finds_the_parts_of_a_large_car(ex, scene):
    from neuroscope.parts import parts_module_for
    pred = parts_module_for(ex).labels(ex.prepare(scene.image).x)
    car = _largest(scene, CAR)
    vehicle = [part_id(n) for n in ("body", "window", "wheel", "light", "plate")]
    assert np.isin(pred[car], vehicle).mean() > 0.8
    hit = (pred == scene.parts)[car].mean()
    assert hit > 0.6, hit


# ------------------------------------------------------------------ contributions
def test_contributions_sum_and_drops_are_measured(ex, scene):
    from neuroscope.parts import part_contributions
    from neuroscope.targets import Target
    car = _largest(scene, CAR)
    t = Target.segmentation(class_id="car", region=_click(scene, car, CAR))
    res = part_contributions(ex, scene.image, t, part_map=scene.parts)
    assert res.class_name == "car" and res.method in ("lrp", "gradient-x-input")
    assert set(res.part_ids) <= {1, 2, 3, 4, 5} and len(res.part_ids) >= 3
    # the object holds the generator's car (and any vehicle touching it), vehicle parts only
    union = res.masks_model.any(0)
    assert union[car].all() and np.isin(scene.parts[union], [1, 2, 3, 4, 5]).all()
    assert res.pixels == int(union.sum())      # model and image sizes agree here
    assert res.pixels_per_part == [int((scene.parts[union] == k).sum()) for k in res.part_ids]
    # relevance per part sums the map within the part; together: the map over the object
    rmap = ex.explain(scene.image, res.method, target=t).map_model
    assert np.allclose(res.relevance, [rmap[m].sum() for m in res.masks_model], rtol=1e-5, atol=1e-6)
    assert np.isclose(res.relevance.sum(), rmap[union].sum(), rtol=1e-5, atol=1e-6)
    assert np.isclose(np.abs(res.shares).sum(), 1.0)
    assert np.allclose(res.shares, res.relevance / np.abs(res.relevance).sum())
    # a drop is the clean probability minus the probability with that part set to the mean colour
    prep = ex.prepare(scene.image)
    rt = ex.resolve(prep, t)
    k = int(np.argmax(res.drops))
    rgb = prep.rgb.astype(np.float32)
    rgb[res.masks_model[k]] = ex.baseline_rgb(prep, "mean")[res.masks_model[k]]
    p = ex.backend.scores(ex.preprocess_rgb(np.stack([prep.rgb, rgb]).astype(np.float32)), rt.objective, kind="prob")
    assert np.isclose(res.score, p[0], atol=1e-6) and np.isclose(res.drops[k], p[0] - p[1], atol=1e-6)
    assert res.spearman == pytest.approx(spearman(res.shares, res.drops))


def test_contributions_agree_across_frameworks(ex, scene):
    from neuroscope import Explainer
    from neuroscope.parts import part_contributions, parts_module_for
    from neuroscope.targets import Target
    kex = Explainer("drivescene-seg-keras")
    assert parts_module_for(kex).spec.framework == "keras"
    t = Target.segmentation(class_id="car", region=_click(scene, _largest(scene, CAR), CAR))
    a = part_contributions(ex, scene.image, t)               # each framework's own parts module
    b = part_contributions(kex, scene.image, t)
    assert a.part_ids == b.part_ids and a.pixels_per_part == b.pixels_per_part
    assert np.allclose(a.shares, b.shares, atol=5e-3) and np.allclose(a.drops, b.drops, atol=1e-4)


def test_sign_object_includes_its_pole():
    from neuroscope.parts import object_parts
    part_map = np.zeros((20, 20), np.uint8)
    part_map[2:6, 8:12] = part_id("sign plate")
    part_map[6:19, 9:11] = part_id("sign pole")
    part_map[2:6, 14:18] = part_id("body")      # a car next to it is not part of the sign
    region = np.zeros((20, 20), bool)
    region[3, 9] = True
    obj = object_parts(part_map, region, TRAFFIC_SIGN)
    assert obj.sum() == 16 + 26 and not obj[2:6, 14:18].any()


def test_targets_without_parts_are_refused(ex, scene):
    from neuroscope.errors import BadTarget
    from neuroscope.parts import part_contributions
    from neuroscope.targets import Target
    road = np.argwhere(ex.predict(scene.image).labels == 0)[0]
    with pytest.raises(BadTarget, match="has no parts"):
        part_contributions(ex, scene.image, Target.segmentation(region=(int(road[1]), int(road[0]))))


# ------------------------------------------------------------------ validity statistic
def test_validity_statistic_on_generated_objects(ex):
    from neuroscope.evaluation.parts import evaluate_parts
    r = evaluate_parts(ex, n_objects=4, source="truth")
    assert r["objects"] == 4 and r["source"] == "truth"
    assert {r["method"], "grad-cam", "random"} <= set(r["spearman"])
    for s in r["spearman"].values():
        assert -1.0 <= s["mean"] <= 1.0 and s["sem"] >= 0
    assert sum(c["objects"] for c in r["per_class"].values()) == 4
    assert r["scenes"] >= 1 and all(c["objects"] >= 1 for c in r["per_class"].values())


# ------------------------------------------------------------------ CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "neuroscope", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_parts_json_on_a_generated_car(scene):
    car = _largest(scene, CAR)
    x, y = _click(scene, car, CAR)
    p = _cli("parts", "drivescene-seg", str(ROOT / "assets" / "images" / f"scene-{SEED}.png"),
             "--region", f"{x},{y}", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(d) >= {"object", "parts", "spearman"} and d["object"]["class_name"] == "car"
    assert set(d["object"]) == {"class_name", "pixels"}
    assert all(set(q) == {"name", "pixels", "share", "drop"} for q in d["parts"])
    assert {q["name"] for q in d["parts"]} <= set(PART_NAMES[1:6]) and len(d["parts"]) >= 2
    assert sum(q["pixels"] for q in d["parts"]) == d["object"]["pixels"]
    assert np.isclose(sum(abs(q["share"]) for q in d["parts"]), 1.0)
    assert -1 <= d["spearman"] <= 1


def test_cli_parts_errors_are_one_line(scene):
    img = str(ROOT / "assets" / "images" / f"scene-{SEED}.png")
    p = _cli("parts", "drivescene-seg", img, "--region", "5,250")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no parts" in p.stderr
    p = _cli("parts", "mobilenet_v2-imagenet", img, "--region", "5,5")
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_cli_synth_writes_scenes_with_parts(tmp_path):
    p = _cli("synth", "--seed", "7", "--count", "2", "--out", str(tmp_path), "--size", "128x256", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d == {"images": [str(tmp_path / "scene-7.png"), str(tmp_path / "scene-8.png")], "out": str(tmp_path)}
    from neuroscope.synth import load_scene
    back = load_scene(tmp_path / "scene-8")
    want = generate_scene(8, (128, 256))
    assert np.array_equal(back.parts, want.parts) and np.array_equal(back.labels, want.labels)
    assert _cli("synth", "--seed", "1", "--count", "0", "--out", str(tmp_path)).returncode == 2


def test_cli_evaluate_parts_refuses_other_inputs():
    p = _cli("evaluate", "drivescene-seg", "--parts", "--methods", "grad-cam")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--parts" in p.stderr
    p = _cli("evaluate", "drivescene-seg")
    assert p.returncode == 2 and "--methods" in p.stderr
