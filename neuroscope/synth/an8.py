"""A seeded an8Flower-style classification set (Oramas et al. 2019): cars that differ ONLY
in one known part.

Every image shows one side-view car (body, cabin, windows, two wheels) on a random
sky/ground background with clutter. The car's body colour, size, position, direction
and the background are random and independent of the class; the class is set by the
colour of one part, the roof sign on the cabin: red, green, blue or yellow (classes
0-3). Body colours include the same four hues, so a red car with a blue sign is class
"blue": the only class evidence is the sign, and its exact mask comes with the image.

`an8_sample(seed)` is a pure function of the seed (numpy Generator), so sets are
regenerated, never stored: training seeds 0.., test seeds from `TEST_SEED0`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("red sign", "green sign", "blue sign", "yellow sign")
SIGN_COLOURS = np.array([[220, 30, 30], [30, 180, 40], [40, 60, 230], [235, 210, 20]], np.float32)
BODY_COLOURS = np.array([[200, 40, 40], [40, 160, 50], [50, 70, 200], [220, 200, 40],
                         [120, 120, 125], [235, 235, 235], [35, 35, 40], [150, 90, 40]], np.float32)
SIZE = (96, 96)
TEST_SEED0 = 1_000_000


@dataclass
class An8Sample:
    image: np.ndarray        # uint8 [H, W, 3]
    label: int               # class id (CLASSES)
    part: np.ndarray         # bool [H, W]: the class-discriminative part (the roof sign)
    car: np.ndarray          # bool [H, W]: the whole car (part included)


def _jitter(rng, colour, amount=18.0):
    return np.clip(colour + rng.normal(0, amount, 3), 0, 255)


def an8_sample(seed: int, size: tuple[int, int] = SIZE, label: int | None = None) -> An8Sample:
    rng = np.random.default_rng([seed, 8])
    H, W = size
    drawn = int(rng.integers(len(CLASSES)))     # always drawn: a given label changes nothing else
    label = drawn if label is None else int(label)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    # background: sky gradient above a horizon, ground below, a few blobs of clutter
    horizon = rng.uniform(0.45, 0.7) * H
    sky_top, sky_bottom = _jitter(rng, np.array([110, 160, 220.]), 25), _jitter(rng, np.array([190, 210, 230.]), 20)
    ground = _jitter(rng, rng.choice([[90, 90, 95], [110, 130, 70], [150, 130, 100]]).astype(np.float32), 15)
    t = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
    img = np.where((yy < horizon)[..., None], sky_top * (1 - t) + sky_bottom * t, ground)
    for _ in range(int(rng.integers(2, 6))):
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(3, 10)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[blob] = _jitter(rng, rng.uniform(40, 200, 3), 10)
    # the car
    scale = rng.uniform(0.75, 1.0)
    bw, bh = 60 * scale, 16 * scale                      # body
    x0 = rng.uniform(2, W - bw - 2)
    wheel_r = 6 * scale
    base = rng.uniform(max(horizon, H * 0.55) + wheel_r, H - wheel_r - 2)   # wheel centres on the ground
    by1 = base - wheel_r * 0.3
    by0 = by1 - bh
    facing = rng.random() < 0.5
    cw, ch = bw * 0.55, 13 * scale                       # cabin: a trapezoid on the body
    cx0 = x0 + bw * (0.15 if facing else 0.30)
    cy0 = by0 - ch
    slope = (yy - cy0) / ch * (bw * 0.12)
    cabin = (yy >= cy0) & (yy < by0) & (xx >= cx0 + bw * 0.12 - slope) & (xx < cx0 + cw - bw * 0.12 + slope)
    body = (yy >= by0) & (yy < by1) & (xx >= x0) & (xx < x0 + bw)
    body_colour = _jitter(rng, BODY_COLOURS[rng.integers(len(BODY_COLOURS))], 12)
    shade = 1.0 - 0.25 * ((yy - by0) / max(bh, 1)).clip(0, 1)[..., None]
    img = np.where((body | cabin)[..., None], body_colour * np.where(body[..., None], shade, 1.0), img)
    window = cabin & (yy >= cy0 + ch * 0.25) & (yy < by0 - ch * 0.1) & \
        (np.abs(xx - (cx0 + cw / 2)) > 1.2 * scale) & \
        (xx >= cx0 + bw * 0.12 - slope + 2 * scale) & (xx < cx0 + cw - bw * 0.12 + slope - 2 * scale)
    img[window] = _jitter(rng, np.array([60, 80, 100.]), 8)
    wheels = np.zeros((H, W), bool)
    for wx in (x0 + bw * 0.2, x0 + bw * 0.8):
        d2 = (yy - base) ** 2 + (xx - wx) ** 2
        wheels |= d2 < wheel_r ** 2
        img[d2 < wheel_r ** 2] = (25, 25, 28)
        img[d2 < (wheel_r * 0.45) ** 2] = (170, 170, 175)
    # the part: the roof sign, centred on the cabin roof
    sw, sh = 11 * scale, 5 * scale
    sx0 = cx0 + cw / 2 - sw / 2
    part = (yy >= cy0 - sh) & (yy < cy0) & (xx >= sx0) & (xx < sx0 + sw)
    img[part] = _jitter(rng, SIGN_COLOURS[label], 10)
    img = img + rng.normal(0, 4, img.shape)
    car = body | cabin | wheels | part
    return An8Sample(np.clip(img, 0, 255).astype(np.uint8), label, part, car)


def an8_batch(seeds, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 3], labels int64 [N], part masks bool [N, H, W])."""
    samples = [an8_sample(int(s), size) for s in seeds]
    return (np.stack([s.image for s in samples]), np.array([s.label for s in samples], np.int64),
            np.stack([s.part for s in samples]))
