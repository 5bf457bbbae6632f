"""Readable maps: the colour scale's range, colour bars, magnitude-weighted overlays, sign filters."""
from __future__ import annotations

import numpy as np

from neuroscope import render


def signed_map() -> np.ndarray:
    m = np.zeros((20, 40), np.float32)
    m[5:10, 5:10] = 2.0        # for the target
    m[10:15, 25:30] = -1.0     # against it
    return m


def test_a_signed_map_gets_a_symmetric_range_and_an_unsigned_one_its_own():
    assert render.scale_range(signed_map(), "both") == (-2.0, 2.0, True)
    assert render.scale_range(np.abs(signed_map()), "both") == (0.0, 2.0, False)
    assert render.scale_range(signed_map(), "negative") == (0.0, 1.0, False)
    scaled = render.scale_map(signed_map(), "both")
    assert scaled[0, 0] == 0.5 and scaled[7, 7] == 1.0 and scaled[12, 27] == 0.25


def test_the_colour_bar_shows_the_colormap_with_zero_in_the_middle():
    bar = render.colorbar("RdBu_r", -2.0, 2.0, width=200, label="units", symmetric=True)
    assert bar.shape[1] == 200 and bar.shape[0] > 12 + 14
    lut = render.colormap_lut("RdBu_r")
    assert np.array_equal(bar[6, 0], lut[0]) and np.array_equal(bar[6, 199], lut[255])
    assert (bar[6, 100] == 0).all()                                   # the 0 tick
    assert (bar[20:, :60] < 128).any()                                 # the end value is written under it


def test_magnitude_weighted_overlays_leave_zero_pixels_as_the_photo():
    photo = np.full((20, 40, 3), 120, np.uint8)
    out = render.overlay(photo, signed_map(), "RdBu_r", alpha=0.8, sign="both", clip_percentile=100,
                         by_magnitude=True)
    assert np.array_equal(out[0, 0], photo[0, 0])                      # 0: untouched photo
    assert out[7, 7, 0] > out[7, 7, 2] and out[12, 27, 2] > out[12, 27, 0]   # red for +, blue for -
    flat = render.overlay(photo, signed_map(), "RdBu_r", alpha=0.8, sign="both", clip_percentile=100)
    assert not np.array_equal(flat[0, 0], photo[0, 0])                 # the plain blend washes it


def test_a_sign_filter_that_leaves_nothing_is_reported():
    cam = np.abs(signed_map())
    assert render.empty_after_sign(cam, "negative") and not render.empty_after_sign(cam, "positive")
    assert not render.empty_after_sign(signed_map(), "negative") and not render.empty_after_sign(cam, "both")


def test_fast_png_decodes_to_the_same_pixels():
    import io
    from PIL import Image
    from neuroscope import render
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = render.to_png_bytes(rgb, compress_level=1, fast=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
