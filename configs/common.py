"""Helpers that configs share: plain functions, no inheritance chains.

Every experiment file builds its ConfigDict from `base_config()` and overrides what it
needs, so `configs/default.py` reads top to bottom and a reader never chases `_base_`s.
"""

from __future__ import annotations

import os

import ml_collections

# ImageNet statistics in 0-255 pixel units (mmsegmentation's convention).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def default_data_dir() -> str:
    """Where datasets are prepared: $SEGJAX_DATA_DIR, else ~/.cache/segjax/datasets."""
    return os.environ.get(
        "SEGJAX_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "segjax", "datasets")
    )


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a big_vision-style config argument `"a=1,b=x,flag"` over `defaults`.

    A bare word sets a boolean to True. Values keep the type of their default, so
    `"steps=10"` gives an int when the default is an int. An unknown key is an error.
    """
    parsed = ml_collections.ConfigDict(defaults)
    if not arg:
        return parsed
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise KeyError(f"Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            parsed[key] = True
        elif isinstance(default, bool):
            parsed[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            parsed[key] = value
        else:
            parsed[key] = type(default)(value)
    return parsed


def base_config() -> ml_collections.ConfigDict:
    """The full key set of a training run, with defaults that every config may override."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "segjax_shapes"
    c.dataset.config = "default"  # the tfds BuilderConfig name
    c.dataset.data_dir = default_data_dir()
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.num_classes = 6
    c.dataset.ignore_index = 255

    c.input = ml_collections.ConfigDict()
    c.input.batch_size = 16  # global, over all devices and hosts
    c.input.eval_batch_size = 16  # global
    c.input.crop_size = (128, 128)  # (height, width)
    c.input.scale_range = (0.75, 1.5)  # random rescale ratio; (1.0, 1.0) turns it off
    c.input.flip = True
    c.input.mean = IMAGENET_MEAN
    c.input.std = IMAGENET_STD
    # Evaluation images are padded to this (height, width) so eval never recompiles.
    c.input.eval_pad_size = (128, 128)
    c.input.worker_count = 0  # grain worker processes; 0 = in the main process
    c.input.prefetch = 2  # batches put on device ahead of the step

    c.model = ml_collections.ConfigDict()
    c.model.name = "deeplabv3plus_tiny"
    c.model.output_stride = 16
    c.model.aux_head = False
    c.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "cross_entropy"  # or a weighted sum: "cross_entropy:1.0+dice:0.5"
    c.loss.aux_weight = 0.4

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "sgd" (momentum, poly decay: the DeepLab recipe) or "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "poly"  # "poly", "cosine" or "constant"
    c.optimizer.poly_power = 0.9
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2  # the latest N
    c.train.keep_best = 1  # plus the best N by validation mIoU
    c.train.async_checkpointing = True
    return c
