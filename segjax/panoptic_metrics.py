"""Panoptic quality (Kirillov et al., 2019): PQ = SQ x RQ, with the COCO panoptic API's rules.

A panoptic map is two int maps of one image, `class` [H, W] (-1, or any value outside
`[0, K)`, for void) and `instance` [H, W]: a *segment* is the set of pixels sharing one
(class, instance) pair. Stuff classes have one segment per image (instance 0). For a
thing class, instance 0 in the ground truth is its *crowd* region (pixels of the class
that belong to no counted object, COCO's `iscrowd` segments of that class merged into
one, as deeplab2 and detectron2 store them); instances >= 1 are objects. Predictions have
no crowd: every predicted segment is an object or a stuff region.

Matching and counting follow `pq_compute` of cocodataset/panopticapi, per image:

- a ground-truth and a predicted segment of the same class match when their IoU > 0.5,
  where the union leaves out the predicted pixels that are void in the ground truth:
  `IoU = |g & p| / (|p| + |g| - |g & p| - |void & p|)`. IoU > 0.5 makes matches unique,
  so no assignment is solved;
- crowd segments are never matched and never count as false negatives;
- every other unmatched ground-truth segment is a false negative of its class;
- an unmatched predicted segment is a false positive of its class unless more than half
  of its pixels are ground-truth void or the crowd region of its own class.

Per class k over a split: `PQ_k = sum IoU(TP) / (TP + FP/2 + FN/2)`, `SQ_k = sum IoU(TP) /
TP` (0 when TP = 0), `RQ_k = TP / (TP + FP/2 + FN/2)`. The averages over all, thing and
stuff classes take the classes with TP + FP + FN > 0 (COCO's `pq_average`).

The device side (`panoptic_stats`) is jittable with fixed shapes: each image's segments
are found with a fixed-size `jnp.unique` (at most `max_segments` per image and map; an
image with more is counted in `overflow`, and its extra segments are dropped), the
intersections of all segment pairs come from one scatter-add, and the per-class counts
are summed over the batch. The host side (`PanopticAccumulator`, `pq_scores`) adds them up
in int64 / float64 and derives the scores.

Example:
    >>> stats = panoptic_stats(pred_class, pred_instance, gt_class, gt_instance,
    ...                        thing_classes=[False, True, True], max_segments=64)
    >>> acc = PanopticAccumulator(3); acc.update(jax.device_get(stats))
    >>> pq_scores(acc.total, thing_classes=[False, True, True])["pq"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "STAT_KEYS",
    "PanopticAccumulator",
    "format_pq_report",
    "panoptic_stats",
    "pq_report_dict",
    "pq_scores",
    "zero_stats",
]

# The per-class counters of a pass: int32 on device, int64 / float64 on the host.
STAT_KEYS = ("tp", "fp", "fn", "iou_sum")
# Segment keys are class * _DIVISOR + instance (instance ids fit 16 bits); void sorts last.
_DIVISOR = 1 << 16
_VOID_KEY = np.iinfo(np.int32).max


def zero_stats(num_classes: int) -> dict[str, np.ndarray]:
    """The empty counters: `tp`, `fp`, `fn` int32 [K], `iou_sum` float32 [K], `overflow`."""
    out = {k: np.zeros(num_classes, np.int32) for k in ("tp", "fp", "fn")}
    out["iou_sum"] = np.zeros(num_classes, np.float32)
    out["overflow"] = np.zeros((), np.int32)
    return out


def _segments(cls: jax.Array, instance: jax.Array, num_classes: int, size: int):
    # One image's segments: per pixel the index of its segment in [0, size) or `size` for
    # void; per segment its (class, instance) and whether it exists; whether any segment
    # was dropped because the image has more than `size`.
    cls, instance = cls.reshape(-1).astype(jnp.int32), instance.reshape(-1).astype(jnp.int32)
    void = (cls < 0) | (cls >= num_classes)
    key = jnp.where(void, _VOID_KEY, cls * _DIVISOR + jnp.clip(instance, 0, _DIVISOR - 1))
    ids = jnp.unique(key, size=size, fill_value=_VOID_KEY)  # sorted, void last
    index = jnp.clip(jnp.searchsorted(ids, key), 0, size - 1)
    found = (ids[index] == key) & ~void
    overflow = jnp.any(~found & ~void)
    exists = ids != _VOID_KEY
    seg_class = jnp.where(exists, ids // _DIVISOR, 0)
    seg_instance = jnp.where(exists, ids % _DIVISOR, 0)
    return jnp.where(found, index, size), exists, seg_class, seg_instance, overflow


def _image_stats(pred_class, pred_instance, gt_class, gt_instance, is_thing, size: int):
    num_classes = is_thing.shape[0]
    p_idx, p_ok, p_cls, _, p_over = _segments(pred_class, pred_instance, num_classes, size)
    g_idx, g_ok, g_cls, g_inst, g_over = _segments(gt_class, gt_instance, num_classes, size)
    n = size + 1  # the last row / column: void
    inter = jnp.zeros(n * n, jnp.int32).at[g_idx * n + p_idx].add(1).reshape(n, n)
    gt_area = inter[:size].sum(1)  # every pixel of the segment, whatever was predicted
    pred_area = inter[:, :size].sum(0)  # void ground truth included
    pred_on_void = inter[size, :size]
    both = inter[:size, :size]
    union = gt_area[:, None] + pred_area[None, :] - both - pred_on_void[None, :]
    crowd = g_ok & is_thing[g_cls] & (g_inst == 0)
    same = (g_cls[:, None] == p_cls[None, :]) & g_ok[:, None] & p_ok[None, :]
    # IoU > 0.5 in integers: exact, whatever the float rounding.
    match = same & ~crowd[:, None] & (2 * both > union)
    iou = jnp.where(match, both / jnp.maximum(union, 1).astype(jnp.float32), 0.0)
    g_matched, p_matched = match.any(1), match.any(0)
    on_crowd = jnp.sum(jnp.where(same & crowd[:, None], both, 0), axis=0)
    ignored = 2 * (pred_on_void + on_crowd) > pred_area
    zeros = jnp.zeros(num_classes, jnp.int32)
    return {
        "tp": zeros.at[g_cls].add(g_matched.astype(jnp.int32)),
        "fp": zeros.at[p_cls].add((p_ok & ~p_matched & ~ignored).astype(jnp.int32)),
        "fn": zeros.at[g_cls].add((g_ok & ~crowd & ~g_matched).astype(jnp.int32)),
        "iou_sum": jnp.zeros(num_classes, jnp.float32).at[g_cls].add(iou.sum(1)),
        "overflow": (p_over | g_over).astype(jnp.int32),
    }


def panoptic_stats(
    pred_class: jax.Array,
    pred_instance: jax.Array,
    gt_class: jax.Array,
    gt_instance: jax.Array,
    *,
    thing_classes: Sequence[bool] | np.ndarray,
    max_segments: int,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-class TP / FP / FN counts and matched-IoU sums of a batch of panoptic maps.

    Jittable: shapes depend only on the inputs' shapes, `len(thing_classes)` and
    `max_segments` (static). Under `jax.jit` with the batch sharded, the sums are global.

    Args:
      pred_class, pred_instance: int [B, H, W] predicted class (void outside [0, K)) and
        instance id (0 for stuff; >= 1 for objects).
      gt_class, gt_instance: int [B, H, W] the ground truth; a thing class's instance 0 is
        its crowd region.
      thing_classes: bool [K], True for the thing ("countable") classes.
      max_segments: the most segments one image's prediction or ground truth may hold;
        an image with more is counted in `overflow` (its extra segments are dropped).
      valid: optional bool [B]; samples with False count for nothing.

    Returns:
      `{"tp", "fp", "fn": int32 [K], "iou_sum": float32 [K], "overflow": int32 []}`,
      summed over the (valid) images of the batch.
    """
    is_thing = jnp.asarray(np.asarray(thing_classes, bool))
    if pred_class.shape != gt_class.shape:
        raise ValueError(f"prediction shape {pred_class.shape} != ground truth {gt_class.shape}")
    size = int(max_segments)
    per_image = jax.vmap(lambda pc, pi, gc, gi: _image_stats(pc, pi, gc, gi, is_thing, size))(
        pred_class, pred_instance, gt_class, gt_instance
    )
    weight = jnp.ones(pred_class.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
    return {
        k: jnp.sum(jnp.where(weight.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), axis=0)
        for k, v in per_image.items()
    }


class PanopticAccumulator:
    """Host-side running totals of `panoptic_stats` (int64 counts, float64 IoU sums)."""

    def __init__(self, num_classes: int):
        self.total = {k: np.zeros(num_classes, np.int64) for k in ("tp", "fp", "fn")}
        self.total["iou_sum"] = np.zeros(num_classes, np.float64)
        self.total["overflow"] = 0

    def update(self, stats: Mapping[str, Any]) -> None:
        """Adds one batch's (or one flushed carry's) fetched counters."""
        for k in STAT_KEYS:
            self.total[k] = self.total[k] + np.asarray(stats[k]).astype(self.total[k].dtype)
        self.total["overflow"] += int(np.asarray(stats["overflow"]))


def _divide(num, den) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def pq_scores(total: Mapping[str, Any], *, thing_classes: Sequence[bool]) -> dict[str, Any]:
    """PQ, SQ, RQ per class and averaged over all, thing and stuff classes (host, numpy).

    Args:
      total: `{"tp", "fp", "fn", "iou_sum": [K], "overflow": int}` summed over a split.
      thing_classes: bool [K].

    Returns:
      float64 [K] `pq_class`, `sq_class`, `rq_class` (NaN for a class with TP + FP + FN
      = 0); the averages as Python floats under `pq`, `sq`, `rq` (all classes),
      `pq_things`, ..., `pq_stuff`, ... (NaN when no class of the group occurs), the
      counted classes `n`, `n_things`, `n_stuff`, and the int64 counts `tp`, `fp`, `fn`
      and `overflow` (images with more segments than were counted).
    """
    tp, fp, fn = (np.asarray(total[k], np.int64) for k in ("tp", "fp", "fn"))
    iou = np.asarray(total["iou_sum"], np.float64)
    is_thing = np.asarray(thing_classes, bool)
    if not tp.shape == fp.shape == fn.shape == iou.shape == is_thing.shape:
        raise ValueError(
            f"per-class counts of shapes {tp.shape}, {fp.shape}, {fn.shape}, {iou.shape} "
            f"for {is_thing.shape[0]} classes"
        )
    den = tp + 0.5 * fp + 0.5 * fn
    counted = (tp + fp + fn) > 0
    pq = _divide(iou, den)
    rq = _divide(tp, den)
    sq = np.where(counted, np.nan_to_num(_divide(iou, tp)), np.nan)
    out: dict[str, Any] = {"pq_class": pq, "sq_class": sq, "rq_class": rq}
    for suffix, group in (
        ("", np.ones_like(is_thing)),
        ("_things", is_thing),
        ("_stuff", ~is_thing),
    ):
        chosen = counted & group
        n = int(chosen.sum())
        out["n" + suffix] = n
        for name, values in (("pq", pq), ("sq", sq), ("rq", rq)):
            out[name + suffix] = float(values[chosen].mean()) if n else math.nan
    out.update(tp=tp, fp=fp, fn=fn, overflow=int(total.get("overflow", 0)))
    return out


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100.0 * x:.2f}"


def format_pq_report(
    scores: Mapping[str, Any], class_names: Sequence[str], thing_classes: Sequence[bool]
) -> str:
    """A text table: PQ / SQ / RQ and counts per class, then the All / Things / Stuff rows."""
    width = max([len("class"), *map(len, class_names)])
    header = (
        f"{'class':<{width}} {'kind':>5} {'PQ':>7} {'SQ':>7} {'RQ':>7} "
        f"{'TP':>6} {'FP':>6} {'FN':>6}"
    )
    lines = [header, "-" * len(header)]
    for k, name in enumerate(class_names):
        kind = "thing" if thing_classes[k] else "stuff"
        lines.append(
            f"{name:<{width}} {kind:>5} {_pct(scores['pq_class'][k]):>7} "
            f"{_pct(scores['sq_class'][k]):>7} {_pct(scores['rq_class'][k]):>7} "
            f"{int(scores['tp'][k]):>6d} {int(scores['fp'][k]):>6d} {int(scores['fn'][k]):>6d}"
        )
    lines.append("-" * len(header))
    for title, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        lines.append(
            f"{title:<{width}} {'':>5} {_pct(scores['pq' + suffix]):>7} "
            f"{_pct(scores['sq' + suffix]):>7} {_pct(scores['rq' + suffix]):>7}   "
            f"({scores['n' + suffix]} classes)"
        )
    lines.append(
        "Classes without ground-truth or predicted segments are nan and left out of the "
        "averages (COCO panoptic API)."
    )
    if scores.get("overflow"):
        lines.append(
            f"WARNING: {scores['overflow']} images had more segments than "
            "config.panoptic.max_segments; their extra segments were not counted."
        )
    return "\n".join(lines)


def _json(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def pq_report_dict(
    scores: Mapping[str, Any], class_names: Sequence[str], thing_classes: Sequence[bool]
) -> dict[str, Any]:
    """`pq_scores` as a JSON-serialisable dict (fractions, NaN -> None)."""
    summary = {
        name + suffix: _json(scores[name + suffix])
        for suffix in ("", "_things", "_stuff")
        for name in ("pq", "sq", "rq")
    }
    summary.update(
        n=scores["n"],
        n_things=scores["n_things"],
        n_stuff=scores["n_stuff"],
        overflow=int(scores["overflow"]),
    )
    classes = [
        {
            "name": name,
            "index": k,
            "isthing": bool(thing_classes[k]),
            "pq": _json(scores["pq_class"][k]),
            "sq": _json(scores["sq_class"][k]),
            "rq": _json(scores["rq_class"][k]),
            "tp": int(scores["tp"][k]),
            "fp": int(scores["fp"][k]),
            "fn": int(scores["fn"][k]),
        }
        for k, name in enumerate(class_names)
    ]
    return {"summary": summary, "classes": classes}
