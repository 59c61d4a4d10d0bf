"""Your own data: a folder of images, a folder of masks, and a class list.

Layout of the manual dir (a folder, or a ``.zip``/``.tar`` of it)::

    my_data/
      classes.txt       one class name per line; line k (from 0) is mask value k
      images/           RGB images: .jpg .jpeg .png .bmp .tif .tiff (any sub-folders), or
                        multi-band (Geo)TIFFs: any number of bands, uint8/uint16/float32
      masks/            one PNG or TIFF per image, same relative path and stem:
                        images/a/x.jpg -> masks/a/x.png; pixel value = class index,
                        255 = ignore
      train.txt         optional split lists: one image stem (path below images/
      val.txt           without extension) per line; test.txt is optional too
      test.txt

Masks must hold class indices (greyscale or palette PNG, or a one-band integer TIFF).

Multispectral images: TIFFs are read with all their bands as stored (`read_bands`; other
integer and float types become float32). The first image (in path order) sets the bands
(count and dtype) of the dataset, and every other image must have the same: a file that
differs is an error naming it and the first. 3-band uint8 TIFFs and all other formats
are RGB; other TIFFs are kept as arrays [H, W, C]. The mean and standard deviation of
every band over the train split are stored with the prepared data (`segjax.data.bands`)
and normalise it by default (`config.input.norm_stats = "auto"`); the model then takes
C input bands (`config.model.in_channels = 0`, the dataset's). Without ``train.txt`` and
``val.txt`` the split is deterministic: images are ordered by a hash of their stem and
the first ``val_fraction`` of them (at least one) are the ``validation`` split, the rest
``train``; adding images later moves none of the earlier ones between splits.

Prepare (the config name keeps several folders apart under one data dir)::

    python -m segjax.data.prepare --dataset folder --manual_dir ~/my_data --config my_data
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_folder"
CLASSES_FILE = "classes.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIXES = (".png", *TIFF_SUFFIXES)
_SPLIT_FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}
INSTRUCTIONS = """\
Make a folder with images/ (RGB, or multi-band TIFFs), masks/ (PNG or TIFF, same stem,
pixel = class index, 255 = ignore)
and classes.txt (one class name per line), then run:
  python -m segjax.data.prepare --dataset folder --manual_dir FOLDER --config NAME [--data_dir D]
and train with --config.dataset.config=NAME --config.dataset.num_classes=K.
"""


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """Config of :class:`SegjaxFolder`.

    Attributes:
      class_names: names of the classes, index = mask value.
      val_fraction: share of images in `validation` when there are no split files.
      image_channels, image_dtype: the bands of every image (`image_bands`), those of
        `bands_of`, the first image.
    """

    class_names: tuple[str, ...] = ()
    val_fraction: float = 0.1
    image_channels: int = 3
    image_dtype: str = "uint8"
    bands_of: str = ""


class SegjaxFolder(from_files.FromFilesBuilder):
    """A user's folder of images and masks."""

    name = NAME
    # No predefined configs: each prepared folder gets its own FolderConfig (see `prepare`).
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def class_names(self) -> tuple[str, ...]:
        return tuple(self.builder_config.class_names)

    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return from_files.generated_palette(len(self.class_names()))

    def label_mapping(self) -> dict[int, int]:
        return {**{k: k for k in range(len(self.class_names()))}, 255: 255}

    BAND_STATS = True

    def image_bands(self) -> tuple[int, str]:
        return self.builder_config.image_channels, self.builder_config.image_dtype

    def read_image(self, tree: from_files.FileTree, path: str) -> tuple[Any, tuple[int, int]]:
        name = tree.origin(path)
        is_tiff = path.lower().endswith(TIFF_SUFFIXES)
        image = from_files.read_bands(tree.read(path), name) if is_tiff else None
        bands = _stored_bands(image)
        if bands != self.image_bands():
            first = self.builder_config.bands_of
            raise ValueError(
                f"{name}: {_describe(bands)} image, but the first image {first} is "
                f"{_describe(self.image_bands())}; every image of a folder dataset must "
                "have the same bands"
            )
        if image is None or bands == (3, "uint8"):
            return from_files.decode_image(tree.read(path), name)
        return image, image.shape[:2]

    def read_label(self, tree: from_files.FileTree, path: str) -> np.ndarray:
        if not path.lower().endswith(TIFF_SUFFIXES):
            return super().read_label(tree, path)
        name = tree.origin(path)
        raw = from_files.read_bands(tree.read(path), name)
        if raw.shape[-1] != 1 or raw.dtype.kind == "f":
            raise ValueError(
                f"{name}: a mask TIFF must have one band of integer class indices; it has "
                f"{raw.shape[-1]} band(s) of {raw.dtype}"
            )
        return raw[..., 0].astype(np.int32)

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = find_base(tree)
        images = _files_by_stem(tree, f"{base}images/", IMAGE_SUFFIXES, "images")
        if not images:
            raise FileNotFoundError(f"no images under images/ in {tree.describe()}")
        masks = _files_by_stem(tree, f"{base}masks/", MASK_SUFFIXES, "masks")
        for stem, path in images.items():
            if stem not in masks:
                raise FileNotFoundError(f"{tree.origin(path)}: no mask masks/{stem}.png (or .tif)")
        for stem, path in masks.items():
            if stem not in images:
                raise FileNotFoundError(
                    f"{tree.origin(path)}: mask without an image images/{stem}.*"
                )
        pairs = {s: from_files.Pair(s, images[s], masks[s]) for s in sorted(images)}
        splits = self._split_stems(tree, base, sorted(pairs))
        return {split: [pairs[s] for s in stems] for split, stems in splits.items()}

    def _split_stems(
        self, tree: from_files.FileTree, base: str, stems: list[str]
    ) -> dict[str, list[str]]:
        files = {split: base + f for split, f in _SPLIT_FILES.items()}
        if tree.exists(files["train"]) or tree.exists(files["validation"]):
            out = {}
            for split, file in files.items():
                if not tree.exists(file):
                    if split == "test":
                        continue
                    raise FileNotFoundError(f"{file} is missing next to the other split files")
                listed = from_files.read_list(tree, file)
                unknown = sorted(set(listed) - set(stems))
                if unknown:
                    raise ValueError(f"{tree.origin(file)}: no image for {unknown[:5]}")
                out[split] = listed
            return out
        ranked = sorted(stems, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        num_val = max(1, round(len(stems) * self.builder_config.val_fraction))
        if len(stems) < 2:
            raise ValueError("a folder dataset needs at least 2 images (train and validation)")
        val = set(ranked[:num_val])
        return {
            "train": [s for s in stems if s not in val],
            "validation": [s for s in stems if s in val],
        }


def find_base(tree: from_files.FileTree) -> str:
    """The folder of `classes.txt` within `tree` ("" or e.g. "my_data/"): the dataset root."""
    found = [p for p in tree.list() if p.split("/")[-1] == CLASSES_FILE]
    if not found:
        raise FileNotFoundError(f"no {CLASSES_FILE} in {tree.describe()}\n{INSTRUCTIONS}")
    return min(found, key=lambda p: p.count("/"))[: -len(CLASSES_FILE)]


def _files_by_stem(
    tree: from_files.FileTree, folder: str, suffixes: tuple[str, ...], what: str
) -> dict[str, str]:
    # {stem (path below `folder`, no extension): path} of the files with those suffixes.
    out = {}
    for path in tree.list(folder):
        stem, ext = os.path.splitext(path[len(folder) :])
        if ext.lower() in suffixes:
            if stem in out:
                raise ValueError(f"{tree.origin(path)}: two {what} with stem {stem!r}")
            out[stem] = path
    return out


def tiff_bands(tree: from_files.FileTree, path: str) -> tuple[int, str]:
    """(C, dtype) of image `path` as the dataset stores it: (3, "uint8") for RGB formats
    and 3-band uint8 TIFFs, a TIFF's own bands otherwise (see `from_files.read_bands`)."""
    if not path.lower().endswith(TIFF_SUFFIXES):
        return 3, "uint8"
    return _stored_bands(from_files.read_bands(tree.read(path), tree.origin(path)))


def _stored_bands(image: np.ndarray | None) -> tuple[int, str]:
    # (C, dtype) of a TIFF's pixels (None: a non-TIFF image, decoded as RGB).
    if image is None or (image.shape[-1] == 3 and image.dtype == np.uint8):
        return 3, "uint8"
    return image.shape[-1], image.dtype.name


def _describe(image_bands: tuple[int, str]) -> str:
    channels, dtype = image_bands
    return f"a {channels}-band {dtype}"


def first_image(manual_dir: str | os.PathLike) -> tuple[str, tuple[int, str]]:
    """(where, its bands) of the first image (path order) of a folder dataset: the bands
    that every image must have."""
    tree = from_files.manual_tree(manual_dir, (), extract_dir=None)
    base = find_base(tree)
    for path in tree.list(f"{base}images/"):
        if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
            return tree.origin(path), tiff_bands(tree, path)
    raise FileNotFoundError(f"no images under images/ in {tree.describe()}")


def read_class_names(manual_dir: str | os.PathLike) -> tuple[str, ...]:
    """The class list of a folder dataset (`classes.txt` in the folder or its archive)."""
    tree = from_files.manual_tree(manual_dir, (), extract_dir=None)
    path = find_base(tree) + CLASSES_FILE
    names = tuple(from_files.read_list(tree, path))
    if not 1 <= len(names) <= 255:
        raise ValueError(f"{tree.origin(path)}: {len(names)} classes; need 1..255")
    return names


def dataset_dir(data_dir: str | os.PathLike, config: str = "default") -> str:
    """Where the prepared dataset lives."""
    return from_files.dataset_dir(NAME, data_dir, config)


def is_prepared(data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether `config` is completely prepared under `data_dir`."""
    return from_files.is_prepared(NAME, data_dir, config)


def prepare(
    data_dir: str | os.PathLike,
    config: str = "default",
    manual_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
) -> tfds.core.DatasetBuilder:
    """Opens the prepared folder dataset `config`, preparing it from `manual_dir` first if needed.

    Args:
      data_dir: root of prepared datasets.
      config: a name for this folder's prepared copy (any name; "default" by default).
      manual_dir: the folder (or an archive of it) laid out as in this module's docstring.
      val_fraction: share of images held out for `validation` when there are no split files.
    """

    def make_builder(d: str) -> SegjaxFolder:
        where, (channels, dtype) = first_image(manual_dir)
        cfg = FolderConfig(
            name=config,
            description=f"Folder {manual_dir}",
            class_names=read_class_names(manual_dir),
            val_fraction=val_fraction,
            image_channels=channels,
            image_dtype=dtype,
            bands_of=where,
        )
        return SegjaxFolder(config=cfg, data_dir=d)

    return from_files.prepare_builder(
        make_builder, NAME, data_dir, config, manual_dir, INSTRUCTIONS
    )
