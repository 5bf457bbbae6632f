"""Model specs (TOML), the bundled demo models, and the rules for loading user models safely."""
from __future__ import annotations

import importlib
import math
import os
import re
import sys

import numpy as np
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BadModel, NeuroscopeError
from .limits import check_input_size, limit

#: How a model's output relates to class logits (CONTRACT.md §6 `output_kind`).
OUTPUT_KINDS = ("logits", "probabilities", "log-probabilities", "sigmoid")

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_SPECS = ASSETS / "models"
TASKS = ("classification", "segmentation")
FRAMEWORKS = ("torch", "keras")


@dataclass
class ModelSpec:
    """Everything needed to build, feed and label a model (CONTRACT.md §6)."""

    name: str
    framework: str
    task: str
    input_size: tuple[int, int]
    classes: list[str]
    fully_convolutional: bool = False
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None      # None: 0 per input channel (resolved at load)
    std: tuple[float, ...] | None = None       # None: 1 per input channel
    palette: list[tuple[int, int, int]] | None = None
    weights: Path | None = None
    architecture: str | None = None
    output: str | int | None = None
    output_kind: str | None = None             # None: detected from the model at load
    description: str = ""
    path: Path | None = None
    extra: dict = field(default_factory=dict)
    channels: int | None = None                # input channels; None: taken from the model at load
    factory_kwargs: dict = field(default_factory=dict)   # keyword arguments of `architecture`

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def as_json(self) -> dict:
        return {"name": self.name, "framework": self.framework, "task": self.task,
                "input_size": list(self.input_size), "num_classes": self.num_classes}


@dataclass
class Model:
    """A loaded model: its spec and the framework adapter that runs it."""

    spec: ModelSpec
    backend: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task


def bundled_specs() -> dict[str, Path]:
    """Bundled model name -> spec path."""
    out = {}
    for path in sorted(BUNDLED_SPECS.glob("*.toml")):
        try:
            with open(path, "rb") as fh:
                out[tomllib.load(fh).get("name", path.stem)] = path
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return out


def list_models() -> list[ModelSpec]:
    return [read_spec(p) for p in bundled_specs().values()]


def read_spec(path: str | os.PathLike, allow_code: bool = True, files: dict[str, Path] | None = None) -> ModelSpec:
    """Parse and validate a TOML spec. `allow_code=False` (uploads) refuses `architecture`
    and every path: an uploaded spec may name only the files uploaded with it (`files`:
    upload name -> where it was saved) or list its classes inline (docs/contract.md §6)."""
    path = Path(path)
    if path.is_dir():
        raise BadModel(f"{path} is a directory, not a model spec (.toml)")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise BadModel(f"model spec not found: {path}") from None
    except OSError as exc:
        raise BadModel(f"cannot read the model spec {path.name}: {exc.strerror or type(exc).__name__}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadModel(f"{path.name} is not valid TOML: {exc}") from None
    return spec_from_dict(raw, base=path.parent, allow_code=allow_code, path=path, files=files)


def spec_from_dict(raw: dict, base: Path | None = None, allow_code: bool = True,
                   path: Path | None = None, files: dict[str, Path] | None = None) -> ModelSpec:
    """Validate a spec's keys and types (one-line `BadModel` on any problem); see `read_spec`."""
    upload = not allow_code

    def need(key):
        if key not in raw:
            raise BadModel(f"model spec lacks the required key {key!r}")
        return raw[key]

    framework, task = need("framework"), need("task")
    if framework not in FRAMEWORKS:
        raise BadModel(f"spec framework must be one of {FRAMEWORKS}, got {framework!r}")
    if task not in TASKS:
        raise BadModel(f"spec task must be one of {TASKS}, got {task!r}")
    size = need("input_size")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise BadModel(f"spec input_size must be [H, W] positive integers, got {size!r}")
    _check_size(size, upload, "spec input_size")
    base = base or Path(".")
    classes = raw.get("classes")
    if isinstance(classes, str):
        cpath = _spec_file(classes, "classes", base, upload, files)
        try:
            text = cpath.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadModel(f"class-name file not found: {classes}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadModel(f"cannot read the class-name file {cpath.name}: "
                           f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        if cpath.suffix == ".json":
            import json
            try:
                classes = json.loads(text)
            except ValueError as exc:
                raise BadModel(f"class-name file {cpath.name} is not valid JSON: {exc}") from None
        else:
            classes = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise BadModel("spec 'classes' must be a non-empty list of names or a file of names")
    architecture = raw.get("architecture")
    if architecture is not None and not allow_code:
        raise BadModel("a spec that imports code ('architecture') is accepted only from the local file system")
    if architecture is not None and (not isinstance(architecture, str)
                                     or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", architecture)):
        raise BadModel(f"spec architecture must be 'module:factory', got {architecture!r}")
    output = raw.get("output")
    if output is not None and (isinstance(output, bool) or not isinstance(output, (str, int))):
        raise BadModel(f"spec output must be a dict key (text) or an index (integer), got {output!r}")
    value_range = _numbers(raw, "value_range", (0.0, 1.0), n=2)
    if not value_range[0] < value_range[1]:
        raise BadModel(f"spec value_range must be [low, high] with low < high, got {list(value_range)}")
    if "std" in raw and any(v == 0 for v in _numbers(raw, "std", (1.0,))):
        raise BadModel(f"spec std must not contain zeros (it divides the input), got {raw['std']!r}")
    if "mean" in raw:
        _numbers(raw, "mean", (0.0,))
    palette = raw.get("palette")
    if palette is not None and (not isinstance(palette, list) or len(palette) < len(classes) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette)):
        raise BadModel(f"spec palette must list one [R, G, B] (0..255) per class ({len(classes)})")
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise BadModel(f"spec {key} must be text, got {raw[key]!r}")
    if not isinstance(raw.get("fully_convolutional", False), bool):
        raise BadModel(f"spec fully_convolutional must be true or false, got {raw['fully_convolutional']!r}")
    output_kind = raw.get("output_kind")
    if output_kind is not None and output_kind not in OUTPUT_KINDS:
        raise BadModel(f"output_kind must be one of {', '.join(OUTPUT_KINDS)} (or absent: detected), "
                       f"got {output_kind!r}")
    channels = raw.get("channels")
    if channels is not None and not (isinstance(channels, int) and 1 <= channels <= 4):
        raise BadModel(f"spec channels must be 1, 2, 3 or 4, got {channels!r}")
    factory_kwargs = raw.get("factory_kwargs", {})
    if not isinstance(factory_kwargs, dict):
        raise BadModel("spec factory_kwargs must be a table of keyword arguments")
    # TOML has no null: the string "None" passes Python's None (e.g. weights_backbone = "None")
    factory_kwargs = {str(k): (None if v == "None" else v) for k, v in factory_kwargs.items()}
    weights = raw.get("weights")
    known = {"name", "framework", "task", "input_size", "classes", "fully_convolutional", "value_range", "mean",
             "std", "palette", "weights", "architecture", "output", "output_kind", "description", "channels",
             "factory_kwargs", "num_classes"}
    return ModelSpec(
        name=str(raw.get("name", path.stem if path else "model")), framework=framework, task=task,
        input_size=(size[0], size[1]), classes=list(classes),
        fully_convolutional=bool(raw.get("fully_convolutional", False)),
        value_range=value_range,
        mean=tuple(raw["mean"]) if "mean" in raw else None, std=tuple(raw["std"]) if "std" in raw else None,
        palette=[tuple(c) for c in raw["palette"]] if raw.get("palette") else None,
        weights=_spec_file(weights, "weights", base, upload, files) if weights is not None else None,
        architecture=architecture, output=output, output_kind=output_kind, description=str(raw.get("description", "")),
        path=path, extra={k: v for k, v in raw.items() if k not in known},
        channels=channels, factory_kwargs=factory_kwargs)


def _spec_file(value: Any, key: str, base: Path, upload: bool, files: dict[str, Path] | None) -> Path | None:
    """The file a spec's `key` names. Local specs: relative to the spec's folder. Uploaded
    specs: only a file uploaded with it, by its upload name; any other path is refused
    (for `weights`, None: the uploaded model file takes its place)."""
    if not isinstance(value, str) or not value.strip():
        raise BadModel(f"spec {key!r} must be a file name, got {value!r}")
    if not upload:
        return base / value
    if files and value in files:
        return Path(files[value])
    if key == "weights":
        return None
    raise BadModel(f"an uploaded spec may name only files uploaded with it; {key} = {value!r} is not one "
                   f"(list the {key} inline instead)")


def _check_size(size, upload: bool, what: str) -> None:
    """`limits.check_input_size`, refused as the `BadModel` a model load raises."""
    try:
        check_input_size(size, upload=upload, what=what)
    except NeuroscopeError as exc:
        raise BadModel(str(exc)) from None


def _numbers(raw: dict, key: str, default: tuple, n: int | None = None) -> tuple[float, ...]:
    """A spec list of finite numbers (`n` of them, or 1 to 4: one per input channel)."""
    value = raw.get(key, default)
    ok_len = (len(value) == n) if n is not None else 1 <= len(value) <= 4 if isinstance(value, (list, tuple)) else False
    if (not isinstance(value, (list, tuple)) or not ok_len
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        what = f"{n} finite numbers" if n is not None else "finite numbers, one per input channel"
        raise BadModel(f"spec {key} must be a list of {what}, got {value!r}")
    return tuple(float(v) for v in value)


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for a model without a palette."""
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)) for i in range(n)]


def load_model(source: Any, *, trusted: bool = False, input_size: tuple[int, int] | None = None,
               device: str | None = None, allow_code: bool = True, **spec_fields) -> Model:
    """Load a model from a bundled name, a spec path, a model file, an nn.Module or a keras.Model.

    `trusted=True` permits unpickling a whole torch model or loading a TorchScript file
    (both can run code). `spec_fields` (task, classes or num_classes, input_size, mean,
    std, output_kind, channels, ...) describe in-memory models and model files that have no
    spec; what is not given is read from the model (README "Your own model"). A user's
    model object is never changed (torch: a private copy sharing its parameters).
    `allow_code=False` is for uploads.
    """
    spec: ModelSpec | None = None
    obj = None
    owned = True            # the module was built here, not handed to us
    fields = dict(spec_fields)
    if input_size is not None:
        fields["input_size"] = [int(input_size[0]), int(input_size[1])]
    if isinstance(source, ModelSpec):
        spec = source
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        bundled = bundled_specs()
        if text in bundled:
            spec = read_spec(bundled[text])
        elif text.endswith(".toml"):
            spec = read_spec(text, allow_code=allow_code)
        elif os.path.isdir(text):
            raise BadModel(f"{text} is a directory, not a model file or spec")
        elif os.path.exists(text):
            spec, obj = _spec_for_file(Path(text), fields, trusted and allow_code, upload=not allow_code)
        else:
            names = ", ".join(bundled) or "none"
            raise BadModel(f"unknown model {text!r}: not a bundled model ({names}), a spec (.toml) or a model file")
    else:
        obj, owned = source, False
        spec = _spec_for_object(obj, fields, device)
    spec = sized(spec, input_size, upload=not allow_code)
    if obj is None:
        obj = _build(spec, trusted=trusted)
    backend = _backend(obj, spec, device, own=owned)
    return Model(_resolved(spec, backend), backend)


def sized(spec: ModelSpec, input_size: tuple[int, int] | None, upload: bool = False) -> ModelSpec:
    """The spec at `input_size` (None: its own): the size limits, and only a fully
    convolutional model takes another size (`BadModel` otherwise)."""
    if input_size is None:
        return spec
    _check_size(input_size, upload, "--input-size")
    if not spec.fully_convolutional and tuple(input_size) != tuple(spec.input_size):
        raise BadModel(f"--input-size needs a fully convolutional model; {spec.name} runs at "
                       f"{spec.input_size[0]}x{spec.input_size[1]} only")
    return replace(spec, input_size=(int(input_size[0]), int(input_size[1])))


def _resolved(spec: ModelSpec, backend) -> ModelSpec:
    """The spec with what the backend read from the model: input channels (mean / std of
    matching length) and the output kind."""
    channels = int(getattr(backend, "channels", 3))

    def fit(values, default: float, what: str) -> tuple[float, ...]:
        if values is None:
            return (default,) * channels
        values = tuple(float(v) for v in values)
        if len(values) == channels:
            return values
        if len(values) == 1:
            return values * channels
        raise BadModel(f"{spec.name}: {what} has {len(values)} values but the model takes {channels} input "
                       f"channel(s); give {channels} (or one)")

    return replace(spec, channels=channels, mean=fit(spec.mean, 0.0, "mean"), std=fit(spec.std, 1.0, "std"),
                   output_kind=getattr(backend, "output_kind", spec.output_kind or "logits"))


def _backend(obj, spec: ModelSpec, device: str | None, own: bool = True):
    if spec.framework == "torch":
        from .backends.torch_backend import TorchBackend
        return TorchBackend(obj, spec.input_size, spec.task, spec.output, spec.output_kind, device=device,
                            own=own, channels=spec.channels)
    from .backends.keras_backend import KerasBackend
    return KerasBackend(obj, spec.input_size, spec.task, spec.output, spec.output_kind)


def _framework_of(obj) -> str:
    mod = type(obj).__module__
    if mod.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(obj).__mro__):
        return "torch"
    if mod.startswith("keras") or any(c.__module__.startswith(("keras", "tf_keras")) for c in type(obj).__mro__):
        return "keras"
    raise BadModel(f"cannot use a {type(obj).__name__}: expected a torch.nn.Module or a keras.Model")


def _spec_for_object(obj, fields: dict, device: str | None = None) -> ModelSpec:
    """A spec for an in-memory model: `fields` as given, the rest read from the model
    (Keras: input size, task and classes from its input and output shapes; torch: task
    and classes from the output of one forward at `input_size`, on our private copy)."""
    framework = _framework_of(obj)
    fields = dict(fields)
    if "input_size" not in fields and framework == "keras":
        shape = getattr(obj, "input_shape", None)
        if shape and len(shape) == 4 and shape[1] and shape[2]:
            fields["input_size"] = [int(shape[1]), int(shape[2])]
    if "input_size" not in fields:
        raise BadModel("describe the in-memory model: pass input_size=(H, W) to load_model")
    if isinstance(fields.get("input_size"), tuple):
        fields["input_size"] = list(fields["input_size"])
    if "classes" in fields and "num_classes" in fields:
        fields.pop("num_classes")
    if "task" not in fields or ("classes" not in fields and "num_classes" not in fields):
        shape = _output_shape(obj, framework, fields, device)
        if shape is not None:
            fields.setdefault("task", "segmentation" if len(shape) == 4 else "classification")
            if "classes" not in fields and "num_classes" not in fields:
                fields["num_classes"] = int(shape[1])
    if "task" not in fields:
        raise BadModel("describe the in-memory model: pass task='classification' or 'segmentation' to load_model")
    if "classes" not in fields:
        n = int(fields.pop("num_classes", 0) or 0)
        if n < 1:
            raise BadModel("describe the in-memory model: pass classes=[...] or num_classes=N to load_model")
        fields["classes"] = [f"class {i}" for i in range(n)]
    fields.pop("num_classes", None)
    raw = {"name": fields.pop("name", type(obj).__name__), "framework": framework, **fields}
    return spec_from_dict(raw)


def _output_shape(obj, framework: str, fields: dict, device: str | None) -> tuple | None:
    """The selected output's shape channels-first ([N, C] or [N, C, h, w]), or None when it
    cannot be read (then the caller asks for task / classes)."""
    if framework == "keras":
        try:
            outputs = obj.outputs
        except (AttributeError, ValueError):
            return None
        if not outputs:
            return None
        from .backends.keras_backend import _select_output as select
        tensor = select(obj._outputs_struct if hasattr(obj, "_outputs_struct") else outputs[0],
                        fields.get("output"))
        shape = tuple(getattr(tensor, "shape", ()))
        if len(shape) == 4:
            return (shape[0], shape[3], shape[1], shape[2])
        return shape if len(shape) == 2 else None
    import torch
    from .backends.torch_backend import TorchBackend, _select_output
    # a throw-away backend: our private copy, eval mode, the model's input channels
    probe = TorchBackend(obj, fields["input_size"], "classification", fields.get("output"), "logits",
                         device=device, channels=fields.get("channels"))
    H, W = probe.input_size
    x = probe._to_tensor(np.zeros((1, H, W, probe.channels), np.float32))
    try:
        with torch.inference_mode():
            out = _select_output(probe.module(x), fields.get("output"))
    except Exception as exc:  # noqa: BLE001
        from .backends.torch_model import model_error
        raise BadModel(f"cannot run the model at {H}x{W} to read its output: {model_error(exc, 'forward', probe._names)}"
                       ) from None
    return tuple(out.shape) if out.dim() in (2, 4) else None


def _spec_for_file(path: Path, fields: dict, trusted: bool = False, upload: bool = False) -> tuple[ModelSpec, Any]:
    """(spec, the loaded model or None) for a model file without a spec."""
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        model = _load_keras(path)
        shape, out = getattr(model, "input_shape", None), getattr(model, "output_shape", None)
        if not (isinstance(shape, tuple) and len(shape) == 4):
            raise BadModel(f"{path.name} takes input of shape {shape}; Neuroscope explains image models "
                           "taking [N, H, W, C]")
        if isinstance(out, tuple) and not (len(out) in (2, 4) and isinstance(out[-1], int) and out[-1] > 0):
            raise BadModel(f"{path.name} outputs shape {out}; expected [N, C] (classifier) or "
                           "[N, H, W, C] (segmenter)")
        if "input_size" not in fields and not (shape[1] and shape[2]):
            fields = {**fields, "input_size": [224, 224]}   # any size: a fully convolutional input
        if upload:
            size = fields.get("input_size") or [shape[1], shape[2]]
            _check_size(size, True, f"{path.name} input")
        spec = _spec_for_object(model, {"name": path.stem, **fields})
        return replace(spec, weights=path.resolve()), model
    if suffix in (".pt", ".pth", ".ckpt", ".bin", ".jit", ".torchscript", ".ts"):
        if "architecture" in fields:
            raw = {"name": path.stem, "framework": "torch", "weights": str(path.resolve()), **fields}
            return spec_from_dict(raw), None
        if not trusted:
            raise BadModel(f"{path.name} is a PyTorch file: give a spec (.toml) with architecture = 'module:factory' "
                           f"for a state dict, or pass trusted=True (CLI: a spec) to load a whole-model pickle or "
                           f"TorchScript file you trust (loading one can run code)")
        model = _load_torch_object(path)
        spec = _spec_for_object(model, {"name": path.stem, **fields})
        return replace(spec, weights=path.resolve()), model
    raise BadModel(f"{path.name}: unknown model format; expected .toml spec, .keras/.h5 (Keras) or .pt/.pth (PyTorch)")


def _is_torchscript(path: Path) -> bool:
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_torch_object(path: Path):
    """A whole model from a trusted file: TorchScript, else a pickled nn.Module."""
    import torch
    _check_model_file(path)
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise BadModel(f"cannot load TorchScript {path.name}: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise BadModel(f"cannot unpickle {path.name}: {type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if not isinstance(model, torch.nn.Module):
        kind = "a state dict: give a spec with architecture = 'module:factory'" if isinstance(model, dict) \
            else f"a {type(model).__name__}"
        raise BadModel(f"{path.name} holds {kind}, not an nn.Module")
    return model


def _check_model_file(path: Path) -> None:
    """A readable, non-empty file within the size limits; a .keras zip within the
    decompressed-size limit (a zip bomb is refused before anything is inflated)."""
    if path.is_dir():
        raise BadModel(f"{path.name} is a directory, not a model file")
    if not path.is_file():
        raise BadModel(f"model file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise BadModel(f"{path.name} is empty (0 bytes), not a model file")
    cap = limit("model_bytes")
    if size > cap:
        raise BadModel(f"model file {path.name} is too large ({size:,} bytes; the limit is {cap:,}, "
                       "NEUROSCOPE_MAX_MODEL_BYTES)")
    if path.suffix.lower() == ".keras":
        import zipfile
        try:
            with zipfile.ZipFile(path) as archive:
                inflated = sum(max(0, info.file_size) for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise BadModel(f"{path.name} is not a Keras model archive (a .keras file is a zip)") from None
        cap = limit("archive_bytes")
        if inflated > cap:
            raise BadModel(f"{path.name} would decompress to {inflated:,} bytes; the limit is {cap:,} "
                           "(NEUROSCOPE_MAX_ARCHIVE_BYTES)")
    _check_declared_weights(path)


def _check_declared_weights(path: Path) -> None:
    """Refuse weights whose declared size exceeds the archive limit: an HDF5 dataset may
    declare a huge shape while storing nothing (read back as zeros), and Keras allocates
    what is declared."""
    import zipfile
    try:
        import h5py
    except ImportError:   # Keras needs h5py for these files; without it, nothing to check
        return
    declared = 0

    def visit(_name, obj):
        nonlocal declared
        if isinstance(obj, h5py.Dataset):
            declared += int(obj.size or 0) * int(obj.dtype.itemsize)

    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith(".h5"):
                        with archive.open(member) as fh, h5py.File(fh, "r") as f:
                            f.visititems(visit)
        elif path.suffix.lower() == ".h5":
            with h5py.File(path, "r") as f:
                f.visititems(visit)
    except Exception:   # not HDF5 or damaged: Keras' own loader reports it
        return
    cap = limit("archive_bytes")
    if declared > cap:
        raise BadModel(f"{path.name} declares {declared:,} bytes of weights; the limit is {cap:,} "
                       "(NEUROSCOPE_MAX_ARCHIVE_BYTES)")


def _load_keras(path: Path):
    _check_model_file(path)
    import keras
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        text = " ".join(str(exc).split())[:300]
        raise BadModel(f"{path.name} is not a loadable Keras model (.keras or .h5, safe mode): "
                       f"{type(exc).__name__}{': ' + text if text else ''}") from None
    if not isinstance(model, keras.Model):
        raise BadModel(f"{path.name} holds a {type(model).__name__}, not a Keras model")
    return model


def _build(spec: ModelSpec, trusted: bool = False):
    if spec.framework == "keras":
        if spec.weights is None:
            raise BadModel(f"spec {spec.name} names no Keras model file ('weights')")
        return _load_keras(Path(spec.weights))
    import torch
    weights = Path(spec.weights) if spec.weights else None
    if weights is not None:
        if weights.is_dir():
            raise BadModel(f"weights {weights.name} is a directory, not a file")
        if not weights.is_file():
            raise BadModel(f"weights file not found: {weights}")
        _check_model_file(weights)
    if spec.architecture is None:
        if weights is None or not trusted:
            raise BadModel("a PyTorch model needs architecture = 'module:factory' in its spec; "
                           "whole-model pickles and TorchScript files load only when marked trusted")
        return _load_torch_object(weights)
    module_name, _, factory_name = spec.architecture.partition(":")
    not_factory = BadModel(f"architecture {spec.architecture!r} is not a model factory (a function or class "
                           "returning a torch.nn.Module)")
    if module_name.split(".")[0] in sys.stdlib_module_names or module_name.split(".")[0] in ("torch", "numpy"):
        raise not_factory        # os:system, builtins:exit, subprocess:..., never called
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadModel(f"cannot import architecture {spec.architecture!r}: {type(exc).__name__}: {exc}") from None
    if not callable(factory) or getattr(factory, "__module__", None) in (None, "builtins"):
        raise not_factory
    kwargs = dict(spec.factory_kwargs)
    implicit = "num_classes" not in kwargs and (_accepts(factory, "num_classes") or _accepts_any(factory))
    if implicit:
        kwargs["num_classes"] = spec.num_classes
    try:
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            if not (implicit and "num_classes" in str(exc)):
                raise
            kwargs.pop("num_classes")        # **kwargs that do not take it after all
            model = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 -- the user's factory: report, never exit
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise BadModel(f"architecture {spec.architecture}({args}) failed: {type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
                       f"(spec factory_kwargs are passed to it)") from None
    if not isinstance(model, torch.nn.Module):
        raise BadModel(f"architecture {spec.architecture} returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)  # never unpickles code
        except Exception as exc:
            raise BadModel(f"{weights.name} is not a PyTorch state dict (loaded with weights_only=True): "
                           f"{type(exc).__name__}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise BadModel(f"{weights.name} does not hold a state dict")
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            raise BadModel(f"{weights.name} does not fit architecture {spec.architecture}: "
                           f"{' '.join(first[:2])[:300]}") from None
    return model


def _accepts_any(fn) -> bool:
    """Whether `fn` takes **kwargs."""
    import inspect
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def _accepts(fn, name: str) -> bool:
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
