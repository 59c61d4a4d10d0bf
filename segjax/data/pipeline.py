"""grain input pipelines: an infinite shuffled training stream and a padded eval pass.

Datasets are tfds builders prepared in the `array_record` format and read back as
random-access data sources (no TensorFlow needed to read). Training shards records
over processes (`ShardByJaxProcess`), so every host reads its own slice and all hosts
yield the same number of batches. The training iterator's state is small (a position
per worker) and is what the checkpoint stores for an exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import grain.python as grain
import jax
import ml_collections
import numpy as np

from segjax.data import datasets, transforms


def train_loader(
    config: ml_collections.ConfigDict, source, *, per_process_batch: int, seed: int
) -> grain.DataLoader:
    """Infinite, shuffled, augmented batches of this process's shard of `source`.

    Yields `{"image": float32 [b, h, w, 3], "label": int32 [b, h, w]}` with
    `b = per_process_batch` and `(h, w) = config.input.crop_size`.
    """
    ic = config.input
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=True),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    operations = [
        transforms.DecodeRecord(),
        transforms.TrainAugment(
            crop_size=ic.crop_size,
            scale_range=ic.scale_range,
            flip=ic.flip,
            mean=ic.mean,
            std=ic.std,
            ignore_index=config.dataset.ignore_index,
        ),
        grain.Batch(per_process_batch, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=ic.worker_count,
    )


def num_eval_steps(num_records: int, per_process_batch: int) -> int:
    """Eval batches per process: enough for the largest process shard."""
    per_process = math.ceil(num_records / jax.process_count())
    return max(math.ceil(per_process / per_process_batch), 1)


def eval_batches(
    config: ml_collections.ConfigDict, source, *, per_process_batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's shard, in order, in fixed-shape batches.

    Every batch has `per_process_batch` samples padded to `config.input.eval_pad_size`
    plus `valid` bool [b]; the last batch is filled with invalid samples, and a process
    whose shard is shorter yields extra all-invalid batches, so that every process runs
    the same number of identical-shape steps and each image is scored exactly once.
    """
    ic = config.input
    ignore_index = config.dataset.ignore_index
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=False),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    operations = [
        transforms.DecodeRecord(),
        transforms.EvalPrepare(
            pad_size=ic.eval_pad_size, mean=ic.mean, std=ic.std, ignore_index=ignore_index
        ),
        grain.Batch(per_process_batch, drop_remainder=False),
    ]
    loader = grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, worker_count=0
    )
    h, w = ic.eval_pad_size
    steps = num_eval_steps(len(source), per_process_batch)
    emitted = 0
    for batch in loader:
        n = batch["label"].shape[0]
        yield _pad_batch(batch, n, per_process_batch, ignore_index)
        emitted += 1
    empty = {
        "image": np.zeros((0, h, w, 3), np.float32),
        "label": np.zeros((0, h, w), np.int32),
    }
    for _ in range(emitted, steps):
        yield _pad_batch(empty, 0, per_process_batch, ignore_index)


def _pad_batch(batch, n: int, size: int, ignore_index: int) -> dict[str, np.ndarray]:
    # Pads the sample axis from n to size and marks which samples are real.
    pad = size - n
    return {
        "image": np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0))),
        "label": np.pad(batch["label"], ((0, pad), (0, 0), (0, 0)), constant_values=ignore_index),
        "valid": np.arange(size) < n,
    }


def load_split(config: ml_collections.ConfigDict, split: str):
    """The random-access source of `split` of `config.dataset` (prepared if it can be)."""
    return datasets.data_source(config.dataset, split)
