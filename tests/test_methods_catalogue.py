"""The method catalogue: registry entries, known answers on tiny models, chunked and
cancellable perturbation loops that leave nothing hooked, Ablation-CAM's sequential cut,
the deconvnet artefact fix, the vectorised segmented maps, and torch/Keras parity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from torch import nn

from neuroscope import Explainer, Target, load_model
from neuroscope.errors import BadParameter, Cancelled
from neuroscope.methods.chunks import MAX_CHUNK
from neuroscope.methods.feature import fem_map
from neuroscope.methods.registry import list_methods
from neuroscope.methods.segmented import greedy_cover, label_regions

MEAN, STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """CONTRACT.md §7: Pearson r; constant maps are compared by value."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) < 1e-8 or np.ptp(b) < 1e-8:
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def blocky_image(h: int = 32, w: int = 32, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 255, size=(h // 8, w // 8, 3)).astype(np.uint8), np.ones((8, 8, 1), np.uint8))


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


def explainer(net: nn.Module, task: str = "classification", size=(32, 32), classes: int = 5) -> Explainer:
    return Explainer(load_model(net, task=task, input_size=size, num_classes=classes, mean=MEAN, std=STD))


class BoxScore(nn.Module):
    """Class 0's logit is the mean of the input inside a box; class 1's is 0."""

    def __init__(self, box=(8, 16, 8, 16)):
        super().__init__()
        self.box = box
        self.conv = nn.Conv2d(3, 3, 1)  # a spatial layer, identity
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x):
        y0, y1, x0, x1 = self.box
        a = self.conv(x)
        s = a[:, :, y0:y1, x0:x1].mean(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


# ------------------------------------------------------------------------ registry

CONTRACT_DEFAULTS = {
    "integrated-gradients": {"steps": 32, "baseline": "black", "smooth": 0},
    "occlusion": {"window": 16, "stride": 8, "baseline": "black"},
    "rise": {"masks": 500, "cells": 8, "p": 0.5, "seed": 0},
    "deconvnet": {"fix": True, "smooth": 0},
    "saliency": {"smooth": 0},
    "gradient-x-input": {"smooth": 0},
    "guided-backprop": {"smooth": 0},
    "guided-grad-cam": {"smooth": 0},
    "mlfem": {"fusion": "product"},
}
CATALOGUE = ["activation", "saliency", "gradient-x-input", "integrated-gradients", "guided-backprop", "deconvnet",
             "grad-cam", "grad-cam++", "guided-grad-cam", "xgrad-cam", "hires-cam", "layer-cam", "eigen-cam",
             "score-cam", "ablation-cam", "occlusion", "rise", "fem", "mlfem", "score-map", "fusion-map",
             "segmented-score-map", "guided-segmented-score-map", "similarity-map"]
SEGMENTATION_ONLY = {"score-map", "fusion-map", "segmented-score-map", "guided-segmented-score-map", "similarity-map"}


def test_every_catalogue_method_is_registered_with_the_contract_parameters():
    infos = {m.name: m for m in list_methods()}
    assert set(CATALOGUE) <= set(infos)
    for name, defaults in CONTRACT_DEFAULTS.items():
        assert infos[name].as_json()["params"] == defaults, name
    for name in CATALOGUE:
        info = infos[name]
        assert info.tasks == (("segmentation",) if name in SEGMENTATION_ONLY else ("classification", "segmentation"))
        assert set(info.frameworks) == {"torch", "keras"}
        assert info.description
    slow = {m.name for m in list_methods() if m.slow}
    assert {"score-cam", "ablation-cam", "occlusion", "rise", "integrated-gradients"} <= slow
    # gradient maps get the one SmoothGrad wrapper: `smooth` comes from the engine, not the method
    assert all("smooth" in infos[n].all_params() for n in ("deconvnet", "integrated-gradients", "guided-grad-cam"))
    assert "smooth" not in infos["deconvnet"].params


def test_parameters_are_checked():
    ex = explainer(tiny_classifier())
    img = blocky_image()
    with pytest.raises(BadParameter, match="fusion"):
        ex.explain(img, "mlfem", params={"fusion": "median"})
    with pytest.raises(BadParameter, match="no parameter"):
        ex.explain(img, "rise", params={"cell": 4})
    with pytest.raises(BadParameter, match="top"):
        ex.explain(img, "score-cam", params={"top": -1})


# ------------------------------------------------------------- known answers

def naive_occlusion(ex: Explainer, img, window: int, stride: int) -> np.ndarray:
    """Reference: every window occluded by black in uint8 RGB, preprocessed, scored."""
    prep = ex.prepare(img)
    obj = ex.resolve(img).objective
    H, W = prep.rgb.shape[:2]
    ys = sorted(set(list(range(0, H - window + 1, stride)) + [H - window]))
    xs = sorted(set(list(range(0, W - window + 1, stride)) + [W - window]))
    y0 = ex.backend.scores(prep.x, obj)[0]
    total, count = np.zeros((H, W)), np.zeros((H, W))
    for y in ys:
        for x in xs:
            rgb = prep.rgb.astype(np.float32).copy()
            rgb[y:y + window, x:x + window] = 0
            d = y0 - ex.backend.scores(ex.preprocess_rgb(rgb)[None], obj)[0]
            total[y:y + window, x:x + window] += d
            count[y:y + window, x:x + window] += 1
    return total / count


def test_occlusion_matches_a_naive_loop_also_where_windows_do_not_tile():
    ex = explainer(tiny_classifier(), size=(30, 30))
    img = blocky_image()
    ours = ex.explain(img, "occlusion", params={"window": 8, "stride": 5}).map_model
    np.testing.assert_allclose(ours, naive_occlusion(ex, img, 8, 5), rtol=1e-4, atol=1e-5)


def test_occlusion_and_rise_find_the_box_that_decides_the_score():
    ex = explainer(BoxScore(), classes=2)
    img = np.full((32, 32, 3), 200, np.uint8)
    inside = np.zeros((32, 32), bool)
    inside[8:16, 8:16] = True
    occ = ex.explain(img, "occlusion", target=Target.classification(0), params={"window": 4, "stride": 4}).map_model
    assert occ[~inside].max() < 1e-5 and occ[inside].min() > 0.1   # exact: outside the box changes nothing
    rise = ex.explain(img, "rise", target=Target.classification(0), params={"masks": 200, "cells": 4}).map_model
    assert rise[inside].mean() > 1.2 * rise[~inside].mean()


def test_rise_is_seeded():
    ex = explainer(tiny_classifier())
    img = blocky_image()
    a = ex.explain(img, "rise", params={"masks": 24, "seed": 0}).map_model
    ex.clear_caches()
    b = ex.explain(img, "rise", params={"masks": 24, "seed": 0}).map_model
    c = ex.explain(img, "rise", params={"masks": 24, "seed": 1}).map_model
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def naive_score_cam(ex: Explainer, img, layer: str) -> np.ndarray:
    """Reference Score-CAM: per channel, the uint8 image times the upsampled min-max
    activation, preprocessed, probability minus the black image's; ReLU(sum s_k A^k)."""
    from neuroscope.images import resize_map
    prep, obj = ex.prepare(img), ex.resolve(img).objective
    a = ex.capture(img, layers=[layer]).activations[layer]
    p_black = ex.backend.scores(ex.preprocess_rgb(np.zeros((1, *prep.rgb.shape), np.float32)), obj, kind="prob")[0]
    cam = np.zeros(a.shape[1:])
    for k in range(a.shape[0]):
        if np.ptp(a[k]) <= 1e-12:
            continue
        m = resize_map((a[k] - a[k].min()) / np.ptp(a[k]), prep.rgb.shape[:2])
        masked = ex.preprocess_rgb(prep.rgb.astype(np.float32) * m[..., None])[None]
        cam += (ex.backend.scores(masked, obj, kind="prob")[0] - p_black) * a[k]
    return resize_map(np.maximum(cam, 0).astype(np.float32), prep.rgb.shape[:2])


def test_score_cam_equals_the_per_channel_definition_and_runs_in_chunks():
    ex = explainer(tiny_classifier())
    img = blocky_image()
    sizes = []
    scores = ex.backend.scores

    def counting(x, *args, **kw):
        sizes.append(len(x))
        return scores(x, *args, **kw)

    ex.backend.scores = counting
    try:
        ours = ex.explain(img, "score-cam", layer="4").map_model
        assert max(sizes) <= MAX_CHUNK                    # never all K masked images at once
        assert sum(sizes) <= 16 + 1                       # one per live channel + the baseline
        sizes.clear()
        ex.explain(img, "score-cam", layer="4", params={"top": 5})
        assert sum(sizes) <= 5 + 1                        # top-N: N masked images
    finally:
        del ex.backend.scores
    np.testing.assert_allclose(ours, naive_score_cam(ex, img, "4"), rtol=1e-4, atol=1e-6)


def test_ablation_cam_reruns_only_the_layers_above_a_sequential_cut():
    ex = explainer(tiny_classifier())
    img = blocky_image()
    first = ex.backend.module[0]
    calls = []
    handle = first.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        ex.explain(img, "grad-cam", layer="4")            # capture cached: prediction + gradients
        assert ex.backend.can_cut("4")                    # (finding the cut: one probe + one check)
        calls.clear()
        cut = ex.explain(img, "ablation-cam", layer="4")
        assert cut.meta["extra"]["sequential_cut"] and calls == []   # the first conv never re-ran
        ex.backend._uppers["4"] = None                    # pretend there is no cut: full forwards
        ex.clear_caches()
        full = ex.explain(img, "ablation-cam", layer="4")
        assert not full.meta["extra"]["sequential_cut"] and sum(calls) >= 10
    finally:
        handle.remove()
    np.testing.assert_allclose(cut.map_model, full.map_model, rtol=1e-4, atol=1e-6)
    assert ex.backend.hook_count() == 0


class MiniMobileNet(nn.Module):
    """MobileNetV2's shape in miniature: a custom root whose forward chains its children,
    Sequential stages, inverted residual blocks with skips."""

    def __init__(self):
        super().__init__()
        from neuroscope.archs.mobilenet_v2 import ConvBNReLU, InvertedResidual
        torch.manual_seed(4)
        self.features = nn.Sequential(ConvBNReLU(3, 8, stride=2), InvertedResidual(8, 8, 1, 2),
                                      InvertedResidual(8, 16, 2, 4), InvertedResidual(16, 16, 1, 4),
                                      InvertedResidual(16, 24, 2, 4), ConvBNReLU(24, 32, kernel_size=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 5))

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def test_forward_from_finds_chains_through_custom_modules_and_refuses_residuals():
    ex = explainer(MiniMobileNet().eval(), size=(48, 48))
    backend = ex.backend
    assert backend.can_cut("features.3") and backend.can_cut("features.5.2") and backend.can_cut("features")
    assert not backend.can_cut("features.3.conv.1")      # inside a residual block: the skip needs the input
    img = blocky_image(48, 48)
    x, obj = ex.prepare(img).x, ex.resolve(img).objective
    cap = backend.capture(x, obj, ["features.3", "features.3.conv.1"], input_grad=False)
    for layer in ("features.3", "features.3.conv.1"):
        y = backend.scores_from(layer, cap.activations[layer][None], obj, x=x)
        np.testing.assert_allclose(y, [cap.score], rtol=1e-4)
    with pytest.raises(BadParameter, match="do not fit"):   # raised inside the hook: still removed
        backend.scores_from("features.3.conv.1", cap.activations["features.3"][None], obj, x=x)
    assert backend.hook_count() == 0


def test_integrated_gradients_reports_its_completeness_gap():
    ex = explainer(tiny_classifier())
    img, t = blocky_image(), Target.classification(2)
    extra = {s: ex.explain(img, "integrated-gradients", target=t, params={"steps": s}).meta["extra"] for s in (4, 64)}
    gap4, gap64 = abs(extra[4]["completeness_gap"]), abs(extra[64]["completeness_gap"])
    assert gap64 < gap4 / 4 and gap64 < 0.01 * abs(extra[64]["score_change"])   # sum of map -> y(x) - y(x_0)


def nyquist_share(m: np.ndarray) -> float:
    """Share of a map's spectral power on the Nyquist row and column: stride-2 checkerboards."""
    f = np.abs(np.fft.fft2(m - m.mean())) ** 2
    h, w = m.shape
    return float((f[h // 2, :].sum() + f[:, w // 2].sum()) / f.sum())


def test_deconvnet_fix_removes_the_strided_checkerboard():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    torch.manual_seed(3)
    ex = explainer(net.eval(), size=(64, 64))
    img = blocky_image(64, 64)
    raw = ex.explain(img, "deconvnet", params={"fix": False}).map_model
    fixed = ex.explain(img, "deconvnet").map_model
    assert nyquist_share(raw) > 0.2 and nyquist_share(fixed) < 0.02
    assert ex.backend.hook_count() == 0


def test_fem_keeps_only_strong_activations_weighted_by_channel_mean():
    a = np.zeros((3, 6, 6), np.float32)
    a[0, 2, 3] = 10.0                 # one hot spot
    a[1] = 5.0                        # constant: nothing salient
    a[2, :, :3] = 1.0                 # half the map: below mean + 2 std nowhere
    m = fem_map(a)
    expected = np.zeros((6, 6), np.float32)
    expected[2, 3] = 1.0
    np.testing.assert_allclose(m, expected)


def test_mlfem_fuses_one_fem_per_resolution_stage():
    ex = explainer(MiniMobileNet().eval(), size=(48, 48))
    img = blocky_image(48, 48)
    res = {f: ex.explain(img, "mlfem", params={"fusion": f}) for f in ("product", "mean", "max")}
    layers = res["product"].meta["extra"]["layers"]
    strides = [next(l.stride for l in ex.layers() if l.name == n) for n in layers]
    # the last layer of each resolution: the expansion (ReLU6) before each strided block, then the top
    assert layers == ["features.2.conv.0", "features.4.conv.0", "features"] and strides == [2, 4, 8]
    assert layers[-1] == ex.default_layer()
    p, mean, mx = (res[f].map_model for f in ("product", "mean", "max"))
    assert np.all(p <= mean + 1e-6) and np.all(mean <= mx + 1e-6) and mx.max() > 0


# ------------------------------------------------------------- segmented maps

def naive_greedy(regions: list[np.ndarray], score: np.ndarray) -> np.ndarray:
    out = score.astype(np.float64).copy()
    covered = np.zeros(score.shape, bool)
    while True:
        best, best_mean = None, -np.inf
        for r in regions:
            free = r & ~covered
            if free.any() and score[free].mean() > best_mean:
                best, best_mean = free, score[free].mean()
        if best is None:
            return out
        out[best] = best_mean
        covered |= best


def test_greedy_cover_matches_the_definition():
    rng = np.random.default_rng(0)
    labels = [np.kron(rng.integers(0, k, size=(4, 5)), np.ones((3, 3), int)) for k in (3, 6)]
    labels = [np.unique(l, return_inverse=True)[1].reshape(l.shape) for l in labels]
    score = rng.normal(size=(12, 15))
    mats = [label_regions(l) for l in labels]
    regions = sparse.vstack(mats, format="csr")
    dense = [np.asarray(regions[i].todense()).reshape(12, 15) > 0 for i in range(regions.shape[0])]
    np.testing.assert_allclose(greedy_cover(regions, score), naive_greedy(dense, score), rtol=1e-5)
    # toy example: the best region first, then what is left of the others
    toy = sparse.csr_matrix(np.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1],
                                      [0, 0, 0, 0, 0, 1]], np.float32))
    got = greedy_cover(toy, np.array([5, 5, 1, 1, 0, 9.0]))
    np.testing.assert_allclose(got, [11 / 3, 11 / 3, 11 / 3, 1, 0, 9], rtol=1e-6)


def tiny_segmenter(classes: int = 4) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, classes, 1)).eval()


def test_segmented_maps_aggregate_the_class_score_over_regions():
    ex = explainer(tiny_segmenter(), task="segmentation", size=(64, 96), classes=4)
    img = blocky_image(64, 96)
    t = Target.segmentation(region="predicted")
    pred = ex.predict(img)
    c = ex.resolve(img, t).class_id
    score = pred.logits[c]
    sim = ex.explain(img, "similarity-map", target=t).map_model
    for k in np.unique(pred.label_map):                    # each predicted region: its mean score
        region = pred.label_map == k
        np.testing.assert_allclose(sim[region], score[region].mean(), rtol=1e-5)
    seg = ex.explain(img, "segmented-score-map", target=t)
    guided = ex.explain(img, "guided-segmented-score-map", target=t)
    n_classes = len(np.unique(pred.label_map))
    assert guided.meta["extra"]["regions"] == seg.meta["extra"]["regions"] + n_classes
    for m in (seg.map_model, guided.map_model):
        # piecewise constant, within the score's range, and the best region keeps the top mean
        assert len(np.unique(m)) < 0.2 * m.size
        assert score.min() - 1e-5 <= m.min() and m.max() <= score.max() + 1e-5


# ------------------------------------------------------------- progress and cancel

SLOW_CASES = [("score-cam", "4", {}), ("ablation-cam", "4", {}), ("occlusion", None, {"window": 8, "stride": 4}),
              ("rise", None, {"masks": 40}), ("integrated-gradients", None, {"steps": 16}),
              ("saliency", None, {"smooth": 12})]


@pytest.mark.parametrize("method,layer,params", SLOW_CASES, ids=[c[0] for c in SLOW_CASES])
def test_long_methods_report_progress_and_cancel_cleanly(method, layer, params):
    ex = explainer(tiny_classifier())
    img = blocky_image()
    seen = []

    def record(fraction, message):
        seen.append(fraction)
        return True

    ex.explain(img, method, layer=layer, params=params, progress=record)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == 1.0 and 0.0 <= seen[0]

    calls = []

    def stop_after_two(fraction, message):
        calls.append(fraction)
        return len(calls) < 2

    ex.clear_caches()
    with pytest.raises(Cancelled):
        ex.explain(img, method, layer=layer, params=params, progress=stop_after_two)
    assert len(calls) == 2
    assert ex.backend.hook_count() == 0
    # a cancelled run caches nothing: the next call computes (and finishes)
    assert ex.explain(img, method, layer=layer, params=params).map.shape == (32, 32)


# ------------------------------------------------------------- every method, both tasks

@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_every_method_runs_on_both_tasks_and_returns_a_finite_map(task):
    net = tiny_classifier() if task == "classification" else tiny_segmenter()
    ex = explainer(net, task=task, size=(32, 32), classes=5 if task == "classification" else 4)
    img = blocky_image(40, 48)                      # original size differs from the model's
    fast = {"occlusion": {"window": 8, "stride": 8}, "rise": {"masks": 16}, "integrated-gradients": {"steps": 4}}
    for info in list_methods():
        if task not in info.tasks or info.name not in CATALOGUE:
            continue
        res = ex.explain(img, info.name, params=fast.get(info.name, {}))
        assert res.map.shape == (40, 48) and res.map.dtype == np.float32, info.name
        assert np.all(np.isfinite(res.map)), info.name
        if not info.signed:
            assert res.map.min() >= -1e-6, info.name
    assert ex.backend.hook_count() == 0


# ------------------------------------------------------------- framework parity

def keras_twin(task: str, classes: int):
    """The Keras twin of `parity_net`, same layer names (weights copied by name)."""
    keras = pytest.importorskip("keras")
    L = keras.layers
    x = inp = keras.Input((32, 32, 3), name="input")
    x = L.Conv2D(8, 3, padding="same", name="0")(x)
    x = L.ReLU(name="1")(x)
    x = L.ZeroPadding2D(1, name="2.pad")(x)
    x = L.Conv2D(16, 3, strides=2, name="2")(x)
    x = L.ReLU(max_value=6.0, name="3")(x)
    x = L.Conv2D(16, 3, padding="same", name="4")(x)
    x = L.ReLU(name="5")(x)
    if task == "classification":
        x = L.GlobalAveragePooling2D(keepdims=True, name="6")(x)
        x = L.Flatten(name="7")(x)
        x = L.Dense(classes, name="8")(x)
    else:
        x = L.Conv2D(classes, 1, name="6")(x)
    return keras.Model(inp, x)


def parity_net(task: str, classes: int) -> nn.Module:
    torch.manual_seed(5)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU6(),
              nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    if task == "classification":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)]
    else:
        layers += [nn.Conv2d(16, classes, 1)]
    return nn.Sequential(*layers).eval()


_TWINS: dict = {}


def twins(task: str) -> tuple[Explainer, Explainer]:
    """The torch net and its Keras twin (weights copied), built once per task."""
    if task not in _TWINS:
        pytest.importorskip("neuroscope.backends.keras_backend")
        from neuroscope.convert import copy_torch_weights
        classes = 5 if task == "classification" else 4
        tnet = parity_net(task, classes)
        knet = keras_twin(task, classes)
        copy_torch_weights(tnet, knet)
        _TWINS[task] = explainer(tnet, task, classes=classes), explainer(knet, task, classes=classes)
    return _TWINS[task]


# (method, params): every catalogue method at its defaults (fast settings), plus variants
VARIANTS = [(m, {}) for m in CATALOGUE] + [
    ("deconvnet", {"fix": False}), ("saliency", {"smooth": 6}), ("guided-backprop", {"smooth": 4}),
    ("integrated-gradients", {"baseline": "blur"}), ("score-cam", {"top": 6, "softmax": True}),
    ("ablation-cam", {"top": 6}), ("mlfem", {"fusion": "max"}), ("rise", {"seed": 3}),
    ("occlusion", {"baseline": "blur"})]
PARITY = [(task, m, p) for task in ("classification", "segmentation") for m, p in VARIANTS
          if task == "segmentation" or m not in SEGMENTATION_ONLY]
FAST = {"integrated-gradients": {"steps": 8}, "rise": {"masks": 60}, "occlusion": {"window": 8, "stride": 4}}
STOCHASTIC = {"rise"}


@pytest.mark.parametrize("task,method,params", PARITY,
                         ids=[f"{t[:3]}-{m}{'-' + '-'.join(map(str, p.values())) if p else ''}" for t, m, p in PARITY])
def test_torch_and_keras_give_the_same_map(task, method, params):
    ext, exk = twins(task)
    img = blocky_image(48, 40)
    target = Target.classification(1) if task == "classification" else Target.segmentation(region="predicted")
    p = {**FAST.get(method, {}), **params}
    mt = ext.explain(img, method, target=target, params=p).map
    mk = exk.explain(img, method, target=target, params=p).map
    r = pearson(mt, mk)
    stochastic = method in STOCHASTIC or p.get("smooth", 0) > 0
    assert r >= (0.95 if stochastic else 0.99), f"{method} {params}: r = {r:.4f}"


def test_signed_max_abs_keeps_the_largest_magnitude_and_the_first_channel_on_ties():
    from neuroscope.methods.gradient import signed_max_abs
    rng = np.random.default_rng(0)
    for shape in [(4, 16, 24, 3), (7, 3), (5, 2), (6, 1)]:
        for g in (rng.standard_normal(shape).astype(np.float32),
                  rng.integers(-2, 3, size=shape).astype(np.float32)):   # many exact ties, zeros
            if shape[-1] > 1:
                g[..., -1].flat[::3] = -g[..., 0].flat[::3]              # opposite extremes
            want = np.take_along_axis(g, np.argmax(np.abs(g), axis=-1)[..., None], axis=-1)[..., 0]
            np.testing.assert_array_equal(signed_max_abs(g), want)
    strided = rng.standard_normal((2, 3, 8, 8)).astype(np.float32).transpose(0, 2, 3, 1)   # NCHW memory
    np.testing.assert_array_equal(signed_max_abs(strided), signed_max_abs(np.ascontiguousarray(strided)))
