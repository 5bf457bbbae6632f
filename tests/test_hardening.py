"""Hardening (issue 16): limits, one-line errors, uploads are data, parameter ranges.

Each test names the numbered defect of the issue it covers; all failed before the fix.
"""
from __future__ import annotations

import numpy as np
import pytest

from neuroscope import limits
from neuroscope.errors import BadParameter, NeuroscopeError
from neuroscope.methods.registry import check_params, get_method


# ---------------------------------------------------------------- limits and pass estimates (defect 5)
def test_estimate_passes_counts_windows_masks_steps_and_samples():
    size = (256, 512)
    assert limits.estimate_passes("occlusion", {}, model_size=size) == 31 * 63 + 1   # window 16, stride 8
    assert limits.estimate_passes("rise", {"masks": 700}, model_size=size) == 700
    assert limits.estimate_passes("integrated-gradients", {"steps": 10, "smooth": 3}, model_size=size) == 33
    assert limits.estimate_passes("saliency", {"smooth": 25}, model_size=size) == 25
    assert limits.estimate_passes("score-cam", {}, model_size=size, channels=96) == 98
    assert limits.estimate_passes("score-cam", {"top": 10}, model_size=size, channels=96) == 12
    assert limits.estimate_passes("grad-cam", {}, model_size=size) == 1


@pytest.mark.parametrize("method, params", [("integrated-gradients", {"steps": 100_000}),
                                            ("saliency", {"smooth": 100_000}), ("rise", {"masks": 1_000_000_000}),
                                            ("occlusion", {"stride": 1, "window": 2})])
def test_check_passes_refuses_unbounded_runs_with_estimate_and_limit(method, params):
    with pytest.raises(BadParameter) as err:
        limits.check_passes(method, params, model_size=(224, 224))
    text = str(err.value)
    assert "10,000" in text and "NEUROSCOPE_MAX_PASSES" in text and "\n" not in text


def test_pass_limit_override(monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_MAX_PASSES", "100")
    assert limits.limit("passes") == 100
    with pytest.raises(BadParameter, match="the limit is 100"):
        limits.check_passes("rise", {}, model_size=(64, 64))
    monkeypatch.setenv("NEUROSCOPE_MAX_PASSES", "abc")
    with pytest.raises(BadParameter, match="NEUROSCOPE_MAX_PASSES"):
        limits.limit("passes")


@pytest.mark.parametrize("method, params", [
    ("saliency", {"smooth": -1}), ("integrated-gradients", {"steps": 0}), ("rise", {"cells": 100_000}),
    ("rise", {"masks": -5}), ("rise", {"p": float("nan")}), ("rise", {"p": float("inf")}), ("rise", {"p": 0.0}),
    ("rise", {"seed": -1}), ("occlusion", {"window": 0}), ("occlusion", {"stride": -3}),
    ("activation", {"channel": -2}), ("score-cam", {"top": -1}), ("pda", {"samples": 0})])
def test_parameters_are_range_checked(method, params):
    info, _ = get_method(method)
    with pytest.raises(BadParameter) as err:
        check_params(info, params)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the bad-input corpus through the CLI
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The corpus of tests/bad_inputs.py, written once per session."""
    d = tmp_path_factory.mktemp("corpus")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, str(HERE / "bad_inputs.py"), "make", str(d)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return d, json.loads((d / "corpus.json").read_text())


@pytest.fixture(scope="session")
def corpus_report(corpus):
    """Every CLI case run in one process under a 6 GiB address-space limit (RLIMIT_AS)."""
    d, _ = corpus
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
               NEUROSCOPE_MAX_ARCHIVE_BYTES="100000000")   # the corpus's real zip bomb inflates to 192 MiB
    done = subprocess.run([sys.executable, str(HERE / "bad_inputs.py"), "run", str(d), "--as-gb", "6",
                           "--timeout", "120"], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_corpus_every_bad_input_is_one_line_exit_2_and_no_payload_ran(corpus_report):
    """Defects 2-5: images, model files, specs and arguments through `neuroscope` (fd 2 captured)."""
    results = corpus_report["results"]
    failures = []
    for r in results:
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        if r["code"] != r["expected"] or "Traceback" in r["stderr"] or (
                r["expected"] == 2 and (len(lines) != 1 or not lines[0].startswith("neuroscope: error: ")))\
                or (r["expected"] == 0 and lines):
            failures.append(f"{r['name']}: exit {r['code']} (want {r['expected']}), stderr {r['stderr'][:300]!r}")
    assert not failures, "\n".join(failures)
    assert not corpus_report["marker_exists"], "a pickle or Lambda payload ran"
    bad = [r for r in results if r["expected"] == 2]
    assert len(bad) >= 140 and sum(r["expected"] == 0 for r in results) >= 14
    assert corpus_report["peak_rss_mb"] < 6 * 1024
    print(f"\ncorpus: {len(results)} CLI cases, {len(bad)} bad inputs all clean (exit 2, one line), 0 tracebacks, "
          f"0 hangs, peak RSS {corpus_report['peak_rss_mb']:.0f} MB")


def test_cli_keras_target_error_is_one_line_in_a_fresh_process(corpus):
    """Defects 3 and 4 end to end: a real `python -m neuroscope` on a Keras model, target
    error inside the traced capture -> exit 2, exactly one stderr line (no TF logs)."""
    d, data = corpus
    image = data["images"]["exif-6.jpg"][0]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-m", "neuroscope", "explain", data["models"]["cnn.keras"], image,
                           "--method", "grad-cam", "--class", "3"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=d)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["neuroscope: error: class id 3 out of range: the model has 3 classes (0..2)"]
    # (a Keras success with an empty stderr: the corpus's "ok:keras-saliency" case)


# ---------------------------------------------------------------- defect 7: the segmenter's caches are bounded in bytes
def test_segmenter_caches_are_bounded_in_bytes_not_only_entries(monkeypatch):
    """Full-size maps, masks and [C, h, w] logits made entry-count-bounded caches hold GBs in a
    long session (the soak's growth). Now every cache also has a byte budget."""
    import gc
    import tracemalloc

    from neuroscope import Explainer, Target
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("NEUROSCOPE_CACHE_BYTES", str(48 << 20))
    ex = Explainer(str(HERE / "fixtures" / "tiny-seg.toml"))
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        for i in range(24):   # 24 distinct 900x1400 images: ~12 MB of maps and images each
            image = rng.integers(0, 255, (900, 1400, 3), dtype=np.uint8)
            ex.explain(image, ("grad-cam", "saliency", "score-map")[i % 3], target=Target.segmentation(region="all"))
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 120 << 20, f"{held / 2**20:.0f} MB still held after 24 explanations"
    sizes = ex.cache_bytes()
    assert sizes["results"] <= 24 << 20 and sizes["predictions"] <= 12 << 20 and sizes["prepared"] <= 6 << 20


# ---------------------------------------------------------------- the app (AppTest): defects 1 and 6
APP = ROOT / "app" / "streamlit_app.py"
TINY_APP_SEG = HERE / "fixtures" / "app-tiny-seg.toml"


def _app(monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("NEUROSCOPE_EXTRA_SPECS", str(TINY_APP_SEG))
    monkeypatch.syspath_prepend(str(HERE / "fixtures"))
    return AppTest.from_file(str(APP), default_timeout=300)


def _upload_model(at, model: Path, spec_text: str | None = None):
    at.sidebar.selectbox(key="model").set_value("__upload__").run()
    at.sidebar.file_uploader(key="model_upload").set_value((model.name, model.read_bytes(), "application/octet-stream"))
    if spec_text is not None:
        at.sidebar.file_uploader(key="model_spec_upload").set_value(("spec.toml", spec_text.encode(), "text/plain"))
    return at.run()


def _one_line_errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert all("\n" not in e and "Traceback" not in e for e in errors)
    return errors


def test_app_uploaded_spec_cannot_make_the_server_read_a_path(corpus, monkeypatch):
    """Defect 1: an uploaded spec naming a server file (absolute or ../..) is refused; the
    file's lines never reach the class list, the error or the Model page."""
    _, data = corpus
    secret = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")
    lines = [line.strip() for line in secret.read_text().splitlines() if line.strip()]
    base = 'framework = "keras"\ntask = "classification"\ninput_size = [16, 16]\n'
    for classes in (str(secret), "../../../../../../../.." + str(secret)):
        at = _app(monkeypatch)
        at.session_state["model"] = "mobilenet_v2-imagenet"
        at.run()
        at = _upload_model(at, Path(data["models"]["cnn.keras"]), base + f'classes = "{classes}"\n')
        errors = _one_line_errors(at)
        assert len(errors) == 1 and "uploaded spec may name only files uploaded with it" in errors[0], errors
        assert at.session_state["ns_session"].selection is None
        page = " ".join(str(getattr(e, "value", "")) for e in at.main) + " ".join(errors)
        assert not any(line in page for line in lines[:3])
    at = _app(monkeypatch)                          # inline classes: accepted, used as given
    at.session_state["model"] = "mobilenet_v2-imagenet"
    at.run()
    at = _upload_model(at, Path(data["models"]["cnn.keras"]), base + 'classes = ["a", "b", "c"]\n')
    assert not _one_line_errors(at)
    assert at.session_state["ns_session"].selection.explainer.classes == ["a", "b", "c"]


def test_app_bad_model_uploads_get_one_line_messages(corpus, monkeypatch):
    """Defect 6: a Keras MLP, a zip bomb, a declared-size bomb, a Lambda layer, an oversized input."""
    d, data = corpus
    monkeypatch.setenv("NEUROSCOPE_MAX_ARCHIVE_BYTES", "100000000")
    expect = {"mlp.keras": "image models", "zip-bomb.keras": "decompress", "declared-bomb.keras": "declares",
              "lambda.keras": "Lambda", "empty.keras": "empty"}
    at = _app(monkeypatch)
    at.session_state["model"] = "mobilenet_v2-imagenet"
    at.run()
    for name, words in expect.items():
        at = _upload_model(at, Path(data["models"][name]))
        errors = _one_line_errors(at)
        assert len(errors) == 1 and words in errors[0] and "IndexError" not in errors[0], (name, errors)
    big = 'framework = "keras"\ntask = "classification"\ninput_size = [6000, 6000]\nclasses = ["a", "b", "c"]\n'
    at = _upload_model(at, Path(data["models"]["cnn.keras"]), big)
    errors = _one_line_errors(at)
    assert len(errors) == 1 and "NEUROSCOPE_MAX_UPLOAD_INPUT_PIXELS" in errors[0], errors


def test_app_keeps_the_uploaded_image_across_a_model_upload(corpus, monkeypatch):
    """Defect 6: choosing 'Upload a model' no longer drops the image uploaded before."""
    _, data = corpus
    from PIL import Image
    import io as _io
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(picture).save(buf, "PNG")
    at = _app(monkeypatch)
    at.session_state["model"] = "mobilenet_v2-imagenet"
    at.session_state["image_source"] = "Upload"
    at.run()
    at.sidebar.file_uploader(key="image_upload").set_value(("mine.png", buf.getvalue(), "image/png")).run()
    assert at.session_state["ns_session"].selection.image_name == "mine.png"
    at = _upload_model(at, Path(data["models"]["cnn.keras"]))
    _one_line_errors(at)
    sel = at.session_state["ns_session"].selection
    assert sel is not None and sel.image_name == "mine.png" and np.array_equal(sel.image, picture)
    assert sel.explainer.spec.input_size == (16, 16)


def test_app_label_image_bomb_is_a_one_line_message(corpus, monkeypatch):
    """Defect 6: a 20000x20000 label PNG on the Ground truth page."""
    from bad_inputs import zero_png
    at = _app(monkeypatch)
    at.session_state["model"] = f"extra:{TINY_APP_SEG.resolve()}"
    at.session_state["image_source"] = "Gallery"
    at.session_state["gallery::segmentation"] = "dashcam-highway-cars.jpg"
    at.run()
    at.switch_page("app_pages/ground_truth.py").run()
    _one_line_errors(at)
    up = at.file_uploader(key="truth_upload::gallery:dashcam-highway-cars.jpg")
    up.set_value(("labels.png", zero_png(20000, 20000), "image/png")).run()
    errors = _one_line_errors(at)
    assert len(errors) == 1 and "too large" in errors[0] and "NEUROSCOPE_MAX_IMAGE_PIXELS" in errors[0], errors


# ---------------------------------------------------------------- the API: defects 1, 3, 5
def test_api_bad_calls_are_neuroscope_errors(monkeypatch):
    from neuroscope import Explainer, Target
    from neuroscope.errors import BadImage, BadTarget
    from neuroscope.images import load_image
    monkeypatch.syspath_prepend(str(HERE))
    ex = Explainer(str(HERE / "fixtures" / "tiny-seg.toml"))
    with pytest.raises(BadImage, match="expected an image"):
        ex.explain(None, "grad-cam")
    with pytest.raises(BadImage) as err:
        load_image(b"definitely not an image" * 10)
    assert "BytesIO" not in str(err.value) and "not a known format" in str(err.value)
    with pytest.raises(BadTarget, match="finite"):
        Target.segmentation(region=(float("inf"), 1))
    image = np.full((40, 60, 3), 120, np.uint8)
    monkeypatch.setenv("NEUROSCOPE_MAX_PASSES", "500")   # 32x48 windows of 1 pixel: 1,537 passes
    with pytest.raises(BadParameter, match="1,537 model passes; the limit is 500"):
        ex.explain(image, "occlusion", params={"window": 1, "stride": 1}, target=Target.segmentation(region="all"))
    assert ex.stats["explain"] == 0    # refused before any pass


def test_api_keras_target_error_inside_the_traced_capture_is_the_original_error():
    """Defect 3: the target is decided inside the Keras tf.function (py_function); its
    BadTarget used to surface as a TensorFlow UnknownError traceback."""
    import keras

    from neuroscope import Explainer, Target, load_model
    from neuroscope.errors import BadModel, BadTarget
    x = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(h)))
    ex = Explainer(load_model(model, task="classification", classes=["a", "b", "c"]))
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    with pytest.raises(BadTarget, match="out of range"):
        ex.explain(image, "grad-cam", target=Target.classification(7))
    with pytest.raises(BadTarget, match="contrast"):
        ex.explain(image, "grad-cam", target=Target.classification(1, contrast=1))
    model.get_layer("fc").kernel.assign(np.full((4, 3), np.nan, np.float32))   # NaN weights
    ex2 = Explainer(load_model(model, task="classification", classes=["a", "b", "c"]))
    with pytest.raises(BadModel, match="NaN"):
        ex2.explain(image, "grad-cam")


def test_api_uploaded_spec_names_only_uploaded_files(tmp_path):
    """Defect 1 at the API: read_spec(allow_code=False) refuses every path but uploaded files."""
    from neuroscope.errors import BadModel
    from neuroscope.zoo import read_spec
    names = tmp_path / "names.txt"
    names.write_text("x\ny\n")
    base = 'framework = "keras"\ntask = "classification"\ninput_size = [16, 16]\n'
    for classes in ("/etc/passwd", "../../../../../etc/passwd", "names.txt"):
        spec = tmp_path / "spec.toml"
        spec.write_text(base + f'classes = "{classes}"\n')
        with pytest.raises(BadModel, match="uploaded spec may name only files uploaded with it") as err:
            read_spec(spec, allow_code=False)
        assert "root:" not in str(err.value)
    assert read_spec(spec).classes == ["x", "y"]    # a local spec reads its relative paths
    spec.write_text(base + 'classes = "labels.txt"\nweights = "/etc/passwd"\n')
    got = read_spec(spec, allow_code=False, files={"labels.txt": names})
    assert got.classes == ["x", "y"] and got.weights is None
    spec.write_text(base.replace("[16, 16]", "[6000, 6000]") + 'classes = ["a"]\nfully_convolutional = true\n')
    with pytest.raises(BadModel, match="NEUROSCOPE_MAX_UPLOAD_INPUT_PIXELS"):
        read_spec(spec, allow_code=False)
    with pytest.raises(BadModel, match="NEUROSCOPE_MAX_INPUT_PIXELS"):   # local: 4 Mpx
        read_spec(spec)
