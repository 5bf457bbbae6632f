"""The dashboard, driven by Streamlit's AppTest: pages render, controls change the maps,
clicks pick regions, and display controls never run the model."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from neuroscope.zoo import bundled_specs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app" / "streamlit_app.py"
FIXTURES = ROOT / "tests" / "fixtures"
TINY_SEG = FIXTURES / "app-tiny-seg.toml"
TIMEOUT = 180
CLASSIFIER = "mobilenet_v2-imagenet"
KERAS_CLASSIFIER = "mobilenet_v2-imagenet-keras"
SCENE_SEED = 7      # a generated street scene with a large car


def seg_model() -> str:
    """The bundled segmenter when it exists, else the tiny test spec (an extra spec)."""
    return "drivescene-seg" if "drivescene-seg" in bundled_specs() else f"extra:{TINY_SEG.resolve()}"


@pytest.fixture(autouse=True)
def _extra_specs(monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_EXTRA_SPECS", str(TINY_SEG))
    monkeypatch.syspath_prepend(str(FIXTURES))


def clean(at: AppTest) -> AppTest:
    """No exception, no error, and the background prefetch (layer captures) finished."""
    from neuroscope.interactive import PREFETCH
    assert PREFETCH.wait(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def start(model: str, *, scene: int | None = None, gallery: str | None = None, methods=None,
          **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["model"] = model
    if scene is not None:
        at.session_state["image_source"] = "Generated scene"
        at.session_state["scene_seed"] = scene
    if gallery is not None:
        at.session_state["image_source"] = "Gallery"
    for key, value in state.items():
        at.session_state[key] = value
    if methods is not None:
        task = "segmentation" if scene is not None else "classification"
        at.session_state[f"methods::{task}"] = list(methods)
    if gallery is not None:
        at.session_state["gallery::classification"] = gallery
    return clean(at.run())


def session(at: AppTest):
    return at.session_state["ns_session"]


def selection(at: AppTest):
    return session(at).selection


def shown(at: AppTest, name: str):
    return session(at).shown[name]


def maps(at: AppTest) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in shown(at, "maps").items()}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ----------------------------------------------------------------------------- pages
def test_the_app_is_thin_no_framework_imports():
    import re
    pattern = re.compile(r"^\s*(import|from)\s+(torch|tensorflow|keras|tf_keras)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in APP.parent.rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, f"app/ must use the neuroscope API only: {offenders}"


def test_reruns_keep_the_shared_sidebar_so_no_legacy_pages_folder():
    # a folder app/pages/ makes Streamlit run page files without the entry script (no sidebar)
    assert not (APP.parent / "pages").exists(), "put pages in app/app_pages/ and list them in PAGES"
    at = start(CLASSIFIER, gallery="cat.jpg")
    for _ in range(2):
        at.run()
        assert at.sidebar.selectbox(key="model").value == CLASSIFIER
        assert selection(at).image_name == "cat.jpg"
    gallery = at.sidebar.selectbox(key="gallery::classification").options
    assert "cat.jpg" in gallery and not [n for n in gallery if "_labels" in n or "_instances" in n]


@pytest.mark.parametrize("model", [CLASSIFIER, "segmenter", KERAS_CLASSIFIER])
def test_every_page_renders_on_a_bundled_model(model):
    model = seg_model() if model == "segmenter" else model
    seg = model not in (CLASSIFIER, KERAS_CLASSIFIER)
    at = start(model, scene=SCENE_SEED) if seg else start(model, gallery="cat.jpg")
    sel = selection(at)
    h, w = sel.image.shape[:2]
    m = shown(at, "maps")["grad-cam"]
    assert m.shape == (h, w) and np.isfinite(m).all() and np.ptp(m) > 0
    if not seg:
        assert sel.prediction.top(1)[0]["name"] in ("Egyptian cat", "tabby", "tiger cat")
    task = "segmentation" if seg else "classification"
    clean(at.sidebar.multiselect(key=f"methods::{task}").set_value(["grad-cam", "saliency"]).run())

    clean(at.switch_page("app_pages/layers.py").run())
    acts = sel.explainer.capture(sel.image, sel.target).activations[sel.layer]
    assert 0 <= at.session_state[f"layers_channel::{sel.model_key}::{sel.layer}"] < acts.shape[0]
    sweep = shown(at, "sweep")          # Grad-CAM at every block, from the same capture
    assert len(sweep) >= 4 and sel.layer in [l.name for l in sel.explainer.spatial_layers()]
    assert len({round(float(np.ptp(m)), 6) for m in sweep.values()}) > 1
    assert len(at.get("image")) >= 2              # the enlarged channel and the sweep strip

    clean(at.switch_page("app_pages/ground_truth.py").run())
    if seg:   # a generated scene comes with its labels
        confusion, used = shown(at, "confusion"), shown(at, "confusion_images")
        images = ROOT / "assets" / "images"
        truths = {p.name: images / f"{p.stem}_labels.png" for p in images.iterdir()
                  if p.suffix in (".png", ".jpg") and (images / f"{p.stem}_labels.png").is_file()}
        assert sorted(used) == sorted([*truths, sel.image_name])
        valid = int((sel.truth < 19).sum()) + sum(int((np.asarray(Image.open(t)) < 19).sum()) for t in truths.values())
        assert confusion.sum() == valid > 0
        iou = shown(at, "iou")
        assert np.nanmax(iou) <= 1.0 and np.isfinite(iou).any()
    else:
        assert any("segmentation" in i.value for i in at.info)

    clean(at.switch_page("app_pages/model.py").run())
    arch = shown(at, "architecture")
    assert len(arch) == len(sel.explainer.layers())
    assert arch["parameters"].max() > 0

    clean(at.switch_page("app_pages/evaluate.py").run())  # renders its controls; runs only on request
    assert any(b.label == "Run evaluation" for b in at.button)

    clean(at.switch_page("app_pages/explain.py").run())   # the method choice survived the other pages
    assert at.sidebar.multiselect(key=f"methods::{task}").value == ["grad-cam", "saliency"]
    assert set(shown(at, "maps")) == {"grad-cam", "saliency"}


# ----------------------------------------------------------------------------- controls
def test_switching_method_layer_and_class_updates_the_maps():
    at = start(CLASSIFIER, gallery="cat.jpg")
    sel = selection(at)
    ex = sel.explainer
    first = maps(at)["grad-cam"]

    at.sidebar.multiselect(key="methods::classification").set_value(["grad-cam", "saliency"]).run()
    both = maps(clean(at))
    assert set(both) == {"grad-cam", "saliency"}
    assert np.array_equal(both["grad-cam"], first)
    assert abs(corr(both["saliency"], first)) < 0.9

    stats = Counter(ex.stats)
    layer_key = f"layer::{CLASSIFIER}"
    shallower = [l.name for l in ex.spatial_layers() if l.stride == 16][-1]
    at.sidebar.selectbox(key=layer_key).set_value(shallower).run()
    switched = maps(clean(at))
    assert selection(at).layer == shallower
    assert not np.allclose(switched["grad-cam"], first)
    assert np.array_equal(switched["saliency"], both["saliency"])          # saliency has no layer
    assert ex.stats["capture"] == stats["capture"] and ex.stats["forward"] == stats["forward"]  # layer switch: no pass

    runner_up = sel.prediction.top(2)[1]["class_id"]
    at.sidebar.selectbox(key=f"class::{CLASSIFIER}::gallery:cat.jpg").set_value(runner_up).run()
    other = maps(clean(at))
    assert selection(at).resolved.class_id == runner_up
    assert not np.allclose(other["grad-cam"], switched["grad-cam"])
    assert not np.allclose(other["saliency"], switched["saliency"])


def test_clicks_select_the_object_under_them_and_boxes():
    at = start(seg_model(), scene=SCENE_SEED)
    sel = selection(at)
    before = sel.resolved
    assert before.region == "predicted"
    labels = sel.prediction.labels
    # the pixel deepest inside the largest component of a class predicted as several
    # objects (e.g. cars), so the clicked object is a strict part of the class's mask
    from scipy import ndimage
    split = []
    for c in np.unique(labels):
        comp, n = ndimage.label(labels == c, structure=np.ones((3, 3), bool))
        if n >= 2:
            split.append((np.bincount(comp.ravel())[1:].max(), int(c)))
    assert split, "the scene should contain a class predicted as several separate objects"
    cls = max(split)[1]
    comp, _ = ndimage.label(labels == cls, structure=np.ones((3, 3), bool))
    biggest = np.bincount(comp.ravel())[1:].argmax() + 1
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(comp == biggest)), labels.shape)
    first_map = maps(at)["grad-cam"]

    session(at).clicks = [[int(x), int(y)]]
    at.session_state["region_mode"] = "clicked"
    clean(at.run())
    picked = selection(at).resolved
    assert picked.region == f"{x},{y}"
    assert picked.class_id == labels[y, x]
    assert picked.mask[y, x] and picked.pixels == int(picked.mask.sum())
    comp, _ = ndimage.label(labels == picked.class_id, structure=np.ones((3, 3), bool))
    assert np.array_equal(picked.mask, comp == comp[y, x])     # the 8-connected object under the click
    assert picked.pixels != before.pixels
    assert not np.array_equal(maps(at)["grad-cam"], first_map)

    session(at).clicks = [[40, 30], [200, 120]]
    at.session_state["region_mode"] = "box"
    clean(at.run())
    box = selection(at).resolved
    assert box.region == "40,30,201,121"
    assert box.pixels == 161 * 91
    assert box.mask[30:121, 40:201].all() and box.mask.sum() == box.pixels


def test_display_changes_run_no_model_pass():
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["grad-cam", "saliency"])
    ex = selection(at).explainer
    stats = Counter(ex.stats)
    before_maps, before = maps(at), dict(shown(at, "overlays"))
    changes = [("disp_cmap", "selectbox", "viridis"), ("disp_alpha", "slider", 0.8),
               ("disp_sign", "radio", "positive"), ("disp_pct", "slider", 95.0)]
    for key, kind, value in changes:
        getattr(at, kind)(key=key).set_value(value).run()
        clean(at)
        now = shown(at, "overlays")
        changed = [m for m in now if not np.array_equal(now[m], before[m])]
        assert changed, f"{key} did not change any overlay"
        if key == "disp_sign":           # the sign filter is for signed maps: Grad-CAM stays whole
            assert changed == ["saliency"]
        before = dict(now)
    assert ex.stats == stats, f"display changes ran the model: {ex.stats - stats}"
    after_maps = maps(at)
    assert all(np.array_equal(after_maps[m], before_maps[m]) for m in before_maps)


def test_downloads_hold_the_maps_the_overlays_and_the_parameters(monkeypatch):
    import io
    import json
    monkeypatch.syspath_prepend(str(APP.parent))
    from dashboard import exports
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["grad-cam", "saliency"])
    sel, results = selection(at), shown(at, "results")
    overlays = shown(at, "overlays")
    with np.load(io.BytesIO(exports.maps_npz(results))) as npz:
        assert sorted(npz.files) == ["grad-cam", "saliency"]
        assert all(np.array_equal(npz[m], results[m].map) for m in npz.files)
    grid = np.asarray(Image.open(io.BytesIO(exports.overlays_png(results, overlays))))
    oh, ow = overlays["grad-cam"].shape[:2]
    assert grid.shape[1] >= 2 * ow and grid.shape[0] >= oh
    doc = json.loads(exports.parameters_json("m", sel.image_name, sel.image.shape[:2], sel.resolved.as_json(), results))
    assert doc["target"]["class_id"] == sel.resolved.class_id and doc["shape"] == list(sel.image.shape[:2])
    assert doc["methods"]["grad-cam"]["layer"] == sel.layer and doc["methods"]["saliency"]["params"] == {"smooth": 0}


# ----------------------------------------------------------------------------- parameters and bad input
def test_method_parameters_come_from_the_registry_and_bad_values_are_reported():
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["integrated-gradients"],
               **{"param::classification::integrated-gradients::steps": 4})
    ig = shown(at, "maps")["integrated-gradients"]
    assert np.isfinite(ig).all() and np.ptp(ig) > 0
    assert at.number_input(key="param::classification::integrated-gradients::smooth").value == 0   # SmoothGrad, from the registry

    at.text_input(key="param::classification::integrated-gradients::baseline").set_value("purple").run()
    assert not at.exception
    assert any("baseline" in e.value and "purple" in e.value for e in at.error)
    assert "integrated-gradients" not in shown(at, "maps")


def test_lrp_composite_is_a_choice_list_with_each_composites_help():
    from neuroscope.propagation import COMPOSITES, LRP_COMPOSITES
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["lrp"])
    box = at.selectbox(key="param::classification::lrp::composite")
    assert list(box.options) == list(COMPOSITES) and box.value == "epsilon-plus-flat"
    assert any(c.value == LRP_COMPOSITES["epsilon-plus-flat"] for c in at.caption)
    first = shown(at, "maps")["lrp"].copy()
    clean(box.set_value("epsilon-gamma-box").run())
    assert any(c.value == LRP_COMPOSITES["epsilon-gamma-box"] for c in at.caption)
    other = shown(at, "maps")["lrp"]
    assert np.isfinite(other).all() and not np.allclose(first, other)


def test_bad_uploads_and_broken_models_get_a_message_not_a_traceback(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text(TINY_SEG.read_text().replace('"ns_tiny_seg:tiny_seg"', '"no_such_module:factory"')
                      .replace('name = "tiny-seg-app-test"', 'name = "broken"'))
    monkeypatch.setenv("NEUROSCOPE_EXTRA_SPECS", f"{TINY_SEG}:{broken}")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["model"] = f"extra:{broken.resolve()}"
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "no_such_module" in at.error[0].value
    assert selection(at) is None
    at.run()                                    # remembered: the same message, no reload attempt
    assert not at.exception and len(at.error) == 1 and "no_such_module" in at.error[0].value
    at.sidebar.button(key="retry_model").click().run()
    assert not at.exception and len(at.error) == 1

    at.session_state["model"] = CLASSIFIER
    at.session_state["image_source"] = "Upload"
    clean(at.run())
    at.sidebar.file_uploader(key="image_upload").set_value(("photo.jpg", b"not an image at all", "image/jpeg")).run()
    assert not at.exception
    assert len(at.error) == 1 and "PNG or JPEG" in at.error[0].value

    at.sidebar.selectbox(key="model").set_value("__upload__").run()
    at.sidebar.file_uploader(key="model_upload").set_value(("weights.pth", b"\x80\x02junk", "application/octet-stream"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "state dict" in at.error[0].value

    at.sidebar.file_uploader(key="model_upload").set_value(("model.keras", b"not a zip", "application/octet-stream"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "Keras" in at.error[0].value and "neuroscope-upload" not in at.error[0].value


# ----------------------------------------------------------------------------- state across pages
def test_choices_survive_other_pages_and_a_detour_through_upload():
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["grad-cam", "saliency"])
    ex = selection(at).explainer
    shallower = [l.name for l in ex.spatial_layers() if l.stride == 16][-1]
    runner_up = selection(at).prediction.top(2)[1]["class_id"]
    clean(at.sidebar.selectbox(key=f"layer::{CLASSIFIER}").set_value(shallower).run())
    clean(at.sidebar.selectbox(key=f"class::{CLASSIFIER}::gallery:cat.jpg").set_value(runner_up).run())
    clean(at.selectbox(key="disp_cmap").set_value("viridis").run())
    clean(at.switch_page("app_pages/model.py").run())
    at.sidebar.radio(key="image_source").set_value("Upload").run()     # no file chosen: no selection
    assert selection(at) is None and any("Upload an image" in i.value for i in at.info)
    clean(at.sidebar.radio(key="image_source").set_value("Gallery").run())
    clean(at.switch_page("app_pages/explain.py").run())
    sel = selection(at)
    assert (sel.image_name, sel.layer, sel.resolved.class_id) == ("cat.jpg", shallower, runner_up)
    assert at.sidebar.multiselect(key="methods::classification").value == ["grad-cam", "saliency"]
    assert at.selectbox(key="disp_cmap").value == "viridis"


def test_evaluate_runs_from_its_button_and_keeps_the_report():
    at = start(CLASSIFIER, gallery="cat.jpg")
    clean(at.switch_page("app_pages/evaluate.py").run())
    clean(at.select_slider(key="eval_steps").set_value(10).run())     # a setting change is no error either
    clean(at.multiselect(key="eval_methods::classification").set_value(["grad-cam"]).run())
    clean(at.button(key="eval_run").click().run())
    settings, report = session(at).kept["eval_report"]
    row = {r["method"]: r for r in report.rows(with_random=True)}
    assert set(row) == {"grad-cam", "random"}
    assert 0.0 <= row["grad-cam"]["deletion_auc"] <= 1.0 and 0.0 <= row["grad-cam"]["insertion_auc"] <= 1.0
    assert any(b.label == "Run evaluation" for b in at.button)        # the button is still there
    clean(at.run())                                                   # a rerun keeps the report on screen
    assert at.dataframe and session(at).kept["eval_report"][1] is report


def test_the_parameters_export_records_this_sessions_target_not_a_cached_one(monkeypatch):
    import json
    monkeypatch.syspath_prepend(str(APP.parent))
    from dashboard import exports
    at = start(seg_model(), scene=SCENE_SEED)
    sel = selection(at)
    from scipy import ndimage
    labels = sel.prediction.labels
    comp, _ = ndimage.label(labels == labels[labels.shape[0] // 2, labels.shape[1] // 2], structure=np.ones((3, 3)))
    ys, xs = np.nonzero(comp == comp[labels.shape[0] // 2, labels.shape[1] // 2])   # two pixels of one object
    a, b = (int(xs[0]), int(ys[0])), (int(xs[-1]), int(ys[-1]))
    results = {}
    for point in (a, b):          # another "session" clicks elsewhere in the same region first
        session(at).clicks = [list(point)]
        at.session_state["region_mode"] = "clicked"
        clean(at.run())
        results[point] = (selection(at).resolved, shown(at, "results"))
    (ra, res_a), (rb, res_b) = results[a], results[b]
    assert ra.key() == rb.key() and res_b["grad-cam"] is res_a["grad-cam"]   # the engine shares the cached map
    assert res_b["grad-cam"].meta["target"]["region"] != f"{b[0]},{b[1]}"     # ... with an earlier request's target
    doc = json.loads(exports.parameters_json("m", "img", labels.shape, rb.as_json(), res_b))
    assert doc["target"]["region"] == f"{b[0]},{b[1]}"
    assert doc["methods"]["grad-cam"]["target"]["region"] == f"{b[0]},{b[1]}"


# ----------------------------------------------------------------------------- slow work on request
def test_a_slow_method_waits_for_compute_and_cancel_stops_it(monkeypatch):
    import time
    from neuroscope import interactive, limits
    from neuroscope.errors import Cancelled
    monkeypatch.setenv("NEUROSCOPE_INTERACTIVE_BUDGET_S", "0.001")    # everything above 2 passes asks first
    at = start(CLASSIFIER, gallery="cat.jpg", methods=["grad-cam", "occlusion"])
    ex = selection(at).explainer
    assert set(shown(at, "maps")) == {"grad-cam"}                       # one pass: computed at once
    compute = [b for b in at.button if b.label == "Compute occlusion"]
    assert len(compute) == 1 and ex.stats["explain"] >= 1
    estimate = interactive.cost(ex, "occlusion", {})
    assert estimate.passes == limits.estimate_passes("occlusion", {}, explainer=ex) > 2
    assert any(f"{estimate.passes:,} forward passes" in m.value for m in at.markdown)

    before = ex.stats["explain"]
    clean(at.sidebar.selectbox(key=f"layer::{CLASSIFIER}").set_value(
        [l.name for l in ex.spatial_layers()][-3]).run())                 # other choices never start it
    assert not session(at).kept.get("jobs") and "occlusion" not in shown(at, "maps")
    compute[0].click().run()
    (job,) = session(at).kept["jobs"].values()
    assert not job.done and any(b.label == "Cancel" for b in at.button)
    assert not job.wait(0.5)                                            # hundreds of passes: still running
    t0 = time.monotonic()
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert job.done and isinstance(job.error, Cancelled)
    assert job.finished - t0 < 2.0, job.finished - t0                   # stops at the next chunk
    assert "occlusion" not in shown(at, "maps")
    assert any("Cancelled after" in w.value for w in at.warning)
    assert ex.stats["explain"] - before <= 2                           # grad-cam at the new layer (+ occlusion)


def test_a_click_on_the_gallery_sheet_picks_the_picture_under_it(monkeypatch):
    monkeypatch.syspath_prepend(str(APP.parent))
    from dashboard import state
    names = state.gallery_names("classification")
    sheet = state.gallery_sheet(tuple(names))
    rows = -(-len(names) // state.GALLERY_COLS)
    h, w = state.GALLERY_TILE
    assert sheet.shape[:2] == (rows * h, state.GALLERY_COLS * w)
    shown_w, shown_h = sheet.shape[1] / 2, sheet.shape[0] / 2      # displayed at half size
    for i in range(len(names)):
        r, c = divmod(i, state.GALLERY_COLS)
        click = {"x": (c + 0.5) * shown_w / state.GALLERY_COLS, "y": (r + 0.5) * shown_h / rows,
                 "width": shown_w, "height": shown_h}
        assert state.gallery_index(click, len(names)) == i
    assert state.gallery_index(None, len(names)) is None
