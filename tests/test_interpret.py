"""Model interpretation (METHODS.md §7): the mu-lasso, the interpretation store, `interpret`
(resumable, cancellable) and the method `relevant-filters` in both frameworks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neuroscope import Explainer, Target, load_model
from neuroscope.cli import main
from neuroscope.errors import BadParameter, Cancelled
from neuroscope.interpret import Interpretation, interpret, load_interpretation, mu_lasso
from neuroscope.interpret.core import batch_features, default_layers, merge_atlas

from conftest import IMAGES


# ------------------------------------------------------------------ lasso
def test_mu_lasso_finds_the_planted_filter_and_respects_the_budget():
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 0.5, size=(300, 60))
    y = (rng.random(300) < 0.3).astype(float)
    X[:, 17] += 1.5 * y                                    # filter 17 fires for the class
    X[:, 41] += 0.4 * y + rng.normal(0, 0.3, 300)           # a weaker, noisy one
    for mu in (0.05, 0.3, 1.0):
        w = mu_lasso(X, y, mu)
        assert w.shape == (60,) and (w >= 0).all()
        assert w.sum() <= mu * (1 + 1e-6)
        assert int(np.argmax(w)) == 17
    w = mu_lasso(X, y, 0.05)
    assert np.flatnonzero(w).tolist() == [17]               # the smallest budget: the planted filter only
    # a filter anti-correlated with the class never gets a (positive) weight
    X[:, 5] -= 1.0 * y
    assert mu_lasso(X, y, 1.0)[5] == 0


def test_mu_lasso_budget_is_reached_on_the_path():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 10))
    y = X[:, 2] * 2 + X[:, 7] + rng.normal(0, 0.1, 200)
    w = mu_lasso(X, y, 1.0)
    assert abs(w.sum() - 1.0) < 1e-6                       # the constraint is active below the LS fit
    w_free = mu_lasso(X, y, 100.0)                          # beyond the LS fit: the path's end
    assert abs(w_free[2] - 2) < 0.05 and abs(w_free[7] - 1) < 0.05


# ------------------------------------------------------------------ features and store
def test_segmentation_features_sum_over_the_class_region_and_are_normalised():
    acts = {"a": np.zeros((1, 2, 4, 4), np.float32)}
    acts["a"][0, 0, :2] = 1.0          # channel 0 fires in the top half
    acts["a"][0, 1, 2:] = 2.0          # channel 1 in the bottom half
    logits = np.zeros((1, 3, 8, 8), np.float32)
    logits[0, 1, :4] = 5               # class 1 predicted in the top half
    logits[0, 2, 4:] = 5               # class 2 in the bottom half
    X, lab, idx = batch_features(logits, acts, ["a"], "segmentation")
    assert lab.tolist() == [1, 2] and idx.tolist() == [0, 0]
    np.testing.assert_allclose(X, [[2.0, 0.0], [0.0, 2.0]])   # L1 = 1, times 2 channels


def test_atlas_keeps_the_top_activations_per_filter():
    a = {"value": np.array([[1., 5., 3.], [0., 2., 9.]]), "image": np.array([[0, 1, 2], [0, 1, 2]]),
         "row": np.zeros((2, 3), int), "col": np.zeros((2, 3), int)}
    m = merge_atlas(a, k=2)
    assert m["image"].tolist() == [[1, 2], [2, 1]]
    np.testing.assert_allclose(m["value"], [[5, 3], [9, 2]])


def test_interpretation_round_trip(tmp_path):
    it = Interpretation("m", "classification", [{"name": "l1", "channels": 3, "stride": 4},
                                                {"name": "l2", "channels": 2, "stride": 8}],
                        {"cat": {"class_id": 1, "samples": 4, "filters": [{"layer": "l2", "channel": 1, "weight": 0.5}]}},
                        0.2, {"set": "imagenet-samples"}, 4, 1.5, X=np.arange(20, dtype=np.float32).reshape(4, 5),
                        labels=np.array([1, 1, 0, 1], np.int32), W=np.ones((1, 5), np.float32),
                        atlas={"value": np.ones((5, 2), np.float32)})
    it.save(tmp_path)
    back = load_interpretation(tmp_path)
    assert back.summary() == it.summary()
    assert back.filter_index("l2", 1) == 4 and back.filter_of(4) == ("l2", 1)
    np.testing.assert_allclose(back.X, it.X, rtol=1e-3)
    np.testing.assert_array_equal(back.atlas["value"], it.atlas["value"])
    np.testing.assert_array_equal(back.weights("cat"), [0, 0, 0, 0, 0.5])
    with pytest.raises(BadParameter, match="no class 'dog'"):
        back.weights("dog")
    doc = json.loads((tmp_path / "interpretation.json").read_text())
    doc["version"] = 99
    (tmp_path / "interpretation.json").write_text(json.dumps(doc))
    with pytest.raises(BadParameter, match="version 99"):
        load_interpretation(tmp_path)


# ------------------------------------------------------------------ interpret on a tiny model
class TwoFilterNet(nn.Module):
    """Class 1 <=> red image. conv channel 0 responds to red, channel 1 to blue; the
    logits read the pooled channels, so the lasso must pick channel 0 for class 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0          # red
            self.conv.weight[1, 2, 1, 1] = 1.0          # blue
            self.conv.weight[2, :, 1, 1] = 0.3          # brightness (both classes)
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1, 0] = 1.0
            self.fc.weight[1, 1] = -1.0

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def _images(folder, n=12):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        img = rng.integers(0, 60, size=(16, 16, 3)).astype(np.uint8)
        img[..., 0 if i % 2 else 2] += np.uint8(150 + rng.integers(0, 40))
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


def _tiny():
    return Explainer(load_model(TwoFilterNet(), task="classification", input_size=(16, 16), num_classes=2,
                                classes=["blue", "red"], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def test_interpret_finds_the_class_filter_and_resumes_after_a_cancel(tmp_path):
    ex = _tiny()
    assert default_layers(ex.layers()) == ["relu"]
    folder = _images(tmp_path / "imgs")
    out = tmp_path / "interp"
    calls = []

    def cancel_after_first(fraction, message):
        calls.append(message)
        return False

    with pytest.raises(Cancelled, match="rerun to continue"):
        interpret(ex, images=str(folder), out=out, batch=4, progress=cancel_after_first)
    assert sorted(p.name for p in (out / "partial").glob("batch-*.npz")) == ["batch-00000.npz"]
    seen = []
    it = interpret(ex, images=str(folder), out=out, batch=4, mu=0.5, progress=lambda f, m: seen.append(m))
    forward = seen[:seen.index("lasso for 2 classes")]
    assert len(forward) == 2 and forward[0].startswith("8/12")   # batch 0 was not recomputed
    assert seen[-1] == "LRP relevance 12/12 images (12 samples)"
    assert not (out / "partial").exists()
    assert it.images == 12 and it.X.shape == (12, 4)
    red = [(f["layer"], f["channel"]) for f in it.classes["red"]["filters"]]
    blue = [(f["layer"], f["channel"]) for f in it.classes["blue"]["filters"]]
    assert red[0] == ("relu", 0) and blue[0] == ("relu", 1)
    # the atlas: channel 0's strongest activations come from red images (odd indices)
    assert all(i % 2 == 1 for i in it.atlas["image"][0][:6])
    # the per-class atlas from LRP: for red, channel 0 carries (nearly) all the relevance at
    # the layer, at red images; its class average is a window of the red images
    assert it.extra["relevance"]["method"] == "lrp" and it.extra["relevance"]["samples"] == 12
    red_row = it.class_row("red")
    assert int(np.argmax(it.R[red_row])) == 0 and it.R[red_row, 0] > 0.9
    assert all(i % 2 == 1 for i in it.relevance_atlas["image"][red_row, 0] if i >= 0)
    avg = it.class_average("red", "relu", 0)
    assert avg is not None and avg[2] == 6 and avg[0].shape == (48, 48, 3)
    centre = avg[0][18:30, 18:30].astype(float)                          # 16 px images in 48 px windows
    assert centre[..., 0].mean() > centre[..., 2].mean() + 80            # red, not blue
    back = load_interpretation(out)
    assert back.summary() == it.summary() and back.relevance_source == it.relevance_source
    np.testing.assert_allclose(back.R, it.R)
    np.testing.assert_array_equal(back.relevance_atlas["image"], it.relevance_atlas["image"])
    np.testing.assert_allclose(back.relevance_atlas["value"], it.relevance_atlas["value"], rtol=1e-3)
    np.testing.assert_array_equal(back.average["rgb"], it.average["rgb"])


def test_interpret_cli_json_and_errors(tmp_path, capsys):
    folder = _images(tmp_path / "imgs", n=4)
    rc = main(["interpret", "mobilenet_v2-imagenet", "--images", str(folder), "--out", str(tmp_path / "o"),
               "--layers", "nope", "--json"])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["interpret", "mobilenet_v2-imagenet", "--set", "nope", "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown set" in capsys.readouterr().err
    rc = main(["interpret", "mobilenet_v2-imagenet", "--images", str(folder), "--out", str(tmp_path / "neg"),
               "--relevance-images", "-1"])
    err = capsys.readouterr().err   # refused before any pass: one line, nothing written
    assert rc == 2 and "--relevance-images must be >= 0" in err and "images" not in err.split("error:")[0]
    assert not (tmp_path / "neg").exists()
    rc = main(["interpret", "mobilenet_v2-imagenet", "--images", str(folder), "--out", str(tmp_path / "o"),
               "--layers", "features.18.2", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers"] == ["features.18.2"] and doc["images"] == 4 and doc["time_s"] > 0
    for c in doc["classes"].values():
        assert all(set(f) == {"layer", "channel", "weight"} and f["weight"] > 0 for f in c["filters"])


# ------------------------------------------------------------------ relevant-filters
def _handmade(tmp_path, model, task, layers, classes):
    """An interpretation with chosen filters (no lasso): the method's own test."""
    it = Interpretation(model, task, layers, classes, 0.2, {}, 0, 0.0)
    it.save(tmp_path)
    return str(tmp_path)


def test_relevant_filters_on_the_tiny_model_back_projects_the_red_filter(tmp_path):
    ex = _tiny()
    path = _handmade(tmp_path, ex.spec.name, "classification", [{"name": "relu", "channels": 4, "stride": 2}],
                     {"red": {"class_id": 1, "samples": 1, "filters": [{"layer": "relu", "channel": 0, "weight": 1.0},
                                                                        {"layer": "relu", "channel": 2, "weight": 0.1}]}})
    img = np.zeros((16, 16, 3), np.uint8)
    img[4:8, 4:8, 0] = 250            # a red square: only there does channel 0 fire
    res = ex.explain(img, "relevant-filters", target=Target.classification("red"),
                     params={"interpretation": path, "top": 1})
    meta = res.as_json()["meta"]
    assert meta["filters"] == [{"layer": "relu", "channel": 0, "share": pytest.approx(1.0, abs=0.05)}]
    m = res.map
    assert m.max() == pytest.approx(1.0) and m[4:8, 4:8].mean() > 5 * m[10:, 10:].mean()
    with pytest.raises(BadParameter, match="no class 'blue'"):
        ex.explain(img, "relevant-filters", target=Target.classification("blue"), params={"interpretation": path})


@pytest.fixture(scope="module")
def mobilenets():
    pytest.importorskip("keras")
    return Explainer("mobilenet_v2-imagenet"), Explainer("mobilenet_v2-imagenet-keras")


def test_relevant_filters_parity_torch_keras_classification(tmp_path, mobilenets):
    layers = [{"name": "features.14.conv.0.2", "channels": 576, "stride": 16},
              {"name": "features.18.2", "channels": 1280, "stride": 32}]
    filters = [{"layer": "features.18.2", "channel": c, "weight": w} for c, w in ((1193, 0.05), (551, 0.03), (677, 0.02))]
    filters.append({"layer": "features.14.conv.0.2", "channel": 22, "weight": 0.02})
    path = _handmade(tmp_path, "mobilenet_v2-imagenet", "classification", layers,
                     {"Egyptian cat": {"class_id": 285, "samples": 1, "filters": filters}})
    maps, metas = [], []
    for ex in mobilenets:
        res = ex.explain(IMAGES / "cat.jpg", "relevant-filters", target=Target.classification("Egyptian cat"),
                         params={"interpretation": path})
        maps.append(res.map)
        metas.append(res.as_json()["meta"]["filters"])
        assert res.map.shape == (300, 451) and res.map.min() >= 0 and 0.5 < res.map.max() <= 1 + 1e-6
        # uncached, the prediction came from the method's own forward (no separate one),
        # and the map is the one of the path with the prediction known beforehand
        assert ex.stats.get("forward", 0) == 0 and ex.predict(IMAGES / "cat.jpg").top(1)
        ex.clear_caches(keep_predictions=True)
        again = ex.explain(IMAGES / "cat.jpg", "relevant-filters", target=Target.classification("Egyptian cat"),
                           params={"interpretation": path})
        np.testing.assert_array_equal(again.map, res.map)
        assert again.as_json()["meta"]["filters"] == metas[-1]
    assert [(f["layer"], f["channel"]) for f in metas[0]] == [(f["layer"], f["channel"]) for f in metas[1]]
    assert len(metas[0]) == 3 and abs(sum(f["share"] for f in metas[0]) - 1) < 0.5
    r = np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1]
    assert r >= 0.99, r


def test_relevant_filters_parity_torch_keras_segmentation_uses_the_region(tmp_path):
    pytest.importorskip("keras")
    layers = [{"name": "features.7.conv.0.2", "channels": 192, "stride": 8},
              {"name": "head.cbr.2", "channels": 128, "stride": 16}]
    filters = [{"layer": "head.cbr.2", "channel": c, "weight": 0.05} for c in (19, 58, 5)]
    path = _handmade(tmp_path, "drivescene-seg", "segmentation", layers,
                     {"car": {"class_id": 13, "samples": 1, "filters": filters}})
    image = IMAGES / "scene-1000002.png"
    truth = np.asarray(Image.open(IMAGES / "scene-1000002_labels.png"))
    maps = []
    for name in ("drivescene-seg", "drivescene-seg-keras"):
        ex = Explainer(name)
        res = ex.explain(image, "relevant-filters", target=Target.segmentation("car", "predicted"),
                         params={"interpretation": path})
        maps.append(res.map)
    r = np.corrcoef(maps[0].ravel(), maps[1].ravel())[0, 1]
    assert r >= 0.99, r
    # the evidence of car filters restricted to the car region lies mostly on cars
    m = maps[0]
    car = truth == 13
    assert m[car].mean() > 3 * m[~car].mean()


def _relevance_matches_full_captures(ex, image, targets):
    """interpret's relevance pass (one forward, per target a backward stopping at the
    layers, prediction from that forward) equals a full LRP capture per target."""
    from neuroscope.interpret.passes import layer_relevances
    from neuroscope.interpret.relevance import COMPOSITE
    from neuroscope.methods.propagation import make_composite

    class Ctx:
        params: dict = {}
        preprocess = staticmethod(ex.preprocess_rgb)
    comp = make_composite(Ctx(), COMPOSITE)
    ex.clear_caches()
    prep = ex.prepare(image)
    layers = [l.name for l in ex.spatial_layers()][-12::6]
    rels = layer_relevances(ex.backend, prep.x, lambda z: [ex._decide(prep, t, z).objective for t in targets],
                            layers, comp)
    assert ex.stats.get("forward", 0) == 0
    for t, rel in zip(targets, rels):
        cap = ex.backend.capture(prep.x, ex.resolve(prep, t).objective, layers, input_grad=True, rule=comp)
        for l in layers:
            np.testing.assert_allclose(rel[l], cap.gradients[l], rtol=1e-4, atol=1e-6 * np.abs(cap.gradients[l]).max())


def test_relevance_pass_equals_full_lrp_captures_torch_segmentation():
    ex = Explainer("drivescene-seg")     # decoder with skip branches below the deep layers
    _relevance_matches_full_captures(ex, IMAGES / "scene-1000002.png",
                                     [Target.segmentation(c, "predicted") for c in ("car", "road")])


def test_relevance_pass_equals_full_lrp_captures_keras(mobilenets):
    _relevance_matches_full_captures(mobilenets[1], IMAGES / "cat.jpg",
                                     [Target.classification(c) for c in ("Egyptian cat", "tabby")])


def test_strided_fix_as_one_strided_transpose_equals_resize_then_stride_one():
    """torch's deconvnet-fixed backward of a strided conv (box-summed kernel, stride s) is
    exactly "nearest x s, then the stride-1 transpose" (METHODS.md §2), grouped or not."""
    from neuroscope.backends import torch_rules

    class Saved:
        pass
    torch.manual_seed(0)
    for cin, cout, k, s, p, hw, groups in [(3, 8, 3, 2, 1, (24, 32), 1), (8, 8, 3, 2, 1, (16, 16), 8),
                                           (4, 6, 5, 2, 2, (20, 20), 1), (4, 6, 1, 2, 0, (16, 12), 1)]:
        conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=groups)
        dy = torch.randn(conv(torch.zeros(1, cin, *hw)).shape)
        ctx = Saved()
        ctx.conv, ctx.in_hw = conv, hw
        got = torch_rules._StridedDeconv.backward(ctx, dy)[0]
        h1, w1 = hw[0] + 2 * p - (k - 1), hw[1] + 2 * p - (k - 1)
        assert (h1, w1) == (s * dy.shape[-2], s * dy.shape[-1])          # the fast path applies
        up = nn.functional.interpolate(dy, size=(h1, w1), mode="nearest")
        want = nn.functional.conv_transpose2d(up, conv.weight, None, stride=1, padding=p, groups=groups)
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-5)
