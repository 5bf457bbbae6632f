"""Turning maps into pictures: colormaps, overlays, label colouring, filter grids (app and CLI)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .images import resize_map

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "gray")
DIVERGING = ("RdBu_r", "coolwarm", "bwr", "PiYG")
SIGNS = ("both", "positive", "negative")


@lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of a matplotlib colormap."""
    try:
        from matplotlib import colormaps
    except ImportError:
        from .errors import BadParameter
        raise BadParameter("colour maps need matplotlib, which is not installed: "
                           "pip install matplotlib (a dependency of neuroscope)") from None
    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def scale_range(m: np.ndarray, sign: str = "both", clip_percentile: float = 100.0,
                symmetric: bool | None = None) -> tuple[float, float, bool]:
    """The map values shown at the two ends of the colour scale: (lo, hi, symmetric).

    With sign "positive"/"negative" the scale runs over magnitudes of that side, from 0;
    "both" is symmetric around 0 (-top .. top) when the map has both signs, else min .. the
    percentile. `top` is the `clip_percentile` of |m| (values beyond it saturate).
    """
    m = np.nan_to_num(np.asarray(m, np.float32))
    if sign == "positive":
        m = np.maximum(m, 0.0)
    elif sign == "negative":
        m = np.maximum(-m, 0.0)
    elif sign != "both":
        raise ValueError(f"sign must be one of {SIGNS}")
    if symmetric is None:
        symmetric = sign == "both" and m.min() < 0 < m.max()
    mag = np.abs(m)
    top = float(np.percentile(mag, clip_percentile)) if clip_percentile < 100 else float(mag.max())
    if symmetric:
        return -top, top, True
    if sign != "both":
        return 0.0, top, False
    hi = float(np.percentile(m, clip_percentile)) if clip_percentile < 100 else float(m.max())
    return float(m.min()), hi, False


def scale_map(m: np.ndarray, sign: str = "both", clip_percentile: float = 100.0,
              symmetric: bool | None = None) -> np.ndarray:
    """Map -> [0, 1] for display, over the range of `scale_range` (same arguments)."""
    lo, hi, symmetric = scale_range(m, sign, clip_percentile, symmetric)
    m = np.nan_to_num(np.asarray(m, np.float32))
    if sign == "positive":
        m = np.maximum(m, 0.0)
    elif sign == "negative":
        m = np.maximum(-m, 0.0)
    if symmetric:
        return np.clip(0.5 + 0.5 * m / hi, 0.0, 1.0) if hi > 0 else np.full_like(m, 0.5)
    return np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)


def empty_after_sign(m: np.ndarray, sign: str) -> bool:
    """True when the sign filter leaves nothing of the map (e.g. "+ only" on a map <= 0)."""
    m = np.asarray(m)
    return bool((sign == "positive" and not (m > 0).any()) or (sign == "negative" and not (m < 0).any()))


def colorize(scaled: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """[0, 1] map -> RGB uint8 via a colormap."""
    idx = np.clip((scaled * 255).round(), 0, 255).astype(np.uint8)
    return colormap_lut(cmap)[idx]


def overlay(image: np.ndarray, m: np.ndarray, cmap: str = "jet", alpha: float = 0.5, sign: str = "both",
            clip_percentile: float = 99.5, by_magnitude: bool = False) -> np.ndarray:
    """Heatmap of `m` blended over `image` (uint8 RGB); `m` is resized to the image if needed.

    `by_magnitude`: each pixel's opacity grows with |value| (up to `alpha`), so a signed
    map's near-zero pixels leave the photo visible instead of a grey wash.
    """
    if m.shape != image.shape[:2]:
        m = resize_map(m, image.shape[:2])
    scaled = scale_map(m, sign, clip_percentile)
    heat = colorize(scaled, cmap).astype(np.float32)
    if by_magnitude:
        lo, hi, symmetric = scale_range(m, sign, clip_percentile)
        strength = np.abs(2.0 * scaled - 1.0) if symmetric else scaled
        a = (alpha * np.sqrt(strength))[..., None]
    else:
        a = alpha
    out = (1.0 - a) * image.astype(np.float32) + a * heat
    return np.clip(out, 0, 255).round().astype(np.uint8)


def colorbar(cmap: str, lo: float, hi: float, width: int = 320, height: int = 12, label: str = "",
             symmetric: bool = False) -> np.ndarray:
    """A horizontal colour bar (RGB uint8 on white) with its end values, 0 in the middle of
    a symmetric scale, and a label (units / meaning of the sign)."""
    from PIL import ImageDraw
    bar = colorize(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)), cmap)
    text_h = 14
    canvas = Image.new("RGB", (width, height + text_h * (2 if label else 1) + 2), "white")
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + 1

    def fmt(v: float) -> str:
        return f"{v:+.3g}" if symmetric else f"{v:.3g}"
    draw.text((0, y), fmt(lo), fill=(0, 0, 0))
    right = fmt(hi)
    draw.text((width - 6 * len(right) - 1, y), right, fill=(0, 0, 0))
    if symmetric:
        draw.line([(width // 2, 0), (width // 2, height)], fill=(0, 0, 0))
        draw.text((width // 2 - 3, y), "0", fill=(0, 0, 0))
    if label:
        draw.text((0, y + text_h), label, fill=(60, 60, 60))
    return np.asarray(canvas)


def colorize_labels(labels: np.ndarray, palette) -> np.ndarray:
    """Label map -> RGB with the model's palette (ignore / out of range = black)."""
    lut = np.zeros((256 if labels.dtype == np.uint8 else int(labels.max()) + 1, 3), np.uint8)
    pal = np.asarray(palette, np.uint8)[: len(lut)]
    lut[: len(pal)] = pal
    return lut[labels]


def label_overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    colour = colorize_labels(labels, palette).astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colour, 0, 255).round().astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 0), width: int = 2) -> np.ndarray:
    """Draw the boundary of a boolean mask onto a copy of image."""
    from scipy import ndimage
    mask = mask.astype(bool)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width)
    out = image.copy()
    out[edge] = colour
    return out


MARK = (255, 140, 0)      # the frame of marked tiles (relevant filters)
MARK_WIDTH = 3


def filter_grid(acts: np.ndarray, order: np.ndarray | None = None, cols: int = 8, tile: int = 96,
                cmap: str = "viridis", pad: int = 2, numbers: bool = False,
                marks: dict[int, str] | None = None) -> np.ndarray:
    """Channels [K, h, w] -> one RGB grid image, each tile min-max scaled on its own;
    `numbers` writes each tile's channel index in its corner; `marks` {channel: label}
    frames those tiles in MARK (MARK_WIDTH pixels inside the tile) with the label at the
    bottom (e.g. the rank and weight of a relevant filter)."""
    k = acts.shape[0]
    order = np.arange(k) if order is None else np.asarray(order)
    rows = max(1, int(np.ceil(len(order) / cols)))
    h, w = acts.shape[1:]
    th, tw = (tile, max(1, round(tile * w / h))) if h >= w else (max(1, round(tile * h / w)), tile)
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, np.uint8)
    for i, ch in enumerate(order):
        a = resize_map(acts[ch], (th, tw))
        lo, hi = float(a.min()), float(a.max())
        tile_img = colorize((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), cmap)
        r, c = divmod(i, cols)
        grid[pad + r * (th + pad): pad + r * (th + pad) + th, pad + c * (tw + pad): pad + c * (tw + pad) + tw] = tile_img
    if numbers:
        from PIL import ImageDraw
        canvas = Image.fromarray(grid)
        draw = ImageDraw.Draw(canvas)
        for i, ch in enumerate(order):
            r, c = divmod(i, cols)
            x, y = pad + c * (tw + pad), pad + r * (th + pad)
            text = str(int(ch))
            draw.rectangle([x, y, x + 6 * len(text) + 3, y + 11], fill=(0, 0, 0))
            draw.text((x + 2, y), text, fill=(255, 255, 255))
        grid = np.asarray(canvas)
    if marks:
        grid = _frame_tiles(grid, [(i, marks[int(ch)]) for i, ch in enumerate(order) if int(ch) in marks],
                            cols, th, tw, pad)
    return grid


def _frame_tiles(grid: np.ndarray, tiles: list[tuple[int, str]], cols: int, th: int, tw: int, pad: int,
                 colour=MARK) -> np.ndarray:
    """Frame the tiles at grid positions i (MARK_WIDTH px inside) and write their label at the bottom."""
    from PIL import ImageDraw
    grid = grid.copy()
    for i, _ in tiles:
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        m = MARK_WIDTH
        grid[y:y + m, x:x + tw] = colour
        grid[y + th - m:y + th, x:x + tw] = colour
        grid[y:y + th, x:x + m] = colour
        grid[y:y + th, x + tw - m:x + tw] = colour
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for i, label in tiles:
        if not label:
            continue
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        draw.rectangle([x + MARK_WIDTH, y + th - MARK_WIDTH - 12, x + MARK_WIDTH + 6 * len(label) + 3,
                        y + th - MARK_WIDTH - 1], fill=(0, 0, 0))
        draw.text((x + MARK_WIDTH + 2, y + th - MARK_WIDTH - 12), label, fill=colour)
    return np.asarray(canvas)


def tile_grid(tiles, labels=None, cols: int = 6, tile: int = 96, pad: int = 2,
              selected: int | None = None) -> np.ndarray:
    """RGB tiles (any sizes, resized to tile x tile) in rows of `cols` on white, each label
    written in its corner; tile `selected` framed in MARK. Tile i covers columns
    [pad + c*(tile+pad), ...) of row r = i // cols: a click maps back by x / width * cols."""
    from PIL import ImageDraw
    n = len(tiles)
    rows = max(1, -(-n // cols))
    grid = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        t = np.asarray(t, np.uint8)
        if t.shape[:2] != (tile, tile):
            t = np.asarray(Image.fromarray(t).resize((tile, tile), Image.BILINEAR))
        r, c = divmod(i, cols)
        grid[pad + r * (tile + pad): pad + r * (tile + pad) + tile, pad + c * (tile + pad): pad + c * (tile + pad) + tile] = t
    if labels:
        canvas = Image.fromarray(grid)
        draw = ImageDraw.Draw(canvas)
        for i, text in enumerate(labels[:n]):
            r, c = divmod(i, cols)
            x, y = pad + c * (tile + pad), pad + r * (tile + pad)
            draw.rectangle([x, y, x + 6 * len(text) + 3, y + 11], fill=(0, 0, 0))
            draw.text((x + 2, y), text, fill=(255, 255, 255))
        grid = np.asarray(canvas)
    if selected is not None and 0 <= selected < n:
        grid = _frame_tiles(grid, [(selected, "")], cols, tile, tile, pad)
    return grid


def save_png(rgb: np.ndarray, path, compress_level: int = 6) -> None:
    """`compress_level` 1 (zlib): 2.4x faster than 6 for +15% bytes on a 256x512 overlay."""
    Image.fromarray(rgb).save(path, format="PNG", compress_level=compress_level)


def to_png_bytes(rgb: np.ndarray, compress_level: int = 6, fast: bool = False) -> bytes:
    """PNG bytes of uint8 RGB [H, W, 3]. `fast`: no row filters (Pillow tries five per row)
    and zlib at `compress_level` on the raw rows: ~10x faster than Pillow at level 1 for an
    overlay (bigger files; for downloads rebuilt on every new map)."""
    if fast:
        import struct
        import zlib
        a = np.ascontiguousarray(rgb, np.uint8)
        h, w = a.shape[:2]
        rows = np.zeros((h, w * 3 + 1), np.uint8)      # filter byte 0 (none) + the row
        rows[:, 1:] = a.reshape(h, w * 3)

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + chunk(b"IEND", b""))
    import io
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def mark_points(image: np.ndarray, points, colour=(255, 255, 0), size: int = 6) -> np.ndarray:
    """Draw a cross at each (x, y) point onto a copy of image."""
    out = image.copy()
    h, w = out.shape[:2]
    for x, y in points:
        x, y = int(x), int(y)
        if not (0 <= x < w and 0 <= y < h):
            continue
        out[y, max(0, x - size): x + size + 1] = colour
        out[max(0, y - size): y + size + 1, x] = colour
    return out


def montage(images, labels=None, cols: int = 3, pad: int = 6, label_height: int = 18) -> np.ndarray:
    """RGB images (any sizes) in a grid on white, each with an optional label above it."""
    from PIL import ImageDraw
    images = [np.asarray(im, np.uint8) for im in images]
    if not images:
        raise ValueError("montage needs at least one image")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    lh = label_height if labels else 0
    cell_h = max(im.shape[0] for im in images) + lh
    cell_w = max(im.shape[1] for im in images)
    canvas = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell_w + pad), pad + r * (cell_h + pad)
        if labels:
            draw.text((x, y + 2), str(labels[i]), fill=(0, 0, 0))
        canvas.paste(Image.fromarray(im), (x, y + lh))
    return np.asarray(canvas)
