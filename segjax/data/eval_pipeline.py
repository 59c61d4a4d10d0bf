"""grain input pipeline for evaluation: one ordered pass in fixed-shape, padded batches.

Every process reads its own shard of the split and yields the same number of batches of
the same shape (padding samples are marked `valid == False`), so the eval program
compiles once and every image is scored exactly once on any number of devices and hosts.

Scoring happens at each image's original size: the label is never resized, only padded
with `ignore_index` to a fixed label canvas; the image may be resized (keeping its
aspect ratio, `config.eval.resize`) before it is padded to `config.input.eval_pad_size`,
and each sample carries its original and resized sizes so that the eval program can
resize the predicted scores back (`inference.resize_to_original`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain.python as grain
import jax
import ml_collections
import numpy as np

from segjax import inference
from segjax.data import bands, transforms


def num_eval_steps(num_records: int, per_process_batch: int) -> int:
    """Eval batches per process: enough for the largest process shard."""
    per_process = math.ceil(num_records / jax.process_count())
    return max(math.ceil(per_process / per_process_batch), 1)


def resize_setting(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """`config.eval.resize` as (h, w), or None when images are only padded."""
    h, w = (int(s) for s in config.eval.resize)
    return (h, w) if h > 0 and w > 0 else None


def label_canvas(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """The (h, w) that original-size labels are padded to."""
    h, w = (int(s) for s in config.eval.label_pad_size)
    if h > 0 and w > 0:
        return h, w
    return tuple(int(s) for s in config.input.eval_pad_size)


class _IndexedSource:
    """A data source whose records also carry their index (to match predictions later)."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        return {"record": self._source[index], "index": index}


class EvalSample(grain.MapTransform):
    """grain op: (record, index) -> a fixed-shape eval sample.

    Output: `image` float32 [Hp, Wp, C] (normalised, resized if configured, zero-padded),
    `label` int32 [Hl, Wl] (original size, padded with `ignore_index`), `original_hw` and
    `resized_hw` int32 [2], `index` int32.
    """

    def __init__(
        self,
        *,
        pad_size: Sequence[int],
        label_pad_size: Sequence[int],
        resize: Sequence[int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int,
        depth: bool = False,
    ):
        self.depth = depth
        self.pad_size = tuple(pad_size)
        self.label_pad_size = tuple(label_pad_size)
        self.resize = tuple(resize) if resize else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = ignore_index

    def map(self, element):
        sample = transforms.decode_record(element["record"], depth=self.depth)
        h, w = sample["label"].shape
        if h > self.label_pad_size[0] or w > self.label_pad_size[1]:
            raise ValueError(
                f"evaluation image of size {h}x{w} is larger than the label canvas "
                f"{self.label_pad_size} (config.eval.label_pad_size, default "
                "config.input.eval_pad_size); raise it"
            )
        image = sample["image"]
        rh, rw = h, w
        if self.resize:
            rh, rw = inference.fit_size(h, w, self.resize)
            if (rh, rw) != (h, w):
                image = transforms.resize_image(image, rh, rw)
        if rh > self.pad_size[0] or rw > self.pad_size[1]:
            raise ValueError(
                f"evaluation image of size {rh}x{rw} is larger than "
                f"config.input.eval_pad_size={self.pad_size}; raise it to at least {rh}x{rw} "
                "or set config.eval.resize"
            )
        image = transforms.normalize({"image": image}, self.mean, self.std)["image"]
        image = np.pad(image, ((0, self.pad_size[0] - rh), (0, self.pad_size[1] - rw), (0, 0)))
        label = np.pad(
            sample["label"],
            ((0, self.label_pad_size[0] - h), (0, self.label_pad_size[1] - w)),
            constant_values=self.ignore_index,
        )
        return {
            "image": image,
            "label": label,
            "original_hw": np.array([h, w], np.int32),
            "resized_hw": np.array([rh, rw], np.int32),
            "index": np.int32(element["index"]),
        }


def eval_batches(
    config: ml_collections.ConfigDict, source, *, per_process_batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's shard, in order, in fixed-shape batches.

    Every batch has `per_process_batch` samples: `image` [b, Hp, Wp, C] (Hp x Wp =
    `config.input.eval_pad_size`), `label` [b, Hl, Wl] (`label_canvas(config)`),
    `original_hw` / `resized_hw` int32 [b, 2], `index` int32 [b] (-1 for padding) and
    `valid` bool [b]. The last batch is filled with invalid samples, and a process whose
    shard is shorter yields extra all-invalid batches, so that every process runs the
    same number of identical-shape steps and each image is scored exactly once.
    """
    ic = config.input
    ignore_index = config.dataset.ignore_index
    pad_size = tuple(int(s) for s in ic.eval_pad_size)
    label_size = label_canvas(config)
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=False),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    operations = [
        EvalSample(
            pad_size=pad_size,
            label_pad_size=label_size,
            resize=resize_setting(config),
            mean=ic.mean,
            std=ic.std,
            ignore_index=ignore_index,
            depth=config.dataset.get("depth", False),
        ),
        grain.Batch(per_process_batch, drop_remainder=False),
    ]
    loader = grain.DataLoader(
        data_source=_IndexedSource(source), sampler=sampler, operations=operations, worker_count=0
    )
    steps = num_eval_steps(len(source), per_process_batch)
    emitted = 0
    for batch in loader:
        yield _pad_batch(batch, per_process_batch, ignore_index)
        emitted += 1
    empty = {
        "image": np.zeros((0, *pad_size, bands.input_channels(config)), np.float32),
        "label": np.zeros((0, *label_size), np.int32),
        "original_hw": np.zeros((0, 2), np.int32),
        "resized_hw": np.zeros((0, 2), np.int32),
        "index": np.zeros((0,), np.int32),
    }
    for _ in range(emitted, steps):
        yield _pad_batch(empty, per_process_batch, ignore_index)


def _pad_batch(batch: dict[str, np.ndarray], size: int, ignore_index: int) -> dict:
    # Pads the sample axis to `size` and marks which samples are real.
    n = batch["label"].shape[0]
    pad = size - n

    def grow(x, value):
        return np.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=value)

    return {
        "image": grow(batch["image"], 0),
        "label": grow(batch["label"], ignore_index),
        # 1 x 1 for padding samples keeps the resize-back free of divisions by zero.
        "original_hw": grow(batch["original_hw"], 1),
        "resized_hw": grow(batch["resized_hw"], 1),
        "index": grow(batch["index"].astype(np.int32), -1),
        "valid": np.arange(size) < n,
    }
