"""A corpus of hostile and careless inputs (issue 16), and a runner that drives it through the CLI.

    python tests/bad_inputs.py make DIR          # write the corpus, print the case count
    python tests/bad_inputs.py run DIR [--as-gb G] [--timeout S]
                                                 # run every CLI case in this process, print JSON

`make_corpus(dir)` writes images (truncated, random, header lies, bombs, 16-bit, CMYK,
palette, LA, float TIFF, animated GIF, EXIF rotations, 1x1 and 1xN), model files (empty,
not-a-zip, random .h5, a Lambda layer, malicious pickles, zip bombs, declared-size bombs,
wrong shapes) and specs (path traversal, code imports, malformed TOML, wrong types), and
returns the CLI cases: (name, argv, expected exit code). Odd but valid images are expected
to succeed (exit 0); everything else to fail cleanly (exit 2, one stderr line).

`run` calls `neuroscope.cli.main` once per case in ONE process (frameworks load once),
with file descriptor 2 captured per case (so library logs and tracebacks would show), an
alarm per case (a hang is reported, not waited for), and optionally an address-space limit
(RLIMIT_AS) for the whole process. A malicious payload writes MARKER; the report says
whether it exists. Inputs are small: the whole corpus runs in well under a minute.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER_NAME = "PAYLOAD_RAN"


# --------------------------------------------------------------------------- images
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG with the given header and raw (already compressed) IDAT: any lie we like."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def zero_png(width: int, height: int) -> bytes:
    """A real 1-bit black PNG (a decompression bomb when large): rows compressed lazily."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    return png_bytes(width, height, b"".join(parts) + comp.flush(), bit_depth=1, colour=0)


def _save(im, path: Path, **kw) -> None:
    im.save(path, **kw)


def make_images(d: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (path, valid). `valid` images are unusual but fine: they must load."""
    from PIL import Image
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, bool]] = {}

    def add(name: str, valid: bool, data: bytes | None = None, im=None, **kw) -> None:
        path = d / name
        if data is not None:
            path.write_bytes(data)
        else:
            _save(im, path, **kw)
        out[name] = (path, valid)

    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.save(buf, "JPEG")
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    png = buf.getvalue()
    # broken
    add("empty.png", False, b"")
    add("truncated.jpg", False, jpeg[: len(jpeg) // 3])
    add("truncated.png", False, png[: len(png) // 2])
    add("random.png", False, rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("text-named.jpg", False, b"this is not an image\n" * 20)
    add("header-only.png", False, png[:33])
    add("lie-8000x6000.png", False, png_bytes(8000, 6000, zlib.compress(b"\x00" * 100)))   # 312-byte class
    add("lie-60000x60000.png", False, png_bytes(60000, 60000, zlib.compress(b"\x00" * 64)))
    add("lie-1x1-huge-idat.png", True, png_bytes(1, 1, zlib.compress(b"\x00" * 10_000_000)))
    add("bomb-20000x20000.png", False, zero_png(20000, 20000))          # 400 Mpx, ~60 KB
    add("bomb-12000x8000.png", False, zero_png(12000, 8000))            # 96 Mpx: Pillow warns, we refuse
    gif = bytearray(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b";")
    add("bomb-65535.gif", False, bytes(gif))
    bmp_header = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24,
                                                                          0, 0, 0, 0, 0, 0)
    add("bomb-100000.bmp", False, bmp_header)
    # unusual but valid
    add("gray16.png", True, im=Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)))
    add("cmyk.jpg", True, im=rgb.convert("CMYK"), format="JPEG")
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    add("palette.png", True, im=pal, transparency=0)
    add("la.png", True, im=rgb.convert("LA"))
    add("float.tiff", True, im=Image.fromarray(rng.random((40, 50)).astype(np.float32)), format="TIFF")
    frames = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(3)]
    add("animated.gif", True, im=frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        add(f"exif-{orientation}.jpg", True, im=rgb, format="JPEG", exif=exif.tobytes())
    add("1x1.png", True, im=Image.new("RGB", (1, 1), (200, 10, 10)))
    add("1x300.png", True, im=Image.new("RGB", (1, 300), (10, 200, 10)))
    add("300x1.png", True, im=Image.new("L", (300, 1), 128))
    return out


# --------------------------------------------------------------------------- models and specs
class Payload:
    """Unpickling this writes the marker file: proof that a pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('ran')",))


def _tiny_keras(kind: str):
    import keras
    if kind == "cnn":
        x = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
        return keras.Model(x, keras.layers.Dense(3, name="fc")(h))
    if kind == "mlp":
        x = keras.Input((10,))
        return keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(x)))
    if kind == "conv1d":
        x = keras.Input((20, 3))
        return keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(4, 3)(x))))
    if kind == "rank3-out":
        x = keras.Input((16, 16, 3))
        return keras.Model(x, keras.layers.Reshape((16, 48))(x))
    raise ValueError(kind)


def make_models(d: Path) -> dict[str, Path]:
    """Model files: name -> path."""
    import keras
    d.mkdir(parents=True, exist_ok=True)
    marker = str(d.parent / MARKER_NAME)
    rng = np.random.default_rng(1)
    out: dict[str, Path] = {}

    def add(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        out[name] = d / name

    add("empty.keras", b"")
    add("empty.h5", b"")
    add("not-a-zip.keras", b"PK? no, just text\n" * 50)
    add("random.h5", rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    add("random.keras", rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "a zip, but not a Keras model")
    add("junk-zip.keras", buf.getvalue())
    # a real zip bomb: 64 MiB of zeros per member, 3 members (the test lowers the limit to 100 MiB)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"model.weights{i}.h5", b"\x00" * (64 << 20))
        z.writestr("config.json", "{}")
    add("zip-bomb.keras", buf.getvalue())
    # a zip whose central directory lies: it claims 8 GiB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 0xFFFFFFF0)   # uncompressed size in the central directory
    add("zip-lie.keras", bytes(data))
    # a real model, and the same with a Lambda layer whose code would write the marker
    _tiny_keras("cnn").save(d / "cnn.keras")
    out["cnn.keras"] = d / "cnn.keras"
    x = keras.Input((16, 16, 3))
    h = keras.layers.Lambda(lambda t: t * 1.0 + (open(marker, "w").write("ran") * 0.0))(x)   # noqa: SIM115
    lam = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    if os.path.exists(marker):   # the lambda ran while building: that is us, not the loader
        os.remove(marker)
    lam.save(d / "lambda.keras")
    out["lambda.keras"] = d / "lambda.keras"
    for kind in ("mlp", "conv1d", "rank3-out"):
        _tiny_keras(kind).save(d / f"{kind}.keras")
        out[f"{kind}.keras"] = d / f"{kind}.keras"
    _tiny_keras("mlp").save(d / "mlp.h5")
    out["mlp.h5"] = d / "mlp.h5"
    # declared-size bomb: an HDF5 weights file whose dataset declares 2 GiB (stores nothing)
    import h5py
    with h5py.File(d / "declared-bomb.h5", "w") as f:
        f.create_dataset("w", shape=(1 << 29,), dtype="float32", chunks=(1 << 16,))
    out["declared-bomb.h5"] = d / "declared-bomb.h5"
    buf = io.BytesIO()
    with zipfile.ZipFile(d / "cnn.keras") as src, zipfile.ZipFile(buf, "w") as z:
        for name in src.namelist():
            z.writestr(name, src.read(name) if name != "model.weights.h5"
                       else (d / "declared-bomb.h5").read_bytes())
    add("declared-bomb.keras", buf.getvalue())
    # malicious pickles
    add("evil.pth", pickle.dumps(Payload(marker)))
    add("evil.pt", pickle.dumps({"state_dict": Payload(marker)}))
    import torch
    evil_zip = io.BytesIO()
    torch.save({"w": torch.zeros(1), "x": Payload(marker)}, evil_zip)
    add("evil-torchzip.pth", evil_zip.getvalue())
    return out


def make_specs(d: Path, models: dict[str, Path]) -> dict[str, Path]:
    """Spec files: name -> path. Local specs; the upload cases reuse their text."""
    d.mkdir(parents=True, exist_ok=True)
    marker = d.parent / MARKER_NAME
    (d / "classes.txt").write_text("a\nb\nc\n")
    (d / "bad.json").write_text("[\"a\", \"b\",")
    (d / "notlist.json").write_text("{\"a\": 1}")
    (d / "evil.pth").write_bytes(models["evil.pth"].read_bytes())
    tiny = ('framework = "torch"\ntask = "segmentation"\ninput_size = [32, 48]\nfully_convolutional = true\n'
            'classes = ["road", "car", "sky", "traffic sign"]\narchitecture = "tiny_models:tiny_seg_net"\n'
            'output = "out"\n')
    keras_base = (f'framework = "keras"\ntask = "classification"\ninput_size = [16, 16]\n'
                  f'weights = "{models["cnn.keras"]}"\n')
    keras_cls = keras_base + 'classes = ["a", "b", "c"]\n'
    texts = {
        "malformed.toml": "name = \"x\nframework = [",
        "binary.toml": "\x00\xff\xfe garbage",
        "missing-task.toml": 'framework = "torch"\ninput_size = [8, 8]\nclasses = ["a"]\n',
        "framework-jax.toml": tiny.replace('"torch"', '"jax"'),
        "task-detect.toml": tiny.replace('"segmentation"', '"detection"'),
        "size-abc.toml": tiny.replace("[32, 48]", '"abc"'),
        "size-zero.toml": tiny.replace("[32, 48]", "[0, 0]"),
        "size-float.toml": tiny.replace("[32, 48]", "[32.5, 48]"),
        "size-6000.toml": tiny.replace("[32, 48]", "[6000, 6000]"),
        "size-20000.toml": tiny.replace("[32, 48]", "[20000, 20000]"),
        "value-range-abc.toml": tiny + 'value_range = "abc"\n',
        "value-range-inverted.toml": tiny + "value_range = [1, 0]\n",
        "value-range-nan.toml": tiny + "value_range = [0, nan]\n",
        "std-zeros.toml": tiny + "std = [0, 0, 0]\n",
        "mean-short.toml": tiny + "mean = [0.5, 0.5]\n",
        "mean-text.toml": tiny + 'mean = ["a", "b", "c"]\n',
        "classes-int.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', "123"),
        "classes-empty.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', "[]"),
        "classes-mixed.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '["a", 1]'),
        "classes-bad-json.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '"bad.json"'),
        "classes-notlist-json.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '"notlist.json"'),
        "classes-missing.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '"nope.txt"'),
        "classes-dir.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '"."'),
        "classes-binary.toml": tiny.replace('["road", "car", "sky", "traffic sign"]', '"evil.pth"'),
        "palette-short.toml": tiny + "palette = [[1, 2, 3]]\n",
        "palette-bad.toml": tiny + "palette = [[1, 2, 300], [0, 0, 0], [0, 0, 0], [0, 0, 0]]\n",
        "output-kind.toml": tiny + 'output_kind = "softmax"\n',
        "output-float.toml": tiny.replace('output = "out"', "output = 1.5"),
        "output-nokey.toml": tiny.replace('output = "out"', 'output = "nokey"'),
        "fc-text.toml": tiny.replace("fully_convolutional = true", 'fully_convolutional = "yes"'),
        "name-int.toml": tiny + "name = 5\n",
        "arch-os-system.toml": tiny.replace("tiny_models:tiny_seg_net", "os:system"),
        "arch-builtins-exit.toml": tiny.replace("tiny_models:tiny_seg_net", "builtins:exit"),
        "arch-subprocess.toml": tiny.replace("tiny_models:tiny_seg_net", "subprocess:getoutput"),
        "arch-missing.toml": tiny.replace("tiny_models:tiny_seg_net", "no_such_module_xyz:f"),
        "arch-syntax.toml": tiny.replace("tiny_models:tiny_seg_net", "tiny_models"),
        "arch-not-callable.toml": tiny.replace("tiny_models:tiny_seg_net", "tiny_models:__doc__"),
        "arch-not-module.toml": tiny.replace("tiny_models:tiny_seg_net", "tiny_models:_not_a_model"),
        "arch-pickle-weights.toml": tiny + 'weights = "evil.pth"\n',
        "weights-missing.toml": tiny + 'weights = "nope.pth"\n',
        "weights-dir.toml": tiny + 'weights = "."\n',
        "weights-empty.toml": tiny + f'weights = "{models["empty.keras"]}"\n',
        "torch-no-arch.toml": tiny.replace('architecture = "tiny_models:tiny_seg_net"\n', "")
                              + f'weights = "{models["evil.pth"]}"\n',
        "keras-no-weights.toml": keras_cls.replace(f'weights = "{models["cnn.keras"]}"\n', ""),
        "keras-zip-bomb.toml": keras_cls.replace(str(models["cnn.keras"]), str(models["zip-bomb.keras"])),
        "keras-lambda.toml": keras_cls.replace(str(models["cnn.keras"]), str(models["lambda.keras"])),
        "keras-size-wrong.toml": keras_cls.replace("[16, 16]", "[32, 32]"),
        "keras-classes-wrong.toml": keras_base + 'classes = ["a", "b"]\n',
        "keras-output-nokey.toml": keras_cls + 'output = "nokey"\n',
        "keras-seg-task.toml": keras_cls.replace('"classification"', '"segmentation"'),
    }
    out = {}
    for name, text in texts.items():
        (d / name).write_bytes(text.encode("latin-1") if name == "binary.toml" else text.encode())
        out[name] = d / name
    assert not marker.exists()
    return out


# --------------------------------------------------------------------------- CLI cases
def make_corpus(d: str | os.PathLike) -> dict:
    """Write everything under `d`; returns {"cases": [[name, argv, expected exit]], "images",
    "models", "specs"} (also saved as d/corpus.json)."""
    d = Path(d)
    images = make_images(d / "images")
    models = make_models(d / "models")
    specs = make_specs(d / "specs", models)
    seg = str(HERE / "fixtures" / "tiny-seg.toml")
    cnn = str(models["cnn.keras"])
    good = str(images["exif-6.jpg"][0])
    cases: list[list] = []

    def case(name, argv, code=2):
        cases.append([name, [str(a) for a in argv], code])

    for name, (path, valid) in images.items():
        case(f"image:{name}:torch", ["predict", seg, path], 0 if valid else 2)
    for name in ("truncated.jpg", "random.png", "lie-8000x6000.png", "bomb-20000x20000.png", "float.tiff",
                 "1x300.png", "animated.gif", "cmyk.jpg"):
        path, valid = images[name]
        case(f"image:{name}:keras", ["explain", cnn, path, "--method", "grad-cam"], 0 if valid else 2)
    case("image:missing", ["predict", seg, d / "images" / "nope.png"])
    case("image:directory", ["predict", seg, d / "images"])
    for name, path in models.items():
        if name == "cnn.keras":
            continue
        case(f"model:{name}", ["predict", path, good])
    case("model:missing.keras", ["predict", d / "models" / "nope.keras", good])
    case("model:directory", ["predict", d / "models", good])
    case("model:unknown-name", ["predict", "no-such-model", good])
    for name, path in specs.items():
        case(f"spec:{name}", ["predict", path, good])
    # arguments (tiny torch segmenter, tiny Keras classifier, and the Keras repro of the issue)
    bad_args = [
        ["--class", "1000"], ["--class", "-1"], ["--class", ""], ["--class", "no such class"],
        ["--class", "road", "--contrast", "road"], ["--region", "inf,1"], ["--region", "nan,nan"],
        ["--region", ""], ["--region", "1,2,3"], ["--region", "99999,0"], ["--region", "10,10,5,5"],
        ["--region", "1e400,1"], ["--region", "abc"], ["--within-class", "--region", "0,0,1,1", "--class", "sky"],
        ["--layer", "nope"], ["--method", "nope"], ["--method", "saliency", "--param", "smooth=-1"],
        ["--method", "saliency", "--param", "smooth=100000"],
        ["--method", "saliency", "--param", "smooth=1e9"], ["--param", "foo=1"], ["--param", "novalue"],
        ["--method", "integrated-gradients", "--param", "steps=0"],
        ["--method", "integrated-gradients", "--param", "steps=100000"],
        ["--method", "rise", "--param", "cells=100000"], ["--method", "rise", "--param", "masks=1000000000"],
        ["--method", "rise", "--param", "p=nan"], ["--method", "rise", "--param", "p=inf"],
        ["--method", "rise", "--param", "seed=-1"], ["--method", "occlusion", "--param", "window=0"],
        ["--method", "occlusion", "--param", "stride=-1"], ["--method", "occlusion", "--param", "baseline=purple"],
        ["--method", "occlusion", "--param", "stride=1,2"], ["--method", "activation", "--channel", "-1"],
        ["--method", "activation", "--channel", "99999"], ["--channel", "3"], ["--method", "score-cam",
                                                                               "--param", "top=-1"],
        ["--method", "fusion-map", "--param", "classes=99"], ["--method", "fusion-map", "--param", "classes=a,b"],
        ["--out", str(d / "map.txt")], ["--out", str(d / "no" / "such" / "dir" / "map.npy")],
        ["--input-size", "0x0"], ["--input-size", "abc"], ["--input-size", "20000x20000"],
        ["--input-size", "6000x6000"],
    ]
    for i, extra in enumerate(bad_args):
        argv = ["explain", seg, good] + (["--method", "grad-cam"] if "--method" not in extra else []) + extra
        case(f"args:seg:{i}:{' '.join(extra)}", argv)
    keras_args = [["--class", "3"], ["--class", "0", "--contrast", "0"], ["--region", "all"],
                  ["--within-class"], ["--method", "score-map"], ["--input-size", "32x32"], ["--layer", "pool"],
                  ["--method", "rise", "--param", "masks=0"], ["--method", "saliency", "--param", "smooth=-2"]]
    for i, extra in enumerate(keras_args):
        argv = ["explain", cnn, good] + (["--method", "grad-cam"] if "--method" not in extra else []) + extra
        case(f"args:keras:{i}:{' '.join(extra)}", argv)
    case("args:bench-repeats-0", ["bench", seg, good, "--repeats", "0"])
    case("args:no-command", [])
    case("args:unknown-option", ["predict", seg, good, "--nope"])
    case("args:layers-missing-model", ["layers", d / "nope.toml"])
    # valid controls: the runner itself must not fail good calls
    case("ok:seg-grad-cam", ["explain", seg, good, "--method", "grad-cam"], 0)
    case("ok:keras-saliency", ["explain", cnn, good, "--method", "saliency", "--param", "smooth=2"], 0)
    report = {"cases": cases, "images": {k: [str(p), v] for k, (p, v) in images.items()},
              "models": {k: str(p) for k, p in models.items()}, "specs": {k: str(p) for k, p in specs.items()},
              "marker": str(d / MARKER_NAME)}
    (d / "corpus.json").write_text(json.dumps(report))
    return report


# --------------------------------------------------------------------------- runner
def run_cases(d: str | os.PathLike, timeout: int = 60, only: str | None = None) -> dict:
    """Run every CLI case of the corpus in d in this process; per case: exit code, what
    reached file descriptor 2, stdout size, seconds, and peak RSS after it."""
    import resource
    import signal
    import tempfile
    import time
    sys.path.insert(0, str(HERE))          # tiny_models (the tiny segmenter's architecture)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from neuroscope.cli import main
    corpus = json.loads((Path(d) / "corpus.json").read_text())

    class Hang(Exception):
        pass

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    results = []
    for name, argv, expected in corpus["cases"]:
        if only and only not in name:
            continue
        err = tempfile.TemporaryFile()
        out = tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        saved_err, saved_out = os.dup(2), os.dup(1)
        os.dup2(err.fileno(), 2)
        os.dup2(out.fileno(), 1)
        t0 = time.perf_counter()
        signal.alarm(timeout)
        try:
            code = main(argv)
        except Hang:
            code = "hang"
        except SystemExit as exc:
            code = f"SystemExit({exc.code})"
        except BaseException as exc:  # noqa: BLE001 -- the report says what escaped
            import traceback
            traceback.print_exc()
            code = f"raised {type(exc).__name__}"
        finally:
            signal.alarm(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_err, 2)
            os.dup2(saved_out, 1)
            os.close(saved_err)
            os.close(saved_out)
        err.seek(0)
        out.seek(0)
        text = err.read().decode("utf-8", "replace")
        results.append({"name": name, "expected": expected, "code": code, "stderr": text,
                        "stdout_bytes": len(out.read()), "seconds": round(time.perf_counter() - t0, 2),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return {"results": results, "marker_exists": os.path.exists(corpus["marker"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _main(argv: list[str]) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["make", "run"])
    p.add_argument("dir")
    p.add_argument("--as-gb", type=float, help="address-space limit for this process (RLIMIT_AS), GiB")
    p.add_argument("--timeout", type=int, default=60, help="seconds per case before it counts as a hang")
    p.add_argument("--only", help="run only cases whose name contains this")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.action == "make":
        corpus = make_corpus(args.dir)
        print(f"{len(corpus['cases'])} cases in {args.dir}")
        return 0
    if args.as_gb:
        import resource
        limit = int(args.as_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = run_cases(args.dir, args.timeout, args.only)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
