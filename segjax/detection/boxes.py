"""Box arithmetic with static shapes: coding, IoU, clipping, matching, sampling and NMS.

Boxes are float arrays `[..., 4]` of `(x1, y1, x2, y2)` pixel coordinates, as in
torchvision. A variable number of boxes is a fixed-size array plus a bool `valid` mask
of the same leading shape; every function here keeps that shape.

Example:
    >>> anchors = jnp.array([[0.0, 0.0, 10.0, 20.0]])
    >>> gt = jnp.array([[1.0, 2.0, 12.0, 18.0]])
    >>> deltas = encode_boxes(gt, anchors, (10.0, 10.0, 5.0, 5.0))
    >>> decode_boxes(deltas, anchors, (10.0, 10.0, 5.0, 5.0))  # == gt
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# torchvision's BoxCoder clip: exp(dw) is at most 1000 / 16 times the reference size.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# The coders' weights of torchvision's Faster / Mask R-CNN: RPN and the RoI box head.
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _centers(boxes: Array) -> tuple[Array, Array, Array, Array]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Array, reference: Array, weights: Sequence[float]) -> Array:
    """Deltas `[..., 4]` `(dx, dy, dw, dh)` that move `reference` onto `boxes`.

    torchvision's `BoxCoder.encode_single`: `dx = wx * (cx - cx_ref) / w_ref`,
    `dw = ww * log(w / w_ref)`. Shapes broadcast; degenerate boxes give inf/nan, so mask
    the deltas of unmatched or padded entries before using them in a loss.
    """
    cx, cy, w, h = _centers(boxes)
    rx, ry, rw, rh = _centers(reference)
    wx, wy, ww, wh = weights
    return jnp.stack(
        [
            wx * (cx - rx) / rw,
            wy * (cy - ry) / rh,
            ww * jnp.log(w / rw),
            wh * jnp.log(h / rh),
        ],
        axis=-1,
    )


def decode_boxes(
    deltas: Array, reference: Array, weights: Sequence[float], clip: float = BBOX_XFORM_CLIP
) -> Array:
    """Boxes `[..., 4]` from `deltas` `[..., 4]` relative to `reference` (inverse of encode).

    `dw`, `dh` are clipped at `clip` before `exp`, as torchvision's `decode_single`.
    """
    rx, ry, rw, rh = _centers(reference)
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    cx, cy = dx * rw + rx, dy * rh + ry
    w, h = jnp.exp(dw) * rw, jnp.exp(dh) * rh
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_area(boxes: Array) -> Array:
    """`[...]` areas of `[..., 4]` boxes (0 for degenerate ones)."""
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise IoU `[..., N, M]` of `[..., N, 4]` and `[..., M, 4]` (0 where the union is 0)."""
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes: Array, image_hw: Array) -> Array:
    """`boxes` `[B, N, 4]` clipped to each image's `[0, w] x [0, h]`; `image_hw` `[B, 2]`."""
    h = image_hw[:, None, 0].astype(boxes.dtype)
    w = image_hw[:, None, 1].astype(boxes.dtype)
    x1 = jnp.clip(boxes[..., 0], 0.0, w)
    y1 = jnp.clip(boxes[..., 1], 0.0, h)
    x2 = jnp.clip(boxes[..., 2], 0.0, w)
    y2 = jnp.clip(boxes[..., 3], 0.0, h)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


def min_size_ok(boxes: Array, min_size: float) -> Array:
    """`[...]` bool: both sides at least `min_size` (torchvision's `remove_small_boxes`)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


# ------------------------------------------------------------------------- matching

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    quality: Array,
    gt_valid: Array,
    *,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
) -> Array:
    """Matched ground-truth index per prediction, torchvision's `Matcher` (static shapes).

    Args:
      quality: `[G, N]` IoU of each ground-truth box with each prediction.
      gt_valid: `[G]` bool, False for padding rows (never matched).
      high_threshold: IoU >= this is a match.
      low_threshold: IoU < this is background (`BELOW_LOW_THRESHOLD` = -1); between the
        two is `BETWEEN_THRESHOLDS` = -2 (ignored).
      allow_low_quality_matches: also match, for each ground-truth box, the predictions
        of its highest IoU (ties included) to their best ground truth. Unlike
        torchvision, a ground-truth box whose best IoU is 0 matches nothing (torchvision
        would match every prediction it does not touch).

    Returns:
      `[N]` int32: a ground-truth index in `[0, G)`, -1 or -2. No valid ground truth:
      all -1.
    """
    q = jnp.where(gt_valid[:, None], quality, -1.0)
    matched_vals = jnp.max(q, axis=0)
    best = jnp.argmax(q, axis=0).astype(jnp.int32)
    matches = jnp.where(
        matched_vals < low_threshold,
        BELOW_LOW_THRESHOLD,
        jnp.where(matched_vals < high_threshold, BETWEEN_THRESHOLDS, best),
    )
    if allow_low_quality_matches:
        highest = jnp.max(q, axis=1, keepdims=True)  # [G, 1]
        is_best = (q == highest) & (highest > 0) & gt_valid[:, None]
        matches = jnp.where(jnp.any(is_best, axis=0), best, matches)
    return matches.astype(jnp.int32)


def sample_balanced(
    rng: Array, positive: Array, negative: Array, num_samples: int, positive_fraction: float
) -> tuple[Array, Array, Array]:
    """Fixed-size random sample of positives and negatives (`BalancedPositiveNegativeSampler`).

    At most `int(num_samples * positive_fraction)` positives are drawn uniformly without
    replacement, then negatives fill the sample up to `num_samples` (as torchvision: a
    shortage of positives is made up with negatives). Fewer candidates than that leave
    invalid slots.

    Args:
      rng: a PRNG key.
      positive, negative: `[N]` bool candidate masks (disjoint).
      num_samples: S, the sample size.
      positive_fraction: the largest share of positives.

    Returns:
      `(indices [S] int32, is_positive [S] bool, valid [S] bool)`: positives first, then
      negatives, then invalid slots (index 0).
    """
    n = positive.shape[0]
    max_pos = min(int(num_samples * positive_fraction), n)
    num_samples_n = min(num_samples, n)
    r_pos, r_neg = jax.random.uniform(rng, (2, n))
    key_pos, pos_idx = jax.lax.top_k(jnp.where(positive, r_pos, -1.0), max_pos)
    pos_valid = key_pos >= 0
    num_pos = jnp.sum(pos_valid)
    key_neg, neg_idx = jax.lax.top_k(jnp.where(negative, r_neg, -1.0), num_samples_n)
    neg_valid = (key_neg >= 0) & (jnp.arange(num_samples_n) < num_samples - num_pos)
    idx = jnp.concatenate([pos_idx, neg_idx])
    valid = jnp.concatenate([pos_valid, neg_valid])
    is_pos = jnp.concatenate([pos_valid, jnp.zeros_like(neg_valid)])
    # Valid entries first, in their order (a stable sort of the invalid flag).
    order = jnp.argsort(~valid, stable=True)[:num_samples]
    pad = num_samples - order.shape[0]
    take = lambda x: jnp.pad(x[order], (0, pad))
    return take(idx).astype(jnp.int32), take(is_pos), take(valid)


def sample_mask(rng: Array, positive: Array, negative: Array, num_samples: int, fraction: float):
    """`(sampled_positive [N], sampled_negative [N])` bool masks of `sample_balanced`'s draw."""
    idx, is_pos, valid = sample_balanced(rng, positive, negative, num_samples, fraction)
    n = positive.shape[0]
    pos = jnp.zeros(n, bool).at[idx].max(valid & is_pos)
    neg = jnp.zeros(n, bool).at[idx].max(valid & ~is_pos)
    return pos, neg


# ------------------------------------------------------------------------------ NMS


def nms(
    boxes: Array,
    scores: Array,
    valid: Array,
    *,
    iou_threshold: float,
    max_output: int,
    groups: Array | None = None,
) -> tuple[Array, Array]:
    """Greedy non-maximum suppression with a fixed output size (one image).

    Boxes are visited from the highest score down; each kept box suppresses the later
    boxes whose IoU with it is above `iou_threshold` (torchvision's `nms`). With
    `groups`, only boxes of the same group suppress each other (`batched_nms`).

    Args:
      boxes: `[N, 4]`.
      scores: `[N]`.
      valid: `[N]` bool; invalid boxes are neither kept nor suppress anything.
      iou_threshold: suppression threshold (strictly greater suppresses).
      max_output: K, the number of indices returned.
      groups: optional `[N]` int group (class, level) of each box.

    Returns:
      `(indices [K] int32, kept [K] bool)`: the kept boxes by decreasing score, then
      invalid slots. Ties in score keep the input order.
    """
    n = boxes.shape[0]
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    b = boxes[order]
    alive = valid[order]
    iou = box_iou(b, b)
    if groups is not None:
        g = groups[order]
        iou = jnp.where(g[:, None] == g[None, :], iou, 0.0)
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    suppresses = (iou > iou_threshold) & later  # [i, j]: i would suppress j

    def visit(i, keep):
        return keep & ~(keep[i] & suppresses[i])

    keep = jax.lax.fori_loop(0, n, visit, alive)
    k = min(max_output, n)
    rank = jnp.where(keep, jnp.arange(n), n + jnp.arange(n))
    _, first = jax.lax.top_k(-rank, k)
    indices, kept = order[first], keep[first]
    pad = max_output - k
    return jnp.pad(indices, (0, pad)).astype(jnp.int32), jnp.pad(kept, (0, pad))
