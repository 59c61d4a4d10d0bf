"""grain input pipeline for training: an infinite, shuffled, augmented stream.

Datasets are tfds builders prepared in the `array_record` format and read back as
random-access data sources (no TensorFlow needed to read). Training shards records
over processes (`ShardByJaxProcess`), so every host reads its own slice and all hosts
yield the same number of batches. The training iterator's state is small (a position
per worker) and is what the checkpoint stores for an exact resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain.python as grain
import ml_collections

from segjax.data import datasets, transforms


def train_loader(
    config: ml_collections.ConfigDict,
    source,
    *,
    per_process_batch: int,
    seed: int,
    extra_operations: Sequence[grain.Transformation] = (),
) -> grain.DataLoader:
    """Infinite, shuffled, augmented batches of this process's shard of `source`.

    Yields `{"image": float32 [b, h, w, C], "label": int32 [b, h, w]}` with
    `b = per_process_batch` and `(h, w) = config.input.crop_size`. Per record: random
    rescale (`input.scale_range`, relative to `input.base_size` when set), pad with
    `ignore_index`, random crop (`input.cat_max_ratio`), flip (`input.flip`),
    photometric distortion (`input.photometric`, 8-bit RGB only), normalisation of each
    of the C bands (`input.mean/std`, one value per band).

    Records are shuffled with `seed` over infinite epochs; each process reads its own
    equal-sized shard (`ShardByJaxProcess`, remainder dropped), so all hosts yield the
    same number of batches. The random ops draw from the Generator grain derives from
    `seed` and the record's position, so a restored iterator state replays exactly the
    same batches, and each augmented sample is the same for any `worker_count`. With
    `W > 0` workers, worker `i` batches records `i, i + W, ...`: every `W` consecutive
    batches hold the same samples as with 0 workers, grouped differently.

    `extra_operations` (a task's own per-sample ops, e.g. turning the label map into
    another target) run after the augmentation, before batching.
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
        transforms.DecodeRecord(depth=config.dataset.get("depth", False)),
        transforms.TrainAugment(
            crop_size=ic.crop_size,
            scale_range=ic.scale_range,
            base_size=ic.base_size,
            cat_max_ratio=ic.cat_max_ratio,
            flip=ic.flip,
            photometric=ic.photometric,
            mean=ic.mean,
            std=ic.std,
            ignore_index=config.dataset.ignore_index,
        ),
        *extra_operations,
        grain.Batch(per_process_batch, drop_remainder=True),
    ]
    if ic.worker_count > 0:
        _absl_flags_ready()
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=ic.worker_count,
    )


def _absl_flags_ready() -> None:
    # grain's worker processes read absl flags (their defaults) and fail with
    # UnparsedFlagAccessError outside an absl app (`python -m segjax.bench`, a notebook);
    # train.py parses them itself.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def load_split(config: ml_collections.ConfigDict, split: str):
    """The random-access source of `split` of `config.dataset` (prepared if it can be)."""
    return datasets.data_source(config.dataset, split)
