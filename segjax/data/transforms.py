"""Host-side numpy transforms on `{"image", "label"}` samples, wrapped as grain ops.

A sample is `{"image": uint8 or float32 [H, W, 3], "label": int32 [H, W]}`. Geometric
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


def decode_record(record: dict[str, Any]) -> Sample:
    """A tfds record -> `{"image": uint8 [H,W,3], "label": int32 [H,W]}`."""
    label = np.asarray(record["label"])
    if label.ndim == 3:
        label = label[..., 0]
    return {"image": np.asarray(record["image"]), "label": label.astype(np.int32)}


def resize(sample: Sample, height: int, width: int) -> Sample:
    """Resizes image (bilinear) and label (nearest) to `height x width`."""
    image = cv2.resize(sample["image"], (width, height), interpolation=cv2.INTER_LINEAR)
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


def random_scale(sample: Sample, rng: np.random.Generator, ratio_range: Sequence[float]) -> Sample:
    """Rescales by a ratio drawn uniformly from `ratio_range`."""
    lo, hi = ratio_range
    if lo == hi == 1.0:
        return sample
    ratio = rng.uniform(lo, hi)
    h, w = sample["label"].shape
    return resize(sample, max(round(h * ratio), 1), max(round(w * ratio), 1))


def random_crop(sample: Sample, rng: np.random.Generator, height: int, width: int) -> Sample:
    """A random `height x width` window (the sample must be at least that large)."""
    h, w = sample["label"].shape
    top = rng.integers(0, h - height + 1)
    left = rng.integers(0, w - width + 1)
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


def normalize(sample: Sample, mean: Sequence[float], std: Sequence[float]) -> Sample:
    """`(image - mean) / std` per channel, as float32."""
    image = (sample["image"].astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return {**sample, "image": image}


class DecodeRecord(grain.MapTransform):
    """grain op: tfds record -> sample."""

    def map(self, element):
        return decode_record(element)


class TrainAugment(grain.RandomMapTransform):
    """grain op: random rescale, pad, random crop, flip, normalise."""

    def __init__(
        self,
        *,
        crop_size: Sequence[int],
        scale_range: Sequence[float],
        flip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int,
    ):
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.flip = flip
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def random_map(self, element, rng: np.random.Generator):
        sample = random_scale(element, rng, self.scale_range)
        sample = pad_to(sample, *self.crop_size, ignore_index=self.ignore_index)
        sample = random_crop(sample, rng, *self.crop_size)
        if self.flip:
            sample = random_flip(sample, rng)
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
