"""Model specs (TOML), the bundled demo models, and the rules for loading user models safely."""
from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BadModel

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_SPECS = ASSETS / "models"
TASKS = ("classification", "segmentation")
FRAMEWORKS = ("torch", "keras")
MAX_MODEL_BYTES = 1 << 30


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
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    palette: list[tuple[int, int, int]] | None = None
    weights: Path | None = None
    architecture: str | None = None
    output: str | int | None = None
    output_kind: str = "logits"
    description: str = ""
    path: Path | None = None
    extra: dict = field(default_factory=dict)

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


def read_spec(path: str | os.PathLike, allow_code: bool = True) -> ModelSpec:
    """Parse and validate a TOML spec. `allow_code=False` (uploads) refuses `architecture`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise BadModel(f"model spec not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadModel(f"{path.name} is not valid TOML: {exc}") from None
    return spec_from_dict(raw, base=path.parent, allow_code=allow_code, path=path)


def spec_from_dict(raw: dict, base: Path | None = None, allow_code: bool = True,
                   path: Path | None = None) -> ModelSpec:
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
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise BadModel(f"spec input_size must be [H, W] positive integers, got {size!r}")
    base = base or Path(".")
    classes = raw.get("classes")
    if isinstance(classes, str):
        cpath = base / classes
        try:
            text = cpath.read_text(encoding="utf-8")
        except OSError:
            raise BadModel(f"class-name file not found: {cpath}") from None
        if cpath.suffix == ".json":
            import json
            classes = json.loads(text)
        else:
            classes = [line.strip() for line in text.splitlines() if line.strip()]
    if not classes or not all(isinstance(c, str) for c in classes):
        raise BadModel("spec 'classes' must be a non-empty list of names or a file of names")
    architecture = raw.get("architecture")
    if architecture is not None and not allow_code:
        raise BadModel("a spec that imports code ('architecture') is accepted only from the local file system")
    output_kind = raw.get("output_kind", "logits")
    if output_kind not in ("logits", "probabilities"):
        raise BadModel(f"output_kind must be 'logits' or 'probabilities', got {output_kind!r}")
    weights = raw.get("weights")
    known = {"name", "framework", "task", "input_size", "classes", "fully_convolutional", "value_range", "mean",
             "std", "palette", "weights", "architecture", "output", "output_kind", "description"}
    return ModelSpec(
        name=str(raw.get("name", path.stem if path else "model")), framework=framework, task=task,
        input_size=(size[0], size[1]), classes=list(classes),
        fully_convolutional=bool(raw.get("fully_convolutional", False)),
        value_range=tuple(raw.get("value_range", (0.0, 1.0))),
        mean=tuple(raw.get("mean", (0.0, 0.0, 0.0))), std=tuple(raw.get("std", (1.0, 1.0, 1.0))),
        palette=[tuple(c) for c in raw["palette"]] if raw.get("palette") else None,
        weights=(base / weights) if weights else None, architecture=architecture,
        output=raw.get("output"), output_kind=output_kind, description=str(raw.get("description", "")),
        path=path, extra={k: v for k, v in raw.items() if k not in known})


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for a model without a palette."""
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)) for i in range(n)]


def load_model(source: Any, *, trusted: bool = False, input_size: tuple[int, int] | None = None,
               device: str | None = None, allow_code: bool = True, **spec_fields) -> Model:
    """Load a model from a bundled name, a spec path, a model file, an nn.Module or a keras.Model.

    `trusted=True` permits unpickling a whole torch model (a pickle can run code).
    `spec_fields` (task, classes, input_size, mean, std, ...) describe in-memory models
    and model files that have no spec. `allow_code=False` is for uploads.
    """
    spec: ModelSpec | None = None
    obj = None
    if isinstance(source, ModelSpec):
        spec = source
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        bundled = bundled_specs()
        if text in bundled:
            spec = read_spec(bundled[text])
        elif text.endswith(".toml"):
            spec = read_spec(text, allow_code=allow_code)
        elif os.path.exists(text):
            spec = _spec_for_file(Path(text), spec_fields)
        else:
            names = ", ".join(bundled) or "none"
            raise BadModel(f"unknown model {text!r}: not a bundled model ({names}), a spec (.toml) or a model file")
    else:
        obj = source
        if input_size is not None:
            spec_fields = {**spec_fields, "input_size": list(input_size)}
        spec = _spec_for_object(obj, spec_fields)
    if input_size is not None:
        if not spec.fully_convolutional and tuple(input_size) != tuple(spec.input_size):
            raise BadModel(f"--input-size needs a fully convolutional model; {spec.name} runs at "
                           f"{spec.input_size[0]}x{spec.input_size[1]} only")
        spec = replace(spec, input_size=(int(input_size[0]), int(input_size[1])))
    if obj is None:
        obj = _build(spec, trusted=trusted)
    return Model(spec, _backend(obj, spec, device))


def _backend(obj, spec: ModelSpec, device: str | None):
    if spec.framework == "torch":
        from .backends.torch_backend import TorchBackend
        return TorchBackend(obj, spec.input_size, spec.task, spec.output, spec.output_kind, device=device)
    from .backends.keras_backend import KerasBackend
    return KerasBackend(obj, spec.input_size, spec.task, spec.output, spec.output_kind)


def _framework_of(obj) -> str:
    mod = type(obj).__module__
    if mod.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(obj).__mro__):
        return "torch"
    if mod.startswith("keras") or any(c.__module__.startswith(("keras", "tf_keras")) for c in type(obj).__mro__):
        return "keras"
    raise BadModel(f"cannot use a {type(obj).__name__}: expected a torch.nn.Module or a keras.Model")


def _spec_for_object(obj, fields: dict) -> ModelSpec:
    framework = _framework_of(obj)
    fields = dict(fields)
    if "input_size" not in fields and framework == "keras":
        shape = getattr(obj, "input_shape", None)
        if shape and len(shape) == 4 and shape[1] and shape[2]:
            fields["input_size"] = [int(shape[1]), int(shape[2])]
    for key in ("task", "input_size"):
        if key not in fields:
            raise BadModel(f"describe the in-memory model: pass {key}=... to load_model")
    if "classes" not in fields:
        fields["classes"] = [f"class {i}" for i in range(int(fields.pop("num_classes", 0)) or _count_classes(obj, fields))]
    if isinstance(fields.get("input_size"), tuple):
        fields["input_size"] = list(fields["input_size"])
    raw = {"name": fields.pop("name", type(obj).__name__), "framework": framework, **fields}
    return spec_from_dict(raw)


def _count_classes(obj, fields) -> int:
    raise BadModel("describe the in-memory model: pass classes=[...] or num_classes=N to load_model")


def _spec_for_file(path: Path, fields: dict) -> ModelSpec:
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        raw = {"name": path.stem, "framework": "keras", "weights": str(path.resolve()), **fields}
        if "input_size" not in raw or "task" not in raw:
            model = _load_keras(path)
            shape = model.input_shape
            raw.setdefault("input_size", [int(shape[1] or 224), int(shape[2] or 224)])
            out = model.output_shape
            raw.setdefault("task", "segmentation" if isinstance(out, tuple) and len(out) == 4 else "classification")
            raw.setdefault("classes", [f"class {i}" for i in range(int(out[-1]))])
        return spec_from_dict(raw)
    if suffix in (".pt", ".pth", ".ckpt", ".bin"):
        if "architecture" not in fields:
            raise BadModel(f"{path.name} is a PyTorch file: give a spec (.toml) with architecture = 'module:factory' "
                           f"for a state dict (or mark a whole-model pickle as trusted)")
        raw = {"name": path.stem, "framework": "torch", "weights": str(path.resolve()), **fields}
        return spec_from_dict(raw)
    raise BadModel(f"{path.name}: unknown model format; expected .toml spec, .keras/.h5 (Keras) or .pt/.pth (PyTorch)")


def _load_keras(path: Path):
    if not path.is_file():
        raise BadModel(f"model file not found: {path}")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise BadModel(f"model file too large ({path.stat().st_size >> 20} MB)")
    import keras
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise BadModel(f"{path.name} is not a loadable Keras model (.keras or .h5, safe mode): "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _build(spec: ModelSpec, trusted: bool = False):
    if spec.framework == "keras":
        if spec.weights is None:
            raise BadModel(f"spec {spec.name} names no Keras model file ('weights')")
        return _load_keras(Path(spec.weights))
    import torch
    weights = Path(spec.weights) if spec.weights else None
    if weights is not None and not weights.is_file():
        raise BadModel(f"weights file not found: {weights}")
    if spec.architecture is None:
        if weights is None or not trusted:
            raise BadModel("a PyTorch model needs architecture = 'module:factory' in its spec; "
                           "whole-model pickles load only when marked trusted")
        try:
            model = torch.load(weights, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise BadModel(f"cannot unpickle {weights.name}: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, torch.nn.Module):
            raise BadModel(f"{weights.name} holds a {type(model).__name__}, not an nn.Module")
        return model
    module_name, _, factory_name = spec.architecture.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BadModel(f"cannot import architecture {spec.architecture!r}: {exc}") from None
    model = factory(num_classes=spec.num_classes) if _accepts(factory, "num_classes") else factory()
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


def _accepts(fn, name: str) -> bool:
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
