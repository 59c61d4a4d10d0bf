"""``volume_shapes``: a synthetic volumetric dataset where class = 3-D shape.

Each cubic volume holds 1-4 objects, each a sphere (a slightly elliptic ellipsoid), a tube
(a cylinder along a random direction, crossing the volume) or a box (a rotated cuboid),
over a smooth, noisy background. An object's intensity is the background's mean plus or
minus 0.25-0.6 (either sign), so neither "bright" nor "dark" tells the class: only the
shape does. Objects occlude each other in drawing order (the label is the last drawn),
and the whole volume gets Gaussian noise of sigma 0.05-0.12. Intensities are stored as
uint8 (0-255) with a voxel spacing of 1 mm.

Record ``i`` of split ``s`` (``train`` = 0, ``validation`` = 1) is
``render_volume(np.random.default_rng([seed, s, i]), size)``::

    {"image": uint8 [S, S, S, 1], "label": uint8 [S, S, S, 1], "spacing": float32 [3],
     "id": str}

Prepared like ``segjax_shapes`` (``array_record``, offline, on first use), read without
TensorFlow. Configs: ``default`` (32^3, 160 train / 16 validation volumes) and ``tiny``
(16^3, 16 / 8, for tests).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from segjax.data.builders import from_files

CLASS_NAMES: tuple[str, ...] = ("background", "sphere", "tube", "box")
NUM_CLASSES = len(CLASS_NAMES)
PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))
SPLIT_IDS = {"train": 0, "validation": 1}
NAME = "volume_shapes"
VERSION = from_files.VERSION  # one layout of prepared dirs: <data_dir>/<name>/<config>/<version>
_VERSION = VERSION


def _rotation(rng: np.random.Generator) -> np.ndarray:
    # A uniformly random rotation matrix (from a random unit quaternion).
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    # Smooth noise in [0, 1]: a coarse random grid, trilinearly upsampled.
    from scipy import ndimage

    coarse = rng.uniform(0.0, 1.0, (cells, cells, cells))
    return np.clip(ndimage.zoom(coarse, size / cells, order=1, mode="nearest"), 0, 1)[
        :size, :size, :size
    ]


def object_mask(rng: np.random.Generator, cls: int, grid: np.ndarray, size: int) -> np.ndarray:
    """bool [S, S, S] of one random object of class `cls` (1 sphere, 2 tube, 3 box).

    `grid` is float [S, S, S, 3] of voxel centres (z, y, x).
    """
    centre = rng.uniform(0.25, 0.75, 3) * size
    local = (grid - centre) @ _rotation(rng)  # coordinates in the object's frame
    radius = size * rng.uniform(0.12, 0.22)
    if cls == 1:
        radii = radius * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)])
        return np.sum((local / radii) ** 2, axis=-1) <= 1.0
    if cls == 2:
        r = radius * rng.uniform(0.3, 0.45)
        return local[..., 1] ** 2 + local[..., 2] ** 2 <= r * r
    if cls == 3:
        half = radius * rng.uniform(0.55, 0.9, 3)
        return np.all(np.abs(local) <= half, axis=-1)
    raise ValueError(f"not an object class: {cls}")


def render_volume(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One volume and its labels; a pure function of `rng`'s state.

    Returns:
      `(image, label)`: uint8 [S, S, S] intensities, uint8 [S, S, S] classes in
      `[0, NUM_CLASSES)`.
    """
    grid = np.stack(np.meshgrid(*[np.arange(size) + 0.5] * 3, indexing="ij"), axis=-1)
    mean = rng.uniform(0.3, 0.7)
    image = mean + 0.15 * (_smooth_field(rng, size, 4) - 0.5)
    label = np.zeros((size, size, size), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, NUM_CLASSES))
        mask = object_mask(rng, cls, grid, size)
        level = mean + rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.6)
        image[mask] = level + 0.1 * (_smooth_field(rng, size, 3)[mask] - 0.5)
        label[mask] = cls
    image = image + rng.normal(0.0, rng.uniform(0.05, 0.12), image.shape)
    # [-0.4, 1.4] -> [0, 255]
    return np.clip(np.rint((image + 0.4) / 1.8 * 255), 0, 255).astype(np.uint8), label


@dataclasses.dataclass(eq=False)
class VolumeShapesConfig(tfds.core.BuilderConfig):
    """Config of :class:`VolumeShapes`: volume side, split sizes and root seed."""

    size: int = 32
    num_train: int = 160
    num_val: int = 16
    seed: int = 0


class VolumeShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic volumes: segmentation where the class is the 3-D shape."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Initial release."}
    BUILDER_CONFIGS = [
        VolumeShapesConfig(
            name="default", description="32^3, 160 / 16 volumes.", size=32, num_train=160,
            num_val=16,
        ),
        VolumeShapesConfig(
            name="tiny", description="16^3, 16 / 8 volumes (tests).", size=16, num_train=16,
            num_val=8, seed=1,
        ),
    ]  # fmt: skip
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (tfds 4.9.10's own needs a backport for builders inside a package)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=volume_features(np.uint8, channels=1),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                num_classes=NUM_CLASSES,
                class_names=list(CLASS_NAMES),
                palette=[list(c) for c in PALETTE],
                seed=self.builder_config.seed,
            ),
        )

    def _split_generators(self, dl_manager) -> dict:
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples(SPLIT_IDS["train"], cfg.num_train),
            "validation": self._generate_examples(SPLIT_IDS["validation"], cfg.num_val),
        }

    def _generate_examples(self, split_id: int, num: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        for i in range(num):
            image, label = render_volume(np.random.default_rng([cfg.seed, split_id, i]), cfg.size)
            yield (
                i,
                {
                    "image": image[..., None],
                    "label": label[..., None],
                    "spacing": np.ones(3, np.float32),
                    "id": str(i),
                },
            )


def volume_features(image_dtype, channels: int | None) -> tfds.features.FeaturesDict:
    """The features of every volume dataset: image [D, H, W, C], label [D, H, W, 1] uint8,
    spacing float32 [3] (mm, in D, H, W order), id; zlib-compressed tensors."""
    zlib = tfds.features.Encoding.ZLIB
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(
                shape=(None, None, None, channels), dtype=image_dtype, encoding=zlib
            ),
            "label": tfds.features.Tensor(
                shape=(None, None, None, 1), dtype=np.uint8, encoding=zlib
            ),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "id": tfds.features.Text(),
        }
    )


def dataset_dir(data_dir: str | os.PathLike, config: str = "default") -> str:
    """``<data_dir>/volume_shapes/<config>/<VERSION>``."""
    return from_files.dataset_dir(NAME, data_dir, config)


def is_prepared(data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether `config` is completely prepared under `data_dir`."""
    return from_files.is_prepared(NAME, data_dir, config)


def prepare(
    data_dir: str | os.PathLike, config: str = "default", manual_dir=None
) -> tfds.core.DatasetBuilder:
    """Prepares ``volume_shapes/<config>`` (offline, ``array_record``) unless done; opens it."""
    del manual_dir  # built-in: nothing to read
    data_dir = os.fspath(data_dir)
    path = dataset_dir(data_dir, config)
    if not is_prepared(data_dir, config):
        if os.path.exists(path):
            shutil.rmtree(path)
        VolumeShapes(config=config, data_dir=data_dir).download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False,
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
            ),
        )
    return tfds.builder_from_directory(path)
