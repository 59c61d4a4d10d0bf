"""Segmentation metrics, all derived from one confusion matrix.

The device side is a single function, `confusion_matrix`, that runs inside a jitted
(and possibly sharded) eval step. The host side accumulates those matrices in int64
(`ConfusionMatrixAccumulator`) and turns the total into scores with numpy
(`segmentation_scores`), so that every reported number (pixel accuracy, mean accuracy,
IoU / mIoU, frequency-weighted IoU, precision / recall / F1, Dice) comes from the same
counts, as in section 5.1 of Minaee et al. (2021).

Example:
    >>> acc = ConfusionMatrixAccumulator(num_classes=21)
    >>> for batch in eval_batches:
    ...     pred = jnp.argmax(model(batch["image"])["logits"], axis=-1)
    ...     acc.update(confusion_matrix(pred, batch["label"], 21, valid=batch["valid"]))
    >>> print(format_report(segmentation_scores(acc.matrix), class_names))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ConfusionMatrixAccumulator",
    "binary_dice",
    "binary_iou",
    "confusion_matrix",
    "format_report",
    "report_dict",
    "segmentation_scores",
]


# ----------------------------------------------------------------------------------------
# Device side.


def confusion_matrix(
    pred: jax.Array,
    label: jax.Array,
    num_classes: int,
    *,
    ignore_index: int = 255,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Counts (ground truth, prediction) pairs over a batch of label maps.

    Pure jnp with static shapes: jittable with `num_classes` static. Under `jax.jit` with
    a batch sharded over a `jax.sharding.Mesh`, the result is the global matrix (jit has
    global-view semantics, so XLA inserts the cross-device reduction itself).

    Pixels are excluded when their label equals `ignore_index`, when their label or
    prediction lies outside `[0, num_classes)`, or when their sample has `valid == False`
    (padding added to make the last eval batch full).

    Args:
      pred: int [B, ...] predicted class per pixel (e.g. `argmax(logits, -1)`), [B, H, W].
      label: int [B, ...] ground-truth class per pixel, same shape as `pred`.
      num_classes: K, the number of classes (static).
      ignore_index: label value of void pixels.
      valid: optional bool [B]; samples with False count for nothing.

    Returns:
      int32 [K, K] matrix; entry [i, j] is the number of pixels of ground-truth class i
      predicted as class j (rows = ground truth, columns = prediction). int32 is enough
      for one batch; accumulate across batches on host in int64
      (`ConfusionMatrixAccumulator`).
    """
    pred = jnp.asarray(pred)
    label = jnp.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} != label shape {label.shape}")
    K = int(num_classes)
    pred = pred.astype(jnp.int32)
    label = label.astype(jnp.int32)
    keep = (label != ignore_index) & (label >= 0) & (label < K) & (pred >= 0) & (pred < K)
    if valid is not None:
        valid = jnp.asarray(valid, dtype=bool)
        if valid.shape != label.shape[:1]:
            raise ValueError(f"valid must have shape {label.shape[:1]}, got {valid.shape}")
        keep = keep & valid.reshape(valid.shape + (1,) * (label.ndim - 1))
    # One flat index per pixel; excluded pixels point at bin 0 with weight 0 so that the
    # shape stays static. A scatter-add (segment sum) over K*K bins costs O(pixels), not
    # O(pixels * K) as a one-hot matmul would, and stays exact in int32.
    flat = jnp.where(keep, label * K + pred, 0).reshape(-1)
    weight = keep.astype(jnp.int32).reshape(-1)
    counts = jnp.zeros((K * K,), jnp.int32).at[flat].add(weight)
    return counts.reshape(K, K)


# ----------------------------------------------------------------------------------------
# Host side.


class ConfusionMatrixAccumulator:
    """Host-side running sum of confusion matrices in numpy int64.

    Device matrices are int32 per batch; summing a whole evaluation (e.g. 500 Cityscapes
    images of 2M pixels, or a 2k-image ADE20K val set) in int32 could overflow, so the
    total lives on host in int64.

    Attributes:
      num_classes: K.
      matrix: int64 [K, K] running total (rows = ground truth, columns = prediction).
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, cm: Any) -> None:
        """Adds one [K, K] matrix (a device array or numpy array) to the total."""
        # device_get transfers a (possibly sharded, replicated) array to host once.
        cm = np.asarray(jax.device_get(cm)).astype(np.int64)
        if cm.shape != self.matrix.shape:
            raise ValueError(f"expected a {self.matrix.shape} matrix, got {cm.shape}")
        self.matrix += cm

    def reset(self) -> None:
        """Sets the total back to zero."""
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def scores(self, *, empty: str = "nan") -> dict[str, Any]:
        """`segmentation_scores` of the running total."""
        return segmentation_scores(self.matrix, empty=empty)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (without numpy warnings)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without a warning) when all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(x)) if np.size(x) else math.nan


def segmentation_scores(cm: np.ndarray, *, empty: str = "nan") -> dict[str, Any]:
    """Every segmentation score from one confusion matrix (numpy, on host).

    With TP_k = cm[k, k], GT_k = sum_j cm[k, j] (ground-truth pixels of class k) and
    P_k = sum_i cm[i, k] (pixels predicted as k):

    - `iou[k]` = TP / (GT + P - TP); `miou` its mean.
    - `accuracy[k]` = `recall[k]` = TP / GT (per-class pixel accuracy);
      `mean_accuracy` its mean.
    - `precision[k]` = TP / P.
    - `f1[k]` = `dice[k]` = 2 TP / (GT + P). For hard predictions F1 and Dice are the
      same number; both keys exist because both names are in use.
    - `pixel_accuracy` = sum TP / sum GT, `fwiou` = sum_k (GT_k / N) iou[k] over classes
      with GT_k > 0.

    Convention for undefined ratios (0 / 0):

    - `empty="nan"` (default, mmsegmentation-like): a class absent from both ground
      truth and prediction gets NaN IoU / Dice / F1 and is left out of the means (the
      means are nanmeans).
    - `empty="one"` (MONAI `ignore_empty=False`-like): such a class scores 1.0 for IoU,
      Dice and F1 (nothing to find, nothing wrongly found) and is included in the means.

    In both modes accuracy/recall is NaN for a class without ground-truth pixels and
    precision is NaN for a class never predicted; means skip these NaNs. A class present
    only in ground truth, or only in prediction, gets IoU = Dice = F1 = 0.

    Args:
      cm: int [K, K] confusion matrix, rows = ground truth, columns = prediction.
      empty: "nan" or "one", see above.

    Returns:
      dict with float64 [K] arrays `iou`, `accuracy`, `recall`, `precision`, `f1`,
      `dice`; int64 [K] `pixel_count` (ground-truth pixels per class); Python floats
      `pixel_accuracy`, `mean_accuracy`, `miou`, `fwiou`, `mean_precision`,
      `mean_recall`, `mean_f1`, `mean_dice`; Python int `num_pixels`.
    """
    if empty not in ("nan", "one"):
        raise ValueError(f"empty must be 'nan' or 'one', got {empty!r}")
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {cm.shape}")
    counts = cm.astype(np.int64)
    tp = np.diag(counts).astype(np.float64)
    gt = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    union = gt + predicted - np.diag(counts)
    num_pixels = int(counts.sum())

    absent = (gt == 0) & (predicted == 0)
    iou = _divide(tp, union)
    dice = _divide(2.0 * tp, gt + predicted)
    if empty == "one":
        iou[absent] = 1.0
        dice[absent] = 1.0
    recall = _divide(tp, gt)
    precision = _divide(tp, predicted)

    freq = gt / max(num_pixels, 1)
    present = gt > 0
    fwiou = float(np.sum(freq[present] * iou[present])) if num_pixels else math.nan
    return {
        "pixel_accuracy": float(tp.sum() / num_pixels) if num_pixels else math.nan,
        "mean_accuracy": _nanmean(recall),
        "accuracy": recall,
        "iou": iou,
        "miou": _nanmean(iou),
        "fwiou": fwiou,
        "precision": precision,
        "recall": recall.copy(),
        "f1": dice.copy(),
        "mean_precision": _nanmean(precision),
        "mean_recall": _nanmean(recall),
        "mean_f1": _nanmean(dice),
        "dice": dice,
        "mean_dice": _nanmean(dice),
        "pixel_count": gt.astype(np.int64),
        "num_pixels": num_pixels,
    }


# ----------------------------------------------------------------------------------------
# Binary (foreground / background) helpers, for medical-style tasks.


def _binary_counts(
    probs: jax.Array, target: jax.Array, threshold: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sample (intersection, |pred|, |target|) of thresholded masks, float32 [B]."""
    probs = jnp.asarray(probs, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if probs.shape != target.shape:
        raise ValueError(f"probs shape {probs.shape} != target shape {target.shape}")
    pred = (probs > threshold).astype(jnp.float32)
    tgt = (target > 0.5).astype(jnp.float32)
    axes = tuple(range(1, probs.ndim))
    return (pred * tgt).sum(axes), pred.sum(axes), tgt.sum(axes)


def binary_iou(
    probs: jax.Array,
    target: jax.Array,
    *,
    threshold: float = 0.5,
    eps: float = 1e-6,
    per_sample: bool = False,
) -> jax.Array:
    """IoU of a thresholded foreground probability map, computed per sample.

    Each sample's IoU is (|P & T| + eps) / (|P | T| + eps) over all its pixels, with
    P = probs > threshold and T = target > 0.5, so a sample with empty prediction and
    empty target scores 1. The result is the mean of the per-sample scores (as in
    medical benchmarks that report mean per-case IoU), not the IoU of the pooled batch.

    Args:
      probs: float [B, ...] foreground probabilities (e.g. sigmoid of logits), [B, H, W].
      target: [B, ...] binary ground truth (0/1 or bool), same shape as `probs`.
      threshold: probabilities above it count as foreground.
      eps: smoothing added to numerator and denominator.
      per_sample: if True, return the [B] per-sample scores instead of their mean.

    Returns:
      float32 scalar (mean over samples), or [B] if `per_sample`.
    """
    inter, n_pred, n_tgt = _binary_counts(probs, target, threshold)
    score = (inter + eps) / (n_pred + n_tgt - inter + eps)
    return score if per_sample else score.mean()


def binary_dice(
    probs: jax.Array,
    target: jax.Array,
    *,
    threshold: float = 0.5,
    eps: float = 1e-6,
    per_sample: bool = False,
) -> jax.Array:
    """Dice of a thresholded foreground probability map, computed per sample.

    Each sample's Dice is (2 |P & T| + eps) / (|P| + |T| + eps); empty prediction and
    empty target score 1. Returns the mean over samples (or the [B] scores), see
    `binary_iou`.

    Args:
      probs: float [B, ...] foreground probabilities, [B, H, W].
      target: [B, ...] binary ground truth, same shape as `probs`.
      threshold: probabilities above it count as foreground.
      eps: smoothing added to numerator and denominator.
      per_sample: if True, return the [B] per-sample scores instead of their mean.

    Returns:
      float32 scalar (mean over samples), or [B] if `per_sample`.
    """
    inter, n_pred, n_tgt = _binary_counts(probs, target, threshold)
    score = (2.0 * inter + eps) / (n_pred + n_tgt + eps)
    return score if per_sample else score.mean()


# ----------------------------------------------------------------------------------------
# Reports.

_SUMMARY_ROWS = (
    ("mIoU", "miou"),
    ("mean accuracy", "mean_accuracy"),
    ("pixel accuracy", "pixel_accuracy"),
    ("fwIoU", "fwiou"),
    ("mean Dice", "mean_dice"),
    ("mean F1", "mean_f1"),
)


def _class_names(scores: Mapping[str, Any], class_names: Sequence[str] | None) -> list[str]:
    """The given names, checked against K, or "0".."K-1"."""
    num_classes = len(scores["iou"])
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return [str(n) for n in class_names]


def _empty_convention(scores: Mapping[str, Any]) -> str:
    """The sentence describing how classes absent from GT and prediction were scored."""
    absent = (np.asarray(scores["pixel_count"]) == 0) & np.isnan(scores["precision"])
    iou = np.asarray(scores["iou"])
    if not absent.any():
        empty = "No class is absent from both ground truth and prediction"
    elif np.isnan(iou[absent]).any():
        empty = (
            "Classes absent from both ground truth and prediction are shown as nan "
            "and left out of the means"
        )
    else:
        empty = (
            "Classes absent from both ground truth and prediction score 100 for "
            "IoU/Dice/F1 and are included in the means"
        )
    return (
        f"{empty}; accuracy is nan for classes without ground-truth pixels and is "
        "left out of mean accuracy."
    )


def _pct(x: float) -> str:
    """A fraction as a percentage with two decimals, or "nan"."""
    return "nan" if math.isnan(x) else f"{100.0 * x:.2f}"


def format_report(scores: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """A plain-text table of `segmentation_scores`, in percent with 2 decimals.

    One row per class (name, IoU, accuracy, Dice, F1, ground-truth pixel count), then
    the summary rows (mIoU, mean accuracy, pixel accuracy, fwIoU, mean Dice, mean F1)
    and a line stating how absent classes were scored.

    Args:
      scores: the dict returned by `segmentation_scores`.
      class_names: optional K names; defaults to the class indices.

    Returns:
      The report, lines joined by newlines.
    """
    names = _class_names(scores, class_names)
    width = max([len("class"), len("pixel accuracy")] + [len(n) for n in names])
    header = f"{'class':<{width}} {'IoU':>7} {'Acc':>7} {'Dice':>7} {'F1':>7} {'pixels':>12}"
    lines = [header, "-" * len(header)]
    for k, name in enumerate(names):
        lines.append(
            f"{name:<{width}} {_pct(scores['iou'][k]):>7} {_pct(scores['accuracy'][k]):>7}"
            f" {_pct(scores['dice'][k]):>7} {_pct(scores['f1'][k]):>7}"
            f" {int(scores['pixel_count'][k]):>12d}"
        )
    lines.append("-" * len(header))
    for title, key in _SUMMARY_ROWS:
        lines.append(f"{title:<{width}} {_pct(scores[key]):>7}")
    lines.append(f"{'pixels':<{width}} {int(scores['num_pixels']):>7d}")
    lines.append(_empty_convention(scores))
    return "\n".join(lines)


def _json_float(x: Any) -> float | None:
    """A float for JSON: NaN and inf become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def report_dict(
    scores: Mapping[str, Any], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """`segmentation_scores` as a JSON-serialisable dict (fractions, NaN -> None).

    Args:
      scores: the dict returned by `segmentation_scores`.
      class_names: optional K names; defaults to the class indices.

    Returns:
      {"summary": {miou, mean_accuracy, pixel_accuracy, fwiou, mean_dice, mean_f1,
      mean_precision, mean_recall, num_pixels}, "classes": [{name, index, iou, accuracy,
      precision, recall, dice, f1, pixel_count}, ...], "convention": str}. Scores are
      fractions in [0, 1], not percentages.
    """
    names = _class_names(scores, class_names)
    summary_keys = [key for _, key in _SUMMARY_ROWS] + ["mean_precision", "mean_recall"]
    summary: dict[str, Any] = {k: _json_float(scores[k]) for k in summary_keys}
    summary["num_pixels"] = int(scores["num_pixels"])
    per_class_keys = ("iou", "accuracy", "precision", "recall", "dice", "f1")
    classes = []
    for k, name in enumerate(names):
        row: dict[str, Any] = {"name": name, "index": k}
        row.update({key: _json_float(scores[key][k]) for key in per_class_keys})
        row["pixel_count"] = int(scores["pixel_count"][k])
        classes.append(row)
    return {"summary": summary, "classes": classes, "convention": _empty_convention(scores)}
