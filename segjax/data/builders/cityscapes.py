"""Cityscapes, fine annotations: 19 training classes from the official labelId -> trainId map.

Files to get (from cityscapes-dataset.com, after registering; put them, or their
extracted folders, in one manual dir):

* ``leftImg8bit_trainvaltest.zip`` (``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``)
* ``gtFine_trainvaltest.zip`` (``gtFine/{train,val}/<city>/*_gtFine_labelIds.png``)

Splits: ``train`` 2,975 and ``validation`` 500 images of 1024x2048 (the test split's
labels are withheld, so it is not prepared). Labels are the ``*_gtFine_labelIds.png``
maps turned into train ids by the official table of ``cityscapesscripts`` (labelId 7,
road -> 0, ..., 33, bicycle -> 18); every other labelId, and 255 (the license plate's
-1), becomes 255.

Prepare::

    python -m segjax.data.prepare --dataset cityscapes --manual_dir ~/data/cityscapes
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_cityscapes"
# (labelId, trainId, name, colour) of the 19 evaluated classes, as in cityscapesscripts.
_TRAIN_LABELS = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)
CLASS_NAMES: tuple[str, ...] = tuple(n for _, _, n, _ in _TRAIN_LABELS)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(c for _, _, _, c in _TRAIN_LABELS)
NUM_CLASSES = len(CLASS_NAMES)
# labelIds 0..33 exist; those not evaluated (unlabeled, ego vehicle, parking, ...) are void.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    **{label_id: 255 for label_id in range(34)},
    **{label_id: train_id for label_id, train_id, _, _ in _TRAIN_LABELS},
    255: 255,  # license plate (labelId -1) as written into a uint8 PNG
}
ARCHIVES = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
_SPLITS = {"train": "train", "validation": "val"}
INSTRUCTIONS = f"""\
Get {ARCHIVES[0]} and {ARCHIVES[1]} from https://www.cityscapes-dataset.com (login
needed), put them or their extracted leftImg8bit/ and gtFine/ folders in one directory,
then run:
  python -m segjax.data.prepare --dataset cityscapes --manual_dir DIR [--data_dir D]
"""


class SegjaxCityscapes(from_files.FromFilesBuilder):
    """Cityscapes fine annotations, 19 train ids (others void)."""

    name = NAME
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="gtFine train / val.")]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = LABEL_ID_TO_TRAIN_ID
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        suffix = "_leftImg8bit.png"
        out = {}
        for split, folder in _SPLITS.items():
            pairs = []
            for image in tree.list(f"leftImg8bit/{folder}/"):
                if not image.endswith(suffix):
                    continue
                stem = image[len("leftImg8bit/") : -len(suffix)]  # <split>/<city>/<city>_x_y
                label = f"gtFine/{stem}_gtFine_labelIds.png"
                if not tree.exists(label):
                    raise FileNotFoundError(
                        f"{tree.origin(image)}: no label {label} in {tree.describe()}"
                    )
                pairs.append(from_files.Pair(os.path.basename(stem), image, label))
            if not pairs:
                raise FileNotFoundError(f"no leftImg8bit/{folder}/*{suffix} in {tree.describe()}")
            out[split] = pairs
        return out


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(
    NAME, SegjaxCityscapes, INSTRUCTIONS
)
