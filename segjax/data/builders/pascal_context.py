"""PASCAL Context, 59 classes, in mmsegmentation's layout (background -> 255).

Files to get (in one manual dir, extracted or as archives):

* ``VOCtrainval_03-May-2010.tar``: the VOC 2010 images (``VOCdevkit/VOC2010/JPEGImages``).
* The 59-class label PNGs and split lists in the layout that mmsegmentation's converter
  (``tools/dataset_converters/pascal_context.py``, from ``trainval_merged.json``) writes
  into the same ``VOCdevkit/VOC2010`` folder: ``SegmentationClassContext/<id>.png``
  (values 0 = background, 1..59 = the classes below) and
  ``ImageSets/SegmentationContext/{train,val}.txt``.

Splits: ``train`` 4,996 and ``validation`` 5,104 images. As mmsegmentation's
``PascalContextDataset59`` (``reduce_zero_label``), value 0 becomes 255 and ``k``
becomes class ``k - 1``.

Prepare::

    python -m segjax.data.prepare --dataset pascal_context --manual_dir ~/data/voc2010
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_pascal_context"
CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "cloth",
    "computer", "cup", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate",
    "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree",
    "truck", "wall", "water", "window", "wood",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = from_files.generated_palette(NUM_CLASSES + 1)[1:]
ARCHIVES = ("VOCtrainval_03-May-2010.tar",)
_BASES = ("VOCdevkit/VOC2010/", "VOC2010/", "")
_SPLITS = {"train": "train", "validation": "val"}
INSTRUCTIONS = f"""\
Get {ARCHIVES[0]} (the VOC 2010 images) and make the 59-class labels with
mmsegmentation's tools/dataset_converters/pascal_context.py (from trainval_merged.json):
VOCdevkit/VOC2010/SegmentationClassContext/*.png and
VOCdevkit/VOC2010/ImageSets/SegmentationContext/{{train,val}}.txt. Put the tar (or the
extracted folder) and the converter's output under one directory DIR, then run:
  python -m segjax.data.prepare --dataset pascal_context --manual_dir DIR [--data_dir D]
"""


class SegjaxPascalContext(from_files.FromFilesBuilder):
    """PASCAL Context, 59 classes (mmsegmentation layout, reduce zero label)."""

    name = NAME
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="59 classes, train / val.")
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = {0: 255, **{k: k - 1 for k in range(1, NUM_CLASSES + 1)}, 255: 255}
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = tree.find_base("ImageSets/SegmentationContext/train.txt", _BASES)
        return {
            split: [
                from_files.Pair(
                    i, f"{base}JPEGImages/{i}.jpg", f"{base}SegmentationClassContext/{i}.png"
                )
                for i in from_files.read_list(
                    tree, f"{base}ImageSets/SegmentationContext/{name}.txt"
                )
            ]
            for split, name in _SPLITS.items()
        }


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(
    NAME, SegjaxPascalContext, INSTRUCTIONS
)
