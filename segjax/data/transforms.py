"""Host-side numpy transforms on `{"image", "label"}` samples, wrapped as grain ops.

A sample is `{"image": [H, W, C], "label": int32 [H, W]}`: C bands (3 for RGB) of
uint8, uint16 or float32 (`segjax.data.bands`), float32 once normalised. Geometric
ops move image and label together: bilinear for the image, nearest for the label, and
padding with `ignore_index` so padded pixels never count. Random ops take a numpy
`Generator` that grain seeds per record, which is what makes a resumed run see exactly
the same augmented batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import grain.python as grain
import numpy as np

Sample = dict[str, Any]


# Instance datasets' keys, kept by `decode_record` (segjax.data.instances decodes them).
INSTANCE_KEYS = ("instances", "objects")


def decode_record(record: dict[str, Any], *, depth: bool = False) -> Sample:
    """A tfds record -> `{"image": [H,W,C] as stored, "label": int32 [H,W]}`.

    An instance dataset's record also keeps its `INSTANCE_KEYS`; one without a semantic
    label (COCO instances) gets an all-zero `label`. With `depth` (an RGB-D record:
    `depth` uint16 [H, W, 1], millimetres), the image becomes uint16 [H, W, 4]: R, G, B
    (0-255) and depth (`config.dataset.depth`).

    Raises:
      ValueError: `depth` is set and the record has no depth map.
    """
    image = np.asarray(record["image"])
    if depth:
        if "depth" not in record:
            raise ValueError(
                "config.dataset.depth=True but the dataset's records hold no 'depth' map "
                "(RGB-D datasets: nyudv2, sunrgbd)"
            )
        depth_map = np.asarray(record["depth"]).reshape((*image.shape[:2], 1))
        image = np.concatenate([image.astype(np.uint16), depth_map.astype(np.uint16)], axis=-1)
    label = np.asarray(record["label"]) if "label" in record else np.zeros(image.shape[:2])
    if label.ndim == 3:
        label = label[..., 0]
    sample = {"image": image, "label": label.astype(np.int32)}
    sample.update({k: record[k] for k in INSTANCE_KEYS if k in record})
    if "spacing" in record:  # volumes: voxel size (mm), for resampling and distances
        sample["spacing"] = np.asarray(record["spacing"], np.float32)
    return sample


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an image [h, w, C] of any band count to [height, width, C]."""
    if image.shape[:2] == (height, width):
        return image
    # OpenCV drops a single channel's axis and takes at most 512 channels per call.
    parts = [
        cv2.resize(
            np.ascontiguousarray(image[..., k : k + 512]),
            (width, height),
            interpolation=cv2.INTER_LINEAR,
        )
        for k in range(0, image.shape[-1], 512)
    ]
    return np.concatenate([p[..., None] if p.ndim == 2 else p for p in parts], axis=-1)


def resize(sample: Sample, height: int, width: int) -> Sample:
    """Resizes image (bilinear) and label (nearest) to `height x width`."""
    image = resize_image(sample["image"], height, width)
    label = cv2.resize(sample["label"], (width, height), interpolation=cv2.INTER_NEAREST)
    return {**sample, "image": image, "label": label}


def pad_to(sample: Sample, height: int, width: int, *, ignore_index: int) -> Sample:
    """Pads bottom/right to at least `height x width`: image with 0, label with ignore."""
    h, w = sample["label"].shape
    ph, pw = max(height - h, 0), max(width - w, 0)
    if not ph and not pw:
        return sample
    image = np.pad(sample["image"], ((0, ph), (0, pw), (0, 0)))
    label = np.pad(sample["label"], ((0, ph), (0, pw)), constant_values=ignore_index)
    return {**sample, "image": image, "label": label}


def rescale_size(
    height: int, width: int, base_size: Sequence[int], ratio: float
) -> tuple[int, int]:
    """The size that fits `ratio * base_size` keeping the aspect ratio (mmcv's `rescale_size`).

    `base_size = (long, short)`: the image is scaled by the largest factor that keeps
    its long side within `ratio * long` and its short side within `ratio * short`, as
    mmsegmentation's `RandomResize(scale=(long, short), ratio_range, keep_ratio=True)`.
    """
    long_edge, short_edge = base_size
    factor = min(long_edge * ratio / max(height, width), short_edge * ratio / min(height, width))
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def random_scale(
    sample: Sample,
    rng: np.random.Generator,
    ratio_range: Sequence[float],
    base_size: Sequence[int] | None = None,
) -> Sample:
    """Rescales by a ratio drawn uniformly from `ratio_range`.

    Without `base_size` the ratio multiplies the image's own size; with `base_size =
    (long, short)` it multiplies that target size instead (see `rescale_size`).
    """
    lo, hi = ratio_range
    if not base_size and lo == hi == 1.0:
        return sample
    ratio = rng.uniform(lo, hi)
    h, w = sample["label"].shape
    if base_size:
        return resize(sample, *rescale_size(h, w, base_size, ratio))
    return resize(sample, max(round(h * ratio), 1), max(round(w * ratio), 1))


def random_crop(
    sample: Sample,
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    cat_max_ratio: float = 1.0,
    ignore_index: int = 255,
) -> Sample:
    """A random `height x width` window (the sample must be at least that large).

    With `cat_max_ratio < 1`, as mmsegmentation's `RandomCrop`: a window is drawn again,
    up to 10 times, while one class covers `cat_max_ratio` or more of the window's
    non-ignored pixels or the window holds fewer than two classes; the last draw is kept.
    """
    h, w = sample["label"].shape

    def draw() -> tuple[int, int]:
        return rng.integers(0, h - height + 1), rng.integers(0, w - width + 1)

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            crop = sample["label"][top : top + height, left : left + width]
            _, counts = np.unique(crop[crop != ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    window = (slice(top, top + height), slice(left, left + width))
    return {**sample, "image": sample["image"][window], "label": sample["label"][window]}


def random_flip(sample: Sample, rng: np.random.Generator) -> Sample:
    """Horizontal flip with probability 1/2."""
    if rng.random() < 0.5:
        return sample
    return {
        **sample,
        "image": np.ascontiguousarray(sample["image"][:, ::-1]),
        "label": np.ascontiguousarray(sample["label"][:, ::-1]),
    }


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # `alpha * image + beta` back to uint8, truncating as mmsegmentation does.
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32.0,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmsegmentation's `PhotoMetricDistortion` on a uint8 RGB image [H, W, 3].

    Each of brightness (add a delta), contrast (multiply), saturation (multiply S in
    HSV) and hue (shift H, in OpenCV's 0-179 units) is applied with probability 1/2;
    contrast comes first or last (before saturation or after hue) with probability
    1/2. Every step clips to [0, 255] and truncates to uint8.
    """
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2)
    if contrast_first and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta + 1))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    return image


def normalize(sample: Sample, mean: Sequence[float], std: Sequence[float]) -> Sample:
    """`(image - mean) / std` per channel, as float32."""
    image = (sample["image"].astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return {**sample, "image": image}


class DecodeRecord(grain.MapTransform):
    """grain op: tfds record -> sample (RGB-D records: depth as a 4th band with `depth`)."""

    def __init__(self, *, depth: bool = False):
        self.depth = depth

    def map(self, element):
        return decode_record(element, depth=self.depth)


class TrainAugment(grain.RandomMapTransform):
    """grain op: random rescale, pad, random crop, flip, photometric distortion, normalise.

    Output: `{"image": float32 [h, w, C], "label": int32 [h, w]}`, `(h, w) = crop_size`.
    All randomness comes from the per-record Generator grain passes in; options that
    are off draw nothing from it, so turning none on leaves the stream unchanged.
    """

    def __init__(
        self,
        *,
        crop_size: Sequence[int],
        scale_range: Sequence[float],
        flip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int,
        base_size: Sequence[int] | None = None,
        cat_max_ratio: float = 1.0,
        photometric: bool = False,
    ):
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.base_size = tuple(base_size) if base_size and any(base_size) else None
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip = flip
        self.photometric = photometric
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def random_map(self, element, rng: np.random.Generator):
        sample = random_scale(element, rng, self.scale_range, self.base_size)
        sample = pad_to(sample, *self.crop_size, ignore_index=self.ignore_index)
        sample = random_crop(
            sample,
            rng,
            *self.crop_size,
            cat_max_ratio=self.cat_max_ratio,
            ignore_index=self.ignore_index,
        )
        if self.flip:
            sample = random_flip(sample, rng)
        if self.photometric:
            image = sample["image"]
            if image.dtype != np.uint8 or image.shape[-1] != 3:
                raise ValueError(
                    f"config.input.photometric=True needs 8-bit RGB images; got "
                    f"{image.dtype} [{image.shape[-1]} bands]: set it to False"
                )
            sample = {**sample, "image": photometric_distortion(image, rng)}
        return normalize(sample, self.mean, self.std)


class EvalPrepare(grain.MapTransform):
    """grain op: normalise and pad to the fixed evaluation shape (no augmentation)."""

    def __init__(
        self,
        *,
        pad_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int,
    ):
        self.pad_size = tuple(pad_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def map(self, element):
        h, w = element["label"].shape
        if h > self.pad_size[0] or w > self.pad_size[1]:
            raise ValueError(
                f"evaluation image of size {h}x{w} is larger than "
                f"config.input.eval_pad_size={self.pad_size}; raise it to at least {h}x{w}"
            )
        sample = normalize(element, self.mean, self.std)
        return pad_to(sample, *self.pad_size, ignore_index=self.ignore_index)
