"""Session state of the dashboard: one typed `Session` per browser session, the widget keys,
the shared sidebar (model, image, layer, target) and the `Selection` every page receives.

Two kinds of per-session state, both owned here:

- **Choices** are widget values. Every widget has a key from `Keys` (or `Keys.scoped`) and
  is created with `**KEEP` (Streamlit's `persist_state="session"`): its value survives
  other pages and detours (Upload without a file, a failed load) with no re-assignment.
  A callback may change a choice with `set_choice` (callbacks run before widgets exist).
- **Data** (clicks, the selection, what the pages computed) lives in the `Session`
  dataclass under one session-state key. Nothing per-session goes into `st.cache_*`
  (shared by every session): shared caches hold only models, bundled images and scenes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from neuroscope import Explainer, Target, load_model
from neuroscope.engine import CachePool
from neuroscope.errors import BadImage, BadModel, NeuroscopeError
from neuroscope.images import load_image
from neuroscope.limits import limit
from neuroscope.zoo import ASSETS, bundled_specs, read_spec

from . import timing, truth

IMAGES = ASSETS / "images"
EXTRA_SPECS_ENV = "NEUROSCOPE_EXTRA_SPECS"   # os.pathsep-separated local spec paths (operator-provided)
UPLOAD_MODEL = "__upload__"
OPENED = "Batch result"                       # image source of a row opened on the Results page
REGIONS = {"predicted": "Predicted mask of the class", "all": "All pixels",
           "clicked": "Clicked object", "box": "Box (two clicks)"}
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
SESSION = "ns_session"
#: Pass to every widget: its value lives for the whole session, across pages.
KEEP = {"persist_state": "session"}


class Keys:
    """Widget keys of the sidebar and the pages (tests drive widgets by these)."""

    MODEL = "model"
    IMAGE_SOURCE = "image_source"
    SCENE_SEED = "scene_seed"
    REGION_MODE = "region_mode"
    WITHIN_CLASS = "within_class"
    IMAGE_UPLOAD = "image_upload"
    MODEL_UPLOAD = "model_upload"
    SPEC_UPLOAD = "model_spec_upload"
    CLEAR_CLICKS = "clear_clicks"
    RETRY_MODEL = "retry_model"

    @staticmethod
    def scoped(name: str, *scope: Any) -> str:
        """A key whose value belongs to a model, an image or a task (e.g. the layer of
        each model): switching back restores that scope's choice."""
        return "::".join([name, *map(str, scope)])

    gallery = staticmethod(lambda task: Keys.scoped("gallery", task))
    layer = staticmethod(lambda model: Keys.scoped("layer", model))
    target_class = staticmethod(lambda model, image: Keys.scoped("class", model, image))
    contrast = staticmethod(lambda model, image: Keys.scoped("contrast", model, image))


def choice(key: str, default: Any = None) -> Any:
    """The current value of a widget (or `default` before it was first shown)."""
    return st.session_state.get(key, default)


def set_choice(key: str, value: Any) -> None:
    """Change a widget's value: only from a callback or before the widget is drawn."""
    st.session_state[key] = value


@dataclass(frozen=True)
class ModelEntry:
    """One model the sidebar offers: a local spec file (bundled or named by the operator)."""

    key: str
    name: str
    framework: str
    task: str
    path: str
    bundled: bool

    @property
    def label(self) -> str:
        return f"{self.name} · {self.task} · {self.framework}" + ("" if self.bundled else " · extra")


@dataclass
class Selection:
    """What the sidebar picked, with the objects the pages need."""

    model_key: str
    model_label: str
    explainer: Explainer
    image: np.ndarray                 # RGB uint8, original size
    image_key: str                    # identifies the image within the session (clicks reset on change)
    image_name: str
    truth: np.ndarray | None          # ground-truth trainIds [H, W] (255 = ignore), when known
    prediction: Any                   # neuroscope Prediction
    layer: str | None
    target: Target | None
    resolved: Any | None              # neuroscope ResolvedTarget, None when the target is incomplete or invalid
    clicks: list[tuple[int, int]]

    @property
    def task(self) -> str:
        return self.explainer.task


@dataclass
class Session:
    """Everything one browser session keeps besides widget values."""

    selection: Selection | None = None
    clicks: list[list[int]] = field(default_factory=list)     # [[x, y], ...] original pixels, at most 2
    clicks_image: str | None = None                           # the image the clicks belong to
    model_failures: dict[str, str] = field(default_factory=dict)   # spec path -> message
    upload_digest: tuple | None = None                        # (file ids, sha256) of the uploaded model
    uploaded_truth: dict[str, np.ndarray] = field(default_factory=dict)   # image key -> label map
    task: str = "classification"                              # the last model's task (image picker order)
    #: what each page last showed, by name (tests read it; pages own their entries)
    shown: dict[str, Any] = field(default_factory=dict)
    #: results a page keeps between runs (e.g. the last evaluation report), by name
    kept: dict[str, Any] = field(default_factory=dict)
    #: an image opened from the Results page: {"path", "name"} (a local file of a batch run)
    opened: dict | None = None


def session() -> Session:
    s = st.session_state.get(SESSION)
    if s is None:
        s = st.session_state[SESSION] = Session()
    return s


def memo(name: str, key: tuple, build: Callable[[], Any], refs: tuple = (), size: int = 32) -> Any:
    """Per-session memo: `build()` once per (key, refs); `refs` are objects (arrays, results)
    named by identity, kept alive with the entry so an id is never reused for another."""
    table = session().kept.setdefault(f"memo:{name}", {})
    full = (key, tuple(map(id, refs)))
    hit = table.get(full)
    if hit is not None and all(a is b for a, b in zip(hit[0], refs)):
        return hit[1]
    value = build()
    if len(table) >= size:
        table.pop(next(iter(table)))
    table[full] = (refs, value)
    return value


def current() -> Selection | None:
    return session().selection


def show(page: Callable[[Selection], None], needs: str = "a model and an image") -> None:
    """Run a page function with the sidebar's selection (or say what is missing)."""
    sel = current()
    if sel is None:
        st.info(f"Pick {needs} in the sidebar.")
        return
    page(sel)


# ----------------------------------------------------------------------------- models
@st.cache_data(ttl=30, show_spinner=False)
def catalogue(extra: str) -> tuple[list[ModelEntry], list[str]]:
    """Bundled specs (re-read every 30 s, so newly bundled models appear) and extra specs."""
    entries, problems = [], []
    for name, path in bundled_specs().items():
        try:
            spec = read_spec(path)
        except NeuroscopeError as exc:
            problems.append(f"bundled spec {path.name}: {exc}")
            continue
        entries.append(ModelEntry(name, name, spec.framework, spec.task, str(path), True))
    for text in filter(None, extra.split(os.pathsep)):
        try:
            spec = read_spec(text)
        except NeuroscopeError as exc:
            problems.append(f"{EXTRA_SPECS_ENV}: {exc}")
            continue
        entries.append(ModelEntry(f"extra:{Path(text).resolve()}", spec.name, spec.framework, spec.task,
                                  str(Path(text).resolve()), False))
    entries.sort(key=lambda e: (not e.bundled, e.framework != "torch", e.name))
    return entries, problems


#: Images per model whose one-layer capture graph the engine keeps (Explainer kept_graphs):
#: a new click on the picture shown is then a backward of the model above the layer only.
KEPT_GRAPHS = 2


@st.cache_resource(show_spinner=False)
def cache_pool() -> CachePool:
    """One byte budget for the engine caches of every model the server holds (limits
    "server_cache_bytes"): without it each model kept up to 1.5 GiB of captures and results."""
    return CachePool(limit("server_cache_bytes"))


@st.cache_resource(show_spinner=False, max_entries=8)
def explainer_for_spec(path: str) -> Explainer:
    """One Explainer per local spec, shared by all sessions (it is thread-safe)."""
    return Explainer(load_model(read_spec(path)), cache_pool=cache_pool(), kept_graphs=KEPT_GRAPHS)


@st.cache_resource(show_spinner=False, max_entries=4)
def explainer_for_upload(digest: str, suffix: str, _model: bytes, _spec: bytes | None) -> Explainer:
    """A Keras model file (safe mode), optionally described by a spec without code.

    The bytes go to a private temporary folder under fixed names (never the user's
    file name) and the folder is removed once the model is in memory.
    """
    folder = Path(tempfile.mkdtemp(prefix="neuroscope-upload-"))
    try:
        model_path = folder / f"model{suffix}"
        model_path.write_bytes(_model)
        if _spec is None:
            return Explainer(load_model(str(model_path), allow_code=False), cache_pool=cache_pool(),
                             kept_graphs=KEPT_GRAPHS)
        spec_path = folder / "spec.toml"
        spec_path.write_bytes(_spec)
        spec = read_spec(spec_path, allow_code=False)
        if spec.framework != "keras":
            raise BadModel("an uploaded spec must describe the uploaded Keras file (framework = \"keras\")")
        return Explainer(load_model(replace(spec, weights=model_path, path=None), allow_code=False),
                         cache_pool=cache_pool(), kept_graphs=KEPT_GRAPHS)
    except NeuroscopeError as exc:  # keep server paths out of the message
        raise type(exc)(str(exc).replace(str(model_path), "the uploaded file").replace(str(folder), "")) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _load_entry(entry: ModelEntry) -> Explainer | None:
    """The entry's Explainer; a failure is remembered for the session (no reload on every rerun)."""
    failures = session().model_failures
    if entry.path not in failures:
        try:
            with st.spinner(f"Loading {entry.name}…"):
                return explainer_for_spec(entry.path)
        except NeuroscopeError as exc:
            failures[entry.path] = f"Cannot load {entry.name}: {exc}. Pick another model in the sidebar."
        except Exception as exc:  # a framework failing inside its loader: report, keep the app alive
            failures[entry.path] = f"Cannot load {entry.name} ({first_line(exc)}). Pick another model in the sidebar."
    st.error(failures[entry.path])
    if st.sidebar.button("Try loading it again", key=Keys.RETRY_MODEL):
        failures.pop(entry.path, None)
        st.rerun()
    return None


def _upload_model(sb) -> tuple[str, str, Explainer | None]:
    sb.caption("Keras `.keras` / `.h5` files load in safe mode. Optionally add a spec (`.toml`, no "
               "`architecture`, classes inline) to name the classes and preprocessing. PyTorch state dicts "
               "need an architecture, which is code: put their spec on the server and start the app with "
               f"`{EXTRA_SPECS_ENV}=path/to/spec.toml`.")
    up = sb.file_uploader("Model file", type=["keras", "h5", "pt", "pth"], key=Keys.MODEL_UPLOAD)
    spec_up = sb.file_uploader("Spec (optional)", type=["toml"], key=Keys.SPEC_UPLOAD)
    if up is None:
        st.info("Upload a Keras model file in the sidebar, or pick a bundled model.")
        return UPLOAD_MODEL, "upload", None
    suffix = Path(up.name).suffix.lower()
    if suffix in (".pt", ".pth"):
        st.error("A PyTorch file cannot be loaded from an upload: a state dict needs an architecture (code) and a "
                 "pickle can run code. Write a spec with architecture = 'module:factory' on the server and start "
                 f"the app with {EXTRA_SPECS_ENV}=path/to/spec.toml.")
        return UPLOAD_MODEL, "upload", None
    cap = limit("model_bytes")   # NEUROSCOPE_MAX_MODEL_BYTES applies to uploads too
    if up.size > cap:
        st.error(f"The model file is too large ({up.size >> 20} MB); the limit is {cap >> 20} MB.")
        return UPLOAD_MODEL, "upload", None
    ids = (up.file_id, spec_up.file_id if spec_up else None)
    s = session()
    if s.upload_digest is None or s.upload_digest[0] != ids:
        h = hashlib.sha256(up.getvalue())
        if spec_up is not None:
            h.update(spec_up.getvalue())
        s.upload_digest = (ids, h.hexdigest())
    digest = s.upload_digest[1]
    key = f"upload:{digest[:12]}"
    try:
        with st.spinner(f"Loading {up.name}…"):
            ex = explainer_for_upload(digest, suffix, up.getvalue(), spec_up.getvalue() if spec_up else None)
        return key, f"{up.name} (uploaded)", ex
    except NeuroscopeError as exc:
        st.error(f"Cannot load {up.name}: {exc}")
    except Exception as exc:
        st.error(f"Cannot load {up.name} ({first_line(exc)}); expected a Keras .keras or .h5 model file.")
    return key, "upload", None


# ----------------------------------------------------------------------------- images
def gallery_names(task: str) -> list[str]:
    """Bundled images (labels and instance files excluded), the task's kind of picture first."""
    names = sorted(p.name for p in IMAGES.iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                   and not p.stem.endswith("_labels") and "_instances" not in p.stem)

    def driving(n: str) -> int:
        return 0 if n.startswith("scene-") else 1 if n.startswith("dashcam-") else 2
    if task == "segmentation":
        return sorted(names, key=lambda n: (driving(n), n))
    return sorted(names, key=lambda n: (driving(n) < 2, n))


@st.cache_resource(show_spinner=False, max_entries=64)
def gallery_image(name: str) -> np.ndarray:
    return load_image(IMAGES / name)


@st.cache_resource(show_spinner=False, max_entries=64)
def gallery_truth(name: str) -> np.ndarray | None:
    path = IMAGES / f"{Path(name).stem}_labels.png"
    return truth.read_labels(path.read_bytes()) if path.is_file() else None


GALLERY_COLS = 2
GALLERY_TILE = (72, 128)    # (H, W) of one thumbnail cell in the clickable gallery


@st.cache_resource(show_spinner=False, max_entries=8)
def gallery_sheet(names: tuple[str, ...]) -> np.ndarray:
    """The gallery's thumbnails in a GALLERY_COLS-wide grid of equal cells (white padding)."""
    from neuroscope.images import resize_rgb
    h, w = GALLERY_TILE
    rows = -(-len(names) // GALLERY_COLS)
    sheet = np.full((rows * h, GALLERY_COLS * w, 3), 255, np.uint8)
    for i, name in enumerate(names):
        img = gallery_image(name)
        s = min(h / img.shape[0], w / img.shape[1])
        small = resize_rgb(img, (max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))))
        r, c = divmod(i, GALLERY_COLS)
        y, x = r * h + (h - small.shape[0]) // 2, c * w + (w - small.shape[1]) // 2
        sheet[y:y + small.shape[0], x:x + small.shape[1]] = small
    return sheet


def gallery_index(value: dict | None, count: int) -> int | None:
    """The thumbnail under a click on the gallery sheet (displayed pixels), or None."""
    if not value or "x" not in value:
        return None
    rows = -(-count // GALLERY_COLS)
    col = min(GALLERY_COLS - 1, int(value["x"] / max(1.0, float(value.get("width") or 1)) * GALLERY_COLS))
    row = min(rows - 1, int(value["y"] / max(1.0, float(value.get("height") or 1)) * rows))
    i = row * GALLERY_COLS + col
    return i if 0 <= i < count else None


def gallery_grid(names: list[str], key: str) -> None:
    """Clickable thumbnails: a click chooses that bundled image (the selectbox follows)."""
    from streamlit_image_coordinates import streamlit_image_coordinates

    def on_click() -> None:
        i = gallery_index(st.session_state.get("gallery_click"), len(names))
        if i is not None:
            set_choice(key, names[i])
    streamlit_image_coordinates(gallery_sheet(tuple(names)), key="gallery_click", width="stretch",
                                on_click=on_click, cursor="pointer")
    st.caption(" · ".join(names))


def scene_generator() -> Callable | None:
    """`neuroscope.synth.generate_scene` when the generator is installed, else None."""
    try:
        from neuroscope.synth import generate_scene
    except Exception:
        return None
    return generate_scene


@st.cache_resource(show_spinner=False, max_entries=16)
def generated_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    scene = scene_generator()(int(seed))
    return scene.image, scene.labels


def _pick_image(sb, task: str, quiet: bool = False) -> tuple[np.ndarray, str, str, np.ndarray | None] | None:
    """The image the sidebar picks; `quiet`: only draw the widgets (no messages, nothing read),
    so that their values, an uploaded file included, survive a run without a model."""
    sources = ["Gallery", "Generated scene", "Upload"] if scene_generator() else ["Gallery", "Upload"]
    opened = session().opened
    if opened is not None:
        sources.append(OPENED)
    source = sb.radio("Image", sources, key=Keys.IMAGE_SOURCE, horizontal=True, **KEEP)
    if source == OPENED and opened is not None:
        try:
            return load_image(opened["path"]), f"batch:{opened['path']}", opened["name"], None
        except BadImage as exc:
            st.error(f"{exc}")
            return None
    if source == "Gallery":
        names = gallery_names(task)
        name = sb.selectbox("Bundled image", names, key=Keys.gallery(task), **KEEP)
        if quiet:
            return None
        with sb.expander("Gallery (click a picture)"):
            gallery_grid(names, Keys.gallery(task))
        try:
            return gallery_image(name), f"gallery:{name}", name, gallery_truth(name)
        except NeuroscopeError as exc:
            st.error(f"{exc}")
            return None
    if source == "Generated scene":
        seed = int(sb.number_input("Scene seed", min_value=0, max_value=1_000_000, step=1, key=Keys.SCENE_SEED,
                                   **KEEP))
        if quiet:
            return None
        try:
            with st.spinner("Generating a driving scene…"):
                image, labels = generated_scene(seed)
        except Exception as exc:
            st.error(f"The scene generator failed ({first_line(exc)}); pick a gallery image.")
            return None
        return image, f"scene:{seed}", f"generated scene {seed}", labels
    up = sb.file_uploader("Upload an image", type=IMAGE_TYPES, key=Keys.IMAGE_UPLOAD)
    if quiet:
        return None
    if up is None:
        st.info("Upload an image in the sidebar (PNG or JPEG).")
        return None
    try:
        image = load_image(up.getvalue())
    except BadImage as exc:
        st.error(f"{exc}. Upload an RGB or greyscale PNG or JPEG.")
        return None
    key = f"upload:{up.file_id}"
    return image, key, up.name, session().uploaded_truth.get(key)


# ----------------------------------------------------------------------------- target
def clicks_for(image_key: str, size: tuple[int, int]) -> list[tuple[int, int]]:
    """The clicks on this image (cleared when the image changes), clamped to it."""
    s = session()
    if s.clicks_image != image_key:
        s.clicks_image, s.clicks = image_key, []
    h, w = size
    points = []
    for p in s.clicks:
        try:
            x, y = int(p[0]), int(p[1])
        except (TypeError, ValueError, IndexError):
            continue
        points.append((min(max(x, 0), w - 1), min(max(y, 0), h - 1)))
    return points[-2:]


def record_click(value: dict | None, size: tuple[int, int]) -> None:
    """Turn an image-coordinates event (displayed pixels) into a click in original pixels
    (a callback: it may switch the region mode to "clicked")."""
    if not value or "x" not in value:
        return
    h, w = size
    x = int(value["x"] * w / max(1.0, float(value.get("width") or w)))
    y = int(value["y"] * h / max(1.0, float(value.get("height") or h)))
    s = session()
    s.clicks = (s.clicks + [[min(max(x, 0), w - 1), min(max(y, 0), h - 1)]])[-2:]
    if choice(Keys.REGION_MODE, "predicted") in ("predicted", "all"):
        set_choice(Keys.REGION_MODE, "clicked")


def _class_label(classes: list[str], extra: dict[int, str]) -> Callable[[Any], str]:
    def fmt(cid):
        return "—" if cid is None else f"{classes[cid]}{extra.get(cid, '')}"
    return fmt


def _pick_target(sb, ex: Explainer, pred, model_key: str, image_key: str,
                 clicks: list[tuple[int, int]]) -> Target | None:
    classes = ex.classes
    if ex.task == "classification":
        top = pred.top(len(classes))
        ids = [t["class_id"] for t in top]     # every class, most probable first (type to search)
        fmt = _class_label(classes, {t["class_id"]: f" — {t['prob']:.1%}" for t in top})
        cid = sb.selectbox("Class", ids, format_func=fmt, key=Keys.target_class(model_key, image_key), **KEEP)
        contrast = sb.selectbox("Contrast with (optional)", [None] + [i for i in ids if i != cid],
                                format_func=fmt, key=Keys.contrast(model_key, image_key), **KEEP)
        return Target.classification(cid, contrast=contrast)

    shares = {d["class_id"]: d["pixel_share"] for d in pred.pixel_shares()}
    ids = list(shares) + [i for i in range(len(classes)) if i not in shares]
    fmt = _class_label(classes, {i: f" — {shares.get(i, 0.0):.1%} of pixels" for i in range(len(classes))})
    mode = sb.radio("Region", list(REGIONS), format_func=REGIONS.get, key=Keys.REGION_MODE, **KEEP)
    cid = None
    if mode == "clicked":
        sb.caption("Class: the one predicted under the click.")
    else:
        cid = sb.selectbox("Class", ids, format_func=fmt, key=Keys.target_class(model_key, image_key), **KEEP)
    contrast = sb.selectbox("Contrast with (optional)", [None] + [i for i in ids if i != cid],
                            format_func=fmt, key=Keys.contrast(model_key, image_key), **KEEP)
    if clicks:
        if sb.button("Clear clicks", key=Keys.CLEAR_CLICKS):
            session().clicks = []
            st.rerun()
    if mode == "clicked":
        if not clicks:
            sb.info("Click an object in the image (Explain page).")
            return None
        return Target.segmentation(None, region=clicks[-1], contrast=contrast)
    if mode == "box":
        within = sb.checkbox("Only pixels of the class inside the box", key=Keys.WITHIN_CLASS, **KEEP)
        if len(clicks) < 2:
            sb.info(f"Click two corners of a box in the image ({len(clicks)} of 2).")
            return None
        (xa, ya), (xb, yb) = clicks[-2:]
        box = (min(xa, xb), min(ya, yb), max(xa, xb) + 1, max(ya, yb) + 1)
        return Target.segmentation(cid, region=box, within_class=within, contrast=contrast)
    return Target.segmentation(cid, region=mode, contrast=contrast)


def _layer_label(info) -> Callable[[str], str]:
    def fmt(n: str) -> str:
        l = info[n]
        return f"{n} · {l.type} · {l.shape[0]} ch · /{l.stride}"
    return fmt


def _pick_layer(sb, ex: Explainer, model_key: str) -> str | None:
    spatial = ex.spatial_layers()
    if not spatial:
        sb.warning("This model has no layer with spatial output: CAM methods and filter grids are unavailable.")
        return None
    info = {l.name: l for l in spatial}
    names = list(info)
    default = ex.default_layer()
    return sb.selectbox("Layer", names, index=names.index(default) if default in info else len(names) - 1,
                        key=Keys.layer(model_key), format_func=_layer_label(info), **KEEP,
                        help="Spatial layers in execution order (type to search); the default is the last "
                             "layer of the coarsest stride.")


# ----------------------------------------------------------------------------- sidebar
def sidebar() -> Selection | None:
    """Draw the shared sidebar and store the resulting Selection (None when incomplete)."""
    s = session()
    s.selection = None
    sb = st.sidebar
    entries, problems = catalogue(os.environ.get(EXTRA_SPECS_ENV, ""))
    for problem in problems:
        sb.warning(problem)
    by_key = {e.key: e for e in entries}
    keys = list(by_key) + [UPLOAD_MODEL]
    choice_ = sb.selectbox("Model", keys, key=Keys.MODEL, **KEEP,
                           format_func=lambda k: "Upload a model…" if k == UPLOAD_MODEL else by_key[k].label)
    if choice_ == UPLOAD_MODEL:
        model_key, model_label, ex = _upload_model(sb)
    else:
        entry = by_key[choice_]
        model_key, model_label, ex = entry.key, entry.name, _load_entry(entry)
    if ex is None:
        # keep drawing the image picker: a widget left out of a run loses its value, and the
        # uploaded image would be gone once the model upload is done
        _pick_image(sb, s.task, quiet=True)
        return None
    s.task = ex.task

    picked = _pick_image(sb, ex.task)
    if picked is None:
        return None
    image, image_key, image_name, labels = picked
    try:
        with st.spinner("Predicting…"), timing.phase("predict"):
            pred = ex.predict(image)
    except NeuroscopeError as exc:
        st.error(f"{exc}. Try another image or model.")
        return None

    layer = _pick_layer(sb, ex, model_key)
    clicks = clicks_for(image_key, image.shape[:2])
    target = _pick_target(sb, ex, pred, model_key, image_key, clicks)
    resolved = None
    if target is not None:
        try:
            with timing.phase("target"):
                resolved = ex.resolve(image, target)
        except NeuroscopeError as exc:
            st.error(f"{exc}")
    sel = Selection(model_key, model_label, ex, image, image_key, image_name, labels, pred, layer, target,
                    resolved, clicks)
    s.selection = sel
    return sel
