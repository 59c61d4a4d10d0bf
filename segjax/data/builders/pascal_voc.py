"""PASCAL VOC 2012 semantic segmentation (21 classes, 255 = void), optionally with SBD.

Files to get (put them, or their extracted folders, in one manual dir):

* ``VOCtrainval_11-May-2012.tar`` (read in place, or extracted: ``VOCdevkit/VOC2012/``
  with ``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/Segmentation/``).
* For config ``aug`` only: the SBD archive ``benchmark.tgz`` (extracted once into the
  data dir, or already extracted: ``benchmark_RELEASE/dataset/`` with ``cls/*.mat``,
  ``train.txt`` and ``val.txt``).

Configs:

* ``default``: ``train`` 1,464 and ``validation`` 1,449 images (``ImageSets/Segmentation``).
* ``aug``: ``train`` is the 10,582-image ``train_aug`` set (VOC train + SBD train + SBD
  val, minus every VOC val image); ``validation`` as above. An image's label is its VOC
  annotation when it has one, else its SBD one (``GTcls.Segmentation``; SBD has no void
  boundary).

Prepare::

    python -m segjax.data.prepare --dataset voc --manual_dir ~/data/voc [--config aug]
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_voc"
CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = from_files.generated_palette(NUM_CLASSES)  # The official VOC colour map.
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"
_BASES = ("VOCdevkit/VOC2012/", "VOC2012/", "")
_SBD_BASES = ("benchmark_RELEASE/dataset/", "dataset/", "")
INSTRUCTIONS = f"""\
Get {VOC_ARCHIVE} (and, for --config aug, the SBD archive {SBD_ARCHIVE}), put them or
their extracted folders in one directory, then run:
  python -m segjax.data.prepare --dataset voc --manual_dir DIR [--config aug] [--data_dir D]
"""


class SegjaxVoc(from_files.FromFilesBuilder):
    """PASCAL VOC 2012 semantic segmentation, 21 classes, optionally with SBD (train_aug)."""

    name = NAME
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="VOC 2012 train / val."),
        tfds.core.BuilderConfig(name="aug", description="train_aug (10,582 with SBD) / val."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = {**{k: k for k in range(NUM_CLASSES)}, from_files.IGNORE_INDEX: 255}
    ARCHIVES = (VOC_ARCHIVE, SBD_ARCHIVE)
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = tree.find_base("ImageSets/Segmentation/train.txt", _BASES)

        def voc_pair(i: str) -> from_files.Pair:
            return from_files.Pair(
                i, f"{base}JPEGImages/{i}.jpg", f"{base}SegmentationClass/{i}.png"
            )

        voc_train = from_files.read_list(tree, f"{base}ImageSets/Segmentation/train.txt")
        voc_val = from_files.read_list(tree, f"{base}ImageSets/Segmentation/val.txt")
        val = [voc_pair(i) for i in voc_val]
        if self.builder_config.name == "default":
            return {"train": [voc_pair(i) for i in voc_train], "validation": val}
        sbd = tree.find_base("train.txt", _SBD_BASES[:2]) if _has_sbd(tree) else None
        if sbd is None:
            raise FileNotFoundError(
                f"config 'aug' needs SBD ({SBD_ARCHIVE} or benchmark_RELEASE/dataset/) "
                f"in {tree.describe()}"
            )
        sbd_ids = from_files.read_list(tree, f"{sbd}train.txt") + from_files.read_list(
            tree, f"{sbd}val.txt"
        )
        train_ids = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
        has_voc_label = set(voc_train)
        train = [
            voc_pair(i)
            if i in has_voc_label
            else from_files.Pair(i, f"{base}JPEGImages/{i}.jpg", f"{sbd}cls/{i}.mat")
            for i in train_ids
        ]
        return {"train": train, "validation": val}

    def read_label(self, tree: from_files.FileTree, path: str) -> np.ndarray:
        if not path.endswith(".mat"):
            return super().read_label(tree, path)
        import scipy.io  # Only SBD needs it.

        try:
            mat = scipy.io.loadmat(io.BytesIO(tree.read(path)))
            return np.asarray(mat["GTcls"][0]["Segmentation"][0], np.int32)
        except Exception as e:
            raise ValueError(
                f"{tree.origin(path)}: cannot read SBD GTcls.Segmentation ({e})"
            ) from e


def _has_sbd(tree: from_files.FileTree) -> bool:
    return any(
        tree.exists(b + "train.txt") and tree.exists(b + "val.txt") and tree.list(b + "cls/")
        for b in _SBD_BASES[:2]
    )


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(NAME, SegjaxVoc, INSTRUCTIONS)
