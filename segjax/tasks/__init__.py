"""Tasks of the shared train/eval loop, by `config.task` name.

A task is a frozen `segjax.tasks.base.Task` built from a config by its module's
`build(config, mesh)`: semantic segmentation (`semantic`, the default), multi-label
image classification (`classification`), instance segmentation (`instance`: Mask R-CNN,
PANet), panoptic segmentation (`panoptic`: Panoptic-DeepLab, Panoptic FPN), adversarial
training (`adversarial`), distillation (`distill`), level-set active contours
(`levelset`) and volumetric segmentation (`volume`). Adding one is one module plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections

from segjax.data import datasets
from segjax.tasks import (
    adversarial,
    classification,
    distill,
    instance,
    levelset,
    panoptic,
    semantic,
    volume,
)
from segjax.tasks.base import Task

TASKS: dict[str, Callable[[ml_collections.ConfigDict, jax.sharding.Mesh | None], Task]] = {
    "semantic": semantic.build,
    "classification": classification.build,
    "instance": instance.build,
    "adversarial": adversarial.build,
    "volume": volume.build,
    "panoptic": panoptic.build,
    "levelset": levelset.build,
    "distill": distill.build,
}


def task_name(config: ml_collections.ConfigDict) -> str:
    """`config.task` (`"semantic"` for configs written before tasks existed)."""
    return config.get("task", "semantic")


def build_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Task:
    """The task named by `config.task`; an unknown name lists the known ones.

    The task is built from `datasets.resolve_inputs(config)`: the input bands and their
    normalisation settled from the dataset (`train_lib.setup` keeps that config).
    """
    name = task_name(config)
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is not a task; known tasks: {sorted(TASKS)}")
    return TASKS[name](datasets.resolve_inputs(config), mesh)


__all__ = ["TASKS", "Task", "build_task", "task_name"]
