"""Pictures of predictions: palette colouring, overlays, comparison panels, confusion plots.

Pure numpy + Pillow (no matplotlib): every function returns a uint8 RGB array [H, W, 3]
(or a Pillow image for palette PNGs), so that `eval.py` and notebooks can save or show it.

Example:
    >>> panel = comparison_panel(image, label, pred, class_names, palette)
    >>> save_png(panel, "vis/0000.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOR = (255, 255, 255)  # void pixels in ground truth panels
TEXT_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def palette_array(palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """uint8 [256, 3] lookup table: class k -> palette[k], `ignore_index` -> IGNORE_COLOR.

    Classes beyond the palette get deterministic pseudo-random colours.
    """
    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    if 0 <= ignore_index < 256:
        table[ignore_index] = IGNORE_COLOR
    return table


def colorize(
    label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """int label map [H, W] -> uint8 RGB [H, W, 3] in the dataset's palette."""
    return palette_array(palette, ignore_index)[np.asarray(label).astype(np.int64) & 255]


def display_image(image: np.ndarray) -> np.ndarray:
    """An image of any bands [H, W, C] as uint8 RGB [H, W, 3] to look at.

    8-bit RGB is returned as it is. Otherwise the first three bands (one band: grey;
    two: the first, grey) are each stretched from their 2nd to 98th percentile onto
    0-255, the usual quick look at multispectral tiles (bands 1-3 as red, green, blue).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 3 and image.dtype == np.uint8:
        return image
    bands = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    out = np.empty((*bands.shape[:2], bands.shape[-1]), np.uint8)
    for k in range(bands.shape[-1]):
        band = bands[..., k].astype(np.float64)
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, (2, 98)) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(band, nan=lo) - lo) / max(hi - lo, 1e-12) * 255
        out[..., k] = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return np.repeat(out, 3, -1) if out.shape[-1] == 1 else out


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    palette: Sequence[Sequence[int]],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blends the colourised `label` [H, W] over `image` [H, W, C] (ignored: image);
    an image other than uint8 RGB is shown as `display_image` shows it."""
    image = display_image(image).astype(np.float32)
    colour = colorize(label, palette, ignore_index).astype(np.float32)
    blended = (1 - alpha) * image + alpha * colour
    keep = (np.asarray(label) == ignore_index)[..., None]
    return np.where(keep, image, blended).round().clip(0, 255).astype(np.uint8)


def label_image(label: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette-mode ("P") Pillow image whose pixel values are the class indices.

    Saved as PNG it reads back as the label map (`np.asarray(Image.open(path))`) and
    shows in the dataset's colours in any viewer.
    """
    label = np.asarray(label)
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError("label values must be in [0, 255] for a palette PNG")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(palette_array(palette).reshape(-1).tolist())
    return img


def save_png(image: np.ndarray | Image.Image, path: str) -> None:
    """Saves an RGB array or Pillow image as PNG, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image.save(path, format="PNG")


def _upscale(x: np.ndarray, factor: int) -> np.ndarray:
    # Nearest-neighbour enlargement, so that small images and label edges stay crisp.
    return np.repeat(np.repeat(x, factor, axis=0), factor, axis=1) if factor > 1 else x


def legend(
    class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int, *, font_size=12
) -> np.ndarray:
    """A strip of colour swatches with class names, wrapped to `width` pixels."""
    font = _font(font_size)
    swatch, pad = font_size, 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(n, probe.textlength(n, font=font) + swatch + 3 * pad) for n in class_names]
    rows, row, used = [], [], 0
    for name, w in entries:
        if row and used + w > width:
            rows.append(row)
            row, used = [], 0
        row.append((name, w))
        used += w
    rows.append(row)
    line = swatch + pad
    img = Image.new("RGB", (width, pad + line * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    k = 0
    for r, row in enumerate(rows):
        x, y = pad, pad + r * line
        for name, w in row:
            draw.rectangle(
                [x, y, x + swatch, y + swatch], fill=tuple(palette[k]), outline=(0, 0, 0)
            )
            draw.text((x + swatch + pad, y), name, fill=TEXT_COLOR, font=font)
            x += int(w)
            k += 1
    return np.asarray(img)


def comparison_panel(
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    ignore_index: int = 255,
    min_height: int = 192,
    title: str | None = None,
) -> np.ndarray:
    """image | ground truth | prediction side by side, titled, with a class legend.

    Args:
      image: [H, W, C] at original size: uint8 RGB, or any bands (`display_image`).
      label: int [H, W] ground truth (`ignore_index` drawn white), or None to show
        image | prediction overlay | prediction.
      pred: int [H, W] predicted classes.
      class_names: K names, listed in the legend with their colours.
      palette: K RGB triples.
      ignore_index: void label value.
      min_height: small images are enlarged (nearest, by an integer factor) to this.
      title: optional line above the panels (e.g. the image's index).

    Returns:
      uint8 [H', W', 3].
    """
    image = display_image(image)
    factor = max(1, int(np.ceil(min_height / image.shape[0])))
    middle = (
        colorize(label, palette, ignore_index)
        if label is not None
        else overlay(image, pred, palette, ignore_index=ignore_index)
    )
    tiles = [np.asarray(image, np.uint8), middle, colorize(pred, palette, ignore_index)]
    names = ("image", "ground truth" if label is not None else "overlay", "prediction")
    return tiled_panel([_upscale(t, factor) for t in tiles], names, class_names, palette, title)


def tiled_panel(
    tiles: Sequence[np.ndarray],
    names: Sequence[str],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    title: str | None = None,
) -> np.ndarray:
    """Equal-size uint8 tiles [h, w, 3] side by side, each named, titled, with a legend."""
    gap = 4
    h, w = tiles[0].shape[:2]
    font = _font(14)
    header = 22 if title is None else 40
    width = len(tiles) * w + (len(tiles) + 1) * gap
    canvas = Image.new("RGB", (width, header + h + gap), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        draw.text((gap, 2), title, fill=TEXT_COLOR, font=font)
    for i, (tile, name) in enumerate(zip(tiles, names, strict=True)):
        x = gap + i * (w + gap)
        canvas.paste(Image.fromarray(tile), (x, header))
        draw.text((x, header - 18), name, fill=TEXT_COLOR, font=font)
    strip = legend(class_names, palette, width)
    return np.concatenate([np.asarray(canvas), strip], axis=0)


def panoptic_colors(
    cls: np.ndarray, instance: np.ndarray, palette: Sequence[Sequence[int]], *, factor: int = 1
) -> np.ndarray:
    """A panoptic map as uint8 RGB [H * factor, W * factor, 3], with instance outlines.

    Each segment gets its class colour, objects (instance >= 1) a brightness shift of their
    own so that touching instances of one class differ; void (class < 0) is white; a black
    line follows every segment boundary (drawn after the nearest enlargement by `factor`,
    so it stays one pixel wide).
    """
    cls, instance = np.asarray(cls, np.int64), np.asarray(instance, np.int64)
    colour = palette_array(palette)[np.clip(cls, 0, 255)].astype(np.int32)
    shift = np.where(instance > 0, (instance * 37) % 81 - 40, 0)
    colour = np.clip(colour + shift[..., None], 0, 255)
    colour[cls < 0] = IGNORE_COLOR
    colour = _upscale(colour.astype(np.uint8), factor)
    key = _upscale(np.where(cls < 0, -1, cls * 65536 + instance), factor)
    edge = np.zeros(key.shape, bool)
    edge[:, 1:] |= key[:, 1:] != key[:, :-1]
    edge[1:, :] |= key[1:, :] != key[:-1, :]
    colour[edge] = (0, 0, 0)
    return colour


def panoptic_panel(
    image: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray] | None,
    pred: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    min_height: int = 192,
    title: str | None = None,
) -> np.ndarray:
    """image | ground truth | prediction of panoptic maps (`panoptic_colors`), with a legend.

    `truth` and `pred` are `(class, instance)` int maps [H, W] of `image` uint8 [H, W, 3];
    without `truth` the middle tile is the prediction over the image.
    """
    factor = max(1, int(np.ceil(min_height / image.shape[0])))
    big = _upscale(np.asarray(image, np.uint8), factor)
    predicted = panoptic_colors(*pred, palette, factor=factor)
    if truth is not None:
        middle, name = panoptic_colors(*truth, palette, factor=factor), "ground truth"
    else:
        middle = (0.5 * big + 0.5 * predicted).astype(np.uint8)
        name = "overlay"
    return tiled_panel(
        [big, middle, predicted], ("image", name, "prediction"), class_names, palette, title
    )


def confusion_matrix_image(
    cm: np.ndarray, class_names: Sequence[str], *, cell: int = 48, title: str | None = None
) -> np.ndarray:
    """A row-normalised confusion matrix as a heat map with class names and percentages.

    Row i (ground truth class i) is divided by its pixel count, so a cell reads "share
    of class i's pixels predicted as class j" and the diagonal is per-class recall.
    Rows without ground truth stay empty (grey).

    Args:
      cm: int [K, K], rows = ground truth, columns = prediction.
      class_names: K names (axis labels).
      cell: pixels per cell side.
      title: optional line above the plot.

    Returns:
      uint8 RGB image.
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    font, small = _font(13), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(n, font=font) for n in class_names)) + 12
    top = label_w + (24 if title else 6) + 18  # rotated column names + axis title
    left = label_w + 18
    size = (left + k * cell + 10, top + k * cell + 10)
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill=TEXT_COLOR, font=font)
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            if totals[i, 0] == 0:
                colour, text = (200, 200, 200), ""
            else:
                v = norm[i, j]
                # White -> dark blue ramp; text flips to white on dark cells.
                colour = tuple(round(255 - v * (255 - c)) for c in (8, 48, 107))
                text = f"{100 * v:.0f}" if v >= 0.005 else ""
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(160,) * 3)
            if text:
                fill = (255, 255, 255) if norm[i, j] > 0.5 else TEXT_COLOR
                tw = draw.textlength(text, font=small)
                draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 6), text, fill=fill, font=small)
        # Row (ground truth) names, right-aligned against the grid.
        tw = draw.textlength(class_names[i], font=font)
        draw.text(
            (left - 6 - tw, top + i * cell + cell / 2 - 7),
            class_names[i],
            fill=TEXT_COLOR,
            font=font,
        )
    # Column (prediction) names, rotated 90 degrees.
    for j, name in enumerate(class_names):
        tw = int(probe.textlength(name, font=font)) + 4
        text_img = Image.new("RGB", (tw, 16), BACKGROUND)
        ImageDraw.Draw(text_img).text((2, 0), name, fill=TEXT_COLOR, font=font)
        rotated = text_img.rotate(90, expand=True)
        img.paste(rotated, (left + j * cell + cell // 2 - 8, top - 4 - rotated.size[1]))
    draw.text(
        (left, top - label_w - 20), "predicted (% of ground-truth row)", fill=TEXT_COLOR, font=small
    )
    axis = Image.new("RGB", (k * cell, 16), BACKGROUND)
    ImageDraw.Draw(axis).text((2, 0), "ground truth", fill=TEXT_COLOR, font=small)
    img.paste(axis.rotate(90, expand=True), (2, top))
    return np.asarray(img)
