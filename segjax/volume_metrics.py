"""Per-volume scores of volumetric segmentation: Dice (hard and soft) and Hausdorff 95.

Conventions are MONAI's (`monai.metrics.DiceMetric(ignore_empty=True)`,
`HausdorffDistanceMetric(percentile=95)`), per volume and per class:

- hard Dice = 2 |P & G| / (|P| + |G|) of the predicted and ground-truth masks of the
  class; NaN when the class is absent from the ground truth (the volume says nothing
  about it), whatever was predicted;
- soft Dice = 2 sum(p g) / (sum p + sum g) with the class probabilities p, the same NaN;
- HD95 = max of the 95th percentiles of the two directed surface distances (each
  surface voxel of P to the nearest surface voxel of G, and back), in the units of the
  voxel spacing (mm for NIfTI volumes). Surface voxels are the mask minus its erosion by
  the 6-neighbourhood cross, the outside of the volume counting as background. NaN when
  both masks are empty; +inf when exactly one is.

Voxels labelled `ignore_index` (and padding) count for neither mask. Dice terms are
computed on device (`dice_terms`); Hausdorff distances on the host with scipy
(`hausdorff_distance`), over the predicted label volumes that the evaluation fetches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "dice_from_terms",
    "dice_terms",
    "hausdorff_distance",
    "surface_distances",
    "surface_voxels",
    "volume_scores",
]


def dice_terms(
    probs: jax.Array, pred: jax.Array, labels: jax.Array, *, ignore_index: int
) -> jax.Array:
    """float32 [B, 5, K] sums per volume and class: |P & G|, |P|, |G|, sum p g, sum p.

    Args:
      probs: float [B, *spatial, K] class probabilities.
      pred: int [B, *spatial] predicted classes.
      labels: int [B, *spatial]; `ignore_index` (and any value outside [0, K)) is void.
      ignore_index: label value of void voxels.
    """
    k = probs.shape[-1]
    valid = ((labels != ignore_index) & (labels >= 0) & (labels < k))[..., None]
    g = jax.nn.one_hot(jnp.where(valid[..., 0], labels, 0), k, dtype=jnp.float32) * valid
    p = jax.nn.one_hot(pred, k, dtype=jnp.float32) * valid
    soft = probs.astype(jnp.float32) * valid
    axes = tuple(range(1, probs.ndim - 1))
    return jnp.stack(
        [
            jnp.sum(p * g, axes),
            jnp.sum(p, axes),
            jnp.sum(g, axes),
            jnp.sum(soft * g, axes),
            jnp.sum(soft, axes),
        ],
        axis=1,
    )


def dice_from_terms(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hard, soft) Dice float64 [..., K] from `dice_terms`' [..., 5, K]; NaN where G is empty."""
    terms = np.asarray(terms, np.float64)
    inter, pred, gt, soft_inter, soft = (terms[..., i, :] for i in range(5))
    with np.errstate(invalid="ignore", divide="ignore"):
        hard = np.where(gt > 0, 2 * inter / (pred + gt), np.nan)
        soft_dice = np.where(gt > 0, 2 * soft_inter / (soft + gt), np.nan)
    return hard, soft_dice


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """bool mask of the voxels of `mask` with a 6-neighbour (or the border) outside it."""
    from scipy import ndimage  # host-only

    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, ndimage.generate_binary_structure(mask.ndim, 1))
    return (padded & ~eroded)[tuple(slice(1, -1) for _ in range(mask.ndim))]


def surface_distances(
    from_mask: np.ndarray, to_mask: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """float64 [n]: each surface voxel of `from_mask` to the nearest surface voxel of
    `to_mask` (Euclidean, scaled by `spacing`); `to_mask` must not be empty."""
    from scipy import ndimage  # host-only

    src, dst = surface_voxels(from_mask), surface_voxels(to_mask)
    distance = ndimage.distance_transform_edt(~dst, sampling=spacing)
    return np.asarray(distance[src], np.float64)


def hausdorff_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    percentile: float | None = 95.0,
) -> float:
    """Symmetric (percentile) Hausdorff distance between two boolean masks.

    The larger of the two directed distances' `percentile` (`np.percentile`, linear
    interpolation as MONAI's `np.quantile`); `percentile=None` gives the maximum (the
    Hausdorff distance). NaN when both masks are empty, +inf when exactly one is.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return float("nan")
    if not pred.any() or not gt.any():
        return float("inf")
    out = 0.0
    for a, b in ((pred, gt), (gt, pred)):
        d = surface_distances(a, b, spacing)
        out = max(out, float(d.max() if percentile is None else np.percentile(d, percentile)))
    return out


def volume_hd95(
    pred: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """float64 [K] HD95 of each class of one volume (`pred`, `labels` int [*spatial])."""
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    return np.asarray(
        [
            hausdorff_distance((pred == k) & valid, (labels == k) & valid, spacing)
            for k in range(num_classes)
        ]
    )


def volume_scores(
    hard: np.ndarray, soft: np.ndarray, hd95: np.ndarray, *, include: np.ndarray
) -> dict[str, Any]:
    """Per-class means over volumes and the headline means over the `include`d classes.

    Args:
      hard, soft, hd95: float [V, K] per-volume scores (NaN: undefined, see module doc).
      include: bool [K], the classes of the headline means (e.g. not the background).

    Returns:
      `dice`, `soft_dice`, `hd95` float64 [K] (mean over the volumes where the score is
      defined; HD95 over finite values), `hd95_infinite` int [K] (volumes where only one
      of prediction and ground truth had the class), `volumes` int [K] (volumes whose
      ground truth holds the class), and `mean_dice`, `mean_soft_dice`, `mean_hd95`.
    """
    hard, soft, hd95 = (
        np.asarray(x, np.float64).reshape(-1, len(include)) for x in (hard, soft, hd95)
    )

    def column_mean(x: np.ndarray) -> np.ndarray:
        finite = np.isfinite(x)
        count = finite.sum(0)
        total = np.where(finite, x, 0.0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def headline(per_class: np.ndarray) -> float:
        chosen = per_class[include]
        chosen = chosen[np.isfinite(chosen)]
        return float(chosen.mean()) if chosen.size else float("nan")

    dice, soft_dice, hd = column_mean(hard), column_mean(soft), column_mean(hd95)
    return {
        "dice": dice,
        "soft_dice": soft_dice,
        "hd95": hd,
        "hd95_infinite": np.isinf(hd95).sum(0).astype(np.int64),
        "volumes": np.isfinite(hard).sum(0).astype(np.int64),
        "num_volumes": int(hard.shape[0]),
        "mean_dice": headline(dice),
        "mean_soft_dice": headline(soft_dice),
        "mean_hd95": headline(hd),
    }
