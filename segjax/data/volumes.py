"""Input pipelines of the volume task: intensity normalisation, resampling, 3-D crops,
flips and rotations, fixed-shape eval batches.

A volume record (`segjax.data.builders.volume_shapes.volume_features`) is `image`
[D, H, W, C] (any numeric dtype), `label` uint8 [D, H, W, 1], `spacing` float32 [3] (mm,
D/H/W order). Every sample goes through `prepare_volume` (the same on the train, eval and
picture paths):

1. resampling to `config.volume.target_spacing` (when set): trilinear for the image,
   nearest for the label (`scipy.ndimage.zoom`, order 1 / 0), the spacing updated;
2. intensity normalisation (`config.volume.normalization`): `"zscore"` per volume and
   channel (MONAI `NormalizeIntensity(channel_wise=True)`), `"ct"`: clipped to the
   window `config.volume.ct_window` (HU) and scaled to [0, 1] (MONAI
   `ScaleIntensityRange(clip=True)`), or `"none"`.

Training then pads to the crop (image 0, label `ignore_index`), crops at random, flips
each axis of `config.volume.flip_axes` with probability 1/2 and, with
`config.volume.rotate90`, rotates by a random multiple of 90 degrees in the H-W plane.
Randomness comes from the Generator grain derives from the seed and the record's
position, so a resumed run replays the same batches (as `segjax.data.pipeline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain.python as grain
import ml_collections
import numpy as np

from segjax.data import eval_pipeline

NORMALIZATIONS = ("zscore", "ct", "none")

Sample = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VolumeOptions:
    """What `prepare_volume` does (from `config.volume`)."""

    normalization: str = "zscore"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    target_spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> VolumeOptions:
        v = config.volume
        return cls(
            normalization=v.normalization,
            ct_window=tuple(float(x) for x in v.ct_window),
            target_spacing=tuple(float(x) for x in v.target_spacing),
        )


def decode_volume(record: dict[str, Any]) -> Sample:
    """A record -> `{"image": float32 [D, H, W, C], "label": int32 [D, H, W], "spacing"}`."""
    label = np.asarray(record["label"])
    if label.ndim == 4:
        label = label[..., 0]
    return {
        "image": np.asarray(record["image"], np.float32),
        "label": label.astype(np.int32),
        "spacing": np.asarray(record["spacing"], np.float32),
    }


def resample(sample: Sample, target_spacing: Sequence[float]) -> Sample:
    """`sample` at `target_spacing` (mm per voxel, D/H/W): trilinear image, nearest label."""
    from scipy import ndimage  # host-only

    spacing = np.asarray(sample["spacing"], np.float64)
    target = np.asarray(target_spacing, np.float64)
    shape = np.asarray(sample["label"].shape)
    new_shape = np.maximum(np.round(shape * spacing / target), 1).astype(int)
    if (new_shape == shape).all():
        return {**sample, "spacing": target.astype(np.float32)}
    zoom = new_shape / shape
    image = np.stack(
        [
            ndimage.zoom(sample["image"][..., c], zoom, order=1, mode="nearest", grid_mode=True)
            for c in range(sample["image"].shape[-1])
        ],
        axis=-1,
    )
    label = ndimage.zoom(sample["label"], zoom, order=0, mode="nearest", grid_mode=True)
    return {"image": image.astype(np.float32), "label": label.astype(np.int32),
            "spacing": target.astype(np.float32)}  # fmt: skip


def normalize_intensity(
    image: np.ndarray, mode: str, ct_window: Sequence[float] = (-1000.0, 1000.0)
) -> np.ndarray:
    """float32 `image` [..., C] normalised per `mode` (see the module docstring)."""
    image = np.asarray(image, np.float32)
    if mode == "none":
        return image
    if mode == "ct":
        lo, hi = float(ct_window[0]), float(ct_window[1])
        return (np.clip(image, lo, hi) - lo) / (hi - lo)
    if mode == "zscore":
        axes = tuple(range(image.ndim - 1))
        mean = image.mean(axes, keepdims=True)
        std = image.std(axes, keepdims=True)
        return (image - mean) / np.where(std > 0, std, 1.0)
    raise ValueError(f"normalization {mode!r}; expected one of {NORMALIZATIONS}")


def prepare_volume(record: dict[str, Any], options: VolumeOptions) -> Sample:
    """Decode, resample (if `options.target_spacing` is set) and normalise one record."""
    sample = decode_volume(record)
    if any(s > 0 for s in options.target_spacing):
        sample = resample(sample, options.target_spacing)
    image = normalize_intensity(sample["image"], options.normalization, options.ct_window)
    return {**sample, "image": image}


def pad_volume(sample: Sample, size: Sequence[int], *, ignore_index: int) -> Sample:
    """Pads the far end of each axis up to `size`: image with 0, label with `ignore_index`."""
    pads = [(0, max(int(s) - n, 0)) for s, n in zip(size, sample["label"].shape, strict=True)]
    if not any(p for _, p in pads):
        return sample
    image = np.pad(sample["image"], [*pads, (0, 0)])
    label = np.pad(sample["label"], pads, constant_values=ignore_index)
    return {**sample, "image": image, "label": label}


def random_crop(sample: Sample, rng: np.random.Generator, size: Sequence[int]) -> Sample:
    """A window of `size` at a uniformly random position (the sample is at least `size`)."""
    starts = [
        int(rng.integers(0, n - s + 1)) for n, s in zip(sample["label"].shape, size, strict=True)
    ]
    region = tuple(slice(a, a + int(s)) for a, s in zip(starts, size, strict=True))
    return {**sample, "image": sample["image"][region], "label": sample["label"][region]}


def random_flip(sample: Sample, rng: np.random.Generator, axes: Sequence[int]) -> Sample:
    """Flips each spatial axis of `axes` (0 = D, 1 = H, 2 = W) with probability 1/2."""
    flipped = tuple(int(a) for a in axes if rng.random() < 0.5)
    if not flipped:
        return sample
    return {**sample, "image": np.flip(sample["image"], flipped),
            "label": np.flip(sample["label"], flipped)}  # fmt: skip


def random_rot90(sample: Sample, rng: np.random.Generator) -> Sample:
    """Rotates the H-W plane by 0, 90, 180 or 270 degrees (H == W keeps the shape)."""
    k = int(rng.integers(0, 4))
    if k == 0:
        return sample
    return {**sample, "image": np.rot90(sample["image"], k, axes=(1, 2)),
            "label": np.rot90(sample["label"], k, axes=(1, 2))}  # fmt: skip


class VolumeTrainAugment(grain.RandomMapTransform):
    """grain op: record -> `{"image": float32 [d, h, w, C], "label": int32 [d, h, w]}`."""

    def __init__(self, config: ml_collections.ConfigDict):
        v = config.volume
        self.options = VolumeOptions.from_config(config)
        self.crop = tuple(int(s) for s in v.crop_size)
        self.flip_axes = tuple(int(a) for a in v.flip_axes)
        self.rotate90 = bool(v.rotate90)
        self.ignore_index = int(config.dataset.ignore_index)

    def random_map(self, element, rng: np.random.Generator):
        sample = prepare_volume(element, self.options)
        sample = pad_volume(sample, self.crop, ignore_index=self.ignore_index)
        sample = random_crop(sample, rng, self.crop)
        sample = random_flip(sample, rng, self.flip_axes)
        if self.rotate90:
            sample = random_rot90(sample, rng)
        return {
            "image": np.ascontiguousarray(sample["image"], np.float32),
            "label": np.ascontiguousarray(sample["label"], np.int32),
        }


def train_loader(
    config: ml_collections.ConfigDict, source, *, per_process_batch: int, seed: int
) -> grain.DataLoader:
    """Infinite, shuffled, augmented batches of this process's shard of `source`:
    `image` float32 [b, *config.volume.crop_size, C], `label` int32 [b, *crop_size]."""
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=True),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    if config.input.worker_count > 0:
        from segjax.data.pipeline import _absl_flags_ready

        _absl_flags_ready()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[
            VolumeTrainAugment(config),
            grain.Batch(per_process_batch, drop_remainder=True),
        ],
        worker_count=config.input.worker_count,
    )


class VolumeEvalSample(grain.MapTransform):
    """grain op: (record, index) -> image [*canvas, C], label [*canvas] (padding:
    `ignore_index`), `spacing` [3], `index`."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.options = VolumeOptions.from_config(config)
        self.canvas = tuple(int(s) for s in config.volume.eval_pad_size)
        self.ignore_index = int(config.dataset.ignore_index)

    def map(self, element):
        sample = prepare_volume(element["record"], self.options)
        shape = sample["label"].shape
        if any(n > c for n, c in zip(shape, self.canvas, strict=True)):
            raise ValueError(
                f"evaluation volume #{element['index']} is {'x'.join(map(str, shape))} voxels "
                f"(after resampling), larger than config.volume.eval_pad_size={self.canvas}; "
                "raise it"
            )
        sample = pad_volume(sample, self.canvas, ignore_index=self.ignore_index)
        return {
            "image": sample["image"],
            "label": sample["label"],
            "spacing": sample["spacing"],
            "index": np.int32(element["index"]),
        }


def eval_batches(
    config: ml_collections.ConfigDict, source, *, per_process_batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's shard in fixed-shape batches: `image`
    [b, *canvas, C], `label` [b, *canvas], `spacing` [b, 3], `index` [b] (-1: padding),
    `valid` [b]; every process yields the same number of batches (see
    `segjax.data.eval_pipeline.eval_batches`)."""
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=False),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    loader = grain.DataLoader(
        data_source=eval_pipeline._IndexedSource(source),
        sampler=sampler,
        operations=[
            VolumeEvalSample(config),
            grain.Batch(per_process_batch, drop_remainder=False),
        ],
        worker_count=0,
    )
    canvas = tuple(int(s) for s in config.volume.eval_pad_size)
    channels = int(config.volume.in_channels)
    ignore_index = int(config.dataset.ignore_index)
    steps = eval_pipeline.num_eval_steps(len(source), per_process_batch)
    emitted = 0
    for batch in loader:
        yield _pad_batch(batch, per_process_batch, ignore_index)
        emitted += 1
    empty = {
        "image": np.zeros((0, *canvas, channels), np.float32),
        "label": np.zeros((0, *canvas), np.int32),
        "spacing": np.zeros((0, 3), np.float32),
        "index": np.zeros((0,), np.int32),
    }
    for _ in range(emitted, steps):
        yield _pad_batch(empty, per_process_batch, ignore_index)


def _pad_batch(batch: dict[str, np.ndarray], size: int, ignore_index: int) -> dict:
    # Pads the sample axis to `size` and marks which samples are real.
    n = batch["label"].shape[0]
    fill = {"image": 0, "label": ignore_index, "spacing": 1, "index": -1}

    def grow(key: str) -> np.ndarray:
        x = np.asarray(batch[key])
        return np.pad(x, ((0, size - n),) + ((0, 0),) * (x.ndim - 1), constant_values=fill[key])

    out = {k: grow(k) for k in fill}
    out["image"] = out["image"].astype(np.float32)
    out["label"] = out["label"].astype(np.int32)
    out["spacing"] = out["spacing"].astype(np.float32)
    out["index"] = out["index"].astype(np.int32)
    out["valid"] = np.arange(size) < n
    return out
