"""Cityscapes panoptic: the 19 training classes, things from ``gtFine`` instance ids.

Files: those of the semantic Cityscapes builder (``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip``, or their extracted folders, in one manual dir); the
annotation read is ``gtFine/<split>/<city>/*_gtFine_instanceIds.png``, whose pixel value
is a labelId (< 1000: stuff, void, or a crowd region of a thing class) or
``labelId * 1000 + k`` (the k-th object of a class that has instances). Things are the
train ids of person, rider, car, truck, bus, train, motorcycle and bicycle (11-18).

Records: ``label`` = the train id (the official labelId -> trainId table; 255 void, the
license plate's -1 included, stored as 65535 in 16-bit PNGs); ``instance`` = k + 1 for
an object of a thing class, 0 for stuff and for a thing class's crowd region. Objects
of classes without a train id (caravan, trailer) are void.

Errors, naming the file and the value: a labelId outside the table, an object id
(>= 1000) of a stuff class.

Prepare::

    python -m segjax.data.prepare --dataset cityscapes_panoptic --manual_dir ~/data/cityscapes
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segjax.data.builders import cityscapes, from_files, panoptic_files

NAME = "segjax_cityscapes_panoptic"
CLASS_NAMES = cityscapes.CLASS_NAMES
PALETTE = cityscapes.PALETTE
NUM_CLASSES = cityscapes.NUM_CLASSES
THING_NAMES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
THING_CLASSES: tuple[bool, ...] = tuple(n in THING_NAMES for n in CLASS_NAMES)
ARCHIVES = cityscapes.ARCHIVES
_LICENSE_PLATE = 65535  # labelId -1 in a 16-bit PNG
INSTRUCTIONS = cityscapes.INSTRUCTIONS.replace(
    "--dataset cityscapes", "--dataset cityscapes_panoptic"
)


def read_instance_ids(data: bytes, name: str) -> np.ndarray:
    """int64 [H, W] values of a ``*_gtFine_instanceIds.png`` (16-bit greyscale)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = np.asarray(im)
    except Exception as e:
        raise ValueError(f"{name}: cannot decode instance ids ({e})") from e
    if raw.ndim != 2:
        raise ValueError(f"{name}: expected a one-channel instanceIds PNG, got shape {raw.shape}")
    return raw.astype(np.int64)


def panoptic_maps(raw: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`(label, instance)` of one instanceIds map (module docstring); errors name `name`."""
    lut = cityscapes.LABEL_ID_TO_TRAIN_ID
    label = np.full(raw.shape, 255, np.uint8)
    instance = np.zeros(raw.shape, np.uint16)
    for value in np.unique(raw).tolist():
        mask = raw == value
        if value == _LICENSE_PLATE:
            continue
        label_id, k = (value // 1000, value % 1000) if value >= 1000 else (value, None)
        if label_id not in lut:
            raise ValueError(
                f"{name}: instance id {value} has labelId {label_id}, not a Cityscapes "
                f"labelId (0-33, -1)"
            )
        train_id = lut[label_id]
        if train_id == 255:
            continue
        if k is not None and not THING_CLASSES[train_id]:
            raise ValueError(
                f"{name}: instance id {value} is an object of {CLASS_NAMES[train_id]!r}, a "
                "stuff class (objects are only of "
                f"{', '.join(THING_NAMES)})"
            )
        label[mask] = train_id
        if k is not None:
            instance[mask] = k + 1
    return label, instance


class SegjaxCityscapesPanoptic(panoptic_files.PanopticFilesBuilder):
    """Cityscapes fine annotations as panoptic maps: 19 train ids, 8 thing classes."""

    name = NAME
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="gtFine train / val.")]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    THING_CLASSES = THING_CLASSES
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        pairs = cityscapes.SegjaxCityscapes.split_pairs(self, tree)
        suffix = "_gtFine_labelIds.png"
        out = {}
        for split, items in pairs.items():
            out[split] = []
            for p in items:
                label = p.label[: -len(suffix)] + "_gtFine_instanceIds.png"
                if not tree.exists(label):
                    raise FileNotFoundError(
                        f"{tree.origin(p.image)}: no instance ids {label} in {tree.describe()}"
                    )
                out[split].append(from_files.Pair(p.id, p.image, label))
        return out

    def read_panoptic(self, tree, pair):
        name = tree.origin(pair.label)
        return panoptic_maps(read_instance_ids(tree.read(pair.label), name), name)


dataset_dir, is_prepared, prepare = from_files.module_functions(
    NAME, SegjaxCityscapesPanoptic, INSTRUCTIONS
)
