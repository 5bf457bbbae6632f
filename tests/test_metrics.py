"""Metrics of explanation maps: known answers on hand-made maps and models whose evidence is
known by construction, and the model-randomisation sanity check on a tiny trained CNN."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neuroscope import metrics
from neuroscope.engine import Explainer
from neuroscope.targets import Target
from neuroscope.zoo import load_model

SIZE = 32


class RegionEvidence(nn.Module):
    """Class 0's logit is the brightness inside a fixed square; class 1's is a constant.

    The evidence for class 0 is exactly the square, weighted by brightness: the ideal
    deletion order is known.
    """

    def __init__(self, box=(8, 8, 20, 20)):
        super().__init__()
        mask = torch.zeros(1, 1, SIZE, SIZE)
        x0, y0, x1, y1 = box
        mask[..., y0:y1, x0:x1] = 1.0
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0)

    def forward(self, x):
        s = (self.conv(x) * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum() * 4.0 - 4.0
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _explainer(module, task="classification", classes=2, size=(SIZE, SIZE)):
    return Explainer(load_model(module, task=task, input_size=size, num_classes=classes))


@pytest.fixture(scope="module")
def region_setup():
    ex = _explainer(RegionEvidence())
    rng = np.random.default_rng(0)
    image = rng.integers(120, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    ideal = np.zeros((SIZE, SIZE), np.float32)
    ideal[8:20, 8:20] = image[8:20, 8:20].sum(axis=-1)
    return ex, image, ideal


# ------------------------------------------------------------ localisation
def test_map_equal_to_the_mask_hits_and_has_iou_one():
    mask = np.zeros((40, 60), bool)
    mask[10:25, 30:50] = True
    m = mask.astype(np.float32)
    assert metrics.pointing_game(m, mask) == 1.0
    iou = metrics.localisation_iou(m, mask)
    assert iou.best == 1.0 and iou.mean == 1.0
    assert metrics.energy_pointing_game(m, mask) == 1.0


def test_pointing_game_tolerance_is_fifteen_pixels():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    for dx, hit in ((14, 1.0), (15, 1.0), (16, 0.0), (30, 0.0)):
        m = np.zeros((100, 100), np.float32)
        m[50, 59 + dx] = 1.0
        assert metrics.pointing_game(m, mask) == hit, dx
    assert metrics.pointing_game(np.zeros((100, 100)), mask) == 0.0  # a flat map points nowhere


def test_iou_depends_on_the_threshold_and_best_picks_the_right_one():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 10:30] = True
    m = np.full((50, 50), 0.3, np.float32)   # background at 0.3 of the peak
    m[mask] = 1.0
    iou = metrics.localisation_iou(m, mask)
    by_t = dict(zip(iou.thresholds, iou.values))
    assert by_t[0.1] == pytest.approx(mask.sum() / mask.size)  # everything is "on" below 0.3
    assert by_t[0.5] == 1.0 and iou.best == 1.0
    assert 0.0 < iou.mean < 1.0


def test_energy_pointing_game_counts_positive_mass_only():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    m = np.zeros((10, 10), np.float32)
    m[:5] = 1.0         # 50 inside
    m[5:] = -3.0        # negative mass outside is ignored
    m[9, 9] = 50.0      # 50 outside
    assert metrics.energy_pointing_game(m, mask) == pytest.approx(0.5)


def test_random_pointing_game_is_the_share_of_pixels_within_tolerance():
    mask = np.zeros((100, 200), bool)
    mask[0:100, 0:10] = True
    assert metrics.random_pointing_game(mask) == pytest.approx(25 / 200)


def test_pearson_and_sim():
    rng = np.random.default_rng(1)
    a = rng.random((20, 20))
    assert metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0)
    assert metrics.sim(a, a) == pytest.approx(1.0)
    b = np.zeros_like(a)
    b[0, 0] = 1.0
    assert metrics.sim(a, b) == pytest.approx(a[0, 0] / a.sum())
    assert metrics.pearson(np.zeros(4), np.ones(4)) == 0.0       # flat maps carry no correlation
    assert metrics.spearman(a, np.exp(a)) == pytest.approx(1.0)  # monotone transforms keep ranks


# ------------------------------------------------------------ faithfulness
def test_random_map_deletion_auc_lies_between_ideal_and_inverted(region_setup):
    ex, image, ideal = region_setup
    t = Target.classification(0)
    ideal_auc = metrics.deletion_curve(ex, image, ideal, t, steps=20, chunk=21).auc
    inverted_auc = metrics.deletion_curve(ex, image, -ideal, t, steps=20, chunk=21).auc
    rand = np.random.default_rng(3).random((SIZE, SIZE))
    random_auc = metrics.deletion_curve(ex, image, rand, t, steps=20, chunk=21).auc
    assert ideal_auc < random_auc < inverted_auc
    assert inverted_auc - ideal_auc > 0.2


def test_insertion_orders_the_same_maps_the_other_way(region_setup):
    ex, image, ideal = region_setup
    t = Target.classification(0)
    ins = [metrics.insertion_curve(ex, image, m, t, steps=20, chunk=21).auc
           for m in (ideal, np.random.default_rng(3).random((SIZE, SIZE)), -ideal)]
    assert ins[0] > ins[1] > ins[2]


def test_curves_start_at_the_clean_score_and_end_at_the_baseline(region_setup):
    ex, image, ideal = region_setup
    t = Target.classification(0)
    curve = metrics.deletion_curve(ex, image, ideal, t, steps=10)
    prep = ex.prepare(image)
    rt = ex.resolve(prep, t)
    clean = ex.backend.scores(prep.x, rt.objective, kind="prob")[0]
    black = ex.backend.scores(ex.preprocess_rgb(np.zeros((1, SIZE, SIZE, 3))), rt.objective, kind="prob")[0]
    assert curve.scores[0] == pytest.approx(clean, abs=1e-6)
    assert curve.scores[-1] == pytest.approx(black, abs=1e-6)
    assert len(curve.fractions) == 11 and curve.fractions[-1] == 1.0
    assert curve.auc == pytest.approx(np.trapezoid(curve.scores, curve.fractions))


def test_segmentation_curves_track_the_region_fixed_on_the_clean_image():
    class TwoHalves(nn.Module):  # class 1 where the pixel is bright, class 0 elsewhere
        def forward(self, x):
            b = x.mean(dim=1, keepdim=True) * 8.0 - 4.0
            return torch.cat([-b, b], dim=1)

    ex = _explainer(TwoHalves(), task="segmentation", size=(16, 16))
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, 8:] = 255
    evidence = np.zeros((16, 16), np.float32)
    evidence[:, 8:] = 1.0
    t = Target.segmentation(1, "predicted")
    good = metrics.deletion_curve(ex, image, evidence, t, steps=8)
    bad = metrics.deletion_curve(ex, image, 1.0 - evidence, t, steps=8)
    assert good.scores[0] > 0.95 and good.auc < bad.auc
    # the region stays the clean image's right half: once it is black the score is low
    assert good.scores[4] < 0.05 and bad.scores[4] > 0.95


# ------------------------------------------------------------ sanity check
class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


def square_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Grey noise with one 8x8 square anywhere; label 1 when the square is bright, 0 when dark."""
    imgs = rng.integers(90, 150, size=(n, SIZE, SIZE, 3)).astype(np.uint8)
    labels, boxes = [], []
    for i in range(n):
        x, y = int(rng.integers(0, SIZE - 8)), int(rng.integers(0, SIZE - 8))
        label = int(rng.integers(0, 2))
        imgs[i, y:y + 8, x:x + 8] = 240 if label else 10
        labels.append(label)
        boxes.append((x, y, x + 8, y + 8))
    return imgs, np.array(labels), boxes


@pytest.fixture(scope="module")
def trained_cnn():
    """TinyCNN trained for 80 small steps (under a second on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net trains faster on one thread, and 2 cores are shared
    try:
        torch.manual_seed(0)
        net = TinyCNN()
        rng = np.random.default_rng(0)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(80):
            imgs, labels, _ = square_images(32, rng)
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
            loss = nn.functional.cross_entropy(net(x), torch.from_numpy(labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.3
    return net.eval()


def test_grad_cam_points_at_the_dark_square_that_decides_the_class(trained_cnn):
    # The net learned "a dark square means class 0" (class 1 is the absence of one), so
    # the evidence for class 0 is the square itself.
    ex = _explainer(trained_cnn)
    imgs, labels, boxes = square_images(12, np.random.default_rng(5))
    chosen = [i for i in range(12) if labels[i] == 0]
    assert len(chosen) >= 4
    for i in chosen:
        x0, y0, x1, y1 = boxes[i]
        mask = np.zeros((SIZE, SIZE), bool)
        mask[y0:y1, x0:x1] = True
        m = ex.explain(imgs[i], "grad-cam", Target.classification(0)).map
        assert metrics.pointing_game(m, mask, tolerance=0) == 1.0
        assert metrics.localisation_iou(m, mask).best > 0.5
        assert metrics.energy_pointing_game(m, mask) > 5 * mask.mean()


def test_grad_cam_changes_under_randomisation_and_the_shared_model_does_not(trained_cnn):
    ex = _explainer(trained_cnn)
    before = {k: v.clone() for k, v in ex.backend.module.state_dict().items()}
    imgs, labels, boxes = square_images(1, np.random.default_rng(5))
    t = Target.classification(int(labels[0]))
    res = metrics.sanity_check(ex, imgs[0], ["grad-cam"], t, max_steps=4)["grad-cam"]
    assert res.steps[-1] == "features.0"            # the last step randomises down to the first layer
    assert res.steps[0] == "fc" and len(res.steps) == len(res.rank_corr) == 4
    assert res.final < 0.5 and not np.isnan(res.final)
    for k, v in ex.backend.module.state_dict().items():  # the cached model is untouched
        assert torch.equal(v, before[k]), k
    assert ex.explain(imgs[0], "grad-cam", t).map.max() > 0


def test_a_map_that_ignores_the_weights_fails_the_sanity_check(trained_cnn):
    from neuroscope.methods import registry

    name = "test-image-brightness"
    info = registry.MethodInfo(name, "perturbation", needs_layer=False, signed=False)
    registry.get_method("saliency")  # load the registry first
    registry.register(info)(lambda ctx: ctx.rgb.astype(np.float32).mean(axis=-1))
    try:
        ex = _explainer(trained_cnn)
        imgs, labels, _ = square_images(1, np.random.default_rng(5))
        res = metrics.sanity_check(ex, imgs[0], [name], Target.classification(int(labels[0])), max_steps=2)[name]
        assert res.rank_corr == [pytest.approx(1.0), pytest.approx(1.0)] and not res.passed
    finally:
        registry._REGISTRY.pop(name, None)
