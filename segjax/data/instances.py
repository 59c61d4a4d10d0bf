"""Host-side instance samples: decoding, box-and-mask-consistent augmentation, padding.

An *instance sample* is `{"image": uint8 [H, W, 3], "masks": uint8 [N, H, W] (0/1),
"classes": int32 [N] (1..K-1), "boxes": float32 [N, 4] (x1, y1, x2, y2 pixels),
"crowd": bool [N]}`. Geometric ops move the image, every mask and every box together:
resize (bilinear image, nearest masks, boxes scaled), horizontal flip, bottom/right pad.
Training targets are padded to `max_instances` with a validity mask (crowd regions are
not targets, as torchvision's and Detectron2's COCO training drop them); evaluation
samples carry the ground truth at the original size for COCOeval on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import grain.python as grain
import numpy as np

from segjax.data import transforms

Sample = dict[str, Any]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """`[N, 4]` float32 tight boxes of `[N, H, W]` masks: pixel edges, `(x_min, y_min,
    x_max + 1, y_max + 1)` (COCO's box of a mask); zeros for an empty mask."""
    out = np.zeros((masks.shape[0], 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            out[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return out


def decode_instances(record: dict[str, Any]) -> Sample:
    """A prepared record -> an instance sample.

    Records with an `instances` map (segjax_shapes_instances): instance `k` is the
    pixels equal to `k`, its class the semantic `label` there, its box the mask's.
    Records of the COCO builder (`objects`: RLE counts, xyxy boxes, category ids, crowd
    flags) are decoded with pycocotools.
    """
    image = np.asarray(record["image"])
    if "instances" in record:
        inst = np.asarray(record["instances"])
        label = np.asarray(record["label"])
        inst = inst[..., 0] if inst.ndim == 3 else inst
        label = label[..., 0] if label.ndim == 3 else label
        ids = [k for k in np.unique(inst) if k > 0]
        masks = np.stack([inst == k for k in ids]).astype(np.uint8) if ids else None
        if masks is None:
            masks = np.zeros((0, *inst.shape), np.uint8)
        classes = np.array([int(label[inst == k][0]) for k in ids], np.int32)
        return {
            "image": image,
            "masks": masks,
            "classes": classes,
            "boxes": boxes_from_masks(masks),
            "crowd": np.zeros(len(ids), bool),
        }
    if "objects" not in record:
        raise KeyError(f"not an instance record: keys {sorted(record)}")
    from pycocotools import mask as mask_utils

    objects = record["objects"]
    h, w = image.shape[:2]
    rles = [
        {"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else bytes(c)}
        for c in objects["rle"]
    ]
    masks = (
        np.moveaxis(mask_utils.decode(rles), -1, 0).astype(np.uint8)
        if rles
        else np.zeros((0, h, w), np.uint8)
    )
    return {
        "image": image,
        "masks": masks,
        "classes": np.asarray(objects["category_id"], np.int32).reshape(-1),
        "boxes": np.asarray(objects["bbox"], np.float32).reshape(-1, 4),
        "crowd": np.asarray(objects["crowd"], bool).reshape(-1),
    }


def short_side_size(
    height: int, width: int, short: float, max_size: float, canvas: Sequence[int] | None = None
) -> tuple[int, int]:
    """The size with the shorter side `short`, the longer at most `max_size` (torchvision's
    GeneralizedRCNNTransform recipe), and, given `canvas` (h, w), fitting inside it."""
    scale = min(short / min(height, width), max_size / max(height, width))
    if canvas is not None:
        scale = min(scale, canvas[0] / height, canvas[1] / width)
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def resize_instances(sample: Sample, height: int, width: int) -> Sample:
    """Image bilinear, masks nearest, boxes scaled by the same factors."""
    h, w = sample["image"].shape[:2]
    if (h, w) == (height, width):
        return sample
    image = transforms.resize_image(sample["image"], height, width)
    masks = (
        np.stack(
            [
                cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
                for m in sample["masks"]
            ]
        )
        if len(sample["masks"])
        else np.zeros((0, height, width), np.uint8)
    )
    factor = np.array([width / w, height / h, width / w, height / h], np.float32)
    return {**sample, "image": image, "masks": masks, "boxes": sample["boxes"] * factor}


def flip_instances(sample: Sample) -> Sample:
    """Horizontal flip of the image, the masks and the boxes (`x -> w - x`)."""
    w = sample["image"].shape[1]
    boxes = sample["boxes"].copy()
    boxes[:, 0], boxes[:, 2] = w - sample["boxes"][:, 2], w - sample["boxes"][:, 0]
    return {
        **sample,
        "image": np.ascontiguousarray(sample["image"][:, ::-1]),
        "masks": np.ascontiguousarray(sample["masks"][:, :, ::-1]),
        "boxes": boxes,
    }


def pad_instances(
    masks: np.ndarray, boxes: np.ndarray, classes: np.ndarray, max_instances: int, hw
) -> dict[str, np.ndarray]:
    """Targets padded (or cut, keeping the largest masks) to `max_instances`, with `valid`."""
    n = len(classes)
    if n > max_instances:
        keep = np.sort(np.argsort(-masks.reshape(n, -1).sum(1), kind="stable")[:max_instances])
        masks, boxes, classes, n = masks[keep], boxes[keep], classes[keep], max_instances
    out_masks = np.zeros((max_instances, *hw), np.uint8)
    out_masks[:n, : masks.shape[1], : masks.shape[2]] = masks
    out_boxes = np.zeros((max_instances, 4), np.float32)
    out_boxes[:n] = boxes
    out_classes = np.zeros(max_instances, np.int32)
    out_classes[:n] = classes
    return {
        "boxes": out_boxes,
        "classes": out_classes,
        "masks": out_masks,
        "instance_valid": np.arange(max_instances) < n,
    }


class DecodeInstances(grain.MapTransform):
    """grain op: a prepared record -> an instance sample (`decode_instances`)."""

    def map(self, element):
        return decode_instances(element)


class InstanceTrainAugment(grain.RandomMapTransform):
    """grain op: instance sample -> a fixed-shape training sample.

    Resize so that the shorter side is one of `min_sizes` (drawn uniformly) and the
    longer at most `max_size`, fitting the `canvas`; flip with probability 1/2; normalise;
    pad to the canvas. Instances that are crowd, whose mask is empty after the resize, or
    whose box is under 1 pixel wide or high are left out; the rest are padded to
    `max_instances`. Output: `image` float32 [Hc, Wc, 3], `image_hw` int32 [2] (the image's
    size on the canvas), `boxes` [G, 4], `classes` [G], `masks` uint8 [G, Hc, Wc],
    `instance_valid` bool [G].
    """

    def __init__(
        self,
        *,
        canvas: Sequence[int],
        min_sizes: Sequence[int],
        max_size: int,
        flip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        max_instances: int,
    ):
        self.canvas = tuple(int(c) for c in canvas)
        self.min_sizes, self.max_size = tuple(min_sizes), max_size
        self.flip, self.mean, self.std = flip, tuple(mean), tuple(std)
        self.max_instances = max_instances

    def random_map(self, element, rng: np.random.Generator):
        sample = element
        h, w = sample["image"].shape[:2]
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        sample = resize_instances(sample, *short_side_size(h, w, short, self.max_size, self.canvas))
        if self.flip and rng.random() < 0.5:
            sample = flip_instances(sample)
        rh, rw = sample["image"].shape[:2]
        keep = ~sample["crowd"]
        if len(keep):
            area = sample["masks"].reshape(len(keep), -1).sum(1)
            b = sample["boxes"]
            keep &= (area > 0) & (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
        image = transforms.normalize({"image": sample["image"]}, self.mean, self.std)["image"]
        image = np.pad(image, ((0, self.canvas[0] - rh), (0, self.canvas[1] - rw), (0, 0)))
        targets = pad_instances(
            sample["masks"][keep],
            sample["boxes"][keep],
            sample["classes"][keep],
            self.max_instances,
            self.canvas,
        )
        return {"image": image, "image_hw": np.array([rh, rw], np.int32), **targets}


class InstanceEvalSample(grain.MapTransform):
    """grain op: `(record, index)` -> a fixed-shape eval sample with its ground truth.

    The image is resized by the shorter-side recipe (`test_size`, `max_size`, fitting
    `canvas`), normalised and padded to `canvas`. The ground truth stays at the original
    size: `gt_masks` uint8 [G, Hl, Wl] (padded to `label_canvas`), `gt_boxes`,
    `gt_classes`, `gt_crowd`, `gt_valid` [G] (crowd regions included, flagged).
    Also `original_hw`, `resized_hw` int32 [2] and `index` int32.
    """

    def __init__(
        self,
        *,
        canvas: Sequence[int],
        label_canvas: Sequence[int],
        test_size: int,
        max_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_instances: int,
    ):
        self.canvas = tuple(int(c) for c in canvas)
        self.label_canvas = tuple(int(c) for c in label_canvas)
        self.test_size, self.max_size = test_size, max_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.max_instances = max_instances

    def map(self, element):
        sample = decode_instances(element["record"])
        h, w = sample["image"].shape[:2]
        if h > self.label_canvas[0] or w > self.label_canvas[1]:
            raise ValueError(
                f"evaluation image #{element['index']} of size {h}x{w} is larger than the "
                f"label canvas {self.label_canvas} (config.eval.label_pad_size); raise it"
            )
        if len(sample["classes"]) > self.max_instances:
            raise ValueError(
                f"evaluation image #{element['index']} has {len(sample['classes'])} instances, "
                f"more than config.instance.max_instances={self.max_instances}; raise it"
            )
        rh, rw = short_side_size(h, w, self.test_size, self.max_size, self.canvas)
        image = sample["image"]
        if (rh, rw) != (h, w):
            image = transforms.resize_image(image, rh, rw)
        image = transforms.normalize({"image": image}, self.mean, self.std)["image"]
        image = np.pad(image, ((0, self.canvas[0] - rh), (0, self.canvas[1] - rw), (0, 0)))
        gt = pad_instances(
            sample["masks"],
            sample["boxes"],
            sample["classes"],
            self.max_instances,
            self.label_canvas,
        )
        crowd = np.zeros(self.max_instances, bool)
        crowd[: len(sample["crowd"])] = sample["crowd"]
        return {
            "image": image,
            "original_hw": np.array([h, w], np.int32),
            "resized_hw": np.array([rh, rw], np.int32),
            "index": np.int32(element["index"]),
            "gt_boxes": gt["boxes"],
            "gt_classes": gt["classes"],
            "gt_masks": gt["masks"],
            "gt_crowd": crowd,
            "gt_valid": gt["instance_valid"],
        }
