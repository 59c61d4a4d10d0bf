"""``segjax_shapes_panoptic``: the built-in shapes, as a panoptic dataset (stuff + things).

*Stuff* is the background, split into 1-3 regions (a Voronoi partition of random seeds),
each of one stuff class recognisable by its texture: ``noise`` (smooth value noise),
``stripes`` or ``checker`` (random colours, angles and periods). *Things* are the shapes
of ``segjax_shapes`` (disk, rectangle, triangle, ring, cross), each filled with one flat
random colour (so that what is a thing shows at once; which shape it is, only its
geometry tells) and with its own instance id (1, 2, ... in drawing order; one fully
hidden by later shapes is absent). Unlabelled clutter (lines, curves, blobs) lies on the
stuff, which it does not change; objects occlude each other, the ring's hole shows what
lies beneath. There is no void and no crowd.

Every record is ``{"image": uint8 [S, S, 3], "label": uint8 [S, S, 1] (semantic class),
"instance": uint16 [S, S, 1] (0 on stuff), "id": int64}``; ``builder.info.metadata`` has
``num_classes``, ``class_names``, ``palette`` and ``thing_classes`` (a bool per class).
A semantic task can train on it as it is (``label``). Sample ``i`` of split ``s`` is
``render_panoptic_sample(np.random.default_rng([seed, s, i]), image_size)``.

    from segjax.data.builders import segjax_shapes_panoptic
    segjax_shapes_panoptic.prepare(data_dir, "small")   # no-op if done
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import segjax_shapes

STUFF_NAMES = ("noise", "stripes", "checker")
THING_NAMES = segjax_shapes.CLASS_NAMES[1:]
CLASS_NAMES: tuple[str, ...] = STUFF_NAMES + THING_NAMES
NUM_CLASSES = len(CLASS_NAMES)
THING_CLASSES: tuple[bool, ...] = (False,) * len(STUFF_NAMES) + (True,) * len(THING_NAMES)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    *segjax_shapes.PALETTE[1:],
)
# The texture kinds of segjax_shapes._texture that each stuff class is drawn with.
_STUFF_KINDS = ((3,), (1,), (2,))
VERSION = "1.0.0"
_VERSION = VERSION


def _stuff(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The textured background and its stuff classes: float32 [S, S, 3], uint8 [S, S]."""
    regions = int(rng.integers(1, 4))
    classes = rng.choice(len(STUFF_NAMES), regions, replace=False)
    seeds = rng.uniform(0, size, (regions, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    distance = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    region = np.argmin(distance, axis=0)
    image = np.zeros((size, size, 3), np.float32)
    label = np.zeros((size, size), np.uint8)
    for r, cls in enumerate(classes):
        kinds = _STUFF_KINDS[cls]
        texture = segjax_shapes._texture(rng, size, kind=kinds[int(rng.integers(len(kinds)))])
        image[region == r] = texture[region == r]
        label[region == r] = cls
    return image, label


def render_panoptic_sample(
    rng: np.random.Generator, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, its semantic map and its instance map; a pure function of ``rng``.

    Returns:
        ``image`` uint8 [S, S, 3], ``label`` uint8 [S, S] (class index of
        ``CLASS_NAMES``), ``instance`` uint16 [S, S] (0 on stuff, >= 1 on objects).
    """
    size = int(image_size)
    image, label = _stuff(rng, size)
    segjax_shapes._draw_clutter(rng, image)
    instance = np.zeros((size, size), np.uint16)
    for n in range(int(rng.integers(segjax_shapes._MIN_OBJECTS, segjax_shapes._MAX_OBJECTS + 1))):
        shape = int(rng.integers(1, len(THING_NAMES) + 1))
        radius = size * rng.uniform(segjax_shapes._MIN_RADIUS, segjax_shapes._MAX_RADIUS)
        center = rng.uniform(-0.1, 1.1, 2) * size
        polys, holes = segjax_shapes._shape_polygons(rng, shape, center, radius)
        texture = segjax_shapes._texture(rng, size, kind=0)  # flat
        alpha = segjax_shapes._draw_mask(size, polys, holes, antialias=True)
        alpha = alpha.astype(np.float32)[..., None] / 255.0
        image = image * (1.0 - alpha) + texture * alpha
        mask = segjax_shapes._draw_mask(size, polys, holes, antialias=False) > 0
        label[mask] = len(STUFF_NAMES) + shape - 1
        instance[mask] = n + 1
    image += rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, instance


class SegjaxShapesPanoptic(segjax_shapes.SegjaxShapes):
    """Synthetic shapes: panoptic segmentation (textured stuff regions, shape instances)."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        segjax_shapes.SegjaxShapesConfig(
            name=name,
            description=f"{size}x{size}, {train} / {val} images.",
            image_size=size,
            num_train=train,
            num_val=val,
            seed=seed,
        )
        for name, size, train, val, seed in (
            ("default", 128, 2048, 256, 0),
            ("small", 64, 4096, 256, 0),  # CPU training in minutes
            ("tiny", 64, 48, 16, 1),  # tests
        )
    ]
    DEFAULT_CONFIG_NAME = "default"
    DESCRIPTION = __doc__.splitlines()[0]

    def _features(self, size: int) -> dict[str, tfds.features.FeatureConnector]:
        instance = tfds.features.Image(
            shape=(size, size, 1), dtype=np.uint16, encoding_format="png"
        )
        return {**super()._features(size), "instance": instance}

    def _metadata(self) -> dict:
        return super()._metadata() | dict(
            num_classes=NUM_CLASSES,
            class_names=list(CLASS_NAMES),
            palette=[list(c) for c in PALETTE],
            thing_classes=list(THING_CLASSES),
        )

    def _generate_examples(self, split_id: int, num: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        for i in range(num):
            image, label, instance = render_panoptic_sample(
                np.random.default_rng([cfg.seed, split_id, i]), cfg.image_size
            )
            encoded = [
                cv2.imencode(".png", x)[1].tobytes() for x in (image[..., ::-1], label, instance)
            ]
            yield i, dict(zip(("image", "label", "instance"), encoded, strict=True), id=i)


def dataset_dir(data_dir: str | os.PathLike, config: str = "default") -> str:
    """``<data_dir>/segjax_shapes_panoptic/<config>/<VERSION>``."""
    return segjax_shapes.dataset_dir(data_dir, config, SegjaxShapesPanoptic)


def is_prepared(data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether ``config`` is completely prepared under ``data_dir``."""
    return segjax_shapes.is_prepared(data_dir, config, SegjaxShapesPanoptic)


def prepare(data_dir: str | os.PathLike, config: str = "default") -> tfds.core.DatasetBuilder:
    """Prepares ``segjax_shapes_panoptic/<config>`` (offline), unless already done."""
    return segjax_shapes.prepare(data_dir, config, SegjaxShapesPanoptic)
