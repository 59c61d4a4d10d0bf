"""ADE20K as in the SceneParsing challenge (SceneParse150): 150 classes, 0 -> 255.

File to get: ``ADEChallengeData2016.zip`` (from the MIT scene-parsing benchmark; read in
place, or extracted: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/*.png``).

Splits: ``train`` 20,210 and ``validation`` 2,000 images. Annotation value 0 ("other
objects") is not one of the 150 classes; as mmsegmentation's ``reduce_zero_label`` it
becomes 255 and value ``k`` in 1..150 becomes class ``k - 1``.

Prepare::

    python -m segjax.data.prepare --dataset ade20k --manual_dir ~/data/ade20k
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_ade20k"
# objectInfo150's names (first synonym), in label order 1..150.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = from_files.generated_palette(NUM_CLASSES + 1)[1:]
ARCHIVE = "ADEChallengeData2016.zip"
_SPLITS = {"train": "training", "validation": "validation"}
_BASES = ("ADEChallengeData2016/", "")
INSTRUCTIONS = f"""\
Get {ARCHIVE} (http://sceneparsing.csail.mit.edu), put it or its extracted folder in a
directory, then run:
  python -m segjax.data.prepare --dataset ade20k --manual_dir DIR [--data_dir D]
"""


class SegjaxAde20k(from_files.FromFilesBuilder):
    """ADE20K SceneParse150, 150 classes (reduce zero label)."""

    name = NAME
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="training / validation.")
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = {0: 255, **{k: k - 1 for k in range(1, NUM_CLASSES + 1)}}
    ARCHIVES = (ARCHIVE,)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = _find_base(tree)
        out = {}
        for split, folder in _SPLITS.items():
            pairs = []
            for image in tree.list(f"{base}images/{folder}/"):
                if not image.endswith(".jpg"):
                    continue
                stem = os.path.basename(image)[: -len(".jpg")]
                label = f"{base}annotations/{folder}/{stem}.png"
                if not tree.exists(label):
                    raise FileNotFoundError(f"{tree.origin(image)}: no label {label}")
                pairs.append(from_files.Pair(stem, image, label))
            out[split] = pairs
        return out


def _find_base(tree: from_files.FileTree) -> str:
    for base in _BASES:
        if tree.list(f"{base}images/training/"):
            return base
    raise FileNotFoundError(f"no ADEChallengeData2016/images/training/ in {tree.describe()}")


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(NAME, SegjaxAde20k, INSTRUCTIONS)
