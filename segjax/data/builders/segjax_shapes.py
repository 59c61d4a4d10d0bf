"""``segjax_shapes``: a synthetic semantic-segmentation dataset where class = shape.

Every image holds 1-4 filled shapes (disk, rectangle, triangle, ring, cross) over a
textured, cluttered background. Colour and texture are drawn from one distribution
for every class *and* for the background, so a per-pixel colour classifier learns
next to nothing: the class of a pixel is only recoverable from the geometry around
it. Objects have random scale (radius 14%-32% of the image side), rotation, aspect
and position (possibly partly outside the image) and occlude each other in random
order; the label is the topmost object. Unlabelled clutter (lines, curves, small
irregular blobs) and mild Gaussian noise sit on the background.

Determinism: sample ``i`` of split ``s`` (``train`` = 0, ``validation`` = 1) is
``render_sample(np.random.default_rng([seed, s, i]), image_size)``; the seed is a
field of the builder config. Record ``i`` of a prepared split is sample ``i``
(shuffling at write time is disabled), and ``record["id"] == i``.

Preparing (needs TensorFlow installed, writes ``array_record`` files, never touches
the network)::

    from segjax.data.builders import segjax_shapes
    segjax_shapes.prepare(data_dir)            # config "default"; no-op if done
    segjax_shapes.prepare(data_dir, "tiny")    # 64x64, for tests

Reading a prepared split WITHOUT TensorFlow (this is the call the training
pipeline uses; it relies only on the files written by ``prepare``, not on this
module)::

    import tensorflow_datasets as tfds
from etils import epath
    source = tfds.builder_from_directory(
        segjax_shapes.dataset_dir(data_dir, config)   # <data_dir>/segjax_shapes/<config>/1.0.0
    ).as_data_source("train")                         # or "validation"
    record = source[i]  # {"image": uint8 [S,S,3], "label": uint8 [S,S,1], "id": int64}

``tfds.data_source("segjax_shapes/<config>", data_dir=data_dir, download=False,
split=...)`` also works, but only when this module has been imported (it registers
the builder class). The metadata (``num_classes``, ``class_names``, ``palette``) is
in ``builder.info.metadata`` of either builder.
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

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "PALETTE",
    "SPLIT_IDS",
    "VERSION",
    "SegjaxShapes",
    "SegjaxShapesConfig",
    "dataset_dir",
    "is_prepared",
    "prepare",
    "render_sample",
]

CLASS_NAMES: tuple[str, ...] = ("background", "disk", "rectangle", "triangle", "ring", "cross")
NUM_CLASSES: int = len(CLASS_NAMES)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)
SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1}
VERSION = "1.1.0"
_VERSION = VERSION  # The class attribute SegjaxShapes.VERSION shadows it there.

_MIN_OBJECTS, _MAX_OBJECTS = 1, 4
_MIN_RADIUS, _MAX_RADIUS = 0.14, 0.32  # Fraction of the image side.
_SHIFT = 4  # Sub-pixel bits for cv2 drawing (coordinates scaled by 2**_SHIFT).


# --------------------------------------------------------------------------- textures


def _texture(rng: np.random.Generator, size: int, kind: int | None = None) -> np.ndarray:
    """Returns a random texture, float32 [size, size, 3] in [0, 255].

    The kinds (0 flat, 1 stripes, 2 checker, 3 smooth noise, 4 gradient) and the two
    colours come from one distribution used for every object class and for the
    background. ``kind`` forces the kind (the draw that would pick it is still made, so
    the stream of random numbers is the same).
    """
    c1 = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    c2 = rng.uniform(0.0, 255.0, 3).astype(np.float32)
    drawn = rng.integers(5)
    kind = drawn if kind is None else kind
    if kind == 0:  # flat
        return np.broadcast_to(c1, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0.0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    if kind == 1:  # stripes at a random angle and period
        period = rng.uniform(3.0, max(4.0, size / 10))
        t = (np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    elif kind == 2:  # rotated checker
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        cell = rng.uniform(3.0, max(4.0, size / 10))
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == 3:  # smooth value noise
        cells = int(rng.integers(3, 10))
        low = rng.uniform(0.0, 1.0, (cells, cells)).astype(np.float32)
        t = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0.0, 1.0)
    else:  # linear gradient along a random direction
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    t = t[..., None]
    return c1 * (1.0 - t) + c2 * t


# ----------------------------------------------------------------------------- shapes


def _rotate(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    return points @ rot.T + center


def _ellipse(radius_x: float, radius_y: float, n: int = 48) -> np.ndarray:
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([radius_x * np.cos(a), radius_y * np.sin(a)], axis=-1)


def _shape_polygons(
    rng: np.random.Generator, cls: int, center: np.ndarray, radius: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Returns (filled polygons, hole polygons) in pixel coordinates for class ``cls``."""
    angle = rng.uniform(0.0, 2 * np.pi)
    holes: list[np.ndarray] = []
    if cls == 1:  # disk (slightly elliptic)
        polys = [_ellipse(radius, radius * rng.uniform(0.8, 1.0))]
    elif cls == 2:  # rectangle
        h = radius * rng.uniform(0.45, 1.0)
        polys = [np.array([[-radius, -h], [radius, -h], [radius, h], [-radius, h]])]
    elif cls == 3:  # triangle, reasonably fat
        a = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        r = radius * rng.uniform(1.0, 1.2, 3)  # Circumradius; evens out the area.
        polys = [np.stack([r * np.cos(a), r * np.sin(a)], axis=-1)]
    elif cls == 4:  # ring (annulus): the hole shows what lies beneath
        ry = radius * rng.uniform(0.8, 1.0)
        inner = rng.uniform(0.45, 0.7)
        polys = [_ellipse(radius, ry)]
        holes = [_ellipse(radius * inner, ry * inner)]
    elif cls == 5:  # cross (plus sign)
        w = radius * rng.uniform(0.22, 0.4)
        polys = [
            np.array([[-radius, -w], [radius, -w], [radius, w], [-radius, w]]),
            np.array([[-w, -radius], [w, -radius], [w, radius], [-w, radius]]),
        ]
    else:
        raise ValueError(f"not an object class: {cls}")
    return [_rotate(p, angle, center) for p in polys], [_rotate(p, angle, center) for p in holes]


def _fixed(polys: list[np.ndarray]) -> list[np.ndarray]:
    return [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in polys]


def _draw_mask(
    size: int, polys: list[np.ndarray], holes: list[np.ndarray], antialias: bool
) -> np.ndarray:
    """Rasterises polygons (minus holes) to uint8 [size, size] with values in {0..255}."""
    mask = np.zeros((size, size), np.uint8)
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    for p in _fixed(polys):
        cv2.fillPoly(mask, [p], 255, lineType=line, shift=_SHIFT)
    for p in _fixed(holes):
        cv2.fillPoly(mask, [p], 0, lineType=line, shift=_SHIFT)
    return mask


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draws unlabelled lines, curves and small irregular blobs onto ``image`` in place."""
    size = image.shape[0]
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(float(c) for c in rng.uniform(0.0, 255.0, 3))
        kind = rng.integers(3)
        thickness = int(rng.integers(1, max(2, size // 40) + 1))
        if kind == 0:  # straight line
            p = _fixed([rng.uniform(-0.1, 1.1, (2, 2)) * size])[0]
            cv2.line(image, tuple(p[0]), tuple(p[1]), colour, thickness, cv2.LINE_AA, _SHIFT)
        elif kind == 1:  # smooth open curve (quadratic Bezier)
            ctrl = rng.uniform(-0.1, 1.1, (3, 2)) * size
            t = np.linspace(0.0, 1.0, 24)[:, None]
            pts = (1 - t) ** 2 * ctrl[0] + 2 * (1 - t) * t * ctrl[1] + t**2 * ctrl[2]
            cv2.polylines(image, _fixed([pts]), False, colour, thickness, cv2.LINE_AA, _SHIFT)
        else:  # small irregular blob, well below the smallest object
            n = int(rng.integers(5, 9))
            a = np.sort(rng.uniform(0.0, 2 * np.pi, n))
            r = size * rng.uniform(0.01, 0.05) * rng.uniform(0.5, 1.0, n)
            pts = np.stack([r * np.cos(a), r * np.sin(a)], -1) + rng.uniform(0, size, 2)
            cv2.fillPoly(image, _fixed([pts]), colour, cv2.LINE_AA, _SHIFT)


def render_sample(
    rng: np.random.Generator, image_size: int, *, with_instances: bool = False
) -> tuple[np.ndarray, ...]:
    """Renders one image and its label map; a pure function of ``rng``'s state.

    Args:
        rng: the random generator; it is advanced (the same way with or without
            ``with_instances``, so both give the same image and label).
        image_size: side ``S`` of the square image in pixels.
        with_instances: also return the instance map.

    Returns:
        ``(image, label)``: ``image`` uint8 [S, S, 3] (RGB), ``label`` uint8 [S, S] with
        values in ``[0, NUM_CLASSES)``, 0 being background (clutter included); with
        ``with_instances``, ``(image, label, instances)``: ``instances`` uint8 [S, S],
        ``k`` where the k-th drawn object (1-based) is on top, 0 elsewhere.
    """
    size = int(image_size)
    image = _texture(rng, size)
    _draw_clutter(rng, image)
    label = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    for k in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        cls = int(rng.integers(1, NUM_CLASSES))
        radius = size * rng.uniform(_MIN_RADIUS, _MAX_RADIUS)
        center = rng.uniform(-0.1, 1.1, 2) * size
        polys, holes = _shape_polygons(rng, cls, center, radius)
        texture = _texture(rng, size)
        alpha = _draw_mask(size, polys, holes, antialias=True).astype(np.float32)[..., None]
        alpha *= 1.0 / 255.0
        image = image * (1.0 - alpha) + texture * alpha
        drawn = _draw_mask(size, polys, holes, antialias=False) > 0
        label[drawn] = cls
        instances[drawn] = k + 1
    image += rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return (image, label, instances) if with_instances else (image, label)


# ---------------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class SegjaxShapesConfig(tfds.core.BuilderConfig):
    """Config of :class:`SegjaxShapes`.

    Attributes:
        image_size: side of the square images in pixels.
        num_train: number of training samples.
        num_val: number of validation samples.
        seed: root seed; sample ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
    """

    image_size: int = 128
    num_train: int = 2048
    num_val: int = 256
    seed: int = 0


class SegjaxShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic shapes: semantic segmentation where the class is the shape."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Learnable in minutes on a CPU: 1-4 objects of radius 14-32% of the side, "
        "finer textures, less clutter.",
    }
    BUILDER_CONFIGS = [
        SegjaxShapesConfig(
            name="default",
            description="128x128, 2048 train / 256 validation images.",
            image_size=128,
            num_train=2048,
            num_val=256,
            seed=0,
        ),
        SegjaxShapesConfig(
            name="small",
            description="64x64, 4096 train / 512 validation images (fast CPU training).",
            image_size=64,
            num_train=4096,
            num_val=512,
            seed=0,
        ),
        SegjaxShapesConfig(
            name="tiny",
            description="64x64, 64 train / 24 validation images (tests).",
            image_size=64,
            num_train=64,
            num_val=24,
            seed=1,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    DESCRIPTION = __doc__.splitlines()[0]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. Overridden because tfds 4.9.10's version needs the
        ``importlib_resources`` backport on Python >= 3.9 (which tfds does not require)
        for any builder defined inside a package."""
        return epath.Path(__file__)

    def _features(self, size: int) -> dict[str, tfds.features.FeatureConnector]:
        """The record's features for images of side ``size`` (a subclass adds its own)."""
        return {
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "label": tfds.features.Image(
                shape=(size, size, 1), dtype=np.uint8, encoding_format="png"
            ),
            "id": tfds.features.Scalar(dtype=np.int64),
        }

    def _metadata(self) -> dict:
        """``builder.info.metadata`` (a subclass adds its own keys)."""
        return dict(
            num_classes=NUM_CLASSES,
            class_names=list(CLASS_NAMES),
            palette=[list(c) for c in PALETTE],
            seed=self.builder_config.seed,
            split_ids=dict(SPLIT_IDS),
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(self._features(self.builder_config.image_size)),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(self._metadata()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        return {
            "train": self._generate_examples(SPLIT_IDS["train"], cfg.num_train),
            "validation": self._generate_examples(SPLIT_IDS["validation"], cfg.num_val),
        }

    def _generate_examples(self, split_id: int, num: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        for i in range(num):
            image, label = render_sample(
                np.random.default_rng([cfg.seed, split_id, i]), cfg.image_size
            )
            # Encode here (OpenCV, deterministic) rather than through tfds' TF graph.
            ok_i, png_image = cv2.imencode(".png", image[..., ::-1])
            ok_l, png_label = cv2.imencode(".png", label)
            assert ok_i and ok_l
            yield i, {"image": png_image.tobytes(), "label": png_label.tobytes(), "id": i}


# ---------------------------------------------------------------------- preparation


def dataset_dir(
    data_dir: str | os.PathLike, config: str = "default", builder_cls: type | None = None
) -> str:
    """Returns ``<data_dir>/<name>/<config>/<version>``, the prepared dataset's dir
    (``segjax_shapes`` and ``VERSION``, or those of another builder class)."""
    builder_cls = builder_cls or SegjaxShapes
    name, version = builder_cls.name, str(builder_cls.VERSION)
    return os.path.join(os.fspath(data_dir), name, config, version)


def is_prepared(
    data_dir: str | os.PathLike, config: str = "default", builder_cls: type | None = None
) -> bool:
    """Whether ``config`` is completely prepared under ``data_dir``.

    Complete means: ``dataset_info.json`` and ``features.json`` exist (tfds writes them
    last, into a temporary dir that is renamed at the end) and every split file the
    info lists is there.
    """
    path = dataset_dir(data_dir, config, builder_cls)
    if not all(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "features.json")
    ):
        return False
    try:
        builder = tfds.builder_from_directory(path)
        for split in builder.info.splits.values():
            for f in split.filenames:
                if not os.path.isfile(os.path.join(path, f)):
                    return False
    except Exception:  # A corrupt info file counts as not prepared.
        return False
    return True


def prepare(
    data_dir: str | os.PathLike, config: str = "default", builder_cls: type | None = None
) -> tfds.core.DatasetBuilder:
    """Prepares ``segjax_shapes/<config>`` in ``array_record`` format, unless already done.

    Offline: nothing is downloaded and GCS is never consulted. A left-over, incomplete
    dataset dir (e.g. from a preparation killed mid-way by something other than tfds'
    own temporary-dir mechanism) is deleted and prepared again.

    Args:
        data_dir: root data directory (the dataset lands in ``dataset_dir(data_dir, config)``).
        config: builder config name, ``"default"`` or ``"tiny"``.
        builder_cls: another generated dataset's builder (``segjax_shapes_panoptic``);
            default ``SegjaxShapes``.

    Returns:
        The builder, ready for ``builder.as_data_source(split)``.
    """
    builder_cls = builder_cls or SegjaxShapes
    data_dir = os.fspath(data_dir)
    path = dataset_dir(data_dir, config, builder_cls)
    if not is_prepared(data_dir, config, builder_cls) and os.path.exists(path):
        shutil.rmtree(path)
    builder = builder_cls(config=config, data_dir=data_dir)
    if not is_prepared(data_dir, config, builder_cls):
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False,
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
            ),
        )
        builder = builder_cls(config=config, data_dir=data_dir)
    return builder
