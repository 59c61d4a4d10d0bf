"""What every builder of a real dataset shares: reading the user's files, checking and
mapping labels, and preparing once into ``array_record`` without touching the network.

A real dataset is prepared from files the user already has: the official archives
(``.zip``, ``.tar``, ``.tar.gz``) and/or their extracted folders, all in one "manual
dir". :class:`FileTree` looks a relative path up in the folder first and then inside
each known archive, so a user may extract or not. A builder says which (image, label)
files form each split (:meth:`FromFilesBuilder.split_pairs`) and how raw label values
map to training labels (:attr:`FromFilesBuilder.LABEL_MAP`); this module checks each
pair and writes it:

* an image that cannot be decoded, an image and label of different sizes, and a label
  value outside the map are errors naming the file (and the values);
* images are stored as the original bytes when they are 8-bit RGB JPEG/PNG, otherwise
  converted to 8-bit RGB PNG (the reader decodes with OpenCV, without TensorFlow); a
  builder of other images (multi-band TIFFs of `folder`, RGB-D) declares their bands
  with :meth:`FromFilesBuilder.image_bands` and stores arrays [H, W, C] of one dtype
  (``read_bands`` reads TIFFs), with per-band statistics (``BAND_STATS``,
  `segjax.data.bands`);
* labels are stored mapped: uint8 PNG [H, W, 1] with values in ``[0, num_classes)``
  and ``IGNORE_INDEX`` (255) for void.

Every record is ``{"image": uint8 [H, W, 3], "label": uint8 [H, W, 1], "id": str}``
(``image`` [H, W, C] of ``image_bands()``'s dtype for other images);
``builder.info.metadata`` holds ``num_classes``, ``class_names``, ``palette`` and the
bands' keys (``image_channels``, ``image_dtype``, ``band_mean``, ``band_std``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from segjax.data import bands

IGNORE_INDEX = 255
VERSION = "1.0.0"
_VERSION = VERSION  # The class attribute FromFilesBuilder.VERSION shadows it there.

# Raw label values are read as up to 16-bit integers.
_MAX_RAW_LABEL = 1 << 16


# ------------------------------------------------------------------------ the user's files


class FileTree:
    """Files under one folder and inside archives, addressed by relative POSIX paths.

    A path is looked up in the folder first, then in each archive in order. ``.zip`` and
    uncompressed ``.tar`` archives are read in place; compressed tars (``.tar.gz``,
    ``.tgz``) cannot be read at random and are extracted once into ``extract_dir``.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None,
        archives: Sequence[str | os.PathLike] = (),
        *,
        extract_dir: str | os.PathLike | None = None,
    ):
        self.folder = os.fspath(folder) if folder else None
        self._files: dict[str, Callable[[], bytes]] = {}
        self._origin: dict[str, str] = {}
        self._handles: list = []
        self.archives = [os.fspath(a) for a in archives]
        for archive in reversed(self.archives):  # Earlier archives win.
            self._add_archive(archive, extract_dir)
        if self.folder:
            self._add_folder(self.folder, frozenset(os.path.abspath(a) for a in self.archives))

    def _add_folder(self, folder: str, skip: frozenset[str] = frozenset()) -> None:
        for root, _, files in os.walk(folder, followlinks=True):
            for name in files:
                full = os.path.join(root, name)
                if os.path.abspath(full) in skip:
                    continue
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                self._files[rel] = _file_reader(full)
                self._origin[rel] = full

    def _add_archive(self, archive: str, extract_dir: str | os.PathLike | None) -> None:
        lower = archive.lower()
        if lower.endswith(".zip"):
            zf = zipfile.ZipFile(archive)
            self._handles.append(zf)
            for info in zf.infolist():
                if not info.is_dir():
                    self._files[info.filename] = _zip_reader(zf, info.filename)
                    self._origin[info.filename] = f"{archive}:{info.filename}"
        elif lower.endswith(".tar"):
            tf = tarfile.open(archive, "r:")  # noqa: SIM115 (kept open; closed by close())
            self._handles.append(tf)
            for member in tf.getmembers():
                if member.isfile():
                    name = member.name.removeprefix("./")
                    self._files[name] = _tar_reader(tf, member)
                    self._origin[name] = f"{archive}:{name}"
        elif lower.endswith((".tar.gz", ".tgz")):
            if extract_dir is None:
                raise ValueError(f"{archive}: a compressed tar needs an extract_dir")
            target = os.path.join(os.fspath(extract_dir), os.path.basename(archive))
            done = target + ".done"
            if not os.path.exists(done):
                shutil.rmtree(target, ignore_errors=True)
                with tarfile.open(archive, "r:*") as tf:
                    tf.extractall(target, filter="data")
                open(done, "w").close()
            self._add_folder(target)
        else:
            raise ValueError(f"{archive}: not a .zip, .tar, .tar.gz or .tgz archive")

    def exists(self, path: str) -> bool:
        return path in self._files

    def read(self, path: str) -> bytes:
        """The bytes of `path`; a missing file is an error naming it."""
        if path not in self._files:
            raise FileNotFoundError(f"{path}: not found in {self.describe()}")
        return self._files[path]()

    def origin(self, path: str) -> str:
        """Where `path` really is (a file, or `archive:member`), for error messages."""
        return self._origin.get(path, path)

    def list(self, prefix: str = "") -> list[str]:
        """All files whose path starts with `prefix`, sorted."""
        return sorted(p for p in self._files if p.startswith(prefix))

    def find_base(self, marker: str, candidates: Sequence[str]) -> str:
        """The first of `candidates` (path prefixes ending in '/' or '') holding `marker`."""
        for base in candidates:
            if self.exists(base + marker):
                return base
        looked = ", ".join(repr(c + marker) for c in candidates)
        raise FileNotFoundError(f"None of {looked} found in {self.describe()}")

    def describe(self) -> str:
        parts = ([f"folder {self.folder}"] if self.folder else []) + [
            f"archive {a}" for a in self.archives
        ]
        return " and ".join(parts) or "no files"

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


def _file_reader(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return read


def _zip_reader(zf: zipfile.ZipFile, name: str) -> Callable[[], bytes]:
    return lambda: zf.read(name)


def _tar_reader(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        f = tf.extractfile(member)
        assert f is not None
        return f.read()

    return read


def manual_tree(
    manual_dir: str | os.PathLike, archive_names: Sequence[str], extract_dir: str | os.PathLike
) -> FileTree:
    """The tree of a manual dir: the folder itself plus those of its known archives that exist.

    An extracted file takes precedence over the same path inside an archive. `manual_dir`
    may also be a single archive file, which is then the only source.
    """
    manual_dir = os.path.expanduser(os.fspath(manual_dir))
    if os.path.isfile(manual_dir):
        return FileTree(None, [manual_dir], extract_dir=extract_dir)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual dir {manual_dir} does not exist")
    archives = [os.path.join(manual_dir, n) for n in archive_names]
    archives = [a for a in archives if os.path.isfile(a)]
    return FileTree(manual_dir, archives, extract_dir=extract_dir)


# ------------------------------------------------------------------ checking and encoding


@dataclasses.dataclass(frozen=True)
class Pair:
    """One example: its id and the relative paths of its image and label files."""

    id: str
    image: str
    label: str


def label_map(mapping: Mapping[int, int]) -> np.ndarray:
    """A lookup table raw value -> training label; -1 marks values that are errors."""
    lut = np.full(_MAX_RAW_LABEL, -1, np.int32)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


def decode_image(data: bytes, name: str) -> tuple[bytes, tuple[int, int]]:
    """Checks an image file; returns bytes to store (8-bit RGB JPEG/PNG) and (H, W).

    Raises:
      ValueError: naming `name`, when the file is not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # Decodes fully: a truncated file fails here.
            fmt, mode = im.format, im.mode
            if fmt in ("JPEG", "PNG") and mode == "RGB":
                return data, (im.height, im.width)
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise ValueError(f"{name}: cannot decode image ({e})") from e
    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return png.tobytes(), rgb.shape[:2]


def read_bands(data: bytes, name: str) -> np.ndarray:
    """All bands of a (multi-band, Geo)TIFF as [H, W, C]: uint8 and uint16 as stored, any
    other real dtype as float32.

    Contiguous (``YXS``) and planar (``SYX``, ``CYX``) layouts are both read; a TIFF of
    several pages of one size (a band per page) is stacked.

    Raises:
      ValueError: naming `name`, when it is no readable TIFF, or holds no 2-D image.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            image = series.asarray()
            axes = series.axes
    except Exception as e:
        raise ValueError(f"{name}: cannot read as TIFF ({e})") from e
    if "Y" not in axes or "X" not in axes or image.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2-D image of bands (axes YX plus one band axis), "
            f"got shape {image.shape} (axes {axes!r})"
        )
    if image.ndim == 2:
        image = image[..., None]
    else:
        band = next(i for i, a in enumerate(axes) if a not in "YX")
        order = [axes.index("Y"), axes.index("X"), band]
        image = np.transpose(image, order)
    if image.dtype.kind not in "uif" or image.dtype.itemsize > 8:
        raise ValueError(f"{name}: TIFF pixels of type {image.dtype}; expected real numbers")
    if image.dtype not in (np.uint8, np.uint16):
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)


def decode_label(data: bytes, name: str) -> np.ndarray:
    """The raw values of a label image, int32 [H, W] (palette PNGs give their indices).

    Raises:
      ValueError: naming `name`, when the file cannot be decoded or is a colour image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            raw = np.asarray(im)
    except Exception as e:
        raise ValueError(f"{name}: cannot decode label image ({e})") from e
    if raw.ndim == 3:
        # A greyscale mask saved as RGB(A) is fine; a colour-coded one is not.
        if not all(
            np.array_equal(raw[..., 0], raw[..., c]) for c in range(1, min(raw.shape[-1], 3))
        ):
            raise ValueError(
                f"{name}: label is a colour image; expected one value per pixel "
                "(greyscale or palette PNG holding class indices)"
            )
        raw = raw[..., 0]
    return raw.astype(np.int32)


def map_label(
    raw: np.ndarray, lut: np.ndarray, name: str, class_names: Sequence[str]
) -> np.ndarray:
    """Maps raw values through `lut`; a value it does not know is an error naming it."""
    if raw.min() < 0 or raw.max() >= len(lut):
        bad = sorted(set(np.unique(raw[(raw < 0) | (raw >= len(lut))]).tolist()))
    else:
        mapped = lut[raw]
        if (mapped >= 0).all():
            return mapped.astype(np.uint8)
        bad = sorted(set(np.unique(raw[mapped < 0]).tolist()))
    known = sorted(int(v) for v in np.flatnonzero(lut >= 0))
    raise ValueError(
        f"{name}: label values {bad[:10]} are not classes of this dataset "
        f"({len(class_names)} classes; valid raw values: {_ranges(known)})"
    )


def _ranges(values: Sequence[int]) -> str:
    # [0,1,2,3,255] -> "0-3, 255"
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def size_mismatch(
    label_name: str, label_shape: Sequence[int], image_name: str, image_size: Sequence[int]
) -> str:
    """The message for a label whose size differs from its image's."""
    return (
        f"{label_name}: label is {label_shape[0]}x{label_shape[1]} but its image "
        f"{image_name} is {image_size[0]}x{image_size[1]}"
    )


def encode_example(
    tree: FileTree,
    pair: Pair,
    lut: np.ndarray,
    class_names: Sequence[str],
    *,
    read_label: Callable[[FileTree, str], np.ndarray] | None = None,
    read_image: Callable[[FileTree, str], tuple[Any, tuple[int, int]]] | None = None,
) -> dict:
    """Reads, checks and encodes one pair into a record of the prepared dataset.

    `read_image(tree, path) -> (stored image, (H, W))`: by default `decode_image` (bytes
    of 8-bit RGB); a builder of other images returns arrays [H, W, C].
    """
    if read_image is None:
        image_bytes, (h, w) = decode_image(tree.read(pair.image), tree.origin(pair.image))
    else:
        image_bytes, (h, w) = read_image(tree, pair.image)
    label_name = tree.origin(pair.label)
    raw = (
        read_label(tree, pair.label)
        if read_label
        else decode_label(tree.read(pair.label), label_name)
    )
    if raw.shape != (h, w):
        raise ValueError(size_mismatch(label_name, raw.shape, tree.origin(pair.image), (h, w)))
    label = map_label(raw, lut, label_name, class_names)
    ok, png = cv2.imencode(".png", label)
    assert ok
    return {"image": image_bytes, "label": png.tobytes(), "id": pair.id}


def generated_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved class index), for any number of classes."""
    palette = []
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)


# ----------------------------------------------------------------------------- builders


class FromFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tfds builder preparing a segmentation dataset from the user's files.

    Subclasses set `name`, `CLASS_NAMES`, `PALETTE`, `LABEL_MAP` (raw value -> training
    label), `ARCHIVES` (archive file names looked for in the manual dir),
    `MANUAL_DOWNLOAD_INSTRUCTIONS`, and implement `split_pairs(tree)`.
    """

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Initial release."}
    CLASS_NAMES: tuple[str, ...] = ()
    PALETTE: tuple[tuple[int, int, int], ...] = ()
    LABEL_MAP: Mapping[int, int] = {}
    ARCHIVES: tuple[str, ...] = ()
    # Per-band mean / std of the train split's images into the metadata (`bands`); always
    # for images that are not 8-bit RGB.
    BAND_STATS = False

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. Overridden because tfds 4.9.10's version needs the
        ``importlib_resources`` backport for any builder defined inside a package."""
        return epath.Path(__file__)

    def class_names(self) -> tuple[str, ...]:
        return tuple(self.CLASS_NAMES)

    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self.PALETTE)

    def image_bands(self) -> tuple[int, str]:
        """(C, dtype) of the stored images; (3, "uint8"): RGB kept as JPEG/PNG bytes.

        Other bands are stored as arrays [H, W, C] (zlib-compressed tensors), and
        `read_image` must return such arrays.
        """
        return 3, "uint8"

    def _is_rgb8(self) -> bool:
        return self.image_bands() == (3, "uint8")

    def _image_feature(self) -> tfds.features.FeatureConnector:
        channels, dtype = self.image_bands()
        if self._is_rgb8():
            return tfds.features.Image(shape=(None, None, 3))
        return tfds.features.Tensor(
            shape=(None, None, channels), dtype=np.dtype(dtype), encoding="zlib"
        )

    def _info(self) -> tfds.core.DatasetInfo:
        names = self.class_names()
        return self.dataset_info_from_configs(
            description=(self.__doc__ or "").splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": self._image_feature(),
                    **self.extra_features(),
                    "label": tfds.features.Image(
                        shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
                    ),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # Records in file order: record i is pair i.
            metadata=tfds.core.MetadataDict(
                num_classes=len(names),
                class_names=list(names),
                palette=[list(c) for c in self.palette()],
                ignore_index=IGNORE_INDEX,
                **bands.band_metadata(*self.image_bands()),
                **self.extra_metadata(),
            ),
        )

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        """Features a record has besides image, label and id (RGB-D: ``depth``)."""
        return {}

    def extra_metadata(self) -> dict:
        """Metadata entries besides the class names, palette and ignore index."""
        return {}

    def split_pairs(self, tree: FileTree) -> dict[str, list[Pair]]:
        """The (image, label) pairs of each split, in a fixed order."""
        raise NotImplementedError

    def label_mapping(self) -> Mapping[int, int]:
        """Raw label value -> training label (255 = ignore); other values are errors."""
        return self.LABEL_MAP

    def read_label(self, tree: FileTree, path: str) -> np.ndarray:
        """The raw label values of `path`, int32 [H, W]."""
        return decode_label(tree.read(path), tree.origin(path))

    def read_image(self, tree: FileTree, path: str) -> tuple[Any, tuple[int, int]]:
        """(what the record stores, (H, W)) of image `path`: 8-bit RGB JPEG/PNG bytes, or
        for other `image_bands()` an array [H, W, C] of that dtype."""
        return decode_image(tree.read(path), tree.origin(path))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        # Not dl_manager.manual_dir: tfds insists on a folder, and ours may be an archive.
        manual_path = getattr(self, "manual_path", None)
        if not manual_path:
            raise FileNotFoundError(
                f"{self.name}: no manual dir given.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        tree = manual_tree(manual_path, self.ARCHIVES, dl_manager.download_dir)
        splits = self.split_pairs(tree)
        for split, pairs in splits.items():
            if not pairs:
                raise ValueError(f"{self.name}: split {split!r} is empty in {tree.describe()}")
        return {
            split: self._with_band_stats(split, self._generate_examples(tree, pairs))
            for split, pairs in splits.items()
        }

    def _with_band_stats(self, split: str, examples: Iterator[tuple[str, dict]]) -> Iterator:
        # Passes the examples through; for the train split, adds their per-band mean and
        # std to the metadata, which tfds writes after every split is generated.
        if split != "train" or (self._is_rgb8() and not self.BAND_STATS):
            yield from examples
            return
        channels, dtype = self.image_bands()
        stats = bands.BandStats(channels)
        for key, example in examples:
            image = example["image"]
            if isinstance(image, bytes):
                image = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            stats.add(image)
            yield key, example
        self.info.metadata.update(bands.band_metadata(channels, dtype, stats))

    def _generate_examples(self, tree: FileTree, pairs: list[Pair]) -> Iterator[tuple[str, dict]]:
        lut = label_map(self.label_mapping())
        names = self.class_names()
        for pair in pairs:
            yield (
                pair.id,
                encode_example(
                    tree, pair, lut, names, read_label=self.read_label, read_image=self.read_image
                ),
            )


def read_list(tree: FileTree, path: str) -> list[str]:
    """The non-empty, stripped lines of a text file in `tree`."""
    return [s.strip() for s in tree.read(path).decode().splitlines() if s.strip()]


# -------------------------------------------------------------------------- preparation


def dataset_dir(name: str, data_dir: str | os.PathLike, config: str = "default") -> str:
    """``<data_dir>/<name>/<config>/<VERSION>``: where a prepared dataset lives."""
    return os.path.join(os.fspath(data_dir), name, config, VERSION)


def is_prepared(name: str, data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether the dataset's info files and every split file it lists are there."""
    path = dataset_dir(name, data_dir, config)
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


def prepare_builder(
    make_builder: Callable[[str], tfds.core.DatasetBuilder],
    name: str,
    data_dir: str | os.PathLike,
    config: str,
    manual_dir: str | os.PathLike | None,
    instructions: str,
) -> tfds.core.DatasetBuilder:
    """Opens `name/config` if prepared; else prepares it from `manual_dir`.

    Args:
      make_builder: `data_dir -> builder` of the dataset's class and config.
      name, data_dir, config: where the prepared dataset lives (see `dataset_dir`).
      manual_dir: the user's files; without them an unprepared dataset is an error.
      instructions: what that error tells the user to do.

    Returns:
      A builder whose splits can be read with `as_data_source(split)` (no TensorFlow).
    """
    data_dir = os.fspath(data_dir)
    path = dataset_dir(name, data_dir, config)
    if is_prepared(name, data_dir, config):
        return tfds.builder_from_directory(path)
    if not manual_dir:
        raise FileNotFoundError(
            f"Dataset {name!r} (config {config!r}) is not prepared in {data_dir}.\n{instructions}"
        )
    if os.path.exists(path):  # A left-over from an interrupted preparation.
        shutil.rmtree(path)
    builder = make_builder(data_dir)
    builder.manual_path = os.path.expanduser(os.fspath(manual_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            try_download_gcs=False,
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        ),
    )
    return tfds.builder_from_directory(path)


def module_functions(
    name: str, builder_cls: type[tfds.core.DatasetBuilder], instructions: str
) -> tuple[Callable[..., str], Callable[..., bool], Callable[..., tfds.core.DatasetBuilder]]:
    """A builder module's `dataset_dir`, `is_prepared` and `prepare` for `builder_cls`.

    `prepare(data_dir, config="default", manual_dir=None)` opens the prepared dataset,
    preparing it from `manual_dir` first if needed.
    """

    def dataset_dir_fn(data_dir: str | os.PathLike, config: str = "default") -> str:
        return dataset_dir(name, data_dir, config)

    def is_prepared_fn(data_dir: str | os.PathLike, config: str = "default") -> bool:
        return is_prepared(name, data_dir, config)

    def prepare_fn(
        data_dir: str | os.PathLike,
        config: str = "default",
        manual_dir: str | os.PathLike | None = None,
    ) -> tfds.core.DatasetBuilder:
        return prepare_builder(
            lambda d: builder_cls(config=config, data_dir=d),
            name, data_dir, config, manual_dir, instructions,
        )  # fmt: skip

    return dataset_dir_fn, is_prepared_fn, prepare_fn
