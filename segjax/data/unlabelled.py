"""Labelled and unlabelled training images side by side (semi-supervised training).

- `split_labelled(source, fraction, seed)`: a dataset's training split cut in two: a
  random `fraction` of its records keeps its labels, the rest has them withheld (the
  records come back with every pixel `0`: "an image pixel", no class information).
- `ImageFiles(list_path)`: images read from the files a text list names (one path per
  line, relative to the list's folder; `#` comments), e.g. the unlabelled images of a
  `folder` dataset. Its records look like withheld ones.
- `ToUnlabelled`: grain op, an augmented sample -> `{"unlabelled_image",
  "unlabelled_valid"}` (`valid`: the pixels that are image, not the crop's padding).
- `MixedBatches`: two grain loaders as one iterable; each batch is the labelled batch
  plus the unlabelled one, and a per-sample `unlabelled_gate` (1.0 from the batch
  numbered `gate_start` on, 0.0 before). Its iterator has the `get_state` / `set_state`
  that the checkpoint stores, so a resumed run reads on exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import grain.python as grain
import numpy as np
from PIL import Image, ImageOps

# The label value of an unlabelled pixel before augmentation (padding adds ignore_index).
UNLABELLED_PIXEL = 0


class Subset:
    """Records `indices` of a random-access source, in that order (a grain data source)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]

    def __repr__(self) -> str:
        # grain checks a restored iterator against repr(source): no memory addresses.
        digest = hashlib.sha1(self.indices.tobytes()).hexdigest()[:12]
        return f"Subset({self.source!r}, {len(self)} records, indices {digest})"


class WithheldLabels:
    """A source whose records have their label replaced by `UNLABELLED_PIXEL` everywhere."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        record = dict(self.source[i])
        label = np.asarray(record["label"])
        record["label"] = np.full(label.shape[:2], UNLABELLED_PIXEL, np.int32)
        return record

    def __repr__(self) -> str:
        return f"WithheldLabels({self.source!r})"


class Concatenated:
    """Several sources one after the other."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = [s for s in sources if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.sources[k][i - int(self.offsets[k])]

    def __repr__(self) -> str:
        return f"Concatenated([{', '.join(map(repr, self.sources))}])"


def split_labelled(source, fraction: float, seed: int) -> tuple[Subset, WithheldLabels]:
    """(labelled, unlabelled) parts of `source`: `max(1, round(fraction * N))` records
    drawn at random with `seed` keep their labels; the others' labels are withheld.
    Each part is in record order. `fraction = 1` gives an empty unlabelled part."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled fraction {fraction}; expected a number in (0, 1]")
    n = len(source)
    order = np.random.default_rng(seed).permutation(n)
    count = min(max(1, round(fraction * n)), n)
    return (
        Subset(source, np.sort(order[:count])),
        WithheldLabels(Subset(source, np.sort(order[count:]))),
    )


def read_image_list(list_path: str) -> list[str]:
    """The image paths a list file names (relative ones against the list's folder).

    Raises FileNotFoundError naming the list and the first missing image.
    """
    list_path = os.path.expanduser(list_path)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"unlabelled image list {list_path} not found")
    folder = os.path.dirname(os.path.abspath(list_path))
    paths = []
    with open(list_path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                paths.append(os.path.join(folder, os.path.expanduser(line)))
    if not paths:
        raise ValueError(f"unlabelled image list {list_path} names no image")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"unlabelled image list {list_path}: {len(missing)} files not found, e.g. {missing[0]}"
        )
    return paths


class ImageFiles:
    """Unlabelled images from files: records `{"image": uint8 [H, W, 3], "label"}`,
    the label `UNLABELLED_PIXEL` everywhere (EXIF orientation applied)."""

    def __init__(self, list_path: str):
        self.paths = read_image_list(list_path)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        return {"image": image, "label": np.full(image.shape[:2], UNLABELLED_PIXEL, np.int32)}

    def __repr__(self) -> str:
        digest = hashlib.sha1("\n".join(self.paths).encode()).hexdigest()[:12]
        return f"ImageFiles({len(self)} files, paths {digest})"


class ToUnlabelled(grain.MapTransform):
    """grain op: `{"image", "label"}` (augmented) -> `{"unlabelled_image", "unlabelled_valid"}`."""

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index

    def map(self, element):
        return {
            "unlabelled_image": element["image"],
            "unlabelled_valid": np.asarray(element["label"]) != self.ignore_index,
        }


class MixedIterator:
    """The iterator of `MixedBatches` (state: both loaders' positions and the count)."""

    def __init__(self, labelled, unlabelled, gate_start: int):
        self.labelled, self.unlabelled = labelled, unlabelled
        self.gate_start = gate_start
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self.labelled))
        unlabelled = next(self.unlabelled)
        gate = np.float32(self.count >= self.gate_start)
        batch.update(unlabelled)
        batch["unlabelled_gate"] = np.full(len(unlabelled["unlabelled_image"]), gate, np.float32)
        self.count += 1
        return batch

    def get_state(self) -> bytes:
        return json.dumps(
            {
                "labelled": self.labelled.get_state().decode(),
                "unlabelled": self.unlabelled.get_state().decode(),
                "count": self.count,
            }
        ).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state.decode() if isinstance(state, bytes) else state)
        self.labelled.set_state(saved["labelled"].encode())
        self.unlabelled.set_state(saved["unlabelled"].encode())
        self.count = int(saved["count"])

    def start_prefetch(self) -> None:
        for it in (self.labelled, self.unlabelled):
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


class MixedBatches:
    """A labelled and an unlabelled grain loader as one iterable of merged batches."""

    def __init__(self, labelled, unlabelled, *, gate_start: int = 0):
        self.labelled, self.unlabelled, self.gate_start = labelled, unlabelled, gate_start

    def __iter__(self) -> MixedIterator:
        return MixedIterator(iter(self.labelled), iter(self.unlabelled), self.gate_start)
