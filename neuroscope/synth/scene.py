"""Seeded procedural street scenes with exact per-pixel labels and instances."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from .canvas import LayeredCanvas, StreetCamera
from .classes import (BUILDING, BUS, CAR, FENCE, IGNORE, PERSON, POLE, ROAD, SIDEWALK, SKY,
                      TERRAIN, TRAFFIC_LIGHT, TRAFFIC_SIGN, TRUCK, VEGETATION)
from .parts import (ARM, BODY, HEAD, LAMP, LEG, LIGHT, LIGHT_HOUSING, LIGHT_POLE, PLATE, SIGN_PLATE,
                    SIGN_POLE, TORSO, WHEEL, WINDOW, clean_parts, object_part_table)


@dataclass
class Scene:
    """One generated scene: image, trainId labels, instance ids and the visible objects."""

    image: np.ndarray                 # uint8 [H, W, 3]
    labels: np.ndarray                # uint8 [H, W], Cityscapes trainIds, 255 = ignore
    instances: np.ndarray             # uint16 [H, W], 0 = no instance
    objects: list[dict] = field(default_factory=list)  # {"id", "class_id", "bbox": [x0, y0, x1, y1], "parts"}
    seed: int | None = None
    parts: np.ndarray | None = None   # uint8 [H, W], part ids (neuroscope.synth.parts), 0 = none


# Texture amplitude (low-frequency blotches, per-pixel grain) per class, in grey levels.
_TEX_LOW = np.full(256, 3.0, np.float32)
_TEX_HIGH = np.full(256, 3.0, np.float32)
for _c, _lo, _hi in [(ROAD, 5, 4), (SIDEWALK, 4, 5), (BUILDING, 4, 3), (VEGETATION, 16, 12),
                     (TERRAIN, 9, 7), (SKY, 0.8, 1.0), (FENCE, 3, 3), (CAR, 1, 1.5),
                     (TRUCK, 1, 1.5), (BUS, 1, 1.5), (PERSON, 2, 2)]:
    _TEX_LOW[_c], _TEX_HIGH[_c] = _lo, _hi

# Uniform grain from bytes: (byte - 127.5) / 73.9, std 1 (a lookup table: same float32 values).
_GRAIN = (np.arange(256, dtype=np.float32) - 127.5) * (1 / 73.9)

_FACADES = [(185, 172, 150), (150, 82, 62), (122, 122, 127), (205, 198, 186), (112, 92, 76),
            (172, 152, 120), (140, 150, 162), (192, 160, 142), (92, 96, 102), (160, 110, 80),
            (215, 205, 170), (100, 110, 95)]
_CAR_COLOURS = [(235, 235, 235), (25, 25, 28), (160, 162, 168), (110, 112, 118), (150, 20, 25),
                (30, 55, 120), (20, 70, 50), (200, 160, 40), (90, 30, 30), (60, 80, 110),
                (210, 100, 30), (130, 130, 110)]
_CLOTHES = [(30, 30, 35), (40, 50, 90), (120, 30, 35), (180, 180, 175), (90, 70, 50),
            (60, 90, 60), (200, 170, 60), (70, 70, 80), (150, 110, 160), (20, 20, 60)]
_SKIN = [(240, 200, 170), (210, 160, 120), (160, 110, 75), (100, 70, 50)]


class _Builder:
    """Draws one scene; methods run in painter's order (far to near)."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]):
        self.rng = rng
        self.h, self.w = size
        r = rng
        self.style = r.choice(["city", "suburb", "highway"], p=[0.5, 0.3, 0.2])
        self.cam = StreetCamera(
            f=self.w * r.uniform(0.55, 0.85), u0=self.w * r.uniform(0.3, 0.7),
            v0=self.h * r.uniform(0.34, 0.52), height=r.uniform(1.2, 1.9),
            x=0.0, k=(r.uniform(-1, 1) * 0.0015 if r.random() < 0.6 else 0.0))
        self.sun_side = float(r.choice([-1.0, 1.0]))
        self.sunny = r.random() < 0.6
        self.sun_dark = int(r.uniform(110, 190)) if self.sunny else 0
        self.sun_len = r.uniform(0.3, 1.2)  # shadow length per metre of height
        self.next_instance = 1
        self.instance_class: dict[int, int] = {}
        self.zs = np.geomspace(0.7, 400.0, 48)
        self._layout()

    # ------------------------------------------------------------------ layout
    def _layout(self) -> None:
        r = self.rng
        if self.style == "highway":
            self.lanes, self.lane_w = int(r.integers(2, 5)), r.uniform(3.4, 3.8)
            self.opposite = 0
        else:
            self.lanes, self.lane_w = int(r.integers(1, 5)), r.uniform(2.9, 3.5)
            self.opposite = self.lanes // 2 if (self.lanes > 1 and r.random() < 0.7) else 0
        self.parking = [self.style != "highway" and r.random() < 0.45 for _ in range(2)]
        self.shoulder = [r.uniform(0.5, 2.5) if self.style == "highway" else 0.0 for _ in range(2)]
        drive = self.lanes * self.lane_w
        # Road cross-section: [left edge, right edge] relative to the centre line.
        self.left = -drive / 2 - (2.2 if self.parking[0] else 0) - self.shoulder[0]
        self.right = drive / 2 + (2.2 if self.parking[1] else 0) + self.shoulder[1]
        lane = int(r.integers(self.opposite, self.lanes))
        self.cam.x = -drive / 2 + (lane + 0.5) * self.lane_w + r.uniform(-0.4, 0.4)
        # Roadside per side (0 = left, 1 = right): curb, grass strip, sidewalk, setback.
        self.side = []
        for s in range(2):
            if self.style == "highway":
                d = dict(curb=0.0, grass=r.uniform(2, 12), walk=0.0, setback=r.uniform(0, 20),
                         buildings=r.random() < 0.15)
            elif self.style == "suburb":
                d = dict(curb=0.2, grass=r.uniform(0.8, 3.0) if r.random() < 0.7 else 0.0,
                         walk=r.uniform(1.5, 2.5), setback=r.uniform(3, 10),
                         buildings=r.random() < 0.85)
            else:
                d = dict(curb=0.2, grass=r.uniform(0.8, 1.8) if r.random() < 0.25 else 0.0,
                         walk=r.uniform(2.0, 5.0), setback=r.uniform(0, 1.5) if r.random() < 0.3 else 0.0,
                         buildings=r.random() < 0.92)
            self.side.append(d)

    def edge(self, s: int) -> float:
        return self.left if s == 0 else self.right

    def out(self, s: int, d: float) -> float:
        """Lateral position d metres outward of the road edge on side s."""
        return self.edge(s) + (d if s == 1 else -d)

    def building_line(self, s: int) -> float:
        d = self.side[s]
        return self.out(s, d["curb"] + d["grass"] + d["walk"] + d["setback"])

    def new_instance(self, cls: int) -> int:
        i = self.next_instance
        self.next_instance += 1
        self.instance_class[i] = cls
        return i

    def jitter(self, rgb, amount: float = 12) -> tuple:
        d = self.rng.uniform(-amount, amount, 3).tolist()
        return tuple(min(max(float(c) + e, 0.0), 255.0) for c, e in zip(rgb, d))

    # ------------------------------------------------------------------ sky
    def sky(self) -> np.ndarray:
        r, h, w = self.rng, self.h, self.w
        kind = r.choice(["clear", "hazy", "overcast", "dusk"], p=[0.5, 0.2, 0.2, 0.1])
        if kind == "clear":
            top, bottom = (r.uniform(50, 110), r.uniform(110, 160), r.uniform(185, 235)), \
                (r.uniform(165, 205), r.uniform(195, 225), r.uniform(225, 250))
        elif kind == "hazy":
            top, bottom = (r.uniform(120, 160), r.uniform(150, 185), r.uniform(195, 230)), \
                (r.uniform(200, 225), r.uniform(210, 232), r.uniform(225, 245))
        elif kind == "overcast":
            g = r.uniform(150, 205)
            top, bottom = (g - 8, g - 3, g + 6), (g + 25, g + 27, g + 30)
        else:
            top, bottom = (r.uniform(60, 100), r.uniform(80, 120), r.uniform(150, 190)), \
                (r.uniform(220, 250), r.uniform(170, 200), r.uniform(150, 180))
        self.horizon_colour = np.clip(np.asarray(bottom, np.float32), 0, 255)
        t = np.clip(np.arange(h, dtype=np.float32) / max(self.cam.v0, 1.0), 0, 1) ** 0.8
        col = np.asarray(top, np.float32)[None] * (1 - t[:, None]) + self.horizon_colour[None] * t[:, None]
        base = np.broadcast_to(col[:, None, :], (h, w, 3)).copy()
        # Clouds: soft blobs blended into the sky (image only; they are sky). Only rows
        # above the horizon are ever visible (the ground covers the rest), so only they
        # are blurred and blended; the crop keeps a blur radius of margin below them.
        n = int(r.integers(0, 9)) if kind != "overcast" else int(r.integers(4, 12))
        if n:
            mask = Image.new("L", (w, h), 0)
            d = ImageDraw.Draw(mask)
            for _ in range(n):
                cx, cy = r.uniform(-0.1, 1.1) * w, r.uniform(0.02, 0.9) * self.cam.v0
                sx = r.uniform(0.04, 0.18) * w
                for _ in range(int(r.integers(3, 8))):
                    ox, oy = r.normal(0, sx * 0.5), r.normal(0, sx * 0.12)
                    rx, ry = sx * r.uniform(0.3, 0.7), sx * r.uniform(0.12, 0.3)
                    d.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry],
                              fill=int(r.uniform(120, 255)))
            radius = max(1, int(h / 40))
            vis = min(h, int(self.cam.v0) + 3)
            mask = mask.crop((0, 0, w, min(h, vis + radius + 2))).filter(ImageFilter.BoxBlur(radius))
            a = np.asarray(mask, np.float32)[:vis, :, None] / 255 * r.uniform(0.5, 0.95)
            cloud = np.asarray(self.jitter((240, 240, 242), 15), np.float32)
            base[:vis] = base[:vis] * (1 - a) + cloud * a
        return np.clip(base, 0, 255).astype(np.uint8)

    def far_skyline(self, c: LayeredCanvas) -> None:
        r, w, v0 = self.rng, self.w, self.cam.v0
        haze = self.horizon_colour
        for _ in range(int(r.integers(0, 3))):
            if r.random() < 0.5:  # distant tree line
                xs = np.linspace(-5, w + 5, int(r.integers(30, 80)))
                hs = np.abs(np.convolve(r.normal(0, 1, xs.size), np.ones(3) / 3, "same"))
                hs = hs * self.h * r.uniform(0.01, 0.04) + self.h * 0.004
                col = np.asarray(self.jitter((70, 95, 70), 15)) * 0.6 + haze * 0.4
                top = np.stack([xs, v0 - hs], 1)
                c.fill(np.concatenate([top, [[w + 5, v0 + 2], [-5, v0 + 2]]]), col, VEGETATION)
            else:  # distant blocks
                x = r.uniform(-0.1, 0.3) * w
                while x < w:
                    bw = r.uniform(0.02, 0.08) * w
                    bh = r.uniform(0.01, 0.08) * self.h
                    col = np.asarray(self.jitter((120, 120, 130), 25)) * 0.5 + haze * 0.5
                    if r.random() < 0.8:
                        c.fill([[x, v0 - bh], [x + bw, v0 - bh], [x + bw, v0 + 2], [x, v0 + 2]], col, BUILDING)
                    x += bw * r.uniform(0.8, 1.6)

    # ------------------------------------------------------------------ ground
    def strip(self, x_a: float, x_b: float, z_max: float = 400.0) -> np.ndarray:
        zs = self.zs[self.zs <= z_max]
        a = self.cam.project(x_a, zs)
        b = self.cam.project(x_b, zs)
        return np.concatenate([a, b[::-1]])

    def ground(self, c: LayeredCanvas) -> None:
        r, h, w, v0 = self.rng, self.h, self.w, self.cam.v0
        terrain = self.jitter(r.choice([(105, 140, 60), (125, 150, 75), (140, 135, 85),
                                        (95, 125, 55), (150, 145, 100)]), 12)
        c.fill([[-5, v0], [w + 5, v0], [w + 5, h + 5], [-5, h + 5]], terrain, TERRAIN)
        walk_col = self.jitter(r.choice([(150, 148, 145), (175, 170, 162), (135, 130, 128),
                                         (165, 150, 140)]), 10)
        curb_col = np.clip(np.asarray(walk_col) + 25, 0, 255)
        for s in range(2):
            d = self.side[s]
            if d["walk"] > 0:
                c.fill(self.strip(self.out(s, 0), self.out(s, d["curb"])), curb_col, SIDEWALK)
                a = d["curb"] + d["grass"]
                c.fill(self.strip(self.out(s, a), self.out(s, a + d["walk"])), walk_col, SIDEWALK)
                if d["grass"] > 0:
                    c.fill(self.strip(self.out(s, d["curb"]), self.out(s, a)),
                           self.jitter(terrain, 10), TERRAIN)
                if d["setback"] > 0 and self.style == "city":
                    c.fill(self.strip(self.out(s, a + d["walk"]), self.building_line(s)),
                           walk_col, SIDEWALK)
        road_col = self.jitter(r.choice([(92, 92, 96), (110, 108, 106), (75, 76, 80),
                                         (125, 122, 120)]), 8)
        self.road_col = road_col
        c.fill(self.strip(self.left, self.right), road_col, ROAD)
        # Repair patches and stains: image-only detail inside the road.
        for _ in range(int(r.integers(0, 5))):
            z0 = r.uniform(3, 40)
            xa = r.uniform(self.left, self.right - 1)
            xb = min(xa + r.uniform(0.5, 3), self.right)
            c.paint(np.concatenate([self.cam.project([xa, xb], z0), self.cam.project([xb, xa], z0 + r.uniform(1, 6))]),
                    np.asarray(road_col) * r.uniform(0.75, 1.15))
        self.markings(c)

    def markings(self, c: LayeredCanvas) -> None:
        r = self.rng
        white = self.jitter((228, 228, 222), 12)
        yellow = self.jitter((225, 185, 50), 15)
        drive_l = -self.lanes * self.lane_w / 2
        half = r.uniform(0.06, 0.09)

        def solid(x, col, z_max=260.0):
            c.fill(self.strip(x - half, x + half, z_max), col, ROAD)

        def dashed(x, col):
            period, length = r.uniform(8, 13), r.uniform(2.5, 4)
            z = self.zs[0] + r.uniform(0, period)
            while z < 150:
                zz = np.array([z, z + length])
                pts = np.concatenate([self.cam.project(x - half, zz), self.cam.project(x + half, zz[::-1])])
                c.fill(pts, col, ROAD)
                z += period

        for i in range(1, self.lanes):
            x = drive_l + i * self.lane_w
            if i == self.opposite:
                if r.random() < 0.5:
                    solid(x - 0.12, yellow)
                    solid(x + 0.12, yellow)
                else:
                    solid(x, white)
            else:
                dashed(x, white)
        if self.style == "highway" or r.random() < 0.5:
            solid(drive_l, white)
            solid(-drive_l, white)
        if self.style == "city" and r.random() < 0.35:  # zebra crossing
            z0 = r.uniform(8, 30)
            zz = np.array([z0, z0 + r.uniform(2.5, 4)])
            x = self.left + 0.5
            while x < self.right - 0.5:
                pts = np.concatenate([self.cam.project(x, zz), self.cam.project(x + 0.5, zz[::-1])])
                c.fill(pts, white, ROAD)
                x += 1.0
            self.crossing = z0
        else:
            self.crossing = None

    # ------------------------------------------------------------------ buildings
    def buildings(self, c: LayeredCanvas) -> None:
        items = []
        for s in range(2):
            if not self.side[s]["buildings"]:
                continue
            z = self.rng.uniform(-8, 6)
            z_end = self.rng.uniform(90, 220)
            while z < z_end:
                length = self.rng.uniform(8, 30) if self.style == "city" else self.rng.uniform(8, 16)
                if self.style != "city" or self.rng.random() < 0.12:
                    gap = self.rng.uniform(3, 15)
                else:
                    gap = 0.0
                items.append((z, s, length))
                z += length + gap
        # Sun-side shadows on the ground first, then façades from far to near.
        for z, s, length in items:
            self.building_shadow(c, s, z, length)
        for z, s, length in sorted(items, key=lambda t: -t[0]):
            self.building(c, s, z, length)

    def building_height(self) -> float:
        r = self.rng
        if self.style == "city":
            return r.uniform(7, 32)
        return r.uniform(4.5, 8.5)

    def building_shadow(self, c: LayeredCanvas, s: int, z: float, length: float) -> None:
        sign = -1 if s == 0 else 1
        if not self.sunny or sign != self.sun_side:
            return
        xf = self.building_line(s)
        ln = min(12.0 * self.sun_len + 2, self.right - self.left + 6)
        za, zb = max(z, 0.7), z + length
        if zb <= 0.7:
            return
        zz = np.linspace(za, zb, 4)
        pts = np.concatenate([self.cam.project(xf, zz), self.cam.project(xf - sign * ln, zz[::-1])])
        c.cast_shadow(pts, self.sun_dark)

    def building(self, c: LayeredCanvas, s: int, z: float, length: float) -> None:
        r, cam = self.rng, self.cam
        sign = -1 if s == 0 else 1
        xf = self.building_line(s) + sign * r.uniform(0, 1.2)
        hb = self.building_height()
        depth = r.uniform(8, 20)
        za, zb = max(z, 0.7), z + length
        if zb <= 1.0:
            return
        base = np.asarray(self.jitter(_FACADES[int(r.integers(len(_FACADES)))], 14))
        lit = 1.0 if sign != self.sun_side or not self.sunny else r.uniform(0.62, 0.75)
        face = np.clip(base * lit, 0, 255)
        zz = np.linspace(za, zb, 5)
        c.fill(np.concatenate([cam.project(xf, zz, 0), cam.project(xf, zz[::-1], hb)]), face, BUILDING)
        if z > 0.7:  # end wall facing the camera
            xo = xf + sign * depth
            c.fill(cam.project([xf, xo, xo, xf], z, [0, 0, hb, hb]), np.clip(base * 0.82, 0, 255), BUILDING)
        if self.style != "city" and r.random() < 0.85:  # pitched roof
            roof = self.jitter(r.choice([(120, 50, 40), (70, 70, 75), (100, 80, 60), (60, 50, 50)]), 10)
            rh = r.uniform(1.5, 3.5)
            c.fill(np.concatenate([cam.project(xf, zz, hb), cam.project(xf + sign * depth / 2, zz[::-1], hb + rh)]),
                   roof, BUILDING)
        elif r.random() < 0.5:  # cornice band
            c.paint(np.concatenate([cam.project(xf, zz, hb - 0.5), cam.project(xf, zz[::-1], hb)]),
                    np.clip(base * 0.75, 0, 255))
        self.windows(c, xf, z, length, hb, base)

    def windows(self, c: LayeredCanvas, xf: float, z: float, length: float, hb: float, base) -> None:
        r, cam = self.rng, self.cam
        floor_h = r.uniform(2.8, 3.6)
        spacing = r.uniform(2.4, 4.0)
        ww = r.uniform(0.7, min(1.9, spacing - 0.5))
        wh = r.uniform(1.1, min(2.0, floor_h - 0.6))
        glass = [self.jitter((40, 48, 60), 10), self.jitter((95, 125, 160), 20),
                 self.jitter((150, 170, 190), 15), self.jitter((225, 200, 130), 20),
                 self.jitter((25, 25, 28), 5), self.jitter((180, 160, 140), 20)]
        weights = np.asarray([0.35, 0.2, 0.15, 0.1, 0.1, 0.1])
        weights = r.dirichlet(weights * 20)
        n_cols = int((length - 0.6) / spacing)
        n_rows = int((hb - 0.6) / floor_h)
        if n_cols <= 0 or n_rows <= 0:
            return
        zc = z + (length - n_cols * spacing) / 2 + spacing * (np.arange(n_cols) + 0.5)
        y0 = floor_h * np.arange(n_rows) + (floor_h - wh) * 0.6
        ground_shop = self.style == "city" and r.random() < 0.6
        sign = -1 if xf < 0 else 1
        frame = r.random() < 0.5
        frame_col = np.clip(np.asarray(base) * 1.25 + 20, 0, 255)
        choice = r.choice(len(glass), size=(n_rows, n_cols), p=weights)
        # All window corners in one projection: [rows, cols, 4 corners, 2].
        za = np.broadcast_to(zc - ww / 2, (n_rows, n_cols)).copy()
        zb = za + ww
        ya = np.broadcast_to(y0[:, None], (n_rows, n_cols)).copy()
        yb = ya + wh
        if ground_shop:
            za[0], zb[0] = zc - spacing / 2 + 0.25, zc + spacing / 2 - 0.25
            ya[0], yb[0] = 0.3, min(floor_h - 0.4, 2.8)
        m = 0.12 if frame else 0.0
        zq = np.stack([za - m, zb + m, zb + m, za - m, za, zb, zb, za], -1)
        yq = np.stack([ya - m, ya - m, yb + m, yb + m, ya, ya, yb, yb], -1)
        ok = za > 0.8
        pts = cam.project(xf - sign * 0.01, np.where(ok[..., None], zq, 1.0), yq).reshape(n_rows, n_cols, 8, 2)
        for j in range(n_rows):
            for i in range(n_cols):
                if not ok[j, i]:
                    continue
                p = pts[j, i]
                width = abs(p[5, 0] - p[4, 0])
                if width < 0.8 or p[:, 0].max() < 0 or p[:, 0].min() > self.w or p[:, 1].max() < 0:
                    continue
                if frame and width > 4:
                    c.paint(p[:4], frame_col)
                c.paint(p[4:], glass[choice[j, i]])

    # ------------------------------------------------------------------ roadside
    def edge_objects(self, c: LayeredCanvas) -> None:
        """Fences and hedges along the outer edge of the sidewalk (behind street objects)."""
        r, cam = self.rng, self.cam
        for s in range(2):
            d = self.side[s]
            sign = -1 if s == 0 else 1
            if self.style == "city" and d["buildings"] and d["setback"] == 0:
                continue
            x = self.out(s, d["curb"] + d["grass"] + d["walk"] + 0.2) if d["walk"] else self.out(s, r.uniform(0.5, 2.0))
            z = r.uniform(1, 20)
            while z < 150:
                seg = r.uniform(10, 60)
                kind = r.choice(["none", "fence", "rail", "hedge"], p=[0.35, 0.25, 0.2, 0.2])
                zz = np.linspace(max(z, 0.7), z + seg, 6)
                if kind == "fence":
                    hf = r.uniform(1.0, 2.2)
                    col = self.jitter(r.choice([(130, 100, 70), (150, 150, 150), (90, 90, 95), (190, 180, 160)]), 12)
                    c.fill(np.concatenate([cam.project(x, zz, 0), cam.project(x, zz[::-1], hf)]), col, FENCE)
                    for zp in np.arange(zz[0], zz[-1], r.uniform(1.5, 3)):  # plank seams / posts
                        c.paint(cam.project(x, [zp, zp + 0.12, zp + 0.12, zp], [0, 0, hf, hf]),
                                np.asarray(col) * 0.8)
                elif kind == "rail":
                    hf = r.uniform(0.8, 1.3)
                    col = self.jitter(r.choice([(170, 170, 172), (60, 60, 62), (120, 90, 60)]), 10)
                    for ya in (hf - 0.1, hf * 0.45):  # two rails
                        c.fill(np.concatenate([cam.project(x, zz, ya), cam.project(x, zz[::-1], ya + 0.1)]), col, FENCE)
                    for zp in np.arange(zz[0], zz[-1], r.uniform(1.5, 2.5)):
                        c.fill(cam.project(x, [zp, zp + 0.1, zp + 0.1, zp], [0, 0, hf, hf]), col, FENCE)
                elif kind == "hedge":
                    hh = r.uniform(0.7, 1.8)
                    top = hh + 0.15 * np.sin(zz * r.uniform(0.5, 2))
                    col = self.jitter((60, 100, 45), 15)
                    c.fill(np.concatenate([cam.project(x + sign * 0.4, zz, 0), cam.project(x + sign * 0.4, zz[::-1], top[::-1])]),
                           col, VEGETATION)
                    c.fill(np.concatenate([cam.project(x, zz, 0), cam.project(x, zz[::-1], top[::-1] - 0.1)]),
                           np.asarray(col) * 1.1, VEGETATION)
                z += seg + r.uniform(0, 10)

    def street_objects(self) -> list[tuple[float, callable]]:
        """(depth, draw) for trees, poles, people and vehicles; drawn far to near."""
        r = self.rng
        items: list[tuple[float, callable]] = []
        # Trees: in the grass strip or at the curb side of the sidewalk, and beyond the edge.
        for s in range(2):
            d = self.side[s]
            if r.random() < 0.7:
                x = self.out(s, d["curb"] + (d["grass"] / 2 if d["grass"] else 0.6))
                if self.style == "highway":
                    x = self.out(s, d["grass"] + r.uniform(1, 6))
                z = r.uniform(3, 15)
                step = r.uniform(8, 20)
                while z < 160:
                    items.append((z, self._tree_drawer(x + r.uniform(-0.3, 0.3), z)))
                    z += step * r.uniform(0.7, 1.3)
            if self.style != "city" and r.random() < 0.6:  # trees behind the roadside
                for _ in range(int(r.integers(2, 10))):
                    x = self.building_line(s) + (-1 if s == 0 else 1) * r.uniform(0.5, 12)
                    items.append((r.uniform(5, 120), self._tree_drawer(x, None)))
        # Poles with lamps, signs and traffic lights near the curb.
        for s in range(2):
            d = self.side[s]
            x = self.out(s, d["curb"] + 0.35) if d["walk"] else self.out(s, 0.6)
            for _ in range(int(r.integers(1, 6))):
                z = r.uniform(4, 90)
                items.append((z, self._pole_drawer(x + r.uniform(-0.1, 0.3) * (1 if s else -1), z, s)))
        # Pedestrians on sidewalks (and on the crossing).
        n_people = int(r.integers(0, 9)) if self.style != "highway" else 0
        for _ in range(n_people):
            s = int(r.integers(2))
            d = self.side[s]
            if self.crossing is not None and r.random() < 0.3:
                x, z = r.uniform(self.left, self.right), self.crossing + r.uniform(0.5, 2.5)
            else:
                x = self.out(s, d["curb"] + d["grass"] + r.uniform(0.3, max(d["walk"], 0.6) - 0.2))
                z = self.cam.f * self.cam.height / self.h * r.uniform(1.2, 1.5) + r.exponential(18)
            if z > 4:
                items.append((z, self._person_drawer(x, z)))
        # Vehicles in lanes, and parked ones along the curb.
        occupied: list[tuple[float, float, float]] = []
        n = int(r.integers(1, 10))
        z_near = self.cam.f * self.cam.height / (self.h - self.cam.v0)
        drive_l = -self.lanes * self.lane_w / 2
        slots = [(drive_l + (i + 0.5) * self.lane_w, i < self.opposite) for i in range(self.lanes)]
        for s in range(2):
            if self.parking[s]:
                slots += [(self.edge(s) + (1.1 if s == 0 else -1.1), None)] * 2
        for _ in range(n):
            xl, oncoming = slots[int(r.integers(len(slots)))]
            kind = r.choice([CAR, TRUCK, BUS], p=[0.74, 0.13, 0.13]) if oncoming is not None else CAR
            dims = {CAR: (r.uniform(1.7, 1.95), r.uniform(1.4, 1.7), r.uniform(4.0, 4.9)),
                    TRUCK: (r.uniform(2.3, 2.55), r.uniform(3.0, 3.9), r.uniform(7, 10)),
                    BUS: (r.uniform(2.45, 2.6), r.uniform(3.0, 3.3), r.uniform(10, 13))}[kind]
            z = z_near + r.uniform(1.5, 4) + r.exponential(22)
            if z > 160:
                continue
            x = xl + r.uniform(-0.3, 0.3)
            if any(abs(x - ox) < 2.2 and z < oz + ol + 1 and oz < z + dims[2] + 1 for ox, oz, ol in occupied):
                continue
            if abs(x - self.cam.x) < 1.5 and z < z_near + 2:
                continue
            occupied.append((x, z, dims[2]))
            front = bool(oncoming) or (oncoming is None and r.random() < 0.3)
            items.append((z, self._vehicle_drawer(kind, x, z, dims, front)))
        return items

    def _tree_drawer(self, x: float, z: float | None):
        r = self.rng
        z = z if z is not None else r.uniform(5, 120)
        trunk_h = r.uniform(1.5, 4.0)
        crown = r.uniform(1.2, 3.0)
        greens = [self.jitter(g, 14) for g in [(55, 90, 40), (75, 115, 50), (40, 70, 35), (95, 125, 60)]]
        blobs = [(r.normal(0, crown * 0.45), r.normal(0, crown * 0.3), crown * r.uniform(0.55, 0.9))
                 for _ in range(int(r.integers(3, 7)))]
        trunk_col = self.jitter((85, 65, 50), 12)
        seeds = r.integers(0, 2**31)

        def draw(c: LayeredCanvas):
            cam = self.cam
            k = cam.scale(z)
            top = trunk_h + crown * 0.5
            c.fill(cam.project([x - 0.15, x + 0.15, x + 0.12, x - 0.12], z, [0, 0, top, top]), trunk_col, VEGETATION)
            cu, cv = cam.project(x, z, trunk_h + crown * 0.9)[0]
            if self.sunny:
                gu, gv = cam.project(x - self.sun_side * crown * self.sun_len, z, 0)[0]
                c.cast_shadow_ellipse([gu - crown * k, gv - crown * k * 0.15, gu + crown * k, gv + crown * k * 0.15],
                                      self.sun_dark)
            rr = np.random.default_rng(seeds)
            leaf = rr.random((len(blobs), 3, 4)).tolist()
            for i, (ox, oy, rad) in enumerate(blobs):
                bu, bv, rp = cu + ox * k, cv - oy * k, rad * k
                c.fill_ellipse([bu - rp, bv - rp, bu + rp, bv + rp], greens[i % 4], VEGETATION)
                if rp < 3:
                    continue
                for a, d, q, g in leaf[i]:  # leaf clusters: image-only, inside the blob
                    a, d, q = a * 6.2832, d * 0.5 * rp, rp * (0.2 + 0.25 * q)
                    pu, pv = bu + d * math.cos(a), bv + d * math.sin(a)
                    c.paint_ellipse([pu - q, pv - q, pu + q, pv + q], greens[int(g * 4)])
        return draw

    def _pole_drawer(self, x: float, z: float, s: int):
        r = self.rng
        kind = r.choice(["lamp", "sign", "light", "light_arm"], p=[0.3, 0.35, 0.2, 0.15])
        hp = {"lamp": r.uniform(6, 9), "sign": r.uniform(2.4, 3.5), "light": r.uniform(3, 4.2),
              "light_arm": r.uniform(5, 6.5)}[kind]
        pole_col = self.jitter(r.choice([(120, 120, 122), (70, 72, 75), (160, 160, 155)]), 10)
        n_signs = int(r.integers(1, 3)) if kind == "sign" else int(r.random() < 0.3)
        signs = []
        for j in range(n_signs):
            shape = r.choice(["circle", "triangle", "square", "diamond", "octagon", "rect"])
            rim, inner = {"circle": ((200, 30, 30), (235, 235, 235)), "triangle": ((200, 30, 30), (240, 240, 235)),
                          "square": ((30, 80, 170), (30, 80, 170)), "diamond": ((240, 200, 20), (240, 200, 20)),
                          "octagon": ((200, 25, 25), (200, 25, 25)), "rect": ((20, 110, 60), (230, 230, 230))}[shape]
            if r.random() < 0.5 and shape == "circle":
                rim, inner = (30, 80, 170), (40, 90, 180)
            back = r.random() < 0.2
            signs.append((shape, self.jitter(rim, 10), self.jitter(inner, 8), back, r.uniform(0.55, 0.9),
                          hp - 0.5 - j * 0.9 if kind == "sign" else r.uniform(2.2, 2.8)))
        lit = int(r.integers(3))
        side = -1 if s == 0 else 1
        arm = r.uniform(2.5, 6)
        # The pole is part of the light it carries, else of its signs (a bare lamp post: none).
        pole_part = LIGHT_POLE if kind in ("light", "light_arm") else SIGN_POLE if signs else 0

        def draw(c: LayeredCanvas):
            cam = self.cam
            k = cam.scale(z)
            hw = max(0.09 * k, 0.6) / k
            c.fill(cam.project([x - hw, x + hw, x + hw * 0.8, x - hw * 0.8], z, [0, 0, hp, hp]), pole_col, POLE,
                   part=pole_part)
            if self.sunny:
                c.cast_shadow(np.concatenate([cam.project([x - hw, x + hw], z, 0),
                                              cam.project([x - self.sun_side * hp * self.sun_len + hw,
                                                           x - self.sun_side * hp * self.sun_len - hw], z + 0.3, 0)]),
                              self.sun_dark)
            if kind == "lamp":
                xa = x - side * 1.5
                c.fill(cam.project([x, xa, xa, x], z, [hp - 0.12, hp - 0.12, hp, hp]), pole_col, POLE)
                c.fill(cam.project([xa - 0.35, xa + 0.35, xa + 0.25, xa - 0.25], z, [hp - 0.25, hp - 0.25, hp, hp]),
                       (60, 60, 62), POLE)
            if kind in ("light", "light_arm"):
                if kind == "light_arm":
                    xa = x - side * arm
                    c.fill(cam.project([x, xa, xa, x], z, [hp - 0.15, hp - 0.15, hp, hp]), pole_col, POLE,
                           part=LIGHT_POLE)
                    boxes = [(xa + side * 0.6, hp - 0.25), (x, 3.2)]
                else:
                    boxes = [(x, hp)]
                for bx, top in boxes:
                    self._traffic_light(c, bx, z, top, lit)
            for shape, rim, inner, back, size, ys in signs:
                self._sign(c, x, z, ys, size, shape, rim, inner, back)
        return draw

    def _traffic_light(self, c: LayeredCanvas, x: float, z: float, top: float, lit: int) -> None:
        cam = self.cam
        bw, bh = 0.34, 0.95
        c.fill(cam.project([x - bw / 2, x + bw / 2, x + bw / 2, x - bw / 2], z - 0.05,
                           [top - bh, top - bh, top, top]), (35, 35, 30), TRAFFIC_LIGHT, part=LIGHT_HOUSING)
        k = cam.scale(z - 0.05)
        if bw * k < 3:
            return
        cols = [(255, 40, 30), (255, 190, 30), (40, 230, 90)]
        for i in range(3):
            cu, cv = cam.project(x, z - 0.05, top - 0.17 - i * 0.3)[0]
            rp = 0.11 * k
            col = cols[i] if i == lit else tuple(int(v * 0.25) for v in cols[i])
            c.paint_ellipse([cu - rp, cv - rp, cu + rp, cv + rp], col, part=LAMP)

    def _sign(self, c, x, z, ys, size, shape, rim, inner, back) -> None:
        cam = self.cam
        cu, cv = cam.project(x, z - 0.05, ys)[0]
        rp = size / 2 * cam.scale(z - 0.05)
        if shape == "rect":
            rx, ry = rp * 1.5, rp * 0.6
        else:
            rx, ry = rp, rp
        if back:
            rim = inner = (150, 150, 150)
        n = {"circle": 16, "triangle": 3, "square": 4, "diamond": 4, "octagon": 8, "rect": 4}[shape]
        off = {"triangle": -np.pi / 2, "square": np.pi / 4, "rect": np.pi / 4, "octagon": np.pi / 8}.get(shape, 0.0)
        t = off + np.arange(n) * 2 * np.pi / n

        def ring(scale):
            sx = rx * (np.sqrt(2) if shape in ("square", "rect") else 1.0)
            sy = ry * (np.sqrt(2) if shape in ("square", "rect") else 1.0)
            return np.stack([cu + scale * sx * np.cos(t), cv + scale * sy * np.sin(t)], 1)

        c.fill(ring(1.0), rim, TRAFFIC_SIGN, part=SIGN_PLATE)
        if rp > 3 and not back:
            c.paint(ring(0.7), inner)

    def _person_drawer(self, x: float, z: float):
        r = self.rng
        hgt = r.uniform(1.5, 1.95)
        slim = r.uniform(0.65, 1.0)
        stride = r.uniform(-0.18, 0.18)
        top_col = self.jitter(_CLOTHES[int(r.integers(len(_CLOTHES)))], 15)
        leg_col = self.jitter(_CLOTHES[int(r.integers(len(_CLOTHES)))], 15)
        skin = self.jitter(_SKIN[int(r.integers(len(_SKIN)))], 8)
        hair = self.jitter((40, 30, 25), 15)
        coat = r.random() < 0.3
        inst = self.new_instance(PERSON)

        def draw(c: LayeredCanvas):
            cam = self.cam
            hip, sh = 0.48 * hgt, 0.82 * hgt
            w = 0.2 * slim
            if self.sunny:
                k = cam.scale(z)
                gu, gv = cam.project(x - self.sun_side * hgt * self.sun_len * 0.5, z, 0)[0]
                fu, _ = cam.project(x, z, 0)[0]
                c.cast_shadow([[fu - 0.2 * k, gv], [fu + 0.2 * k, gv], [gu + 0.15 * k, gv - 0.3 * k * 0.2],
                               [gu - 0.15 * k, gv - 0.3 * k * 0.2]], self.sun_dark)
            for sgn in (-1, 1):  # legs
                fx = x + sgn * (0.09 * slim + stride * 0.5)
                c.fill(cam.project([x + sgn * 0.02, x + sgn * w * 0.85, fx + sgn * 0.06, fx - sgn * 0.06], z,
                                   [hip, hip, 0, 0]), leg_col, PERSON, inst, LEG)
            bottom = hip - (0.25 * hgt if coat else 0.0)
            c.fill(cam.project([x - w, x + w, x + w * 1.1, x - w * 1.1], z, [bottom, bottom, sh, sh]), top_col, PERSON, inst, TORSO)
            for sgn in (-1, 1):  # arms
                xa = x + sgn * w * 1.1
                c.fill(cam.project([xa, xa + sgn * 0.08, xa + sgn * 0.1 - sgn * stride * 0.3, xa - sgn * stride * 0.3],
                                   z, [sh, sh - 0.05, hip - 0.05, hip - 0.02]), top_col, PERSON, inst, ARM)
            cu, cv = cam.project(x, z, hgt - 0.12 * hgt / 1.7)[0]
            k = cam.scale(z)
            rx, ry = 0.1 * k, 0.12 * k
            c.fill_ellipse([cu - rx, cv - ry, cu + rx, cv + ry], skin, PERSON, inst, HEAD)
            c.fill([[cu - rx, cv - ry * 0.1], [cu + rx, cv - ry * 0.1], [cu + rx * 0.9, cv - ry * 1.05],
                    [cu - rx * 0.9, cv - ry * 1.05]], hair, PERSON, inst, HEAD)
        return draw

    def _vehicle_drawer(self, kind: int, x: float, z: float, dims, front: bool):
        r = self.rng
        w, hgt, length = dims
        if kind == CAR:
            body = self.jitter(_CAR_COLOURS[int(r.integers(len(_CAR_COLOURS)))], 10)
        elif kind == BUS:
            body = self.jitter(r.choice([(220, 190, 40), (200, 40, 40), (230, 230, 225), (40, 90, 160),
                                         (60, 140, 80)]), 12)
        else:
            body = self.jitter(r.choice([(230, 230, 230), (200, 60, 40), (60, 90, 140), (150, 150, 150),
                                         (230, 200, 60)]), 12)
        cab_col = self.jitter(r.choice([(230, 230, 230), (40, 70, 140), (190, 40, 30)]), 10)
        inst = self.new_instance(int(kind))
        glass = self.jitter((35, 45, 55), 10)

        def draw(c: LayeredCanvas):
            cam = self.cam
            xl, xr = x - w / 2, x + w / 2
            body_c = np.asarray(body)
            shade_side = 0.72
            # Contact shadow + sun shadow on the road.
            sx = -self.sun_side * hgt * self.sun_len * 0.6 if self.sunny else 0.0
            zz = np.array([z - 0.2, z + length + 0.2])
            c.cast_shadow(np.concatenate([cam.project(xl - 0.15 + min(sx, 0), zz),
                                          cam.project(xr + 0.15 + max(sx, 0), zz[::-1])]),
                          max(self.sun_dark, 150))
            # Side face visible from the camera.
            see_side = abs(x - cam.x) > w / 2
            xs = xl if x > cam.x else xr
            zz = np.array([z, z + length])
            if see_side:
                side_col = body_c * shade_side
                if kind == CAR:
                    c.fill(cam.project(xs, [z, z + length, z + length, z], [0.28, 0.28, 0.95, 0.95]), side_col, kind, inst, BODY)
                    c.fill(cam.project(xs, [z + 0.2 * length, z + 0.85 * length, z + 0.75 * length, z + 0.35 * length],
                                       [0.95, 0.95, hgt, hgt]), side_col, kind, inst, BODY)
                    c.paint(cam.project(xs, [z + 0.25 * length, z + 0.8 * length, z + 0.72 * length, z + 0.38 * length],
                                        [1.0, 1.0, hgt - 0.07, hgt - 0.07]), glass, WINDOW)
                    wheels = [z + 0.18 * length, z + 0.8 * length]
                    rw = 0.33
                elif kind == BUS:
                    c.fill(cam.project(xs, [z, z + length, z + length, z], [0.25, 0.25, hgt, hgt]), side_col, kind, inst, BODY)
                    c.paint(cam.project(xs, [z + 0.3, z + length - 0.3, z + length - 0.3, z + 0.3],
                                        [1.25, 1.25, hgt - 0.35, hgt - 0.35]), glass, WINDOW)
                    for zp in np.arange(z + 1.5, z + length - 0.5, 1.6):
                        c.paint(cam.project(xs, [zp, zp + 0.12, zp + 0.12, zp], [1.25, 1.25, hgt - 0.35, hgt - 0.35]),
                                side_col, BODY)
                    wheels = [z + 2.0, z + length - 2.8]
                    rw = 0.5
                else:
                    lc = length - 2.4
                    c.fill(cam.project(xs, [z, z + lc, z + lc, z], [0.6, 0.6, hgt, hgt]), side_col, kind, inst, BODY)
                    c.fill(cam.project(xs, [z + lc + 0.2, z + length, z + length, z + lc + 0.2], [0.4, 0.4, 2.8, 2.8]),
                           np.asarray(cab_col) * shade_side, kind, inst, BODY)
                    c.paint(cam.project(xs, [z + lc + 0.5, z + length - 0.3, z + length - 0.3, z + lc + 0.5],
                                        [1.7, 1.7, 2.5, 2.5]), glass, WINDOW)
                    wheels = [z + 1.2, z + 2.6, z + length - 1.3]
                    rw = 0.5
                t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
                for zw in wheels:
                    c.fill(cam.project(xs, zw + rw * np.cos(t), rw + rw * np.sin(t)), (22, 22, 24), kind, inst, WHEEL)
                    c.paint(cam.project(xs, zw + rw * 0.45 * np.cos(t), rw + rw * 0.45 * np.sin(t)), (120, 120, 125))
            # Near face (rear, or front when oncoming/parked facing us).
            if kind == CAR:
                c.fill(cam.project([xl + 0.25, xr - 0.25, xr - 0.25, xl + 0.25], z, [0, 0, 0.4, 0.4]), (20, 20, 22), kind, inst, BODY)
                c.fill(cam.project([xl, xr, xr, xr - 0.05, xl + 0.05, xl], z, [0.25, 0.25, 0.85, 0.97, 0.97, 0.85]),
                       body_c, kind, inst, BODY)
                c.fill(cam.project([xl + 0.12, xr - 0.12, xr - 0.3, xl + 0.3], z + 0.5, [0.95, 0.95, hgt, hgt]),
                       body_c * 0.92, kind, inst, BODY)
                c.paint(cam.project([xl + 0.22, xr - 0.22, xr - 0.36, xl + 0.36], z + 0.5,
                                    [1.0, 1.0, hgt - 0.08, hgt - 0.08]), glass, WINDOW)
                lamp = (245, 240, 215) if front else (200, 20, 25)
                for a, b in ((xl + 0.06, xl + 0.38), (xr - 0.38, xr - 0.06)):
                    c.paint(cam.project([a, b, b, a], z, [0.68, 0.68, 0.84, 0.84]), lamp, LIGHT)
                c.paint(cam.project([x - 0.25, x + 0.25, x + 0.25, x - 0.25], z, [0.38, 0.38, 0.5, 0.5]), (225, 225, 220), PLATE)
                if front:
                    c.paint(cam.project([x - 0.45, x + 0.45, x + 0.45, x - 0.45], z, [0.55, 0.55, 0.7, 0.7]), (30, 30, 32))
            elif kind == BUS:
                c.fill(cam.project([xl, xr, xr, xl], z, [0.22, 0.22, hgt, hgt]), body_c, kind, inst, BODY)
                c.fill(cam.project([xl + 0.2, xr - 0.2, xr - 0.2, xl + 0.2], z, [0, 0, 0.25, 0.25]), (20, 20, 22), kind, inst, BODY)
                ya = 0.9 if front else 1.6
                c.paint(cam.project([xl + 0.12, xr - 0.12, xr - 0.12, xl + 0.12], z, [ya, ya, hgt - 0.3, hgt - 0.3]), glass, WINDOW)
                if front:
                    c.paint(cam.project([xl + 0.3, xr - 0.3, xr - 0.3, xl + 0.3], z, [hgt - 0.28, hgt - 0.28, hgt - 0.06, hgt - 0.06]),
                            (250, 170, 40))
                lamp = (245, 240, 215) if front else (200, 20, 25)
                for a, b in ((xl + 0.08, xl + 0.4), (xr - 0.4, xr - 0.08)):
                    c.paint(cam.project([a, b, b, a], z, [0.45, 0.45, 0.7, 0.7]), lamp, LIGHT)
            else:
                if front:
                    c.fill(cam.project([xl + 0.05, xr - 0.05, xr - 0.05, xl + 0.05], z + 2.4, [0.6, 0.6, hgt, hgt]),
                           body_c * 0.85, kind, inst, BODY)
                    c.fill(cam.project([xl + 0.1, xr - 0.1, xr - 0.1, xl + 0.1], z, [0.0, 0.0, 2.8, 2.8]), cab_col, kind, inst, BODY)
                    c.paint(cam.project([xl + 0.25, xr - 0.25, xr - 0.25, xl + 0.25], z, [1.6, 1.6, 2.55, 2.55]), glass, WINDOW)
                    c.paint(cam.project([x - 0.6, x + 0.6, x + 0.6, x - 0.6], z, [0.45, 0.45, 0.9, 0.9]), (40, 40, 42))
                else:
                    c.fill(cam.project([xl + 0.2, xr - 0.2, xr - 0.2, xl + 0.2], z, [0, 0, 0.65, 0.65]), (25, 25, 27), kind, inst, BODY)
                    c.fill(cam.project([xl, xr, xr, xl], z, [0.6, 0.6, hgt, hgt]), body_c, kind, inst, BODY)
                    c.paint(cam.project([x - 0.03, x + 0.03, x + 0.03, x - 0.03], z, [0.7, 0.7, hgt - 0.1, hgt - 0.1]),
                            body_c * 0.6)
                    for a, b in ((xl + 0.05, xl + 0.3), (xr - 0.3, xr - 0.05)):
                        c.paint(cam.project([a, b, b, a], z, [0.45, 0.45, 0.6, 0.6]), (200, 20, 25), LIGHT)
        return draw

    # ------------------------------------------------------------------ finish
    def hood(self, c: LayeredCanvas) -> None:
        r, h, w = self.rng, self.h, self.w
        top = h * (1 - r.uniform(0.05, 0.12))
        xs = np.linspace(-2, w + 2, 24)
        t = (xs - w / 2) / (w / 2)
        ys = top + (h - top) * 0.6 * t ** 2
        pts = np.concatenate([np.stack([xs, ys], 1), [[w + 2, h + 2], [-2, h + 2]]])
        c.fill(pts, self.jitter((40, 40, 45), 20), IGNORE)

    def post(self, c: LayeredCanvas) -> np.ndarray:
        r, h, w = self.rng, self.h, self.w
        img = np.asarray(c.image, np.float32)
        lab = np.asarray(c.labels)
        low = r.standard_normal((h // 8 + 1, w // 8 + 1)).astype(np.float32)
        low = np.asarray(Image.fromarray(low, mode="F").resize((w, h), Image.BILINEAR))
        # Uniform grain from bytes: cheap, std 1 after scaling.
        high = _GRAIN[r.integers(0, 256, (h, w), dtype=np.uint8)]
        tex = _TEX_LOW[lab] * low + _TEX_HIGH[lab] * high
        shade = 1 - np.asarray(c.shade, np.float32) * (0.6 / 255)
        # Haze near the horizon and exposure / colour cast, in one pass.
        haze = r.uniform(0.0, 0.45)
        rows = np.arange(h, dtype=np.float32)
        a = (haze * np.exp(-np.abs(rows - self.cam.v0) / (0.08 * h)))[:, None, None].astype(np.float32)
        gain = (r.uniform(0.65, 1.25) * np.exp(r.normal(0, 0.05, 3))).astype(np.float32)
        # ((img + tex) * shade * (1 - a) + horizon * a) * gain, in place (same float32 ops)
        np.add(img, tex[..., None], out=img)
        np.multiply(img, shade[..., None], out=img)
        img *= 1 - a
        img += self.horizon_colour * a
        img *= gain
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        # Contrast and gamma as a lookup table.
        mean = float(img.mean())
        x = np.arange(256, dtype=np.float64)
        lut = np.clip((x - mean) * r.uniform(0.8, 1.2) + mean, 0, 255)
        lut = 255 * (lut / 255) ** r.uniform(0.8, 1.25)
        out = out.point(list(np.clip(lut + 0.5, 0, 255).astype(np.uint8)) * 3)
        out = out.filter(ImageFilter.GaussianBlur(r.uniform(0.35, 1.1)))
        sigma = r.uniform(1, 6)
        # (byte - 128) * sigma / 74 truncated to int16, as a 256-entry lookup table
        noise_lut = ((np.arange(256, dtype=np.int16) - 128) * sigma / 74).astype(np.int16)
        noise = noise_lut[r.integers(0, 256, (h, w, 3), dtype=np.uint8)]
        return np.clip(np.asarray(out, np.int16) + noise, 0, 255).astype(np.uint8)

    def run(self) -> Scene:
        c = LayeredCanvas(self.sky())
        self.far_skyline(c)
        self.ground(c)
        self.buildings(c)
        self.edge_objects(c)
        for _, draw in sorted(self.street_objects(), key=lambda t: -t[0]):
            draw(c)
        if self.rng.random() < 0.2:
            self.hood(c)
        image = self.post(c)
        labels = np.asarray(c.labels, np.uint8).copy()
        instances = np.asarray(c.instances, np.int32).astype(np.uint16)
        parts = clean_parts(np.asarray(c.parts, np.uint8).copy(), labels)
        objects = []
        for i, sl in enumerate(ndimage.find_objects(instances.astype(np.int32)), start=1):
            if sl is None:
                continue
            objects.append({"id": i, "class_id": self.instance_class[i],
                            "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)]})
        table = object_part_table(instances, parts, [o["id"] for o in objects])
        for o in objects:
            o["parts"] = table[o["id"]]
        return Scene(image=image, labels=labels, instances=instances, objects=objects, parts=parts)


def generate_scene(seed: int, size: tuple[int, int] = (256, 512)) -> Scene:
    """A street scene drawn from `seed` alone (numpy default_rng); size is (H, W)."""
    scene = _Builder(np.random.default_rng(seed), (int(size[0]), int(size[1]))).run()
    scene.seed = int(seed)
    return scene
