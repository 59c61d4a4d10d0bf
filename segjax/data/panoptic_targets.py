"""Panoptic samples through the shared pipelines, and Panoptic-DeepLab's training targets.

A panoptic record holds `label` (semantic class, `ignore_index` for void) and `instance`
(0 on stuff and on a thing class's crowd region, >= 1 on objects). To go through the
shared train and eval pipelines unchanged (random rescale with nearest-neighbour labels,
padding with `ignore_index`, crops, flips, the fixed eval canvas), `PanopticSource`
serves each record with the two maps packed into one int32 `label`:

    packed = (class + 1) * DIVISOR + instance      (void: ignore_index, < DIVISOR)

so every label operation moves class and instance together and padding is void.
`unpack` (numpy or jax) gives the maps back.

`PanopticTargets` (a grain op after the augmentation) turns a packed label into the
targets of Panoptic-DeepLab (Cheng et al., 2020; `panoptic_targets`), all fixed-shape
[H, W] arrays, as the reference `PanopticTargetGenerator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from segjax.data import instances

# Instance ids fit 16 bits (uint16 PNGs); classes shift by one so that void stays small.
DIVISOR = 1 << 16


def pack(label: np.ndarray, instance: np.ndarray, *, ignore_index: int) -> np.ndarray:
    """int32 [H, W] packed panoptic label of a semantic `label` and an `instance` map."""
    if not 0 <= ignore_index < DIVISOR:
        raise ValueError(f"ignore_index={ignore_index} must be in [0, {DIVISOR})")
    label, instance = np.asarray(label).astype(np.int64), np.asarray(instance).astype(np.int64)
    packed = (label + 1) * DIVISOR + instance
    return np.where(label == ignore_index, ignore_index, packed).astype(np.int32)


def unpack(packed):
    """`(class, instance)` of a packed label (numpy or jax): class -1 and instance 0 on void."""
    xp = jnp if isinstance(packed, jax.Array) else np
    void = packed < DIVISOR
    cls = xp.where(void, -1, packed // DIVISOR - 1)
    return cls.astype(xp.int32), xp.where(void, 0, packed % DIVISOR).astype(xp.int32)


def _squeeze(x) -> np.ndarray:
    x = np.asarray(x)
    return x[..., 0] if x.ndim == 3 else x


class PanopticSource:
    """A panoptic dataset's records with `label` = the packed (class, instance) label."""

    def __init__(self, source, *, ignore_index: int):
        self._source, self._ignore_index = source, ignore_index

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        # grain checks a restored iterator against repr(source): keep it stable.
        return f"PanopticSource({self._source!r}, ignore_index={self._ignore_index})"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._source[index]
        if "instance" not in record:
            raise KeyError(
                f"record {index} has no 'instance' map: the dataset is not a panoptic one"
            )
        label = _squeeze(record["label"])
        return {
            "image": np.asarray(record["image"]),
            "label": pack(label, _squeeze(record["instance"]), ignore_index=self._ignore_index),
        }


def panoptic_targets(
    packed: np.ndarray,
    thing_classes: Sequence[bool],
    *,
    ignore_index: int,
    sigma: float,
    small_instance_area: int = 0,
    small_instance_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """Panoptic-DeepLab's targets of one packed label [H, W] (numpy, host).

    For each object (a thing class, instance >= 1) with pixels P: its center is the mean
    (y, x) of P; the heatmap is the maximum over objects of a Gaussian of `sigma` pixels
    around the center rounded down to a pixel (the peak is 1 there); each pixel of P gets
    the offset `center - (y, x)` (float pixels, channel 0 = y). Crowd regions (a thing
    class's instance 0) have no center.

    Returns:
      `semantic` int32 (void = ignore_index); `center` float32 heatmap; `offset` float32
      [H, W, 2]; `semantic_weight` (0 on void, `small_instance_weight` on objects smaller
      than `small_instance_area` pixels, else 1), `center_weight` (1 on labelled pixels
      outside crowd regions) and `offset_weight` (1 on object pixels), float32 [H, W].
    """
    cls, instance = unpack(np.asarray(packed))
    is_thing = np.asarray(thing_classes, bool)
    h, w = cls.shape
    void = cls < 0
    thing = ~void & is_thing[np.clip(cls, 0, len(is_thing) - 1)]
    objects = thing & (instance > 0)
    crowd = thing & (instance == 0)
    center = np.zeros((h, w), np.float32)
    offset = np.zeros((h, w, 2), np.float32)
    semantic_weight = np.where(void, 0.0, 1.0).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    keys = cls.astype(np.int64) * DIVISOR + instance
    for key in np.unique(keys[objects]):
        mask = keys == key
        ys, xs = yy[mask], xx[mask]
        cy, cx = ys.mean(), xs.mean()
        offset[mask, 0] = cy - ys
        offset[mask, 1] = cx - xs
        py, px = np.floor(cy), np.floor(cx)
        gaussian = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2.0 * sigma**2))
        np.maximum(center, gaussian.astype(np.float32), out=center)
        if mask.sum() < small_instance_area:
            semantic_weight[mask] = small_instance_weight
    return {
        "semantic": np.where(void, ignore_index, cls).astype(np.int32),
        "center": center,
        "offset": offset,
        "semantic_weight": semantic_weight,
        "center_weight": (~void & ~crowd).astype(np.float32),
        "offset_weight": objects.astype(np.float32),
    }


class PanopticTargets(grain.MapTransform):
    """grain op: `{"image", "label" packed}` -> `{"image", **panoptic_targets(label)}`."""

    def __init__(self, thing_classes: Sequence[bool], *, ignore_index: int, **options):
        self.thing_classes = tuple(bool(t) for t in thing_classes)
        self.ignore_index, self.options = ignore_index, options

    def map(self, element):
        targets = panoptic_targets(
            element["label"], self.thing_classes, ignore_index=self.ignore_index, **self.options
        )
        return {"image": element["image"], **targets}


def panoptic_fpn_targets(
    packed: np.ndarray, thing_classes: Sequence[bool], *, ignore_index: int, max_instances: int
) -> dict[str, np.ndarray]:
    """Panoptic FPN's targets of one packed label [H, W] (numpy, host).

    The things as Mask R-CNN targets (`segjax.data.instances.pad_instances`): one mask
    per object (a thing class, instance >= 1; crowd regions are not targets), its tight
    box, its class 1..T (the thing classes in dataset order), padded to `max_instances`
    (the largest kept) with `instance_valid`. The semantic target with the things
    collapsed to one class, as the paper: 0 on every thing pixel (crowd included),
    1..S on the stuff classes in dataset order, `ignore_index` on void.

    Returns:
      `semantic` int32 [H, W]; `boxes` float32 [G, 4]; `classes` int32 [G]; `masks`
      uint8 [G, H, W]; `instance_valid` bool [G]; `image_hw` int32 [2] (= (H, W)).
    """
    cls, instance = unpack(np.asarray(packed))
    is_thing = np.asarray(thing_classes, bool)
    # Dataset class -> semantic index (things 0, stuff 1..S) and instance class (1..T).
    semantic_of = np.where(is_thing, 0, np.cumsum(~is_thing))
    thing_of = np.where(is_thing, np.cumsum(is_thing), 0)
    void = cls < 0
    safe = np.clip(cls, 0, len(is_thing) - 1)
    objects = ~void & is_thing[safe] & (instance > 0)
    keys = cls.astype(np.int64) * DIVISOR + instance
    ids = np.unique(keys[objects])
    masks = (keys[None] == ids[:, None, None]).astype(np.uint8)
    classes = thing_of[ids // DIVISOR].astype(np.int32)
    targets = instances.pad_instances(
        masks, instances.boxes_from_masks(masks), classes, max_instances, cls.shape
    )
    return {
        "semantic": np.where(void, ignore_index, semantic_of[safe]).astype(np.int32),
        "image_hw": np.array(cls.shape, np.int32),
        **targets,
    }


class PanopticFPNTargets(grain.MapTransform):
    """grain op: `{"image", "label" packed}` -> `{"image", **panoptic_fpn_targets(label)}`."""

    def __init__(self, thing_classes: Sequence[bool], *, ignore_index: int, max_instances: int):
        self.thing_classes = tuple(bool(t) for t in thing_classes)
        self.ignore_index, self.max_instances = ignore_index, max_instances

    def map(self, element):
        targets = panoptic_fpn_targets(
            element["label"],
            self.thing_classes,
            ignore_index=self.ignore_index,
            max_instances=self.max_instances,
        )
        return {"image": element["image"], **targets}
