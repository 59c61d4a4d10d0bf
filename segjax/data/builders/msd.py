"""The Medical Segmentation Decathlon layout: ``imagesTr/``, ``labelsTr/``, ``dataset.json``.

A task folder as the Decathlon ships it (``Task09_Spleen/`` or its ``Task09_Spleen.tar``)::

    Task09_Spleen/
      dataset.json     "labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"},
                       "training": [{"image": "./imagesTr/a.nii.gz",
                                     "label": "./labelsTr/a.nii.gz"}, ...]
      imagesTr/*.nii.gz  3-D (one modality) or 4-D (x, y, z, modality) NIfTI volumes
      labelsTr/*.nii.gz  3-D label volumes, voxel value = class index
      imagesTs/          unlabelled test volumes (not read)

Read with nibabel. Each training pair is checked before it is written, and a problem is
an error naming the file: an image and label of different shapes, affines or voxel
spacings; a label value that is not a class of ``dataset.json``. Both volumes are then
reoriented to the closest canonical (RAS+) orientation (``nibabel.as_closest_canonical``)
and stored in (D, H, W) = (z, y, x) voxel order: ``image`` float32 [D, H, W, C],
``label`` uint8 [D, H, W, 1], ``spacing`` float32 [3] (mm, z/y/x), ``id`` (the file
stem). Intensity normalisation and resampling to a target spacing are the volume task's
(``config.volume.normalization``, ``config.volume.target_spacing``).

The Decathlon has no labelled validation set: ``training`` is split deterministically,
a hash of each case's name choosing the ``val_fraction`` of cases (at least one) that
form ``validation``; adding cases moves none of the earlier ones. Prepare once::

    python -m segjax.data.prepare --dataset msd --manual_dir Task09_Spleen --config spleen
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from segjax.data.builders import from_files
from segjax.data.builders.volume_shapes import volume_features

NAME = "segjax_msd"
DATASET_JSON = "dataset.json"
INSTRUCTIONS = """\
Get a Medical Segmentation Decathlon task (e.g. Task09_Spleen.tar, or its extracted
folder holding dataset.json, imagesTr/ and labelsTr/), then run:
  python -m segjax.data.prepare --dataset msd --manual_dir Task09_Spleen --config NAME
and train with --config.dataset.name=msd --config.dataset.config=NAME.
"""


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
    """Config of :class:`SegjaxMsd`: the task's class names and channels, the split."""

    class_names: tuple[str, ...] = ()
    channels: int = 1
    val_fraction: float = 0.2


def find_base(tree: from_files.FileTree) -> str:
    """The folder holding ``dataset.json`` ("" or e.g. "Task09_Spleen/")."""
    found = [p for p in tree.list() if p.split("/")[-1] == DATASET_JSON]
    if not found:
        raise FileNotFoundError(f"no {DATASET_JSON} in {tree.describe()}\n{INSTRUCTIONS}")
    return min(found, key=lambda p: p.count("/"))[: -len(DATASET_JSON)]


def read_dataset_json(tree: from_files.FileTree) -> tuple[str, dict]:
    """(base, parsed dataset.json), its class list checked (indices 0..K-1)."""
    base = find_base(tree)
    path = base + DATASET_JSON
    try:
        meta = json.loads(tree.read(path))
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        if not isinstance(meta["training"], list):
            raise TypeError("'training' is not a list")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{tree.origin(path)}: not a Decathlon dataset.json with 'labels' and 'training' ({e})"
        ) from e
    if sorted(labels) != list(range(len(labels))) or not 1 <= len(labels) <= 255:
        raise ValueError(
            f"{tree.origin(path)}: 'labels' keys must be 0..K-1 (K <= 255), got {sorted(labels)}"
        )
    meta["labels"] = labels
    return base, meta


def load_nifti(tree: from_files.FileTree, path: str):
    """A nibabel image of `path` (``.nii`` or ``.nii.gz``) in `tree`; errors name the file."""
    import nibabel as nib

    data = tree.read(path)
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return nib.Nifti1Image.from_bytes(data)
    except Exception as e:  # nibabel raises several kinds for a broken header or body
        raise ValueError(f"{tree.origin(path)}: cannot read as NIfTI ({e})") from e


def _zyx(array: np.ndarray) -> np.ndarray:
    # NIfTI voxel order (x, y, z[, c]) -> (z, y, x[, c]).
    return np.transpose(array, (2, 1, 0, *range(3, array.ndim)))


def encode_case(
    tree: from_files.FileTree, image_path: str, label_path: str, meta: dict, channels: int
) -> dict:
    """Reads, checks, reorients and encodes one (image, label) pair into a record."""
    import nibabel as nib

    image, label = load_nifti(tree, image_path), load_nifti(tree, label_path)
    image_name, label_name = tree.origin(image_path), tree.origin(label_path)
    if image.shape[:3] != label.shape[:3] or len(label.shape) != 3:
        raise ValueError(
            f"{label_name}: label is {label.shape} but its image {image_name} is {image.shape}"
        )
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        raise ValueError(
            f"{label_name}: affine\n{np.round(label.affine, 4)}\ndiffers from its image "
            f"{image_name}'s\n{np.round(image.affine, 4)}"
        )
    image_spacing = np.asarray(image.header.get_zooms()[:3], np.float64)
    label_spacing = np.asarray(label.header.get_zooms()[:3], np.float64)
    if not np.allclose(image_spacing, label_spacing, atol=1e-4):
        raise ValueError(
            f"{label_name}: voxel spacing {tuple(label_spacing)} differs from its image "
            f"{image_name}'s {tuple(image_spacing)}"
        )
    image, label = nib.as_closest_canonical(image), nib.as_closest_canonical(label)
    voxels = np.asarray(image.dataobj, np.float32)
    if voxels.ndim == 3:
        voxels = voxels[..., None]
    if voxels.shape[-1] != channels:
        raise ValueError(
            f"{image_name}: {voxels.shape[-1]} channels, but dataset.json lists {channels} "
            "modalities"
        )
    raw = np.asarray(label.dataobj)
    values = np.unique(raw)
    known = set(meta["labels"])
    bad = [v for v in values.tolist() if v not in known]
    if bad:
        raise ValueError(
            f"{label_name}: label values {bad[:10]} are not classes of {DATASET_JSON} "
            f"(classes 0..{len(known) - 1}: {', '.join(meta['labels'].values())})"
        )
    spacing = np.asarray(image.header.get_zooms()[:3], np.float32)[::-1]
    stem = os.path.basename(image_path).removesuffix(".gz").removesuffix(".nii")
    return {
        "image": _zyx(voxels),
        "label": _zyx(raw.astype(np.uint8))[..., None],
        "spacing": spacing.copy(),
        "id": stem,
    }


def _case_path(base: str, entry: str) -> str:
    return base + entry.removeprefix("./")


class SegjaxMsd(tfds.core.GeneratorBasedBuilder):
    """A Medical Segmentation Decathlon task (3-D NIfTI volumes)."""

    VERSION = tfds.core.Version(from_files.VERSION)
    RELEASE_NOTES = {from_files.VERSION: "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (tfds 4.9.10's own needs a backport for builders inside a package)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        names = tuple(self.builder_config.class_names)
        return self.dataset_info_from_configs(
            description=(self.__doc__ or "").splitlines()[0],
            features=volume_features(np.float32, channels=self.builder_config.channels),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                num_classes=len(names),
                class_names=list(names),
                palette=[list(c) for c in from_files.generated_palette(len(names))],
            ),
        )

    def _split_generators(self, dl_manager) -> dict:
        tree = from_files.manual_tree(self.manual_path, (), dl_manager.download_dir)
        base, meta = read_dataset_json(tree)
        cases = []
        for entry in meta["training"]:
            image, label = _case_path(base, entry["image"]), _case_path(base, entry["label"])
            for path in (image, label):
                if not tree.exists(path):
                    raise FileNotFoundError(
                        f"{tree.origin(base + DATASET_JSON)} lists {path}, which is missing"
                    )
            cases.append((image, label))
        if len(cases) < 2:
            raise ValueError(f"{tree.origin(base + DATASET_JSON)}: need at least 2 training cases")
        ranked = sorted(cases, key=lambda c: hashlib.sha256(c[0].encode()).hexdigest())
        num_val = max(1, round(len(cases) * self.builder_config.val_fraction))
        val = set(ranked[:num_val])
        splits = {
            "train": [c for c in cases if c not in val],
            "validation": [c for c in cases if c in val],
        }
        return {
            split: self._generate_examples(tree, pairs, meta) for split, pairs in splits.items()
        }

    def _generate_examples(self, tree, pairs, meta) -> Iterator[tuple[str, dict]]:
        for image, label in pairs:
            record = encode_case(tree, image, label, meta, self.builder_config.channels)
            yield record["id"], record


def dataset_dir(data_dir: str | os.PathLike, config: str = "default") -> str:
    """Where the prepared task lives."""
    return from_files.dataset_dir(NAME, data_dir, config)


def is_prepared(data_dir: str | os.PathLike, config: str = "default") -> bool:
    """Whether `config` is completely prepared under `data_dir`."""
    return from_files.is_prepared(NAME, data_dir, config)


def prepare(
    data_dir: str | os.PathLike,
    config: str = "default",
    manual_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.2,
) -> tfds.core.DatasetBuilder:
    """Opens the prepared task `config`, preparing it from `manual_dir` first if needed.

    Args:
      data_dir: root of prepared datasets.
      config: a name for this task's prepared copy (any name).
      manual_dir: the task folder (or its .tar) in the Decathlon layout.
      val_fraction: share of the training cases held out as `validation`.
    """

    def make_builder(d: str) -> SegjaxMsd:
        tree = from_files.manual_tree(manual_dir, (), extract_dir=None)
        _, meta = read_dataset_json(tree)
        tree.close()
        modalities = meta.get("modality") or {"0": "image"}
        cfg = MsdConfig(
            name=config,
            description=f"Decathlon task {meta.get('name', manual_dir)}",
            class_names=tuple(meta["labels"][k] for k in sorted(meta["labels"])),
            channels=len(modalities),
            val_fraction=val_fraction,
        )
        return SegjaxMsd(config=cfg, data_dir=d)

    return from_files.prepare_builder(
        make_builder, NAME, data_dir, config, manual_dir, INSTRUCTIONS
    )
