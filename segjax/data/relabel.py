"""A dataset's labels mapped to fewer classes, at read time (no second prepared copy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ForegroundLabels:
    """A random-access source whose labels are binary: 1 = one of `foreground`, else 0.

    `ignore_index` pixels stay `ignore_index`. The record's other fields and the label's
    shape and dtype are kept, so every pipeline reads it like the original source.
    """

    def __init__(self, source, foreground: Sequence[int], ignore_index: int):
        self.source = source
        self.foreground = tuple(int(k) for k in foreground)
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        record = dict(self.source[i])
        record["label"] = binary_labels(record["label"], self.foreground, self.ignore_index)
        return record

    def __repr__(self) -> str:
        # grain checks a restored iterator against repr(source): no memory addresses.
        return f"ForegroundLabels({self.source!r}, {self.foreground}, {self.ignore_index})"


def binary_labels(label: np.ndarray, foreground: Sequence[int], ignore_index: int) -> np.ndarray:
    """`label` with the `foreground` classes as 1, every other class as 0, void kept."""
    label = np.asarray(label)
    out = np.isin(label, foreground).astype(label.dtype)
    return np.where(label == ignore_index, label, out).astype(label.dtype)
