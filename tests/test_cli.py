"""The `neuroscope` command line: JSON keys, exit codes, one-line errors (CONTRACT.md §3)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, ROOT
from PIL import Image

from neuroscope.cli import main

SEG_SPEC = str(Path(__file__).parent / "fixtures" / "tiny-seg.toml")
COFFEE = str(IMAGES / "coffee.jpg")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "street.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_help_is_instant_and_imports_no_framework():
    code = ("import sys, neuroscope.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_models_lists_bundled_specs(capsys):
    data = run_json(capsys, "models")
    names = {m["name"]: m for m in data}
    assert names["mobilenet_v2-imagenet"] == {"name": "mobilenet_v2-imagenet", "framework": "torch",
                                              "task": "classification", "input_size": [224, 224], "num_classes": 1000}


def test_methods_json_has_the_contract_keys(capsys):
    data = run_json(capsys, "methods")
    by_name = {m["name"]: m for m in data}
    for name in ("activation", "saliency", "guided-backprop", "grad-cam", "grad-cam++", "guided-grad-cam",
                 "score-map", "fusion-map", "integrated-gradients"):
        assert set(by_name[name]) == {"name", "family", "tasks", "frameworks", "needs_layer", "signed", "params"}
    assert by_name["integrated-gradients"]["params"] == {"steps": 32, "baseline": "black", "smooth": 0}
    assert by_name["score-map"]["tasks"] == ["segmentation"]


def test_layers_are_channels_first_with_spatial_flags(capsys):
    data = run_json(capsys, "layers", SEG_SPEC)
    by = {l["name"]: l for l in data}
    assert by["stem.0"] == {"name": "stem.0", "type": "Conv2d", "shape": [8, 16, 24], "spatial": True}


def test_predict_classification_top5_on_a_real_photo(capsys):
    data = run_json(capsys, "predict", "mobilenet_v2-imagenet", COFFEE)
    assert data["task"] == "classification" and len(data["top"]) == 5
    assert data["top"][0]["name"] == "espresso" and data["top"][0]["prob"] > 0.9


def test_predict_segmentation_shares(capsys, street):
    data = run_json(capsys, "predict", SEG_SPEC, street)
    assert data["shape"] == [64, 96]
    shares = [c["pixel_share"] for c in data["classes"]]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6 and min(shares) > 0


def test_explain_json_and_npy_output(capsys, street, tmp_path):
    out = tmp_path / "map.npy"
    data = run_json(capsys, "explain", SEG_SPEC, street, "--method", "grad-cam", "--region", "0,0,48,32",
                    "--class", "car", "--out", str(out))
    assert set(data) == {"method", "layer", "target", "shape", "min", "max", "time_ms", "meta"}
    assert data["target"] == {"class_id": 1, "class_name": "car", "region": "0,0,48,32", "pixels": 48 * 32}
    m = np.load(out)
    assert m.dtype == np.float32 and m.shape == (64, 96)
    assert data["min"] == pytest.approx(float(m.min())) and data["max"] == pytest.approx(float(m.max()))


def test_explain_png_overlay_and_params(capsys, tmp_path):
    out = tmp_path / "ig.png"
    data = run_json(capsys, "explain", "mobilenet_v2-imagenet", COFFEE, "--method", "integrated-gradients",
                    "--param", "steps=4", "--out", str(out))
    assert data["meta"]["params"]["steps"] == 4
    assert Image.open(out).size == Image.open(COFFEE).size


@pytest.mark.parametrize("argv, fragment", [
    (["explain", "mobilenet_v2-imagenet", COFFEE, "--method", "nope"], "unknown method"),
    (["explain", "mobilenet_v2-imagenet", COFFEE, "--method", "grad-cam", "--region", "all"], "segmentation"),
    (["explain", "mobilenet_v2-imagenet", COFFEE, "--method", "grad-cam", "--class", "1000"], "out of range"),
    (["explain", "mobilenet_v2-imagenet", COFFEE, "--method", "integrated-gradients", "--param", "steps=x"], "must be int"),
    (["explain", "mobilenet_v2-imagenet", COFFEE, "--method", "grad-cam", "--param", "bogus=1"], "no parameter"),
    (["explain", "mobilenet_v2-imagenet", "/nonexistent.jpg", "--method", "grad-cam"], "not found"),
    (["predict", "no-such-model", COFFEE], "unknown model"),
    (["explain", "mobilenet_v2-imagenet", COFFEE], "--method"),
    (["predict", "mobilenet_v2-imagenet", COFFEE, "--input-size", "64x64"], "fully convolutional"),
])
def test_errors_are_one_line_with_exit_code_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and fragment in err


def test_library_output_during_a_command_stays_off_stdout_and_stderr(capsys, monkeypatch):
    """What a library prints while a command runs (Ray's driver prints its workers' errors
    to sys.stdout from a thread) is not the command's output: stdout holds the result only,
    stderr the one-line error only."""
    import threading
    from neuroscope import cli
    from neuroscope.errors import BadModel

    def noisy(args):
        t = threading.Thread(target=lambda: print("(raylet) Traceback (most recent call last): ..."))
        t.start()
        t.join()
        print("library chatter", file=sys.stdout)
        if args.json:
            raise BadModel("a Ray worker could not load m: BadModel: weights file not found")
        return {"ok": True}, "ok"
    monkeypatch.setitem(cli.COMMANDS, "models", noisy)
    code, out, err = run(capsys, "models")
    assert (code, out, err) == (0, "ok\n", "")
    code, out, err = run(capsys, "models", "--json")
    assert code == 2 and out == ""
    assert err == "neuroscope: error: a Ray worker could not load m: BadModel: weights file not found\n"


def test_corrupt_image_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0not really a jpeg")
    code, out, err = run(capsys, "predict", "mobilenet_v2-imagenet", str(bad))
    assert code == 2 and "cannot read" in err and err.count("\n") == 1


def test_input_size_override_for_fully_convolutional_models(capsys, street):
    data = run_json(capsys, "explain", SEG_SPEC, street, "--method", "saliency", "--input-size", "64x96")
    assert data["shape"] == [64, 96]


def test_bench_reports_the_contract_keys(capsys, street):
    data = run_json(capsys, "bench", SEG_SPEC, street, "--repeats", "1")
    assert set(data) == {"forward_ms", "forward_backward_ms", "methods", "layer_sweep"}
    assert set(data["methods"]) == {"activation", "saliency", "guided-backprop", "grad-cam", "grad-cam++",
                                    "guided-grad-cam", "score-map", "fusion-map", "lrp"}
    assert data["layer_sweep"]["layers"] == len([l for l in run_json(capsys, "layers", SEG_SPEC) if l["spatial"]])
