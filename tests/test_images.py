"""Reading odd images and the shared geometry (CONTRACT.md §1)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from neuroscope.errors import BadImage
from neuroscope.images import (MAX_PIXELS, load_image, normalize, normalize_scale, resize_labels, resize_map,
                               resize_maps)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_grayscale_rgba_cmyk_and_16bit_become_rgb_uint8():
    gray = Image.fromarray(np.full((5, 7), 100, np.uint8))
    assert (load_image(encode(gray)) == 100).all()
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 200, np.uint8), np.zeros((4, 4), np.uint8)]))
    assert (load_image(encode(rgba)) == 255).all()  # fully transparent over white
    cmyk = Image.new("CMYK", (6, 3), (0, 255, 255, 0))
    out = load_image(encode(cmyk, "JPEG"))
    assert out.shape == (3, 6, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60
    deep = Image.fromarray(np.array([[0, 1000], [30000, 65535]], np.uint16))
    out16 = load_image(encode(deep))
    assert out16.dtype == np.uint8 and out16[0, 0, 0] == 0 and out16[1, 1, 0] == 255


def test_exif_orientation_is_applied():
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert load_image(encode(im, "JPEG", exif=exif)).shape == (20, 10, 3)


@pytest.mark.parametrize("data, fragment", [(b"", "empty"), (b"GIF89a-garbage", "cannot read")])
def test_corrupt_and_empty_files_raise_bad_image(data, fragment):
    with pytest.raises(BadImage, match=fragment):
        load_image(data)


def test_huge_images_are_refused_before_decoding(tmp_path):
    side = int(np.sqrt(MAX_PIXELS)) + 10
    path = tmp_path / "huge.png"
    Image.new("L", (side, side)).save(path)
    with pytest.raises(BadImage, match="too large"):
        load_image(str(path))


def test_arrays_with_nan_or_odd_shapes_are_refused():
    with pytest.raises(BadImage, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(BadImage, match="shape"):
        load_image(np.zeros((4, 4, 5)))
    assert load_image(np.ones((3, 3), np.float32)).max() == 255


def test_normalize_and_resizes_follow_the_contract():
    rgb = np.full((2, 2, 3), 255, np.uint8)
    x = normalize(rgb, (0, 1), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_allclose(x, 2.0)
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    big = resize_map(m, (6, 8))
    ref = np.asarray(Image.fromarray(m).resize((8, 6), Image.BILINEAR))
    np.testing.assert_array_equal(big, ref)
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    assert resize_labels(labels, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_batched_resize_equals_the_shared_pillow_resize():
    rng = np.random.default_rng(4)
    shapes = [(4, 8), (4, 8), (16, 32), (7, 3), (64, 128), (24, 40)]
    maps = [rng.normal(size=s).astype(np.float32) * 5 for s in shapes]
    for size in [(64, 128), (24, 40), (5, 11), (100, 90)]:   # up, same, down, mixed
        for got, m in zip(resize_maps(maps, size), maps):
            want = resize_map(m, size)
            assert got.shape == size and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(m).max()))


def test_normalize_scale_is_the_slope_of_the_preprocessing():
    rng = np.random.default_rng(5)
    rgb = rng.uniform(0, 255, size=(4, 5, 3)).astype(np.float32)
    d = rng.normal(0, 30, size=rgb.shape).astype(np.float32)
    for value_range, mean, std in [((0, 1), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((-1, 1), 0, 1)]:
        step = normalize(rgb + d, value_range, mean, std) - normalize(rgb, value_range, mean, std)
        np.testing.assert_allclose(step, d * normalize_scale(value_range, std), rtol=1e-4, atol=1e-4)
