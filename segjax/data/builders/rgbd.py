"""What the RGB-D builders (NYUDv2, SUN RGB-D) share: the record, the depth encoding and
the checks of one (RGB, depth, label) triple.

Every record is ``{"image": uint8 [H, W, 3], "depth": uint16 [H, W, 1], "label": uint8
[H, W, 1], "id": str}``. Depth is stored per image as a 16-bit PNG in **millimetres**
(0 = no measurement), whatever unit the source files use; the label as for every other
dataset (values in ``[0, num_classes)``, 255 = void). ``builder.info.metadata`` adds
``depth_unit = "mm"`` to the usual ``num_classes``, ``class_names``, ``palette``.

Preparing also stores the per-band mean and standard deviation of the ``train`` split's
RGB-D images (R, G, B in 0-255 and depth in mm, every pixel counted) as
``rgbd_band_mean`` / ``rgbd_band_std``: the normalisation of ``config.dataset.depth``
runs (``config.input.norm_stats = "auto"``).

A triple whose depth is missing, whose RGB, depth and label sizes differ, whose depth
is not finite, negative or beyond 65.535 m, or whose label holds a value that is not a
class, is an error naming the file (and the values).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from segjax.data import bands
from segjax.data.builders import from_files

# The largest depth a uint16 PNG in millimetres holds.
MAX_DEPTH_MM = np.iinfo(np.uint16).max


class RgbdBuilder(from_files.FromFilesBuilder, skip_registration=True):
    """A builder whose records add ``depth``: uint16 [H, W, 1] PNG, millimetres."""

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        return {
            "depth": tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint16, encoding_format="png"
            )
        }

    def extra_metadata(self) -> dict:
        return {"depth_unit": "mm"}

    def with_rgbd_stats(self, split: str, examples: Iterator[tuple[str, dict]]) -> Iterator:
        """Passes `examples` through; for ``train``, adds their RGB-D band statistics to
        the metadata (which tfds writes once every split is generated)."""
        if split != "train":
            yield from examples
            return
        stats = bands.BandStats(4)
        for key, example in examples:
            stats.add(decode_rgbd(example))
            yield key, example
        self.info.metadata.update(rgbd_band_mean=list(stats.mean), rgbd_band_std=list(stats.std))


def decode_rgbd(example: dict) -> np.ndarray:
    """A record written by `encode_rgbd` -> uint16 [H, W, 4]: R, G, B (0-255), depth (mm)."""
    rgb = cv2.imdecode(np.frombuffer(example["image"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    depth = cv2.imdecode(np.frombuffer(example["depth"], np.uint8), cv2.IMREAD_UNCHANGED)
    return np.concatenate([rgb.astype(np.uint16), depth[..., None]], axis=-1)


def depth_metres_to_mm(depth: np.ndarray, name: str) -> np.ndarray:
    """Float depth in metres -> uint16 millimetres [H, W] (rounded; 0 stays "missing").

    Raises:
      ValueError: naming `name`, for a non-finite, negative or too large depth.
    """
    depth = np.asarray(depth, np.float64)
    bad = ~np.isfinite(depth) | (depth < 0) | (depth * 1000.0 > MAX_DEPTH_MM)
    if bad.any():
        values = np.unique(depth[bad])[:5].tolist()
        raise ValueError(
            f"{name}: {int(bad.sum())} depth values are not finite, negative or beyond "
            f"{MAX_DEPTH_MM / 1000} m (e.g. {values}); expected metres"
        )
    return np.rint(depth * 1000.0).astype(np.uint16)


def decode_depth_png(data: bytes, name: str) -> np.ndarray:
    """The values of a single-channel 16-bit depth PNG, uint16 [H, W].

    Raises:
      ValueError: naming `name`, when the file is not a decodable one-channel image.
    """
    depth = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise ValueError(f"{name}: cannot decode depth image")
    if depth.ndim != 2:
        raise ValueError(f"{name}: depth image has {depth.shape[-1]} channels; expected one")
    if depth.dtype != np.uint16:
        raise ValueError(f"{name}: depth image is {depth.dtype}; expected a 16-bit PNG")
    return depth


def encode_rgbd(
    rgb: np.ndarray | bytes,
    depth_mm: np.ndarray,
    raw_label: np.ndarray,
    *,
    example_id: str,
    lut: np.ndarray,
    class_names: Sequence[str],
    rgb_name: str,
    depth_name: str,
    label_name: str,
) -> dict:
    """Checks one triple and encodes it into a record.

    Args:
      rgb: the image, uint8 [H, W, 3] RGB, or the bytes of an image file.
      depth_mm: uint16 [H, W], millimetres (0 = missing).
      raw_label: int [H, W], the source's label values, mapped through `lut`.
      example_id: the record's id.
      lut: raw value -> training label (`from_files.label_map`); -1 marks errors.
      class_names: the dataset's classes (for the error message).
      rgb_name, depth_name, label_name: where each part comes from, for errors.
    """
    if isinstance(rgb, bytes):
        image_bytes, (h, w) = from_files.decode_image(rgb, rgb_name)
    else:
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"{rgb_name}: image is {rgb.dtype} {rgb.shape}; expected uint8 HxWx3")
        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
        assert ok
        image_bytes, (h, w) = png.tobytes(), rgb.shape[:2]
    if depth_mm.shape != (h, w):
        raise ValueError(
            f"{depth_name}: depth is {depth_mm.shape[0]}x{depth_mm.shape[1]} but its image "
            f"{rgb_name} is {h}x{w}"
        )
    if raw_label.shape != (h, w):
        raise ValueError(from_files.size_mismatch(label_name, raw_label.shape, rgb_name, (h, w)))
    label = from_files.map_label(raw_label, lut, label_name, class_names)
    ok, label_png = cv2.imencode(".png", label)
    assert ok
    ok, depth_png = cv2.imencode(".png", np.ascontiguousarray(depth_mm, np.uint16))
    assert ok
    return {
        "image": image_bytes,
        "depth": depth_png.tobytes(),
        "label": label_png.tobytes(),
        "id": example_id,
    }
