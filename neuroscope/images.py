"""Image reading, the ONE shared preprocessing step, and map resizing (CONTRACT.md §1)."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import struct
import warnings
from typing import Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import BadImage
from .limits import LIMITS, limit
from .limits import check_image_pixels as _check_pixels

#: Defaults of the image limits (limits.py: NEUROSCOPE_MAX_IMAGE_PIXELS / _BYTES override them).
MAX_PIXELS = LIMITS["image_pixels"].default
MAX_BYTES = LIMITS["image_bytes"].default

_FORMATS = "JPEG, PNG, BMP, GIF, TIFF, WebP"

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]


def load_image(source: ImageLike) -> np.ndarray:
    """Read an image as RGB uint8 [H, W, 3], EXIF orientation applied.

    Accepts a path, encoded bytes, a PIL image or an array (uint8 / float in [0, 1],
    gray, RGB or RGBA). Any failure is a `BadImage` with a one-line reason. The pixel
    count is checked against the limit (limits.py) from the header, before decoding, and
    again on the decoded image, so a header that lies is caught either way.
    """
    if isinstance(source, np.ndarray):
        _check_pixels(source.shape[1] if source.ndim > 1 else 1, source.shape[0] if source.ndim else 1)
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height)
        return _checked(_pil_to_rgb(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "uploaded image"
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if os.path.isdir(name):
            raise BadImage(f"{name} is a directory, not an image file")
        if not os.path.isfile(name):
            raise BadImage(f"image not found: {name}")
        _check_bytes(os.path.getsize(name), name)        # before reading it
        try:
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise BadImage(f"cannot read {name}: {exc.strerror or type(exc).__name__}") from None
    else:
        raise BadImage(f"expected an image (a path, encoded bytes, a PIL image or an array), "
                       f"got {type(source).__name__}")
    with _opened(data, name, unknown=f"cannot read {name} as an image: not a known format ({_FORMATS})",
                 broken=f"cannot read {name} as an image ({_FORMATS})") as im:
        im.load()
        return _checked(_pil_to_rgb(im), name)                # what was decoded


def load_labels(data: bytes, name: str = "the label image") -> np.ndarray:
    """A label PNG (uint8 class ids, 255 = ignore) -> uint8 [H, W], with the image limits:
    pixels checked from the header before decoding and again after; one-line `BadImage`."""
    with _opened(data, name, unknown=f"cannot read {name}: not a PNG (or another known image format)",
                 broken=f"cannot read {name}") as im:
        if im.mode not in ("L", "P"):
            raise BadImage(f"{name} must be 8-bit single-channel (mode L or P), not mode {im.mode}")
        labels = np.asarray(im, dtype=np.uint8).copy()
    if labels.ndim != 2:
        raise BadImage(f"{name} must be single-channel, got shape {list(labels.shape)}")
    _check_pixels(labels.shape[1], labels.shape[0], name)
    return labels


def _check_bytes(size: int, name: str) -> None:
    cap = limit("image_bytes")
    if size > cap:
        raise BadImage(f"{name} is too large ({size:,} bytes; the limit is {cap:,}, NEUROSCOPE_MAX_IMAGE_BYTES)")


@contextlib.contextmanager
def _opened(data: bytes, name: str, unknown: str, broken: str) -> Iterator[Image.Image]:
    """Encoded image bytes, opened for the `with` body under the image limits: empty and
    byte-size checks, the header's pixel claim checked before any decoding (Pillow's own
    bomb warning silenced: our limit is the lower one), and whatever Pillow raises, in
    opening or in the body, turned into a one-line `BadImage` (`unknown`: not an image
    format; `broken`: the prefix for a decoder's error)."""
    if not data:
        raise BadImage(f"{name} is empty")
    _check_bytes(len(data), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_pixels(im.width, im.height, name)          # the header's claim
                yield im
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"{name} is too large (Pillow refuses it as a decompression bomb); the limit is "
                       f"{limit('image_pixels'):,} pixels (NEUROSCOPE_MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise BadImage(unknown) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error, IndexError, TypeError,
            KeyError, ZeroDivisionError) as exc:   # Pillow's decoders raise all of these on broken files
        text = " ".join(str(exc).split())[:200]
        raise BadImage(f"{broken}: {text or type(exc).__name__}") from None


def _checked(rgb: np.ndarray, name: str = "image") -> np.ndarray:
    _check_pixels(rgb.shape[1], rgb.shape[0], name)
    return rgb


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.width < 1 or im.height < 1:
        raise BadImage("image has no pixels")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float gray: scale the actual range to 8 bits rather than clipping.
        arr = np.asarray(im, dtype=np.float64)
        return _array_to_rgb(arr, scale_range=True)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray, scale_range: bool = False) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.shape[0] < 1 or a.shape[1] < 1:
        raise BadImage(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {list(a.shape)}")
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float64)
        if not np.all(np.isfinite(f)):
            raise BadImage("image contains NaN or infinite values")
        if scale_range or f.max() > 1.0:
            lo, hi = float(f.min()), float(f.max())
            f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
        a = np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a)


def image_hash(image: np.ndarray) -> str:
    """Content hash of a uint8 image (cache key)."""
    h = hashlib.sha256(str(image.shape).encode())   # SHA-NI: twice blake2b's speed here
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()[:32]


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB to (H, W) with Pillow BILINEAR (whole image, no crop)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def normalize(rgb: np.ndarray, value_range: tuple[float, float], mean, std) -> np.ndarray:
    """uint8-range RGB (any float/uint8 array [..., 3] in 0..255) -> model input float32."""
    lo, hi = value_range
    x = rgb.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


#: ITU-R 601-2 luma weights (Pillow's "L" conversion), for 1- and 2-channel models.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """uint8-range RGB [..., 3] (float) -> the model's `channels`: 1 gray (luma), 2 gray +
    opaque alpha, 3 RGB, 4 RGB + opaque alpha (255). Linear, so a perturbation of the RGB
    image maps to the same perturbation of the model's channels."""
    if channels == 3:
        return rgb
    rgb = np.asarray(rgb, np.float32)
    if channels in (1, 2):
        gray = rgb @ LUMA
        parts = [gray] if channels == 1 else [gray, np.full_like(gray, 255.0)]
        return np.stack(parts, axis=-1)
    if channels == 4:
        return np.concatenate([rgb, np.full_like(rgb[..., :1], 255.0)], axis=-1)
    raise BadImage(f"cannot feed an image to a model with {channels} input channels (1 to 4 are supported)")


def channels_to_rgb(colour: np.ndarray) -> np.ndarray:
    """A colour in the model's channels -> the RGB colour `to_channels` maps to it (gray:
    equal RGB; the alpha channel dropped)."""
    colour = np.asarray(colour, np.float32)
    if len(colour) in (1, 2):
        return np.repeat(colour[:1], 3)
    return colour[:3]


def normalize_scale(value_range: tuple[float, float], std) -> np.ndarray:
    """How much `normalize` scales each input channel ([C], float32): it is affine, so a
    change d of a uint8-range RGB value changes the model input by d * scale_c."""
    lo, hi = value_range
    return np.float32((hi - lo) / 255.0) / np.asarray(std, np.float32)


def blur(rgb: np.ndarray) -> np.ndarray:
    """Gaussian blur baseline: sigma = 5% of the shorter side (CONTRACT.md §1)."""
    sigma = 0.05 * min(rgb.shape[:2])
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(out, dtype=np.uint8)


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """THE shared map resize: float32 map -> (H, W) with Pillow BILINEAR on mode F."""
    h, w = size
    m = np.asarray(m, dtype=np.float32)
    if m.shape == (h, w):
        return m.copy()
    return np.asarray(Image.fromarray(m).resize((w, h), Image.BILINEAR), dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The [n_out, n_in] matrix of Pillow's BILINEAR resize along one axis, read from
    Pillow itself (it resizes the identity), so `resize_maps` agrees with `resize_map`."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    return np.asarray(eye.resize((n_in, n_out), Image.BILINEAR), dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _resize_bands(n_in: int, n_out: int, block: int = 32) -> tuple:
    """`_resize_matrix` cut into blocks of `block` output rows, each with the range of
    input rows it touches: a bilinear resize is banded, so the products skip the zeros
    (measured on a 163-layer sweep: 42 -> 22 ms)."""
    r = _resize_matrix(n_in, n_out)
    bands = []
    for s in range(0, n_out, block):
        e = min(n_out, s + block)
        cols = np.nonzero(np.any(r[s:e] != 0, axis=0))[0]
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        bands.append((s, e, c0, c1, np.ascontiguousarray(r[s:e, c0:c1])))
    return tuple(bands)


def resize_maps(maps: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """`resize_map` for many maps at once: maps of one shape are stacked and resized by
    two batched, banded matrix products (Pillow's own coefficients; equal to `resize_map`
    within float32 rounding). For a layer sweep, ~5x faster than one Pillow call each."""
    h, w = size
    out: list = [None] * len(maps)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(np.shape(m), []).append(i)
    for shape, idx in groups.items():
        if len(shape) != 2:
            raise ValueError(f"resize_maps takes 2-D maps, got shape {shape}")
        if shape == (h, w):
            for i in idx:
                out[i] = np.array(maps[i], dtype=np.float32)
            continue
        stack = np.stack([np.asarray(maps[i], np.float32) for i in idx])
        n, (sh, sw) = len(idx), shape
        # Both orders give the same result; the banded products cost about the size of
        # what they write, so resize first along the axis that leaves the smaller middle.
        cols_first = sh * w <= h * sw
        for axis in ((1, 0) if cols_first else (0, 1)):
            if axis == 1 and sw != w:
                rows = stack.shape[1]
                flat, done = stack.reshape(n * rows, sw), np.empty((n * rows, w), np.float32)
                for s, e, c0, c1, band in _resize_bands(sw, w):
                    done[:, s:e] = flat[:, c0:c1] @ band.T
                stack = done.reshape(n, rows, w)
            elif axis == 0 and sh != h:
                done = np.empty((n, h, stack.shape[2]), np.float32)
                for s, e, c0, c1, band in _resize_bands(sh, h):
                    np.matmul(band, stack[:, c0:c1, :], out=done[:, s:e, :])
                stack = done
        for j, i in enumerate(idx):
            out[i] = stack[j]
    return out


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label / mask resize with NEAREST (keeps the dtype)."""
    h, w = size
    labels = np.asarray(labels)
    if labels.shape == (h, w):
        return labels.copy()
    if labels.dtype == bool:
        return resize_labels(labels.astype(np.uint8), size).astype(bool)
    if labels.dtype == np.uint8:
        return np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
    out = Image.fromarray(labels.astype(np.int32)).resize((w, h), Image.NEAREST)
    return np.asarray(out).astype(labels.dtype)
