"""``segjax_shapes_instances``: the built-in shapes with an instance id per object.

The images and semantic labels are those of ``segjax_shapes`` (``render_sample`` with
the same seeds draws the same pictures), plus an instance map: ``k`` where the k-th
drawn object (1-based) is on top. Objects occlude each other (a ring's hole shows what
lies beneath), so an instance's visible mask may be split in parts or be a fragment of
a few pixels; an object hidden entirely has no pixel and is no instance. The class of
instance ``k`` is the semantic label under its pixels (one value per instance).

Record ``i`` of a split: ``{"image": uint8 [S, S, 3], "label": uint8 [S, S, 1],
"instances": uint8 [S, S, 1], "id": i}``; ``segjax.data.instances.decode_instances``
turns it into masks, classes and boxes. Prepared offline on first use like
``segjax_shapes`` (array_record, no download).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from segjax.data.builders import segjax_shapes

CLASS_NAMES = segjax_shapes.CLASS_NAMES
PALETTE = segjax_shapes.PALETTE
SPLIT_IDS = segjax_shapes.SPLIT_IDS
VERSION = "1.0.0"
_VERSION = VERSION


@dataclasses.dataclass(eq=False)
class SegjaxShapesInstancesConfig(tfds.core.BuilderConfig):
    """Image side, split sizes and the root seed (as ``segjax_shapes``' configs)."""

    image_size: int = 64
    num_train: int = 4096
    num_val: int = 512
    seed: int = 0


class SegjaxShapesInstances(tfds.core.GeneratorBasedBuilder):
    """Synthetic shapes with instance ids: instance segmentation on a CPU."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SegjaxShapesInstancesConfig(
            name="default",
            description="64x64, 4096 train / 512 validation images (segjax_shapes 'small').",
            image_size=64,
            num_train=4096,
            num_val=512,
            seed=0,
        ),
        SegjaxShapesInstancesConfig(
            name="large",
            description="128x128, 2048 train / 256 validation images (segjax_shapes 'default').",
            image_size=128,
            num_train=2048,
            num_val=256,
            seed=0,
        ),
        SegjaxShapesInstancesConfig(
            name="tiny",
            description="64x64, 64 train / 24 validation images (tests).",
            image_size=64,
            num_train=64,
            num_val=24,
            seed=1,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (see ``segjax_shapes.SegjaxShapes.code_path``)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        single = dict(shape=(size, size, 1), dtype=np.uint8, encoding_format="png")
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.Image(**single),
                    "instances": tfds.features.Image(**single),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                num_classes=len(CLASS_NAMES),
                class_names=list(CLASS_NAMES),
                palette=[list(c) for c in PALETTE],
                seed=self.builder_config.seed,
                split_ids=dict(SPLIT_IDS),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager
        cfg = self.builder_config
        return {
            "train": self._generate_examples(SPLIT_IDS["train"], cfg.num_train),
            "validation": self._generate_examples(SPLIT_IDS["validation"], cfg.num_val),
        }

    def _generate_examples(self, split_id: int, num: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        for i in range(num):
            image, label, instances = segjax_shapes.render_sample(
                np.random.default_rng([cfg.seed, split_id, i]), cfg.image_size, with_instances=True
            )
            encoded = [
                cv2.imencode(".png", x)[1].tobytes() for x in (image[..., ::-1], label, instances)
            ]
            yield i, {"image": encoded[0], "label": encoded[1], "instances": encoded[2], "id": i}


def dataset_dir(data_dir: str | os.PathLike, config: str = "default") -> str:
    """``<data_dir>/segjax_shapes_instances/<config>/<VERSION>``."""
    return os.path.join(os.fspath(data_dir), "segjax_shapes_instances", config, VERSION)


def is_prepared(data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether ``config`` is completely prepared under ``data_dir``."""
    path = dataset_dir(data_dir, config)
    if not all(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "features.json")
    ):
        return False
    try:
        builder = tfds.builder_from_directory(path)
        return all(
            os.path.isfile(os.path.join(path, f))
            for split in builder.info.splits.values()
            for f in split.filenames
        )
    except Exception:  # a corrupt info file counts as not prepared
        return False


def prepare(data_dir: str | os.PathLike, config: str = "default") -> tfds.core.DatasetBuilder:
    """Prepares ``segjax_shapes_instances/<config>`` (array_record) unless done; offline."""
    data_dir = os.fspath(data_dir)
    path = dataset_dir(data_dir, config)
    if not is_prepared(data_dir, config) and os.path.exists(path):
        shutil.rmtree(path)
    builder = SegjaxShapesInstances(config=config, data_dir=data_dir)
    if not is_prepared(data_dir, config):
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False,
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
            ),
        )
        builder = SegjaxShapesInstances(config=config, data_dir=data_dir)
    return builder
