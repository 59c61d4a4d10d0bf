"""What the builders of real panoptic datasets share (COCO panoptic, Cityscapes panoptic).

A panoptic dataset is prepared like any real one (`from_files`: the user's archives or
folders, checked, written once as ``array_record``), with one more feature per record:

    {"image": uint8 [H, W, 3], "label": uint8 [H, W, 1] (class index, 255 void),
     "instance": uint16 [H, W, 1] (0 on stuff and crowd regions, >= 1 on objects),
     "id": str}

and ``thing_classes`` (a bool per class) in ``builder.info.metadata``. A subclass lists the
examples of each split (`split_pairs`: image and annotation files) and turns one
annotation into the two maps (`read_panoptic`), raising an error that names the file and
the offending id for anything it cannot map.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import from_files


class PanopticFilesBuilder(from_files.FromFilesBuilder, skip_registration=True):
    """A `FromFilesBuilder` whose records also hold an instance map.

    Subclasses set `THING_CLASSES` next to `CLASS_NAMES` and implement `split_pairs` and
    `read_panoptic`.
    """

    THING_CLASSES: tuple[bool, ...] = ()

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        features = dict(info.features)
        features["instance"] = tfds.features.Image(
            shape=(None, None, 1), dtype=np.uint16, encoding_format="png"
        )
        metadata = dict(info.metadata)
        metadata["thing_classes"] = [bool(t) for t in self.THING_CLASSES]
        return self.dataset_info_from_configs(
            description=info.description,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(metadata),
        )

    def read_panoptic(
        self, tree: from_files.FileTree, pair: from_files.Pair
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(label uint8 [H, W], instance uint16 [H, W])` of one example's annotation."""
        raise NotImplementedError

    def _generate_examples(
        self, tree: from_files.FileTree, pairs: list[from_files.Pair]
    ) -> Iterator[tuple[str, dict]]:
        for pair in pairs:
            image_bytes, (h, w) = from_files.decode_image(
                tree.read(pair.image), tree.origin(pair.image)
            )
            label, instance = self.read_panoptic(tree, pair)
            if label.shape != (h, w):
                raise ValueError(
                    from_files.size_mismatch(
                        tree.origin(pair.label), label.shape, tree.origin(pair.image), (h, w)
                    )
                )
            yield (
                pair.id,
                {
                    "image": image_bytes,
                    "label": cv2.imencode(".png", label.astype(np.uint8))[1].tobytes(),
                    "instance": cv2.imencode(".png", instance.astype(np.uint16))[1].tobytes(),
                    "id": pair.id,
                },
            )
