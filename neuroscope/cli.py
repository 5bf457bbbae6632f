"""The `neuroscope` command line (CONTRACT.md §3). Frameworks load lazily: --help is instant."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import time
import warnings
from typing import Any, Sequence

from .cli_args import CliError, explainer_from_args as _explainer, target_from_args as _target  # noqa: F401

ORIGINAL_SET = ("activation", "saliency", "guided-backprop", "grad-cam", "grad-cam++", "guided-grad-cam")
SEGMENTATION_SET = ("score-map", "fusion-map")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        raise CliError(message)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        size = int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size must look like 256x512, got {text!r}") from None
    if min(size) < 8 or max(size) > 65536:
        raise argparse.ArgumentTypeError(f"--input-size {text} out of range (8..65536 per side; "
                                         "the pixel limit is NEUROSCOPE_MAX_INPUT_PIXELS)")
    return size


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="neuroscope", description="Explain CNN classifiers and segmenters (PyTorch and Keras).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str, model: bool = False, image: bool = False):
        c = sub.add_parser(name, help=help_text, description=help_text)
        if model:
            c.add_argument("model", help="bundled model name, spec (.toml) or model file (.keras/.h5)")
        if image:
            c.add_argument("image", help="image file")
        c.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        if model:
            c.add_argument("--input-size", type=_size, help="HxW for fully convolutional models")
        return c

    command("models", "list the bundled models")
    command("layers", "list a model's layers", model=True)
    command("methods", "list the explanation methods")
    command("predict", "classify or segment an image", model=True, image=True)
    e = command("explain", "compute one explanation map", model=True, image=True)
    e.add_argument("--method", required=True)
    e.add_argument("--layer")
    _target_args(e)
    e.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter (repeatable)")
    e.add_argument("--channel", type=int, help="activation: channel index (default: channel mean)")
    e.add_argument("--out", help="write the map: .npy (float32 [H, W]) or .png (overlay)")
    b = command("bench", "time the original Neuroscope methods against a bare forward+backward", model=True, image=True)
    b.add_argument("--repeats", type=int, default=5)
    v = command("evaluate", "faithfulness and localisation metrics of methods", model=True)
    v.add_argument("image", nargs="?")
    v.add_argument("--set", dest="eval_set")
    v.add_argument("--methods")
    v.add_argument("--sanity", action="store_true")
    v.add_argument("--parts", action="store_true", help="Harada's validity check of part contributions")
    v.add_argument("--objects", type=int, default=100, help="--parts: generated objects to evaluate")
    v.add_argument("--dataset", help="a folder (glob, list) of images: metrics through the batch machinery")
    v.add_argument("--labels", help="with --dataset: folder of label PNGs (<stem>_labels.png): model IoU, confusion")
    from .batch.cli import add_engine_arguments
    add_engine_arguments(v)
    _target_args(v, explain=False)
    from .batch.cli import add_arguments as batch_arguments
    batch_arguments(command("batch", "explain every image of a folder, glob, list or video", model=True))
    from .interpret.cli import add_arguments as interpret_arguments
    interpret_arguments(command("interpret", "find the relevant filters of each class (Oramas et al.)", model=True))
    y = command("synth", "write generated street scenes with labels, instances and parts")
    y.add_argument("--seed", type=int, required=True)
    y.add_argument("--count", type=int, required=True)
    y.add_argument("--out", required=True)
    y.add_argument("--size", type=_size, default=(256, 512), help="HxW (default 256x512)")
    pa = command("parts", "part contributions of a clicked object (segmentation)", model=True, image=True)
    pa.add_argument("--region", required=True, help="X,Y (a pixel of the object) or X0,Y0,X1,Y1")
    pa.add_argument("--class", dest="class_id", help="class id or exact name (default: the class at the pixel)")
    return p


def _target_args(c, explain: bool = True) -> None:
    c.add_argument("--class", dest="class_id", help="class id or exact name (default: top-1 / largest area)")
    c.add_argument("--region", help="segmentation: all | predicted | X,Y | X0,Y0,X1,Y1")
    if explain:
        c.add_argument("--within-class", action="store_true")
        c.add_argument("--contrast", help="explain class minus this class")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except CliError as exc:
        print(f"neuroscope: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .errors import NeuroscopeError
    code, message, result = 0, None, None
    with _library_logs() as log:   # TensorFlow / absl / Pillow / warnings: to NEUROSCOPE_LOG or nowhere
        try:
            result = COMMANDS[args.command](args)
        except (NeuroscopeError, CliError) as exc:
            code, message = 2, f"neuroscope: error: {exc}"
        except KeyboardInterrupt:
            code, message = 130, "neuroscope: interrupted"
        except MemoryError:
            code, message = 2, "neuroscope: error: out of memory for this input; use a smaller image or --input-size"
        except Exception as exc:  # a bug: one line here, the traceback in the log
            import traceback
            traceback.print_exc(file=log)
            text = " ".join(str(exc).split())[:300]
            code, message = 1, (f"neuroscope: internal error: {type(exc).__name__}{': ' + text if text else ''} "
                                "(set NEUROSCOPE_LOG=FILE for the traceback)")
    if message is not None:
        print(" ".join(message.split()), file=sys.stderr)
        return code
    data, table = result
    if args.json:
        print(json.dumps(data))
    else:
        print(table)
    return 0


@contextlib.contextmanager
def _library_logs():
    """Keep library output off the user's stderr and stdout, so that they hold only
    Neuroscope's own one-line message and result (CONTRACT.md §3). What is written to file
    descriptor 2 (TensorFlow's C++ and absl logs) and to `sys.stdout` while a command runs
    (Ray's driver prints its workers' errors there from a thread) goes to the file
    NEUROSCOPE_LOG names, or nowhere (a command prints its result after this); Python
    warnings and library `logging` records are silenced. `sys.stderr` stays the terminal,
    so a command's own progress line still shows. Yields a stream for internal tracebacks."""
    target = os.environ.get("NEUROSCOPE_LOG") or os.devnull
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except (OSError, AttributeError, ValueError):   # no descriptor 2 (embedded use), unwritable log
        yield io.StringIO()
        return
    os.dup2(fd, 2)
    os.close(fd)
    old_stderr = sys.stderr
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                         errors="replace") if old_stderr is sys.__stderr__ else None
    if terminal is not None:   # (under pytest's capsys, sys.stderr is its own capture: leave it)
        sys.stderr = terminal
    logging.disable(logging.CRITICAL)
    log = open(target, "a", encoding="utf-8", errors="replace")   # noqa: SIM115
    old_stdout, sys.stdout = sys.stdout, log
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield log
    finally:
        sys.stdout = old_stdout
        logging.disable(logging.NOTSET)
        log.close()
        for stream in (sys.stderr, old_stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stderr = old_stderr
        if terminal is not None:
            terminal.close()
        os.dup2(saved, 2)
        os.close(saved)


# ------------------------------------------------------------------ helpers
def _table(rows: list[dict], columns: Sequence[str]) -> str:
    from .evaluation.reports import text_table
    return text_table(rows, columns)


def _markdown(rows: list[dict], columns: Sequence[str]) -> str:
    from .evaluation.reports import markdown_table
    return markdown_table(rows, columns)


# ------------------------------------------------------------------ commands
def cmd_models(args):
    from .zoo import list_models
    data = [s.as_json() for s in list_models()]
    rows = [{**d, "input_size": "x".join(map(str, d["input_size"]))} for d in data]
    return data, _table(rows, ["name", "framework", "task", "input_size", "num_classes"])


def cmd_layers(args):
    ex = _explainer(args)
    data = [{"name": l.name, "type": l.type, "shape": list(l.shape) if l.shape else None, "spatial": l.spatial}
            for l in ex.layers()]
    default = ex.default_layer()
    rows = [{**d, "shape": "x".join(map(str, d["shape"])) if d["shape"] else "-",
             "spatial": "yes" if d["spatial"] else "", "default": "*" if d["name"] == default else ""} for d in data]
    return data, _table(rows, ["name", "type", "shape", "spatial", "default"])


def cmd_methods(args):
    from .methods.registry import list_methods
    data = [m.as_json() for m in list_methods()]
    rows = [{"name": d["name"], "family": d["family"], "tasks": ",".join(t[:3] for t in d["tasks"]),
             "layer": "yes" if d["needs_layer"] else "", "signed": "yes" if d["signed"] else "",
             "params": " ".join(f"{k}={v}" for k, v in d["params"].items())} for d in data]
    return data, _table(rows, ["name", "family", "tasks", "layer", "signed", "params"])


def cmd_predict(args):
    ex = _explainer(args)
    pred = ex.predict(args.image)
    data = pred.as_json()
    if pred.task == "classification":
        rows = [{"class_id": t["class_id"], "name": t["name"], "prob": f"{t['prob']:.4f}"} for t in data["top"]]
        return data, _table(rows, ["class_id", "name", "prob"])
    rows = [{"class_id": c["class_id"], "name": c["name"], "pixel_share": f"{c['pixel_share']:.4f}"}
            for c in data["classes"]]
    return data, _table(rows, ["class_id", "name", "pixel_share"])


def _params(pairs: list[str]) -> dict[str, Any]:
    from .methods.registry import parse_value
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param must be K=V, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def cmd_explain(args):
    ex = _explainer(args)
    params = _params(args.param)
    if args.channel is not None:
        if args.method != "activation":
            raise CliError("--channel applies to --method activation only")
        if args.channel < 0:
            raise CliError(f"--channel must be >= 0, got {args.channel} (omit it for the channel mean)")
        params["channel"] = args.channel
    res = ex.explain(args.image, args.method, target=_target(args, ex.task), layer=args.layer, params=params)
    if args.out:
        _write_map(args.out, res, ex, ex.prepare(args.image).image)
    data = res.as_json()
    t = data["target"]
    table = _table([{"method": data["method"], "layer": data["layer"] or "-", "class": f"{t['class_id']} {t['class_name']}",
                     "region": t["region"] or "-", "shape": "x".join(map(str, data["shape"])),
                     "min": f"{data['min']:.4g}", "max": f"{data['max']:.4g}", "time_ms": f"{data['time_ms']:.1f}"}],
                   ["method", "layer", "class", "region", "shape", "min", "max", "time_ms"])
    if args.out:
        table += f"\nwrote {args.out}"
    for warning in res.meta.get("warnings", ()):
        table += f"\nwarning: {warning}"
    return data, table


def _write_map(path: str, res, ex, image) -> None:
    import numpy as np
    from .render import overlay, save_png
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".png"):
        raise CliError(f"--out must end in .npy or .png, got {path!r}")
    try:
        if ext == ".npy":
            np.save(path, res.map.astype(np.float32))
        else:
            save_png(overlay(image, res.map, sign="both" if res.meta["signed"] else "positive"), path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_bench(args):
    from .images import load_image
    ex = _explainer(args)
    image = load_image(args.image)
    if not 1 <= args.repeats <= 1000:
        raise CliError(f"--repeats must be 1..1000, got {args.repeats}")
    reps = args.repeats
    prep = ex.prepare(image)
    rt = ex.resolve(prep)
    backend = ex.backend

    def median_ms(fn) -> float:
        fn()  # warm-up (tracing, allocator)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        return round(statistics.median(times), 2)

    forward = median_ms(lambda: backend.forward(prep.x))
    fwd_bwd = median_ms(lambda: backend.input_gradients(prep.x, rt.objective))
    methods = {}
    names = ORIGINAL_SET + (SEGMENTATION_SET if ex.task == "segmentation" else ()) + ("lrp",)
    for name in names:
        def run(name=name):
            ex.clear_caches()
            ex.explain(image, name)
        methods[name] = median_ms(run)
    spatial = [l.name for l in ex.spatial_layers()]

    def sweep(layers):
        ex.clear_caches()
        ex.prepare(image)
        ex.resolve(image)  # the target is known before a sweep (it follows an explanation)
        ex.sweep(image, layers=layers)

    # A single-layer Grad-CAM whose backward reaches as deep as the sweep's: the first
    # spatial layer. (At the default, deepest layer the backward stops early: see
    # methods["grad-cam"].)
    # Interleaved (sweep, single, sweep, ...) so that drift on a shared machine hits both.
    sweep(spatial), sweep(spatial[:1])
    pairs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sweep(spatial)
        t1 = time.perf_counter()
        sweep(spatial[:1])
        pairs.append(((t1 - t0) * 1000.0, (time.perf_counter() - t1) * 1000.0))
    sweep_ms = round(statistics.median(p[0] for p in pairs), 2)
    single_ms = round(statistics.median(p[1] for p in pairs), 2)
    data = {"forward_ms": forward, "forward_backward_ms": fwd_bwd, "methods": methods,
            "layer_sweep": {"layers": len(spatial), "ms": sweep_ms, "single_layer_ms": single_ms}}
    rows = [{"what": "forward", "ms": forward, "x fwd+bwd": f"{forward / fwd_bwd:.2f}"},
            {"what": "bare forward+backward", "ms": fwd_bwd, "x fwd+bwd": "1.00"}]
    rows += [{"what": n, "ms": ms, "x fwd+bwd": f"{ms / fwd_bwd:.2f}"} for n, ms in methods.items()]
    rows += [{"what": f"grad-cam sweep, {len(spatial)} layers", "ms": sweep_ms, "x fwd+bwd": f"{sweep_ms / fwd_bwd:.2f}"},
             {"what": f"grad-cam, first layer only ({spatial[0]})", "ms": single_ms,
              "x fwd+bwd": f"{single_ms / fwd_bwd:.2f}"}]
    head = f"{ex.spec.name} ({ex.backend.framework}, {ex.device}) at {prep.rgb.shape[0]}x{prep.rgb.shape[1]}, median of {reps}"
    return data, head + "\n" + _table(rows, ["what", "ms", "x fwd+bwd"])


def cmd_evaluate(args):
    if args.parts:
        from .evaluation.parts import run_cli as run_parts
        return run_parts(args)
    if not args.methods:
        raise CliError("evaluate needs --methods (or --parts)")
    from .evaluation.cli import run_cli
    return run_cli(args)


def cmd_synth(args):
    from .synth.cli import run_cli
    return run_cli(args)


def cmd_parts(args):
    from .parts.cli import run_cli
    return run_cli(args)


def cmd_batch(args):
    from .batch.cli import run_cli
    return run_cli(args)


def cmd_interpret(args):
    from .interpret.cli import run_cli
    data, head, rows = run_cli(args, _explainer(args))
    return data, head + "\n" + _table(rows, ["class", "samples", "filters", "top"])


COMMANDS = {"batch": cmd_batch, "models": cmd_models, "layers": cmd_layers, "methods": cmd_methods, "predict": cmd_predict,
            "explain": cmd_explain, "bench": cmd_bench, "evaluate": cmd_evaluate, "interpret": cmd_interpret,
            "synth": cmd_synth, "parts": cmd_parts}


if __name__ == "__main__":
    raise SystemExit(main())
