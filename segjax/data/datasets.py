"""Which datasets segjax knows, how each is prepared, and how a split is opened.

`DATASETS` maps a config name (`config.dataset.name`) to a `DatasetSpec`. The built-in
synthetic dataset is prepared on first use; real datasets are prepared once from files
the user already has (see the README) and only read here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from segjax.data.builders import segjax_shapes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to get a prepared tfds builder for one dataset.

    Attributes:
      prepare: `(data_dir, config_name) -> builder`, preparing the data if needed.
      class_names: names of the classes, index = label value.
      palette: an RGB triple per class, for visualisations.
    """

    prepare: Callable[[str, str], Any]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]


DATASETS: dict[str, DatasetSpec] = {
    "segjax_shapes": DatasetSpec(
        prepare=segjax_shapes.prepare,
        class_names=tuple(segjax_shapes.CLASS_NAMES),
        palette=tuple(tuple(c) for c in segjax_shapes.PALETTE),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise KeyError(f"Unknown dataset {name!r} (config.dataset.name); known: {sorted(DATASETS)}")
    return DATASETS[name]


def prepared_builder(dataset_config: ml_collections.ConfigDict):
    """The prepared builder of `config.dataset`; process 0 prepares first on several hosts."""
    spec = get_spec(dataset_config.name)
    data_dir = os.path.expanduser(dataset_config.data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            spec.prepare(data_dir, dataset_config.config)
        multihost_utils.sync_global_devices("segjax_prepare_dataset")
    builder = spec.prepare(data_dir, dataset_config.config)
    num_classes = len(spec.class_names)
    if dataset_config.num_classes != num_classes:
        raise ValueError(
            f"config.dataset.num_classes={dataset_config.num_classes} but dataset "
            f"{dataset_config.name!r} has {num_classes} classes"
        )
    return builder


def data_source(dataset_config: ml_collections.ConfigDict, split: str):
    """A random-access source (len, getitem -> dict of numpy arrays) of one split."""
    builder = prepared_builder(dataset_config)
    splits = list(builder.info.splits)
    if split not in splits:
        raise KeyError(f"Split {split!r} not in dataset {dataset_config.name!r}; has {splits}")
    return builder.as_data_source(split)
