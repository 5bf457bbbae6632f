"""Pictures the pages share: display-sized images, the clickable image, overlay controls."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from neuroscope import render
from neuroscope.images import resize_labels, resize_rgb

from . import state, timing
from .state import KEEP

MAX_DISPLAY = (560, 800)   # (H, W) bound of pictures in the browser; maps stay at full size
SIGN_LABELS = {"both": "both", "positive": "+ only", "negative": "− only"}


def display_size(shape: tuple[int, ...], bound: tuple[int, int] = MAX_DISPLAY) -> tuple[int, int]:
    h, w = shape[:2]
    s = min(1.0, bound[0] / h, bound[1] / w)
    return max(1, round(h * s)), max(1, round(w * s))


def shown(image: np.ndarray, bound: tuple[int, int] = MAX_DISPLAY) -> np.ndarray:
    """The image at display size (never enlarged; memoised per session)."""
    return state.memo("shown", (bound,), lambda: resize_rgb(image, display_size(image.shape, bound)), refs=(image,))


JPEG_QUALITY = 90


def jpeg(picture: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The picture as JPEG bytes, memoised per session by the array's identity: a rerun that
    shows the same picture sends the same bytes without encoding (Streamlit encodes an array
    on every call, at quality 100; the clickable image was a level-0 PNG, ~0.5 MB in base64)."""
    def build() -> bytes:
        import io
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(picture, np.uint8)).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    data = state.memo("jpeg", (quality,), build, refs=(picture,), size=24)
    timing.count_bytes("images", len(data))
    return data


def image(picture: np.ndarray, **kwargs) -> None:
    """st.image of a picture (uint8 RGB), sent as memoised JPEG bytes."""
    st.image(jpeg(picture), **kwargs)


class _Encoded:
    """What streamlit_image_coordinates takes as an image "with a save method": our bytes."""

    def __init__(self, data: bytes):
        self.data = data

    def save(self, fh, **_ignored) -> None:
        fh.write(self.data)


def to_display(points, size: tuple[int, int], shown_size: tuple[int, int]) -> list[tuple[int, int]]:
    (h, w), (sh, sw) = size, shown_size
    return [(int(x * sw / w), int(y * sh / h)) for x, y in points]


def target_picture(sel: state.Selection, bound: tuple[int, int] = MAX_DISPLAY) -> np.ndarray:
    """The image with the target region outlined and the clicks marked."""
    pic = shown(sel.image, bound)
    if sel.resolved is not None and sel.resolved.mask is not None and not sel.resolved.mask.all():
        pic = render.outline(pic, resize_labels(sel.resolved.mask, pic.shape[:2]), colour=(255, 255, 0), width=2)
    mode = state.choice(state.Keys.REGION_MODE)
    points = sel.clicks[-1:] if mode == "clicked" else sel.clicks[-2:] if mode == "box" else []
    if points:   # only the clicks the region uses
        pic = render.mark_points(pic, to_display(points, sel.image.shape[:2], pic.shape[:2]), colour=(255, 0, 255))
    return pic


def clickable(sel: state.Selection, picture: np.ndarray, key: str = "ns_image_click") -> None:
    """The picture, clickable: a click is stored in original pixels (see `state.record_click`)."""
    size = sel.image.shape[:2]

    def on_click() -> None:
        state.record_click(st.session_state.get(key), size)
    streamlit_image_coordinates(_Encoded(jpeg(picture)), key=key, width="stretch", on_click=on_click,
                                cursor="crosshair", image_format="JPEG")


def prediction_picture(sel: state.Selection, bound: tuple[int, int] = MAX_DISPLAY) -> np.ndarray:
    """The predicted classes over the picture (memoised per session by prediction and picture)."""
    pic = shown(sel.image, bound)

    def build() -> np.ndarray:
        labels = resize_labels(sel.prediction.labels, pic.shape[:2])
        return render.label_overlay(pic, labels, sel.explainer.palette, alpha=0.55)
    return state.memo("prediction", (), build, refs=(sel.prediction, pic), size=4)


#: What a map's values mean, by method family (the colour bar's label).
UNITS = {
    "cam": "class activation (relative units)",
    "activation": "activation",
    "gradient": "gradient of the target score",
    "perturbation": "drop of the target score",
    "feature": "feature relevance (relative units)",
    "segmentation": "relevance for the region (relative units)",
    "evidence": "evidence for the target (score units)",
}


@dataclass(frozen=True)
class Display:
    """One look for every overlay: colormap, opacity, the sign filter of signed maps, clipping.

    Signed maps (gradients, occlusion...) get a diverging colormap centred on 0 with
    opacity growing with |value|; unsigned maps (CAMs) a sequential one over their range.
    The sign filter applies to signed maps only.
    """

    cmap: str
    alpha: float
    sign: str
    percentile: float
    raw: bool = False

    def sign_for(self, signed: bool) -> str:
        return self.sign if signed else "both"

    def colormap(self, signed: bool) -> str:
        if self.cmap != "auto":
            return self.cmap
        return "RdBu_r" if signed and self.sign == "both" else "inferno"

    def overlay(self, picture: np.ndarray, m: np.ndarray, signed: bool) -> np.ndarray:
        """The overlay, memoised per session (a rerun with the same map and look reuses it)."""
        sign = self.sign_for(signed)
        return state.memo("overlay", (self, signed), lambda: render.overlay(
            picture, m, self.colormap(signed), self.alpha, sign, self.percentile,
            by_magnitude=signed and sign == "both"), refs=(picture, m), size=48)

    def raw_map(self, picture: np.ndarray, m: np.ndarray, signed: bool) -> np.ndarray:
        """The map alone at the picture's size, in the overlay's colours."""
        from neuroscope.images import resize_map
        sign = self.sign_for(signed)
        return state.memo("raw", (self, signed), lambda: render.colorize(render.scale_map(
            resize_map(m, picture.shape[:2]) if m.shape != picture.shape[:2] else m, sign, self.percentile),
            self.colormap(signed)), refs=(picture, m), size=24)

    def legend(self, m: np.ndarray, signed: bool, family: str, width: int = 320) -> np.ndarray:
        """The colour bar of this map: its end values, 0 for a signed scale, units and sign."""
        sign = self.sign_for(signed)

        def build() -> np.ndarray:   # scale_range reads the whole map: only on a memo miss
            lo, hi, symmetric = render.scale_range(m, sign, self.percentile)
            unit = UNITS.get(family, "relevance")
            if symmetric:
                label = f"{unit}: red raises it, blue lowers it"
            elif signed and sign != "both":
                label = f"{unit}, {'positive' if sign == 'positive' else 'negative (as magnitude)'} part only"
            else:
                label = unit
            if self.percentile < 100:
                label += f" (clip {self.percentile:g}%)"
            return render.colorbar(self.colormap(signed), lo, hi, width=width, label=label, symmetric=symmetric)
        return state.memo("legend", (self, signed, family, width), build, refs=(m,), size=24)

    def empties(self, m: np.ndarray, signed: bool) -> bool:
        return render.empty_after_sign(m, self.sign_for(signed))


def display_controls() -> Display:
    """Colormap, opacity, sign and percentile clipping: display only, never a model pass."""
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1.2, 1, 0.8])
    cmap = c1.selectbox("Colormap", ["auto", *render.COLORMAPS, *render.DIVERGING], key="disp_cmap", **KEEP,
                        help="auto: diverging blue-white-red for signed maps, sequential inferno for the others")
    alpha = c2.slider("Opacity", 0.0, 1.0, value=0.5, step=0.05, key="disp_alpha", **KEEP)
    sign = c3.radio("Sign of signed maps", list(SIGN_LABELS), format_func=SIGN_LABELS.get, horizontal=True,
                    key="disp_sign", **KEEP, help="Applies to signed maps (gradients, occlusion, ...); "
                                                  "CAMs and other unsigned maps are always shown whole.")
    pct = c4.slider("Clip at percentile", 90.0, 100.0, value=99.5, step=0.5, key="disp_pct", **KEEP,
                    help="values above this percentile of |map| saturate")
    raw = c5.toggle("Raw map", key="disp_raw", **KEEP, help="Show each map on its own beside its overlay")
    return Display(cmap, float(alpha), sign, float(pct), bool(raw))


def chart(name: str, owner, build) -> None:
    """An Altair chart drawn from its Vega-Lite spec, built and validated once per `owner`
    (e.g. the prediction it shows; memoised per session): Altair's schema validation took
    15-50 ms on every rerun."""
    import copy
    spec = state.memo(f"chart:{name}", (), lambda: build().to_dict(), refs=(owner,), size=4)
    st.vega_lite_chart(copy.deepcopy(spec), width="stretch")   # Streamlit moves the datasets out of the spec
