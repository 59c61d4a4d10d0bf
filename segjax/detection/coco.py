"""Host-side COCO scoring of instance predictions: mask pasting, RLE, COCOeval.

`paste_masks` turns Mask R-CNN's fixed-size mask probabilities (one per box) into
image-size masks as torchvision's `paste_masks_in_image` does; `coco_scores` runs
pycocotools' COCOeval for boxes and masks on in-memory ground truth and detections and
returns AP, AP50, AP75, AP small / medium / large of each.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

# COCOeval's first six stats, in order.
STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[D, H, W]` float32 image masks of `masks` `[D, M, M]` (probabilities in each box).

    torchvision's `paste_masks_in_image` (padding 1): each mask is padded by one pixel,
    its box grown by `(M + 2) / M` and rounded down to integers, the mask resized
    (bilinear, half-pixel centres) to the box's `x2 - x1 + 1` by `y2 - y1 + 1` pixels
    and pasted, clipped to the image.
    """
    d, m = masks.shape[:2]
    out = np.zeros((d, height, width), np.float32)
    scale = (m + 2) / m
    padded = np.pad(masks.astype(np.float32), ((0, 0), (1, 1), (1, 1)))
    for i in range(d):
        x1, y1, x2, y2 = boxes[i]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
        bx1, by1, bx2, by2 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))
        w, h = max(bx2 - bx1 + 1, 1), max(by2 - by1 + 1, 1)
        resized = cv2.resize(padded[i], (w, h), interpolation=cv2.INTER_LINEAR)
        xa, xb = max(bx1, 0), min(bx2 + 1, width)
        ya, yb = max(by1, 0), min(by2 + 1, height)
        if xb > xa and yb > ya:
            out[i, ya:yb, xa:xb] = resized[ya - by1 : yb - by1, xa - bx1 : xb - bx1]
    return out


def encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs of binary masks `[N, H, W]` (counts as str, JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks.astype(np.uint8), 0, -1)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


def xywh(boxes: np.ndarray) -> np.ndarray:
    """`[N, 4]` (x1, y1, x2, y2) -> COCO's (x, y, width, height)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_scores(
    images: Sequence[dict[str, Any]],
    ground_truth: Sequence[dict[str, Any]],
    detections: Sequence[dict[str, Any]],
    category_ids: Sequence[int],
) -> dict[str, Any]:
    """COCOeval of `detections` against `ground_truth`, for `bbox` and `segm`.

    Args:
      images: `{"id", "height", "width"}` per image scored.
      ground_truth: COCO annotations (`image_id`, `category_id`, `bbox` xywh,
        `segmentation` RLE, `area`, `iscrowd`); ids are assigned here.
      detections: COCO results (`image_id`, `category_id`, `bbox`, `segmentation`, `score`).
      category_ids: the categories scored.

    Returns:
      `{"box": {name: value}, "mask": {...}}` with `STAT_NAMES` as fractions; NaN where
      COCOeval has no ground truth to score (its -1); every AP 0 without detections.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [dict(im) for im in images],
        "annotations": [dict(a, id=i + 1) for i, a in enumerate(ground_truth)],
        "categories": [{"id": int(c), "name": str(c)} for c in category_ids],
    }
    out: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        for key, iou_type in (("box", "bbox"), ("mask", "segm")):
            if not detections or not ground_truth:
                has_gt = bool([a for a in ground_truth if not a["iscrowd"]])
                value = 0.0 if has_gt else float("nan")
                out[key] = dict.fromkeys(STAT_NAMES, value)
                continue
            dt = gt.loadRes([dict(d) for d in detections])
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = [im["id"] for im in images]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = [float(s) if s >= 0 else float("nan") for s in ev.stats[: len(STAT_NAMES)]]
            out[key] = dict(zip(STAT_NAMES, stats, strict=True))
    return out
