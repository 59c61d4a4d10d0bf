"""SUN RGB-D: 10,335 RGB-D frames of four sensors, 37 classes; train 5,285, test 5,050.

The layout read is the one ESANet's ``src/datasets/sunrgbd/prepare_dataset.py`` writes
from the official ``SUNRGBD.zip`` and ``SUNRGBDtoolbox.zip`` (rgbd.cs.princeton.edu),
which RGB-D segmentation code commonly reads: one folder (the manual dir, or a ``.zip`` /
``.tar`` of it) holding six file lists, one relative path per line, line k of the three
lists of a split naming the same frame::

    DIR/
      train_rgb.txt    kv1/NYUdata/NYU0001/image/NYU0001.jpg ...      (5,285 lines)
      train_depth.txt  kv1/NYUdata/NYU0001/depth_bfx/NYU0001.png ...
      train_label.txt  kv1/NYUdata/NYU0001/label/label.npy ...
      test_rgb.txt  test_depth.txt  test_label.txt                   (5,050 lines)
      kv1/ kv2/ realsense/ xtion/   the frames (or the same below SUNRGBD/)

Paths are looked up below DIR, then below ``DIR/SUNRGBD/``. Labels are the 37-class
maps of ``SUNRGBD2Dseg.mat`` (``seglabel``): ``.npy`` arrays (as ESANet saves them) or
single-channel PNGs, value 0 = void -> 255, k -> k - 1. Depth PNGs are the toolbox's
16-bit format, millimetres rotated left by 3 bits; they are turned into plain
millimetres (``(v >> 3) | (v << 13)``, as ``read3dPoints.m``) and stored per image.
``depth_bfx`` (in-painted) or raw ``depth`` is whichever the lists name. HHA encoding is
not computed.

Prepare::

    python -m segjax.data.prepare --dataset sunrgbd --manual_dir ~/data/sunrgbd
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import from_files, rgbd

NAME = "segjax_sunrgbd"
# The 37 classes of SUNRGBD2Dseg.mat's seg37list (the first 37 of NYUDv2's 40).
CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "fridge", "tv", "paper",
    "towel", "shower curtain", "box", "whiteboard", "person", "night stand", "toilet",
    "sink", "lamp", "bathtub", "bag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = from_files.generated_palette(NUM_CLASSES)
ARCHIVES = ("sunrgbd.zip", "sunrgbd.tar", "SUNRGBD.zip", "SUNRGBD.tar")
_SPLITS = {"train": "train", "test": "test"}
_KINDS = ("rgb", "depth", "label")
_BASES = ("", "SUNRGBD/")
INSTRUCTIONS = """\
Get SUNRGBD.zip and SUNRGBDtoolbox.zip (rgbd.cs.princeton.edu) and convert them with
ESANet's src/datasets/sunrgbd/prepare_dataset.py (github.com/TUI-NICR/ESANet) into a
folder DIR holding {train,test}_{rgb,depth,label}.txt and the frames, then run:
  python -m segjax.data.prepare --dataset sunrgbd --manual_dir DIR [--data_dir D]
"""


def sun_depth_to_mm(raw: np.ndarray) -> np.ndarray:
    """SUN RGB-D's stored depth (mm rotated left by 3 bits) -> millimetres, uint16."""
    raw = raw.astype(np.uint16)
    return (raw >> 3) | (raw << 13)


def read_label(tree: from_files.FileTree, path: str) -> np.ndarray:
    """A 37-class label map (``.npy`` or PNG) -> int32 [H, W]."""
    name = tree.origin(path)
    if not path.lower().endswith(".npy"):
        return from_files.decode_label(tree.read(path), name)
    try:
        label = np.load(io.BytesIO(tree.read(path)), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{name}: cannot read as a .npy array ({e})") from e
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{name}: label is {label.dtype} {label.shape}; expected integer HxW")
    return label.astype(np.int32)


class SegjaxSunrgbd(rgbd.RgbdBuilder):
    """SUN RGB-D, 37 classes, RGB + depth (mm)."""

    name = NAME
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="37 classes; train 5,285, test 5,050.")
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    LABEL_MAP = {0: from_files.IGNORE_INDEX, **{k: k - 1 for k in range(1, NUM_CLASSES + 1)}}
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_triples(self, tree: from_files.FileTree) -> dict[str, list[tuple[str, ...]]]:
        """(id, rgb, depth, label) paths of each split, from the lists, all checked to exist.

        Raises:
          FileNotFoundError: a list, or a file a list names (the list and line named).
          ValueError: the three lists of a split differ in length.
        """
        base = next((b for b in _BASES if tree.exists(f"{b}train_rgb.txt")), "")
        out = {}
        for split, prefix in _SPLITS.items():
            lists = {k: f"{base}{prefix}_{k}.txt" for k in _KINDS}
            for path in lists.values():
                if not tree.exists(path):
                    raise FileNotFoundError(
                        f"{path}: not found in {tree.describe()}\n{INSTRUCTIONS}"
                    )
            entries = {k: from_files.read_list(tree, p) for k, p in lists.items()}
            lengths = {tree.origin(lists[k]): len(v) for k, v in entries.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"SUN RGB-D {split} lists differ in length: {lengths}")
            triples = []
            for line, paths in enumerate(zip(*(entries[k] for k in _KINDS), strict=True), start=1):
                found = []
                for kind, entry in zip(_KINDS, paths, strict=True):
                    path = self._resolve(tree, entry, base)
                    if path is None:
                        raise FileNotFoundError(
                            f"{tree.origin(lists[kind])} line {line}: {kind} file {entry} "
                            f"not found below {base or '.'}/ or {base}SUNRGBD/ in "
                            f"{tree.describe()}"
                        )
                    found.append(path)
                triples.append((f"{split}_{line:05d}", *found))
            out[split] = triples
        return out

    @staticmethod
    def _resolve(tree: from_files.FileTree, entry: str, base: str) -> str | None:
        entry = entry.replace("\\", "/").lstrip("/")
        for prefix in (base, f"{base}SUNRGBD/"):
            if tree.exists(prefix + entry):
                return prefix + entry
        return None

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        manual_path = getattr(self, "manual_path", None)
        if not manual_path:
            raise FileNotFoundError(f"{self.name}: no manual dir given.\n{INSTRUCTIONS}")
        tree = from_files.manual_tree(manual_path, self.ARCHIVES, dl_manager.download_dir)
        splits = self.split_triples(tree)
        for split, triples in splits.items():
            if not triples:
                raise ValueError(f"{self.name}: split {split!r} is empty in {tree.describe()}")
        return {
            split: self.with_rgbd_stats(split, self._generate_examples(tree, t))
            for split, t in splits.items()
        }

    def _generate_examples(
        self, tree: from_files.FileTree, triples: list[tuple[str, ...]]
    ) -> Iterator[tuple[str, dict]]:
        lut = from_files.label_map(self.LABEL_MAP)
        for example_id, rgb, depth, label in triples:
            depth_name = tree.origin(depth)
            yield (
                example_id,
                rgbd.encode_rgbd(
                    tree.read(rgb),
                    sun_depth_to_mm(rgbd.decode_depth_png(tree.read(depth), depth_name)),
                    read_label(tree, label),
                    example_id=example_id,
                    lut=lut,
                    class_names=CLASS_NAMES,
                    rgb_name=tree.origin(rgb),
                    depth_name=depth_name,
                    label_name=tree.origin(label),
                ),
            )


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(NAME, SegjaxSunrgbd, INSTRUCTIONS)
