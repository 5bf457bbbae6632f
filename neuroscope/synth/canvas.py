"""Drawing surfaces of the generator: a pinhole street camera and a layered canvas.

Every shape that carries a label is rasterised by the same Pillow call into the image,
the label map, the instance map, the part map and the shadow mask, so labels agree with
the pixels exactly; anti-aliasing (blur) is applied to the image only, after drawing.
The part map (ids in `neuroscope.synth.parts`) draws no random numbers, so adding it
left every seed's image, labels and instances unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .classes import SKY


@dataclass
class StreetCamera:
    """Pinhole camera over a flat ground plane; the road centre line bends as k·Z²."""

    f: float        # focal length in pixels
    u0: float       # vanishing point column
    v0: float       # horizon row
    height: float   # camera height above the ground, metres
    x: float        # lateral camera position relative to the road centre line, metres
    k: float        # road curvature (lateral drift k·Z² metres at depth Z)

    def project(self, X, Z, Y=0.0) -> np.ndarray:
        """Points (lateral X, depth Z, height Y) in metres -> [N, 2] pixel coordinates."""
        Z = np.asarray(Z, np.float64)
        u = self.u0 + self.f * (np.asarray(X, np.float64) + self.k * Z * Z - self.x) / Z
        v = self.v0 + self.f * (self.height - np.asarray(Y, np.float64)) / Z
        shape = u.shape if u.shape == v.shape else np.broadcast_shapes(u.shape, v.shape)
        out = np.empty(shape + (2,))
        out[..., 0] = u
        out[..., 1] = v
        return out.reshape(-1, 2)

    def scale(self, Z: float) -> float:
        """Pixels per metre at depth Z."""
        return self.f / Z


def _as_points(pts) -> list[tuple[float, float]]:
    a = np.asarray(pts, np.float64).reshape(-1, 2)
    return list(map(tuple, a.tolist()))


class LayeredCanvas:
    """RGB image + label map + instance map + part map + shadow mask, drawn in lockstep."""

    def __init__(self, base: np.ndarray):
        h, w = base.shape[:2]
        self.size = (h, w)
        self.image = Image.fromarray(base)
        self.labels = Image.new("L", (w, h), SKY)
        self.instances = Image.new("I", (w, h), 0)
        self.shade = Image.new("L", (w, h), 0)
        self.parts = Image.new("L", (w, h), 0)
        self._img = ImageDraw.Draw(self.image)
        self._lab = ImageDraw.Draw(self.labels)
        self._ins = ImageDraw.Draw(self.instances)
        self._sha = ImageDraw.Draw(self.shade)
        self._par = ImageDraw.Draw(self.parts)
        self._any_part = False   # until a part is drawn, occluding with "no part" changes nothing

    def fill(self, pts, color, cls: int, inst: int = 0, part: int = 0) -> None:
        """An opaque labelled polygon: occludes whatever was drawn before, shadows and parts included."""
        p = _as_points(pts)
        if len(p) < 3:
            return
        self._img.polygon(p, fill=tuple(int(c) for c in color))
        self._lab.polygon(p, fill=int(cls))
        self._ins.polygon(p, fill=int(inst))
        self._sha.polygon(p, fill=0)
        if part or self._any_part:
            self._par.polygon(p, fill=int(part))
            self._any_part = True

    def fill_ellipse(self, box, color, cls: int, inst: int = 0, part: int = 0) -> None:
        b = [float(c) for c in box]
        if b[2] - b[0] < 0.5 or b[3] - b[1] < 0.5:
            return
        self._img.ellipse(b, fill=tuple(int(c) for c in color))
        self._lab.ellipse(b, fill=int(cls))
        self._ins.ellipse(b, fill=int(inst))
        self._sha.ellipse(b, fill=0)
        if part or self._any_part:
            self._par.ellipse(b, fill=int(part))
            self._any_part = True

    def paint(self, pts, color, part: int | None = None) -> None:
        """Image-only detail (windows, lights, markings' colour) inside an already labelled
        shape; with ``part`` the detail is also that part (e.g. a window of a car body)."""
        p = _as_points(pts)
        if len(p) >= 3:
            self._img.polygon(p, fill=tuple(int(c) for c in color))
            if part is not None:
                self._par.polygon(p, fill=int(part))
                self._any_part = True

    def paint_ellipse(self, box, color, part: int | None = None) -> None:
        b = [float(c) for c in box]
        if b[2] - b[0] >= 0.5 and b[3] - b[1] >= 0.5:
            self._img.ellipse(b, fill=tuple(int(c) for c in color))
            if part is not None:
                self._par.ellipse(b, fill=int(part))
                self._any_part = True

    def cast_shadow(self, pts, darkness: int) -> None:
        """Darken the ground under later-drawn shapes' absence (shade mask only)."""
        p = _as_points(pts)
        if len(p) >= 3 and darkness > 0:
            self._sha.polygon(p, fill=int(darkness))

    def cast_shadow_ellipse(self, box, darkness: int) -> None:
        b = [float(c) for c in box]
        if darkness > 0 and b[2] - b[0] >= 0.5 and b[3] - b[1] >= 0.5:
            self._sha.ellipse(b, fill=int(darkness))
