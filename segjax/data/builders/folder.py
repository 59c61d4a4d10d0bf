"""Your own data: a folder of images, a folder of masks, and a class list.

Layout of the manual dir (a folder, or a ``.zip``/``.tar`` of it)::

    my_data/
      classes.txt       one class name per line; line k (from 0) is mask value k
      images/           RGB images: .jpg .jpeg .png .bmp .tif .tiff (any sub-folders)
      masks/            one PNG per image, same relative path and stem: images/a/x.jpg ->
                        masks/a/x.png; pixel value = class index, 255 = ignore
      train.txt         optional split lists: one image stem (path below images/
      val.txt           without extension) per line; test.txt is optional too
      test.txt

Masks must hold class indices (greyscale or palette PNG). Without ``train.txt`` and
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

import tensorflow_datasets as tfds

from segjax.data.builders import from_files

NAME = "segjax_folder"
CLASSES_FILE = "classes.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_SPLIT_FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}
INSTRUCTIONS = """\
Make a folder with images/, masks/ (PNG, same stem, pixel = class index, 255 = ignore)
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
    """

    class_names: tuple[str, ...] = ()
    val_fraction: float = 0.1


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

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        base = find_base(tree)
        images = {}
        for path in tree.list(f"{base}images/"):
            stem, ext = os.path.splitext(path[len(f"{base}images/") :])
            if ext.lower() in IMAGE_SUFFIXES:
                if stem in images:
                    raise ValueError(f"{tree.origin(path)}: two images with stem {stem!r}")
                images[stem] = path
        if not images:
            raise FileNotFoundError(f"no images under images/ in {tree.describe()}")
        masks = {
            p[len(f"{base}masks/") : -len(".png")]: p
            for p in tree.list(f"{base}masks/")
            if p.endswith(".png")
        }
        for stem, path in images.items():
            if stem not in masks:
                raise FileNotFoundError(f"{tree.origin(path)}: no mask masks/{stem}.png")
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
        cfg = FolderConfig(
            name=config,
            description=f"Folder {manual_dir}",
            class_names=read_class_names(manual_dir),
            val_fraction=val_fraction,
        )
        return SegjaxFolder(config=cfg, data_dir=d)

    return from_files.prepare_builder(
        make_builder, NAME, data_dir, config, manual_dir, INSTRUCTIONS
    )
