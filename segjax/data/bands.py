"""The bands of a dataset's images: how many, their dtype, and per-band statistics.

A prepared 2-D dataset's record holds its image as ``"image"`` [H, W, C], one array of
one dtype for all C bands. A builder whose images are anything but 8-bit RGB declares
them in ``builder.info.metadata`` (`band_metadata` writes these keys):

* ``image_channels``: C, the number of bands;
* ``image_dtype``: ``"uint8"``, ``"uint16"`` or ``"float32"``, the stored dtype;
* ``band_mean``, ``band_std``: C floats each, the mean and standard deviation of every
  band over the ``train`` split's pixels, in stored units (`BandStats` accumulates them
  while the builder generates its examples).

A dataset without these keys (every RGB builder, and datasets prepared before they
existed) has 3-band ``uint8`` images and no statistics of its own (`image_info`). The
training and evaluation pipelines normalise each band with ``config.input.mean/std``;
`segjax.data.datasets.resolve_inputs` fills those, and ``config.model.in_channels``,
from this metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

DTYPES = ("uint8", "uint16", "float32")

# A band whose pixels are all equal is divided by 1, not by 0.
_MIN_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What a dataset's images hold.

    Attributes:
      channels: C, the bands of `image` [H, W, C].
      dtype: the stored dtype (one of `DTYPES`).
      mean, std: per-band statistics of the train split (C floats each), or None when
        the dataset has none (RGB datasets: the config's ImageNet statistics apply).
    """

    channels: int = 3
    dtype: str = "uint8"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def is_rgb8(self) -> bool:
        """Whether the images are 8-bit RGB (what photometric distortion and the CRF take)."""
        return self.channels == 3 and self.dtype == "uint8"


# The images of every RGB dataset.
RGB8 = ImageInfo()


def image_info(metadata: Mapping[str, Any] | None) -> ImageInfo:
    """The `ImageInfo` of a prepared dataset's `builder.info.metadata` (see the module doc)."""
    metadata = metadata or {}
    channels = int(metadata.get("image_channels", 3))
    dtype = str(metadata.get("image_dtype", "uint8"))
    mean, std = metadata.get("band_mean"), metadata.get("band_std")
    if mean is not None and std is not None:
        mean = tuple(float(v) for v in mean)
        std = tuple(float(v) for v in std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"dataset metadata: band_mean/band_std have {len(mean)}/{len(std)} values "
                f"for {channels} bands (image_channels)"
            )
        return ImageInfo(channels, dtype, mean, std)
    return ImageInfo(channels, dtype)


class BandStats:
    """Running per-band mean and standard deviation over images [H, W, C].

    Each image's mean and squared deviations are taken in float64 and merged with the
    running totals by Chan et al.'s pairwise rule, so a band whose mean is large against
    its spread (uint16 reflectances) loses no precision. Non-finite pixels are skipped.
    """

    def __init__(self, channels: int):
        self.channels = channels
        self.count = np.zeros(channels, np.float64)
        self._mean = np.zeros(channels, np.float64)
        self._m2 = np.zeros(channels, np.float64)

    def add(self, image: np.ndarray) -> None:
        """Adds the pixels of `image` [H, W, C]."""
        x = np.asarray(image, np.float64).reshape(-1, image.shape[-1])
        if x.shape[1] != self.channels:
            raise ValueError(f"image has {x.shape[1]} bands; the statistics have {self.channels}")
        finite = np.isfinite(x)
        n = finite.sum(0).astype(np.float64)
        safe = np.where(finite, x, 0.0)
        mean = safe.sum(0) / np.maximum(n, 1)
        m2 = (np.where(finite, x - mean, 0.0) ** 2).sum(0)
        total = self.count + n
        delta = mean - self._mean
        weight = np.divide(n, total, out=np.zeros_like(n), where=total > 0)
        self._mean = self._mean + delta * weight
        self._m2 = self._m2 + m2 + delta**2 * self.count * weight
        self.count = total

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self._mean)

    @property
    def std(self) -> tuple[float, ...]:
        """Population standard deviation per band (at least 1e-6)."""
        var = np.divide(self._m2, self.count, out=np.zeros_like(self._m2), where=self.count > 0)
        return tuple(float(max(np.sqrt(v), _MIN_STD)) for v in var)


def norm_stats_source(norm_stats: str, num_config_values: int, info: ImageInfo) -> str:
    """Where `config.input.norm_stats` takes the normalisation from: "config" or "dataset".

    "auto" means the dataset's own statistics when it has them, unless its images are
    8-bit with one `config.input.mean` value per band (RGB with the ImageNet defaults,
    which pretrained weights expect); otherwise the config's values.
    """
    if norm_stats != "auto":
        return norm_stats
    if info.mean is None or (info.dtype == "uint8" and num_config_values == info.channels):
        return "config"
    return "dataset"


def input_channels(config: Any) -> int:
    """C of a 2-D model's input images [B, H, W, C]: `config.model.in_channels` (3 when a
    config has no such key). 0, "the dataset's", must have been resolved first
    (`segjax.data.datasets.resolve_inputs`; `segjax.tasks.build_task` does it)."""
    channels = int(config.model.get("in_channels", 3))
    if channels < 1:
        raise ValueError(
            f"config.model.in_channels={channels} is not resolved: pass the config through "
            "segjax.data.datasets.resolve_inputs first"
        )
    return channels


def band_metadata(channels: int, dtype: str, stats: BandStats | None = None) -> dict[str, Any]:
    """The `builder.info.metadata` keys that declare a dataset's bands (module doc)."""
    if dtype not in DTYPES:
        raise ValueError(f"image dtype {dtype!r}; expected one of {DTYPES}")
    out: dict[str, Any] = {"image_channels": int(channels), "image_dtype": dtype}
    if stats is not None:
        out["band_mean"] = list(stats.mean)
        out["band_std"] = list(stats.std)
    return out
