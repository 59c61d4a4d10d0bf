"""NYU Depth v2 (labelled part): 1,449 RGB-D frames, 40 classes (Gupta et al.), 795 / 654.

Files to get, all in one folder (the manual dir):

* ``nyu_depth_v2_labeled.mat`` (2.8 GB, cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html):
  a MATLAB v7.3 (HDF5) file read with h5py. MATLAB's column-major arrays appear
  transposed: ``images`` [N, 3, W, H] uint8, ``depths`` [N, W, H] (metres, in-painted),
  ``labels`` [N, W, H] (the 894 class ids, 0 = unlabelled);
* ``splits.mat`` (the standard split, same site, ``indoor_seg_sup/splits.mat``):
  ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based frame numbers;
* ``classMapping40.mat`` (Gupta et al., CVPR 2013; also shipped by
  github.com/VainF/nyuv2-python-toolkit and ESANet): ``mapClass`` [1, 894], the
  40-class id (1..40) of each of the 894 classes, and ``className`` (40 names).

Splits: ``train`` (795 frames of ``trainNdxs``) and ``test`` (654 of ``testNdxs``),
each record's id the 1-based frame number (``0001``..``1449``). Labels: 894-class id
``k`` -> ``mapClass[k] - 1`` (0..39), 0 -> 255 (void). Depth: metres -> uint16
millimetres (see ``segjax.data.builders.rgbd``). HHA encoding is not computed.

Prepare::

    python -m segjax.data.prepare --dataset nyudv2 --manual_dir ~/data/nyudv2
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from segjax.data.builders import from_files, rgbd

NAME = "segjax_nyudv2"
MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING_FILE = "classMapping40.mat"
NUM_RAW_CLASSES = 894
# Gupta et al.'s 40 classes, in the order of classMapping40.mat's className.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refrigerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = from_files.generated_palette(NUM_CLASSES)
INSTRUCTIONS = f"""\
Get {MAT_FILE} (cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html), the standard split
{SPLITS_FILE} (trainNdxs / testNdxs) and Gupta et al.'s {MAPPING_FILE} (894 -> 40 classes)
into one folder DIR, then run:
  python -m segjax.data.prepare --dataset nyudv2 --manual_dir DIR [--data_dir D]
"""


def _file(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (NYUDv2 needs it)\n{INSTRUCTIONS}")
    return path


def read_mapping(path: str) -> dict[int, int]:
    """``classMapping40.mat`` -> raw 894-class id -> training label (0 -> 255).

    Raises:
      ValueError: naming the file, when ``mapClass`` is missing, has not 894 entries,
        or maps a class outside 1..40.
    """
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a MATLAB file ({e})") from e
    if "mapClass" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no 'mapClass' array (has {keys}); expected {MAPPING_FILE}")
    mapping = np.asarray(mat["mapClass"]).reshape(-1)
    if mapping.size != NUM_RAW_CLASSES:
        raise ValueError(f"{path}: mapClass has {mapping.size} entries; expected 894")
    bad = (mapping < 1) | (mapping > NUM_CLASSES) | (mapping != np.round(mapping))
    if bad.any():
        raise ValueError(
            f"{path}: mapClass maps classes {(np.flatnonzero(bad) + 1)[:10].tolist()} to "
            f"{[float(v) if v != int(v) else int(v) for v in mapping[bad][:10]]}, "
            f"not classes 1..{NUM_CLASSES}"
        )
    out = {0: from_files.IGNORE_INDEX}
    out.update({k + 1: int(v) - 1 for k, v in enumerate(mapping)})
    return out


def read_splits(path: str, num_frames: int) -> dict[str, list[int]]:
    """``splits.mat`` -> {"train": 0-based frames of trainNdxs, "test": of testNdxs}.

    Raises:
      ValueError: naming the file, for a missing key, a frame outside 1..num_frames, or
        a frame in both splits.
    """
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a MATLAB file ({e})") from e
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in mat:
            raise ValueError(f"{path}: no {key!r} (expected trainNdxs and testNdxs)")
        frames = np.asarray(mat[key]).reshape(-1).astype(np.int64)
        bad = frames[(frames < 1) | (frames > num_frames)]
        if bad.size:
            raise ValueError(
                f"{path}: {key} holds frames {bad[:10].tolist()} outside 1..{num_frames} "
                f"(the frames of {MAT_FILE}; indices are 1-based)"
            )
        out[split] = (frames - 1).tolist()
    both = sorted(set(out["train"]) & set(out["test"]))
    if both:
        raise ValueError(f"{path}: frames {[f + 1 for f in both[:10]]} are in both splits")
    return out


class _Mat:
    """The three arrays of ``nyu_depth_v2_labeled.mat``, read one frame at a time."""

    def __init__(self, path: str):
        import h5py  # Only preparing NYUDv2 needs it.

        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except Exception as e:
            raise ValueError(f"{path}: cannot open as a MATLAB v7.3 (HDF5) file ({e})") from e
        for key in ("images", "depths", "labels"):
            if key not in self.file:
                raise ValueError(f"{path}: no {key!r} array (has {sorted(self.file)})")
        self.images, self.depths, self.labels = (
            self.file[k] for k in ("images", "depths", "labels")
        )
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"{path}: images is {self.images.shape}; expected [N, 3, W, H]")
        for key, array in (("depths", self.depths), ("labels", self.labels)):
            if array.ndim != 3 or array.shape[0] != n:
                raise ValueError(
                    f"{path}: {key} is {array.shape}; expected [N, W, H] with N = {n} "
                    f"(the frames of images {self.images.shape})"
                )
        self.num_frames = n

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame `i` (0-based): RGB uint8 [H, W, 3], depth (m) [H, W], labels [H, W]."""
        rgb = np.asarray(self.images[i]).transpose(2, 1, 0)
        return rgb, np.asarray(self.depths[i]).T, np.asarray(self.labels[i]).T.astype(np.int32)

    def close(self) -> None:
        self.file.close()


class SegjaxNyudv2(rgbd.RgbdBuilder):
    """NYU Depth v2 labelled frames, 40 classes, RGB + depth (mm)."""

    name = NAME
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="default", description="40 classes; train 795, test 654.")
    ]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        folder = getattr(self, "manual_path", None)
        if not folder or not os.path.isdir(folder):
            raise FileNotFoundError(f"{self.name}: no manual dir {folder!r}.\n{INSTRUCTIONS}")
        mat_path = _file(folder, MAT_FILE)
        splits_path = _file(folder, SPLITS_FILE)
        lut = from_files.label_map(read_mapping(_file(folder, MAPPING_FILE)))
        mat = _Mat(mat_path)
        num_frames = mat.num_frames
        mat.close()
        frames = read_splits(splits_path, num_frames)
        return {
            split: self.with_rgbd_stats(split, self._generate_examples(mat_path, indices, lut))
            for split, indices in frames.items()
        }

    def _generate_examples(
        self, mat_path: str, frames: list[int], lut: np.ndarray
    ) -> Iterator[tuple[str, dict]]:
        mat = _Mat(mat_path)
        try:
            for i in frames:
                rgb, depth, raw = mat.frame(i)
                where = f"{mat_path}:%s[{i + 1}]"
                example_id = f"{i + 1:04d}"
                yield (
                    example_id,
                    rgbd.encode_rgbd(
                        np.ascontiguousarray(rgb),
                        rgbd.depth_metres_to_mm(depth, where % "depths"),
                        raw,
                        example_id=example_id,
                        lut=lut,
                        class_names=CLASS_NAMES,
                        rgb_name=where % "images",
                        depth_name=where % "depths",
                        label_name=where % "labels",
                    ),
                )
        finally:
            mat.close()


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(NAME, SegjaxNyudv2, INSTRUCTIONS)
