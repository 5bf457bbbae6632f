"""`neuroscope batch` (CONTRACT.md §8): inputs, targets, failures as rows, resume after Ctrl-C,
video frames, the Ray engine giving the local engine's table and maps, and the gpu marker."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroscope.cli import main

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

MODEL = "drivescene-seg"
SIZE = "64x128"
METHODS = "grad-cam,saliency"


def scenes(folder: Path, n: int, nested: bool = True, seed0: int = 0) -> list[Path]:
    from PIL import Image
    from neuroscope.synth import generate_scene
    paths = []
    for i in range(n):
        d = folder / ("sub" if nested and i % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"scene{i:02d}.png"
        Image.fromarray(generate_scene(seed0 + i, (64, 128)).image).save(p)
        paths.append(p)
    return paths


def run(capsys, *argv) -> tuple[int, dict | str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    try:
        return rc, json.loads(out.out), out.err
    except json.JSONDecodeError:
        return rc, out.out, out.err


def table(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    scenes(d, 4)
    (d / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return d


def test_folder_with_a_corrupt_image_gives_rows_maps_and_run_json(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc, data, err = run(capsys, "batch", MODEL, str(folder), "--methods", METHODS, "--out", str(out),
                        "--input-size", SIZE, "--json")
    assert rc == 0, err
    assert set(data) == {"images", "done", "failed", "skipped", "out", "time_s"}
    assert (data["images"], data["done"], data["failed"], data["skipped"]) == (5, 8, 2, 0)
    rows = table(out)
    assert [(r["image"], r["method"]) for r in rows] == [
        (i, m) for i in ("scene00.png", "scene02.png", "sub/broken.png", "sub/scene01.png", "sub/scene03.png")
        for m in ("grad-cam", "saliency")]
    bad = [r for r in rows if r["image"] == "sub/broken.png"]
    assert all(r["status"] == "failed" and r["error"].startswith("BadImage: cannot read") for r in bad)
    assert all(r["map_file"] is None and r["time_ms"] is None for r in bad)
    good = [r for r in rows if r["status"] == "done"]
    assert all(r["error"] is None and r["height"] == 64 and r["width"] == 128 for r in good)
    assert {r["layer"] for r in good if r["method"] == "grad-cam"} == {"head.cbr"}
    # the stored float16 map is the engine's map, and its statistics are the float32 map's
    from neuroscope import Explainer
    ex = Explainer(MODEL, input_size=(64, 128))
    for r in good[:2]:
        want = ex.explain(str(folder / r["image"]), r["method"]).map
        got = np.load(out / r["map_file"])["map"]
        assert got.dtype == np.float16 and got.shape == want.shape
        assert np.abs(got.astype(np.float32) - want).max() <= 1e-3 * np.abs(want).max()
        assert r["map_max"] == pytest.approx(float(want.max()), rel=1e-5)
        assert r["map_abs_mean"] == pytest.approx(float(np.abs(want).mean()), rel=1e-4)
    meta = json.loads((out / "run.json").read_text())
    assert meta["model"] == MODEL and meta["methods"] == ["grad-cam", "saliency"] and meta["images"] == 5
    assert meta["versions"]["torch"] and meta["finished"] and meta["interrupted"] is False


def test_targets_file_sets_class_and_region_and_a_bad_target_is_a_row(folder, tmp_path, capsys):
    targets = tmp_path / "t.csv"
    targets.write_text("path,class,region\nscene00.png,car,all\nsub/scene01.png,sky,0,0,64,32\n"
                       "scene02.png,zebra,\n".replace("0,0,64,32", '"0,0,64,32"'))
    out = tmp_path / "out"
    rc, data, err = run(capsys, "batch", MODEL, str(folder), "--methods", "grad-cam", "--out", str(out),
                        "--input-size", SIZE, "--targets", str(targets), "--save", "overlays", "--json")
    assert rc == 0, err
    rows = {r["image"]: r for r in table(out)}
    assert (rows["scene00.png"]["class_name"], rows["scene00.png"]["region"]) == ("car", "all")
    assert (rows["sub/scene01.png"]["class_name"], rows["sub/scene01.png"]["region"]) == ("sky", "0,0,64,32")
    assert rows["scene02.png"]["status"] == "failed" and "zebra" in rows["scene02.png"]["error"]
    assert rows["sub/scene03.png"]["region"] == "predicted"          # no row in the file: the default target
    assert rows["sub/scene03.png"]["map_file"] is None
    png = out / rows["scene00.png"]["overlay_file"]
    from PIL import Image
    assert Image.open(png).size == (128, 64)
    # JSONL works the same; a list region too
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"path": "scene00.png", "class": "car", "region": [0, 0, 128, 64]}) + "\n")
    out2 = tmp_path / "out2"
    rc, _, err = run(capsys, "batch", MODEL, str(folder / "scene00.png"), "--methods", "grad-cam", "--out",
                     str(out2), "--input-size", SIZE, "--targets", str(jl), "--json")
    assert rc == 0, err
    (row,) = table(out2)
    assert (row["class_name"], row["region"]) == ("car", "0,0,128,64")


def test_ctrl_c_keeps_what_was_written_and_a_rerun_continues(folder, tmp_path, capsys, monkeypatch):
    from neuroscope.batch import run as batch_run
    from neuroscope.batch import work
    calls = []
    real = work.run_chunk

    def interrupted(ex, records, settings):
        calls.append(len(records))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ex, records, settings)

    monkeypatch.setattr(batch_run, "CHUNK", 2)
    monkeypatch.setattr(batch_run, "run_chunk", interrupted)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "batch", MODEL, str(folder), "--methods", METHODS, "--out", str(out),
                     "--input-size", SIZE, "--json")
    assert rc == 130 and "interrupted" in err
    first = table(out)
    assert [r["image"] for r in first] == ["scene00.png"] * 2 + ["scene02.png"] * 2
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    assert not (out / ".parts").exists()
    monkeypatch.setattr(batch_run, "run_chunk", real)
    rc, data, err = run(capsys, "batch", MODEL, str(folder), "--methods", METHODS, "--out", str(out),
                        "--input-size", SIZE, "--json")
    assert rc == 0, err
    assert (data["done"], data["failed"], data["skipped"]) == (4, 2, 4)
    rows = table(out)
    assert len(rows) == 10 and rows[:4] == first                      # done rows kept as they were
    # a third run retries only the failed rows
    rc, data, _ = run(capsys, "batch", MODEL, str(folder), "--methods", METHODS, "--out", str(out),
                      "--input-size", SIZE, "--json")
    assert (data["done"], data["failed"], data["skipped"]) == (0, 2, 8)
    # adding a method runs only that method
    rc, data, _ = run(capsys, "batch", MODEL, str(folder), "--methods", METHODS + ",gradient-x-input", "--out",
                      str(out), "--input-size", SIZE, "--json")
    assert (data["done"], data["failed"], data["skipped"]) == (4, 3, 8)


def test_parts_left_by_a_hard_kill_are_read_back(folder, tmp_path):
    from neuroscope.batch.store import Store
    out = tmp_path / "out"
    s = Store(out, flush_rows=1)
    s.add([{"image": "a.png", "path": "/x/a.png", "method": "grad-cam", "status": "done", "time_ms": 1.0}])
    assert len(list((out / ".parts").glob("part-*.parquet"))) == 1 and not (out / "results.parquet").exists()
    again = Store(out)                                                  # the next run
    assert again.done("a.png", "grad-cam") and not again.done("a.png", "saliency")
    again.close()
    assert [r["image"] for r in table(out)] == ["a.png"] and not (out / ".parts").exists()


def test_glob_and_list_inputs(folder, tmp_path, capsys):
    from neuroscope.batch.inputs import collect
    ids = [r["image"] for r in collect(str(folder) + "/**/scene0[13].png", tmp_path)]
    assert ids == ["sub/scene01.png", "sub/scene03.png"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two images\n{folder / 'scene00.png'}\n\n{folder / 'sub' / 'scene01.png'}\n")
    recs = collect(str(lst), tmp_path)
    assert [Path(r["path"]).name for r in recs] == ["scene00.png", "scene01.png"]


def test_video_every_kth_frame(tmp_path, capsys):
    av = pytest.importorskip("av")
    from neuroscope.synth import generate_scene
    video = tmp_path / "drive.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(generate_scene(i % 3, (64, 128)).image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    rc, data, err = run(capsys, "batch", MODEL, str(video), "--methods", "grad-cam", "--out", str(out),
                        "--input-size", SIZE, "--every", "3", "--json")
    assert rc == 0, err
    assert (data["images"], data["done"]) == (4, 4)
    assert [r["image"] for r in table(out)] == [f"drive.mp4#f{i:06d}" for i in (0, 3, 6, 9)]
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"drive-f{i:06d}.png" for i in (0, 3, 6, 9)]


@pytest.mark.parametrize("extra, message", [
    (["--every", "2"], "--every applies to a video"),
    (["--methods", "grad-cam,grad-cam"], "names a method twice"),
    (["--methods", "nope"], "unknown method"),
    (["--methods", "score-map", "--targets", "missing.csv"], "--targets file not found"),
    (["--workers", "0"], "--workers must be"),
    (["--address", "127.0.0.1:1"], "--address applies to --engine ray"),
])
def test_usage_errors_are_one_line_exit_2(folder, tmp_path, capsys, extra, message):
    argv = ["batch", MODEL, str(folder), "--methods", "grad-cam", "--out", str(tmp_path / "o"), "--input-size", SIZE]
    rc, out, err = run(capsys, *(argv + extra))
    assert rc == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_method_that_does_not_fit_the_model_fails_before_any_image(folder, tmp_path, capsys, monkeypatch, engine):
    from neuroscope.batch.work import Settings
    if engine == "ray":       # a bundled model is checked against its spec: the driver loads nothing
        monkeypatch.setattr(Settings, "explainer", lambda self: pytest.fail("the Ray driver loaded the model"))
    rc, _, err = run(capsys, "batch", "mobilenet_v2-imagenet", str(folder), "--methods", "grad-cam,score-map",
                     "--out", str(tmp_path / "o"), "--engine", engine)
    assert rc == 2 and err.count("\n") == 1
    assert "score-map is for segmentation models; mobilenet_v2-imagenet is classification" in err
    assert not (tmp_path / "o").exists()
    rc, _, err = run(capsys, "batch", "mobilenet_v2-imagenet", str(folder), "--methods", "grad-cam",
                     "--out", str(tmp_path / "o"), "--engine", engine, "--input-size", "64x64")
    assert rc == 2 and err == ("neuroscope: error: --input-size needs a fully convolutional model; "
                               "mobilenet_v2-imagenet runs at 224x224 only\n")


def test_a_ray_address_nothing_answers_on_is_a_one_line_error(folder, tmp_path, capsys):
    import socket
    pytest.importorskip("ray")
    with socket.socket() as s:            # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run(capsys, "batch", MODEL, str(folder), "--methods", "grad-cam", "--out", str(tmp_path / "o"),
                     "--input-size", SIZE, "--engine", "ray", "--address", f"127.0.0.1:{port}")
    assert rc == 2 and err.count("\n") == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused" in err


def test_missing_input_and_unmatched_targets_and_another_model(folder, tmp_path, capsys):
    base = ["--methods", "grad-cam", "--input-size", SIZE]
    rc, _, err = run(capsys, "batch", MODEL, str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), *base)
    assert rc == 2 and "INPUT not found" in err
    t = tmp_path / "t.csv"
    t.write_text("path,class\nelsewhere.png,car\n")
    rc, _, err = run(capsys, "batch", MODEL, str(folder), "--out", str(tmp_path / "o"), "--targets", str(t), *base)
    assert rc == 2 and "not in INPUT" in err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "run.json").write_text(json.dumps({"model": "mobilenet_v2-imagenet", "input_size": None}))
    rc, _, err = run(capsys, "batch", MODEL, str(folder), "--out", str(tmp_path / "o2"), *base)
    assert rc == 2 and "holds a run of mobilenet_v2-imagenet" in err


def test_progress_line_shows_count_rate_and_eta():
    from neuroscope.batch.run import Progress
    p = Progress(10, enabled=False)
    p.t0 -= 4.0                       # 4 s ago
    p.step(2, 1)
    line = p.line()
    assert line.startswith("[#####") and "2/10 images" in line and "1 failed rows" in line
    eta = int(line.split("ETA ")[1][:2]) * 60 + int(line.split("ETA ")[1][3:5])
    assert 14 <= eta <= 17            # 8 images left at ~0.5 images/s


# ------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from neuroscope.batch.ray_engine import start_local
    start_local(2)
    yield ray
    ray.shutdown()


def test_ray_with_two_workers_gives_the_local_table_and_maps(ray_cluster, tmp_path):
    from neuroscope.batch.inputs import collect
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    images = tmp_path / "images"
    scenes(images, 12, seed0=100)
    records = collect(str(images), tmp_path)
    records[3]["class"], records[3]["region"] = "car", "all"        # a per-image target travels too
    import torch
    threads = torch.get_num_threads()
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        settings = Settings(model=MODEL, methods=["grad-cam", "saliency"], out=str(out), input_size=(64, 128),
                            threads=1)          # float sums depend on the thread count
        summary = run_batch(settings, [dict(r) for r in records], engine=engine, workers=2, chunk=3)
        assert (summary["images"], summary["done"], summary["failed"]) == (12, 24, 0)
        results[engine] = (out, table(out))
    torch.set_num_threads(threads)
    (lo, local), (ro, remote) = results["local"], results["ray"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "time_ms"} for r in rows]  # noqa: E731
    for a, b in zip(drop(local), drop(remote)):
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert local[6]["class_name"] == "car" and local[6]["region"] == "all"
    diffs = [np.abs(np.load(lo / a["map_file"])["map"].astype(np.float32)
                    - np.load(ro / b["map_file"])["map"].astype(np.float32)).max() for a, b in zip(local, remote)]
    assert len(diffs) == 24 and max(diffs) <= 1e-6
    assert json.loads((ro / "run.json").read_text())["engine"] == "ray"


def test_a_ray_worker_that_cannot_load_the_model_is_a_one_line_model_error(ray_cluster, tmp_path):
    """The workers load the model themselves (a cluster node may lack its files)."""
    from neuroscope.batch.inputs import collect
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    from neuroscope.errors import BadModel
    from neuroscope.zoo import bundled_specs
    spec = bundled_specs()[MODEL].read_text().splitlines()
    spec = [f'weights = "{tmp_path / "gone.pt"}"' if line.startswith("weights") else line for line in spec]
    (tmp_path / "m.toml").write_text("\n".join(spec) + "\n")
    images = tmp_path / "images"
    scenes(images, 2, seed0=100)
    settings = Settings(model=str(tmp_path / "m.toml"), methods=["grad-cam"], out=str(tmp_path / "o"),
                        input_size=(64, 128), threads=1)
    with pytest.raises(BadModel) as err:
        run_batch(settings, collect(str(images), tmp_path), engine="ray", workers=1)
    text = str(err.value)
    assert text.startswith(f"a Ray worker could not load {tmp_path / 'm.toml'}: BadModel: weights file not found")
    assert "\n" not in text and "Traceback" not in text


# ------------------------------------------------------------------ batching through the model
@pytest.mark.parametrize("model, size, split", [("drivescene-seg", (64, 128), False),
                                                ("drivescene-seg", (64, 128), True),
                                                ("drivescene-seg-keras", (64, 128), False),
                                                pytest.param("mobilenet_v2-imagenet", None, False,
                                                             marks=pytest.mark.slow)])
def test_one_batched_pass_gives_each_image_its_own_maps_with_its_own_target(model, size, split, monkeypatch):
    from neuroscope import Explainer, Target
    from neuroscope.batch import batched
    from neuroscope.batch.batched import prefill
    from neuroscope.synth import generate_scene
    if split:       # the CPU pixel budget cuts the group into model batches of 3 and 1
        monkeypatch.setattr(batched, "CPU_BATCH_PIXELS", 3 * 64 * 128)
    ex = Explainer(model, input_size=size)
    images = [generate_scene(200 + i, (64, 128)).image for i in range(4)]
    if ex.task == "classification":
        targets = [None, Target.classification(5), None, Target.classification("Egyptian cat", contrast=3)]
    else:
        targets = [None, Target.segmentation("car", "all"), Target.segmentation(0, (0, 0, 64, 32)),
                   Target.segmentation("zebra-class", "all")]              # the last one fails alone
    methods = ["grad-cam", "grad-cam++", "saliency", "gradient-x-input"]

    def maps():
        out = {}
        for m in methods:
            for i, (im, t) in enumerate(zip(images, targets)):
                try:
                    out[m, i] = ex.explain(im, m, target=t).map
                except Exception as exc:  # noqa: BLE001
                    out[m, i] = type(exc).__name__
        return out

    ref = maps()
    ex.clear_caches()
    served = prefill(ex, [ex.prepare(im) for im in images], targets, methods + ["integrated-gradients"])
    assert served == methods                                      # IG needs passes of its own
    passes = dict(ex.stats)
    got = maps()
    for key, want in ref.items():
        if isinstance(want, str):   # (Keras one image at a time reports it as TF's UnknownError)
            assert got[key] == "BadTarget"
        else:
            assert np.abs(got[key] - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-12), key
    # every map came from the one batched pass: no model pass per image
    assert ex.stats["capture"] == passes["capture"] and ex.stats["forward"] == passes.get("forward", 0)
    assert passes["batched_capture"] == 1
    if ex.task == "segmentation":     # the pass's label maps (torch: one op for the batch) = the engine's argmax
        from neuroscope.engine import _argmax_classes
        for im in images:
            pred = ex.predict(im)
            assert pred.label_map.dtype == np.uint8 and np.array_equal(pred.label_map, _argmax_classes(pred.logits))
        assert ex.stats["forward"] == passes.get("forward", 0)     # predictions cached by the pass


# ------------------------------------------------------------------ the Results page
def test_results_page_filters_the_table_and_opens_a_row_in_explain(folder, tmp_path, monkeypatch):
    st_testing = pytest.importorskip("streamlit.testing.v1")
    from neuroscope.batch.inputs import attach_targets, collect
    from neuroscope.batch.run import run_batch
    from neuroscope.batch.work import Settings
    root = tmp_path / "runs"
    records = collect(str(folder), root)
    attach_targets(records, {"sub/scene01.png": {"class": "car", "region": "10,20,90,60"}})
    run_batch(Settings(model=MODEL, methods=["grad-cam", "saliency"], out=str(root / "first"),
                       input_size=(64, 128)), records, progress=False)
    monkeypatch.setenv("NEUROSCOPE_RESULTS_DIRS", str(root))
    app = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    at = st_testing.AppTest.from_file(str(app), default_timeout=180)
    at.session_state["model"] = MODEL
    at.session_state["image_source"] = "Gallery"
    at.run()
    at.switch_page("app_pages/results.py").run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    shown = lambda: at.session_state["ns_session"].shown  # noqa: E731
    assert shown()["results:rows"] == 10 and shown()["results:gallery"] == 8
    at.radio(key="results_status").set_value("failed").run()
    assert shown()["results:rows"] == 2
    at.radio(key="results_status").set_value("all").run()
    at.multiselect(key="results_classes").set_value(["car"]).run()
    at.multiselect(key="results_methods").set_value(["saliency"]).run()
    assert shown()["results:rows"] == 1
    at.button(key="results_open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    sel = at.session_state["ns_session"].selection
    assert sel.image_name == "sub/scene01.png" and sel.image.shape == (64, 128, 3)
    assert sel.resolved.class_name == "car" and sel.target.region == (10, 20, 90, 60)
    assert at.session_state["methods::segmentation"] == ["saliency"]
    assert "saliency" in at.session_state["ns_session"].shown.get("maps", {})     # the Explain page ran
    # the Explain page started background work (the parts of the target, a capture of every
    # layer): let it finish, or the interpreter may exit while a daemon thread is inside
    # torch (with Ray imported, its terminate handler then aborts the process: exit 134)
    from neuroscope.interactive import PREFETCH
    kept = at.session_state["ns_session"].kept
    for job in [*kept.get("parts_jobs", {}).values(), *kept.get("jobs", {}).values()]:
        job.cancel()
        assert job.wait(180)
    assert PREFETCH.wait(180)
