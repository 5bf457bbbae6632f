"""Engine behaviour on tiny models with known answers (torch backend)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tiny_models import LinearNet, QuadrantNet, TinySegNet
from torch import nn

from neuroscope import BadParameter, BadTarget, Cancelled, Explainer, Target, load_model
from neuroscope.engine import default_layer
from neuroscope.backends.base import LayerInfo


def quadrant_explainer():
    return Explainer(load_model(QuadrantNet(), task="classification", input_size=(32, 32), classes=["other", "corner"]))


def mass_in_top_left(m: np.ndarray) -> float:
    h, w = m.shape
    pos = np.abs(m)
    return float(pos[: h // 2, : w // 2].sum() / pos.sum())


@pytest.mark.parametrize("method", ["grad-cam", "saliency", "grad-cam++", "guided-backprop", "gradient-x-input",
                                    "integrated-gradients", "hires-cam", "layer-cam"])
def test_maps_concentrate_on_the_quadrant_that_decides(method, rng):
    ex = quadrant_explainer()
    image = rng.integers(30, 220, size=(64, 64, 3), dtype=np.uint8)
    res = ex.explain(image, method, target=Target.classification("corner"))
    assert res.map.shape == (64, 64)
    assert mass_in_top_left(res.map) > 0.9, method


def test_linear_model_saliency_equals_its_weights(rng):
    net = LinearNet(8, 8)
    ex = Explainer(load_model(net, task="classification", input_size=(8, 8), num_classes=3))
    image = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    cap = ex.capture(image, Target.classification(2), layers=[])
    w = net.fc.weight[2].detach().numpy().reshape(3, 8, 8).transpose(1, 2, 0)
    np.testing.assert_allclose(cap.input_grad, w, rtol=1e-5, atol=1e-6)
    sal = ex.explain(image, "saliency", target=Target.classification(2)).map
    expected = np.take_along_axis(w, np.argmax(np.abs(w), axis=-1)[..., None], -1)[..., 0]
    np.testing.assert_allclose(sal, expected, rtol=1e-5, atol=1e-6)


def test_contrast_target_is_the_difference_of_two_logits(rng):
    net = LinearNet(8, 8)
    ex = Explainer(load_model(net, task="classification", input_size=(8, 8), num_classes=3))
    image = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    g = ex.capture(image, Target.classification(0, contrast=1), layers=[]).input_grad
    w = (net.fc.weight[0] - net.fc.weight[1]).detach().numpy().reshape(3, 8, 8).transpose(1, 2, 0)
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_guided_backprop_leaves_no_hook_after_an_exception(rng):
    ex = quadrant_explainer()
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    before = ex.explain(image, "saliency").map.copy()

    def cancel(fraction, message):
        return False

    with pytest.raises(Cancelled):
        ex.explain(image, "guided-backprop", params={"smooth": 4}, progress=cancel)
    assert ex.backend.hook_count() == 0
    ex.clear_caches()
    np.testing.assert_array_equal(ex.explain(image, "saliency").map, before)


def test_guided_rule_differs_from_plain_gradient_on_relu6():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    ex = Explainer(load_model(net, task="classification", input_size=(16, 16), num_classes=2))
    image = np.random.default_rng(3).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    prep = ex.prepare(image)
    rt = ex.resolve(prep, Target.classification(0))
    plain, _ = ex.backend.input_gradients(prep.x, rt.objective)
    guided, _ = ex.backend.input_gradients(prep.x, rt.objective, rule="guided")
    assert np.abs(plain - guided).max() > 1e-4
    # Reference: hand-written guided rule through the same layers.
    x = torch.from_numpy(prep.x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)

    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.clamp(0, 6)

        @staticmethod
        def backward(ctx, dy):
            (t,) = ctx.saved_tensors
            return dy.clamp(min=0) * ((t > 0) & (t < 6))

    h = Guided.apply(net[0](x))
    h = Guided.apply(net[2](h))
    y = net[6](net[5](net[4](h)))[0, 0]
    (ref,) = torch.autograd.grad(y, [x])
    np.testing.assert_allclose(guided[0], ref[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-7)


def seg_explainer():
    return Explainer(load_model(TinySegNet(), task="segmentation", input_size=(32, 48), num_classes=4))


def test_in_place_residual_does_not_corrupt_the_captured_layer(rng):
    ex = seg_explainer()
    net = ex.backend.module
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    cap = ex.capture(image, Target.segmentation(region="all"), layers=["block", "stem"])
    x = torch.from_numpy(ex.prepare(image).x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a = net.stem(x)
        b = net.block(a)
    np.testing.assert_allclose(cap.activations["block"], b[0].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(cap.activations["block"], (b + a)[0].numpy(), atol=1e-3)


def test_segmentation_region_modes_and_errors(rng):
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    pred = ex.predict(image)
    assert pred.labels.shape == (64, 96)
    shares = pred.pixel_shares()
    assert abs(sum(s["pixel_share"] for s in shares) - 1) < 1e-9
    top = shares[0]["class_id"]
    r_all = ex.resolve(image, Target.segmentation(top, "all"))
    r_pred = ex.resolve(image, Target.segmentation(None, "predicted"))
    assert r_all.pixels == 64 * 96 and r_pred.class_id == top
    assert r_pred.pixels == int((pred.labels == top).sum())
    r_box = ex.resolve(image, Target.segmentation(top, (10, 5, 30, 25)))
    assert r_box.pixels == 20 * 20
    ys, xs = np.nonzero(pred.labels == top)
    r_px = ex.resolve(image, Target.segmentation(None, (int(xs[0]), int(ys[0]))))
    assert r_px.class_id == top and 0 < r_px.pixels <= r_pred.pixels
    r_within = ex.resolve(image, Target.segmentation(top, (0, 0, 96, 64), within_class=True))
    assert r_within.pixels == r_pred.pixels
    absent = [c for c in range(4) if c not in {s["class_id"] for s in shares}]
    if absent:
        with pytest.raises(BadTarget, match="empty"):
            ex.resolve(image, Target.segmentation(absent[0], "predicted"))
    with pytest.raises(BadTarget, match="outside"):
        ex.resolve(image, Target.segmentation(None, (500, 5)))
    with pytest.raises(BadTarget):
        ex.resolve(image, Target.segmentation(None, (30, 5, 10, 25)))
    with pytest.raises(BadTarget, match="out of range"):
        ex.resolve(image, Target.segmentation(9))
    with pytest.raises(BadTarget, match="segmentation"):
        quadrant_explainer().resolve(image, Target.segmentation())


def test_region_target_is_the_region_sum_of_the_class_logit(rng):
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    rt = ex.resolve(image, Target.segmentation(2, (4, 4, 20, 16)))
    cap = ex.capture(image, Target.segmentation(2, (4, 4, 20, 16)), layers=[])
    logits = ex.predict(image).logits
    assert cap.score == pytest.approx(float(logits[2][4:16, 4:20].sum()), rel=1e-4)
    assert rt.pixels == 16 * 12


def test_class_names_resolve_case_insensitively_and_ambiguity_is_an_error(rng):
    ex = Explainer(load_model(QuadrantNet(), task="classification", input_size=(32, 32), classes=["Car", "car"]))
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    with pytest.raises(BadTarget, match="0, 1"):
        ex.resolve(image, Target.classification("CAR"))
    ex2 = quadrant_explainer()
    assert ex2.resolve(image, Target.classification("CoRnEr")).class_id == 1


def test_default_layer_is_the_last_spatial_layer_of_the_largest_stride():
    layers = [LayerInfo("a", "Conv2d", (4, 16, 16), True, 2), LayerInfo("b", "Conv2d", (4, 8, 8), True, 4),
              LayerInfo("c", "ReLU", (4, 8, 8), True, 4), LayerInfo("d", "Conv2d", (4, 16, 16), True, 2),
              LayerInfo("fc", "Linear", (3,), False, None)]
    assert default_layer(layers) == "c"
    assert default_layer(layers[-1:]) is None


def test_bad_layers_and_parameters_are_clear_errors(rng):
    ex = quadrant_explainer()
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    with pytest.raises(BadParameter, match="unknown layer"):
        ex.explain(image, "grad-cam", layer="nope")
    with pytest.raises(BadParameter, match="no spatial output"):
        ex.explain(image, "grad-cam", layer="fc")
    with pytest.raises(BadParameter, match="no parameter"):
        ex.explain(image, "grad-cam", params={"steps": 3})
    with pytest.raises(BadParameter, match="must be int"):
        ex.explain(image, "integrated-gradients", params={"steps": "many"})
    with pytest.raises(BadParameter, match="segmentation"):
        ex.explain(image, "score-map")


def test_layer_sweep_needs_one_capture_and_matches_single_layer_maps(rng):
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    sweep = ex.sweep(image)
    assert set(sweep) == {l.name for l in ex.spatial_layers()}
    assert ex.stats["capture"] == 1
    for name in ("stem", "block"):
        single = ex.explain(image, "grad-cam", layer=name).map_model
        np.testing.assert_allclose(sweep[name], single, rtol=1e-5, atol=1e-7)
    assert ex.stats["capture"] == 1  # the single-layer maps came from the sweep's capture


def test_means_only_capture_gives_the_full_means_and_is_topped_up_for_full_gradients(rng):
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    prep, rt = ex.prepare(image), ex.resolve(image)
    names = [l.name for l in ex.spatial_layers()]
    full = ex.backend.capture(prep.x, rt.objective, names, input_grad=False)
    lean = ex.backend.capture(prep.x, rt.objective, names, input_grad=False, gradients=False)
    assert lean.gradients == {} and set(lean.gradient_means) == set(names)
    for name in names:
        np.testing.assert_allclose(lean.gradient_means[name], full.gradients[name].mean(axis=(1, 2)),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(lean.activations[name], full.activations[name])
    ex.sweep(image)                 # a Grad-CAM sweep keeps only the means ...
    assert ex.stats["capture"] == 1
    pp = ex.explain(image, "grad-cam++", layer="stem").map_model   # ... so this needs the gradients
    assert ex.stats["capture"] == 2
    np.testing.assert_allclose(pp, seg_explainer().explain(image, "grad-cam++", layer="stem").map_model,
                               rtol=1e-5, atol=1e-7)


def test_results_are_cached_and_display_needs_no_pass(rng):
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    ex.explain(image, "grad-cam")
    before = dict(ex.stats)
    ex.explain(image.copy(), "grad-cam")
    assert dict(ex.stats) == before


def test_concurrent_requests_equal_sequential_ones_and_leave_no_hooks(rng):
    # Caches off, so all 160 requests really run their model passes concurrently.
    ex = Explainer(load_model(TinySegNet(), task="segmentation", input_size=(32, 48), num_classes=4),
                   cache_size=0, capture_cache_bytes=0)
    images = [rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8) for _ in range(3)]
    layers = [l.name for l in ex.spatial_layers()]
    jobs = []
    for i in range(20):
        jobs.append((i % 3, ["grad-cam", "saliency", "guided-backprop", "grad-cam++", "activation"][i % 5],
                     layers[i % len(layers)]))

    def run(explainer, job):
        img, method, layer = job
        lay = layer if method in ("grad-cam", "grad-cam++", "activation") else None
        return explainer.explain(images[img], method, layer=lay).map

    sequential = [run(seg_explainer(), job) for job in jobs]
    results: dict = {}
    errors: list = []

    def worker(t):
        try:
            for step in range(len(jobs)):
                k = (step + 3 * t) % len(jobs)  # each thread its own order
                results[(t, k)] = run(ex, jobs[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(results) == 8 * 20
    for (t, k), m in results.items():
        np.testing.assert_allclose(m, sequential[k], rtol=1e-5, atol=1e-6)
    assert ex.backend.hook_count() == 0
    assert ex.stats["explain"] == 8 * 20


def test_prediction_label_map_is_numpys_argmax_and_probs_are_a_softmax(rng):
    from neuroscope.engine import _argmax_classes
    logits = rng.normal(size=(7, 12, 20)).astype(np.float32)
    logits[3, :2] = logits[5, :2] = 50.0          # ties: the first maximum wins, as in numpy
    np.testing.assert_array_equal(_argmax_classes(logits), np.argmax(logits, axis=0))
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    pred = ex.predict(image)
    np.testing.assert_array_equal(pred.label_map, np.argmax(pred.logits, axis=0))
    np.testing.assert_allclose(pred.probs.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(pred.probs, axis=0), pred.label_map)
    assert pred.labels.shape == (32, 48)


def test_allocator_tuning_is_on_by_default_and_can_be_switched_off():
    import subprocess
    import sys
    code = "import neuroscope.runtime as r, neuroscope; print(r._tuned)"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "NEUROSCOPE_TUNE_MALLOC": "0"})
    assert off.stdout.strip() == "False"
    assert on.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")


def test_trim_above_returns_kept_memory_only_above_the_limit():
    import subprocess
    import sys
    if not sys.platform.startswith("linux"):
        return
    # 300 MB in 1 MB blocks (heap, below the mmap threshold), freed: the tuned allocator keeps
    # it; trim_above gives it back only when RSS is above the limit
    code = ("import neuroscope.runtime as r, numpy as np; "
            "a = [np.ones(1 << 20, np.uint8) for _ in range(300)]; del a; "
            "kept = r.rss_bytes(); no = r.trim_above(1 << 45); after_no = r.rss_bytes(); "
            "yes = r.trim_above(kept - (100 << 20)); after = r.rss_bytes(); "
            "print(no, yes, (kept - after_no) >> 20, (kept - after) >> 20)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    no, yes, freed_no, freed = out.stdout.split()
    assert (no, yes) == ("False", "True")
    assert int(freed_no) < 50 and int(freed) > 200


def test_numpys_blas_runs_one_thread_after_import():
    import subprocess
    import sys
    # numpy imported first (as Streamlit does): the library's own setter must still apply
    code = ("import numpy, neuroscope, neuroscope.runtime as r; "
            "import ctypes, glob, os; d = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), 'numpy.libs'); "
            "libs = glob.glob(os.path.join(d, '*openblas*.so*')); "
            "get = [getattr(ctypes.CDLL(p), n) for p in libs for n in ('scipy_openblas_get_num_threads64_',) "
            "       if hasattr(ctypes.CDLL(p), n)]; "
            "print(r._blas_limited, [g() for g in get])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    if out[1].strip() == "[]":
        pytest.skip("numpy is not linked against a bundled OpenBLAS here")
    assert int(out[0]) >= 1 and out[1].strip() == "[1]"


def test_smoothgrad_noise_is_standard_normal_seeded_and_chunk_free():
    from statistics import NormalDist
    from neuroscope.engine import standard_normal_f32
    z = standard_normal_f32(np.random.default_rng(3), np.empty(400_001, np.float32))
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01 and abs((z ** 4).mean() - 3.0) < 0.05
    for q in (0.001, 0.05, 0.5, 0.95, 0.999):
        assert abs(np.quantile(z, q) - NormalDist().inv_cdf(q)) < 0.02, q
    again = standard_normal_f32(np.random.default_rng(3), np.empty(400_001, np.float32))
    np.testing.assert_array_equal(z, again)
    for n in (1, 2, 3):
        assert np.all(np.isfinite(standard_normal_f32(np.random.default_rng(0), np.empty(n, np.float32))))
    scale, rgb = np.array([2.0, 3.0, 5.0], np.float32), np.random.default_rng(1).random(3 * 50).astype(np.float32)
    for n in (3 * 50, 3 * 49):   # scale folded into the radius (even halves) or applied after
        plain = standard_normal_f32(np.random.default_rng(4), np.empty(n, np.float32))
        noisy = standard_normal_f32(np.random.default_rng(4), np.empty(n, np.float32), scale, rgb[:n])
        np.testing.assert_allclose(noisy, rgb[:n] + np.tile(scale, n // 3) * plain, rtol=1e-6, atol=1e-6)


def test_smoothgrad_is_the_mean_of_the_noisy_maps_drawn_per_sample(rng):
    """smooth=n equals the mean of n single saliency maps of x + noise, the noise of sample
    i drawn from stream i of the seeded generator (so chunking cannot change it)."""
    from neuroscope.engine import standard_normal_f32
    from neuroscope.images import normalize_scale
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    n = 6
    got = ex.explain(image, "saliency", params={"smooth": n}).map_model
    prep, rt = ex.prepare(image), ex.resolve(image)
    scale = normalize_scale(ex.spec.value_range, ex.spec.std) * np.float32(0.15 * 255.0)
    maps = []
    for stream in np.random.default_rng(0).spawn(n):
        noisy = prep.x[0] + scale * standard_normal_f32(stream, np.empty(prep.x[0].size, np.float32)).reshape(prep.x[0].shape)
        g, _ = ex.backend.input_gradients(noisy[None], rt.objective)
        i = np.argmax(np.abs(g[0]), axis=-1)[..., None]
        maps.append(np.take_along_axis(g[0], i, axis=-1)[..., 0])
    np.testing.assert_allclose(got, np.mean(maps, axis=0), rtol=1e-4, atol=1e-6)


def test_the_target_is_resolved_once_per_image(rng, monkeypatch):
    """The one-pass prefetch resolves the target inside the pass; explain, cached results
    and other methods reuse it (a region mask is resized to the original image and hashed)."""
    import neuroscope.engine as engine
    ex = seg_explainer()
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    calls = []
    real = engine.resolve_target
    monkeypatch.setattr(engine, "resolve_target", lambda *a, **k: calls.append(1) or real(*a, **k))
    ex.explain(image, "grad-cam")
    ex.explain(image, "grad-cam")
    ex.explain(image, "grad-cam++", layer="stem")
    assert len(calls) == 1
    ex.explain(image, "grad-cam", target=Target.segmentation(1, "all"))
    assert len(calls) == 2
    ex.clear_caches()
    ex.explain(image, "grad-cam")
    assert len(calls) == 3


def test_cache_pool_bounds_the_caches_of_several_explainers_together():
    from neuroscope.engine import CachePool, _LRU
    pool = CachePool(max_bytes=100)
    a, b = _LRU(10, 80, pool), _LRU(10, 80, pool)
    a.put("a1", 1, 40)
    b.put("b1", 2, 40)
    assert a.get("a1") == 1                # a1 is now the most recently used
    b.put("b2", 3, 40)                     # 120 > 100: the pool's oldest entry (b1) goes
    assert (a.get("a1"), b.get("b1"), b.get("b2")) == (1, None, 3)
    assert pool.nbytes == 80 == a.nbytes + b.nbytes
    a.put("a2", 4, 60)                     # 140: the oldest (a1) goes
    assert pool.nbytes == 100 and a.get("a1") is None and b.get("b2") == 3
    b.put("b3", 5, 70)                     # b2 then a2 go (b3, the newest, stays)
    assert pool.nbytes == 70 and a.nbytes == 0 and b.get("b3") == 5
    b.clear()
    assert pool.nbytes == 0


@pytest.mark.parametrize("layer", ["stem", "block", "act"])
def test_a_new_target_on_a_shown_image_reuses_the_kept_graph(layer, rng):
    """A new click (another region of the same image) at one layer runs only a backward of
    the model above the layer through the graph kept from the image's first capture: no
    forward, and the very maps of a fresh explainer (also from several threads at once)."""
    net = TinySegNet()
    ex = Explainer(load_model(net, task="segmentation", input_size=(32, 48), num_classes=4), kept_graphs=2)
    fresh = Explainer(load_model(TinySegNet(), task="segmentation", input_size=(32, 48), num_classes=4))
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    forwards = []
    stem = dict(ex.backend.module.named_modules())["stem"]   # the engine's model (load_model may copy)
    handle = stem.register_forward_pre_hook(lambda m, i: forwards.append(1))
    try:
        ex.explain(image, "grad-cam", layer=layer)          # the page's first map: a full pass, graph kept
        before = len(forwards)
        assert before >= 1
        regions = [(0, 0, 12, 10), (20, 8, 40, 30), (30, 0, 48, 16), (5, 18, 25, 32)]
        got: dict = {}

        def click(r):
            for method in ("grad-cam", "layer-cam"):
                got[r, method] = ex.explain(image, method, target=Target(region=r), layer=layer).map
        threads = [threading.Thread(target=click, args=(r,)) for r in regions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(forwards) == before                       # no forward for the new targets
    finally:
        handle.remove()
    for (r, method), m in got.items():
        fresh.clear_caches()
        want = fresh.explain(image, method, target=Target(region=r), layer=layer).map
        np.testing.assert_allclose(m, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_background_fills_wait_for_the_foreground():
    """A fill's next pass (interactive.Job(fill=True), the prefetch) starts only once no script run
    is active and the last ended `quiet_s` ago; a never-idle server still lets it go after
    `max_wait_s`."""
    from neuroscope.interactive import Foreground
    gate = Foreground(max_wait_s=30.0, quiet_s=0.05)
    order: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def run():
        with gate.active():
            entered.set()
            release.wait(30)
            order.append("run ended")

    def fill():
        entered.wait(30)
        assert gate.wait_idle()
        order.append("fill pass")
    threads = [threading.Thread(target=run), threading.Thread(target=fill)]
    for t in threads:
        t.start()
    entered.wait(30)
    assert order == []               # the fill is held while the run is active
    release.set()
    for t in threads:
        t.join(30)
    assert order == ["run ended", "fill pass"]
    busy = Foreground(max_wait_s=0.2, quiet_s=0.0)
    with busy.active():
        assert busy.wait_idle() is False     # bounded: a busy server does not starve it forever


def test_a_graph_above_the_size_cap_is_not_kept(rng, monkeypatch):
    from neuroscope import engine
    monkeypatch.setattr(engine, "KEPT_GRAPH_BYTES", 0)
    net = TinySegNet()
    ex = Explainer(load_model(net, task="segmentation", input_size=(32, 48), num_classes=4), kept_graphs=2)
    image = rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    forwards = []
    stem = dict(ex.backend.module.named_modules())["stem"]   # the engine's model (load_model may copy)
    handle = stem.register_forward_pre_hook(lambda m, i: forwards.append(1))
    try:
        ex.explain(image, "grad-cam", layer="block")
        before = len(forwards)
        ex.explain(image, "grad-cam", target=Target(region=(0, 0, 12, 10)), layer="block")
    finally:
        handle.remove()
    assert len(forwards) == before + 1 and ex._tails.nbytes == 0
