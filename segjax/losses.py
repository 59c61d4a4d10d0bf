"""Segmentation losses: pixel-wise, region-based, boundary and active-contour terms.

Every loss has the signature `loss(logits, labels, *, ignore_index=255, ...) -> scalar`
with `logits` float [B, H, W, K] (NHWC; any float dtype) and `labels` int [B, H, W].
Common guarantees, tested in tests/test_losses.py:

- computed in float32 even for bfloat16 logits; the result is a float32 scalar;
- pixels whose label is `ignore_index` (or outside [0, K)) do not change the value and
  their logits get exactly zero gradient;
- a batch without any valid pixel gives 0 with zero (finite) gradients, never NaN;
- static shapes only (no boolean indexing), so every loss runs inside `jax.jit` on a
  sharded batch.

Pixel-wise losses are averaged over valid pixels; region losses (Dice, Jaccard, Tversky,
Lovász) are computed per class over all valid pixels of the batch, then averaged over
classes. `build_loss("cross_entropy:1.0+dice:0.5")` combines them by name.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOSSES",
    "active_contour_loss",
    "boundary_loss",
    "build_loss",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "jaccard_loss",
    "lovasz_softmax",
    "morphological_active_contour_loss",
    "morphological_smoothing",
    "ohem_cross_entropy",
    "se_loss",
    "segmentation_loss",
    "signed_distance_maps",
    "topk_cross_entropy",
    "tversky_loss",
]

LossFn = Callable[..., jax.Array]


# ----------------------------------------------------------------------------------------
# Shared pieces.


def _prepare(
    logits: jax.Array, labels: jax.Array, ignore_index: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """float32 logits, labels with void pixels replaced by class 0, bool valid mask."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} must be labels {labels.shape} plus a class axis")
    num_classes = logits.shape[-1]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    # Class 0 is a placeholder so that gathers and one-hots stay in range; every use of
    # it is masked by `valid`.
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    return logits.astype(jnp.float32), safe, valid


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 (with zero gradient) where den == 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over `mask`; 0 when the mask is empty."""
    # jnp.where (not multiplication) so that a non-finite masked value cannot leak in.
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return _safe_div(total, jnp.sum(mask).astype(jnp.float32))


def _class_vector(x: Sequence[float] | jax.Array | None, num_classes: int) -> jax.Array | None:
    """Per-class float32 [K] weights, checked against K."""
    if x is None:
        return None
    x = jnp.asarray(x, jnp.float32)
    if x.shape != (num_classes,):
        raise ValueError(f"class weights must have shape ({num_classes},), got {x.shape}")
    return x


def _true_class_log_prob(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """log p(labels) per pixel, [B, H, W], from log-probabilities [B, H, W, K]."""
    return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _probs_and_onehot(
    logits: jax.Array, labels: jax.Array, ignore_index: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax probs and one-hot targets [N, K] with void pixels zeroed, and valid [N]."""
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    mask = valid[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1) * mask
    onehot = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32) * mask
    return (
        probs.reshape(-1, num_classes),
        onehot.reshape(-1, num_classes),
        valid.reshape(-1),
    )


def _class_mean(per_class: jax.Array, class_weights: jax.Array | None) -> jax.Array:
    """Mean over classes, weighted by `class_weights` when given."""
    if class_weights is None:
        return jnp.mean(per_class)
    return _safe_div(jnp.sum(per_class * class_weights), jnp.sum(class_weights))


# ----------------------------------------------------------------------------------------
# Pixel-wise losses.


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    class_weights: Sequence[float] | jax.Array | None = None,
    label_smoothing: float = 0.0,
    avg_non_ignore: bool = True,
) -> jax.Array:
    """Softmax cross-entropy averaged over valid pixels (torch `F.cross_entropy` semantics).

    Per valid pixel i with label y_i, log-probabilities l_i, K classes, weights w
    (all ones by default) and smoothing e:

        loss_i = (1 - e) * w[y_i] * (-l_i[y_i]) + (e / K) * sum_k w[k] * (-l_i[k])

    The result is sum_i loss_i divided by sum_i w[y_i] over valid pixels (the weighted
    mean of `torch.nn.functional.cross_entropy(weight=w, label_smoothing=e)`), or by the
    number of all pixels, void ones included, when `avg_non_ignore=False` (the
    mmsegmentation default).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W]; `ignore_index` marks void pixels.
      ignore_index: label value of void pixels.
      class_weights: optional [K] per-class weights.
      label_smoothing: e in [0, 1].
      avg_non_ignore: divide by the (weighted) number of valid pixels, not all pixels.

    Returns:
      float32 scalar.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    weights = _class_vector(class_weights, num_classes)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -_true_class_log_prob(log_probs, safe)
    pixel_weight = jnp.ones_like(nll) if weights is None else weights[safe]
    loss = (1.0 - label_smoothing) * pixel_weight * nll
    if label_smoothing:
        neg = -log_probs if weights is None else -log_probs * weights
        loss = loss + (label_smoothing / num_classes) * jnp.sum(neg, axis=-1)
    total = jnp.sum(jnp.where(valid, loss, 0.0))
    if avg_non_ignore:
        denominator = jnp.sum(jnp.where(valid, pixel_weight, 0.0))
    else:
        denominator = jnp.asarray(float(max(valid.size, 1)), jnp.float32)
    return _safe_div(total, denominator)


def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    thresh: float = 0.7,
    min_kept: int = 100000,
) -> jax.Array:
    """Online hard example mining cross-entropy (mmsegmentation `OHEMPixelSampler`).

    Among valid pixels, with p the softmax probability of the true class and
    `n_kept = min_kept * B` (mmsegmentation counts `min_kept` per image), the threshold
    is `max(thresh, p_sorted[min(n_kept, n_valid - 1)])` and the pixels with
    p < threshold are kept: every pixel the model is unsure about, and at least the
    `n_kept` hardest ones (fewer only when they tie with the threshold or the batch has
    fewer valid pixels). The loss is the cross-entropy averaged over kept pixels (as in
    the HRNet / PSPNet OHEM losses). The selection is made without gradient.

    The threshold is found with a full `jnp.sort` of the [B*H*W] probabilities (void
    pixels sort last), which keeps shapes static.

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      thresh: probability under which a pixel counts as hard.
      min_kept: minimum number of pixels kept per image.

    Returns:
      float32 scalar.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_p = _true_class_log_prob(log_probs, safe)
    prob = jax.lax.stop_gradient(jnp.exp(log_p))
    flat_prob = jnp.where(valid, prob, jnp.inf).reshape(-1)
    sorted_prob = jnp.sort(flat_prob)
    n_valid = jnp.sum(valid)
    n_kept = int(min_kept) * labels.shape[0]
    position = jnp.clip(jnp.minimum(n_kept, n_valid - 1), 0, flat_prob.size - 1)
    min_threshold = jnp.where(n_valid > 0, sorted_prob[position], 0.0)
    threshold = jnp.maximum(min_threshold, thresh)
    kept = valid & (prob < threshold)
    return _masked_mean(-log_p, kept)


def topk_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    k_ratio: float = 0.25,
) -> jax.Array:
    """Cross-entropy averaged over the hardest `ceil(k_ratio * n_valid)` valid pixels.

    The "TopK" loss of nnU-Net / Wu et al. (2016), "bootstrapped" cross-entropy: pixels
    are ranked by their own loss over the whole batch (an argsort, so shapes stay
    static) and only the top fraction contributes.

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      k_ratio: fraction of valid pixels kept, in (0, 1].

    Returns:
      float32 scalar.
    """
    if not 0.0 < k_ratio <= 1.0:
        raise ValueError(f"k_ratio must be in (0, 1], got {k_ratio}")
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    nll = -_true_class_log_prob(jax.nn.log_softmax(logits, axis=-1), safe).reshape(-1)
    flat_valid = valid.reshape(-1)
    order = jnp.argsort(-jnp.where(flat_valid, jax.lax.stop_gradient(nll), -jnp.inf))
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    n_valid = jnp.sum(flat_valid).astype(jnp.float32)
    k = jnp.ceil(k_ratio * n_valid)
    kept = flat_valid & (rank < k)
    return _masked_mean(nll, kept)


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | jax.Array | None = None,
) -> jax.Array:
    """Softmax focal loss (Lin et al., 2017) averaged over valid pixels.

    Per valid pixel: -alpha[y] * (1 - p_y)^gamma * log p_y, where p_y is the softmax
    probability of the true class. `alpha` is None (no weighting), a scalar applied to
    every pixel, or a [K] per-class weight. The mean is a plain mean over valid pixels
    (the weights do not renormalise it, as in RetinaNet).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      gamma: focusing exponent, >= 0; 0 gives (alpha-weighted) cross-entropy.
      alpha: optional scalar or [K] class weights.

    Returns:
      float32 scalar.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    log_p = _true_class_log_prob(jax.nn.log_softmax(logits, axis=-1), safe)
    loss = -log_p
    if gamma:
        # -expm1(log p) is 1 - p without cancellation; the floor keeps the gradient of
        # x**gamma finite at x = 0 for gamma < 1.
        one_minus_p = jnp.maximum(-jnp.expm1(log_p), 1e-12)
        loss = loss * one_minus_p**gamma
    if alpha is not None:
        alpha_arr = jnp.asarray(alpha, jnp.float32)
        if alpha_arr.ndim == 0:
            loss = loss * alpha_arr
        else:
            loss = loss * _class_vector(alpha_arr, logits.shape[-1])[safe]
    return _masked_mean(loss, valid)


# ----------------------------------------------------------------------------------------
# Region losses (soft overlap scores over the whole batch, per class).


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
    class_weights: Sequence[float] | jax.Array | None = None,
    exponent: int = 2,
) -> jax.Array:
    """Soft multi-class Dice loss (V-Net, Milletari et al. 2016; mmsegmentation DiceLoss).

    With softmax probabilities p and one-hot targets g over the valid pixels of the whole
    batch, per class k:

        dice_k = (2 sum p_k g_k + smooth) / (sum p_k^exponent + sum g_k^exponent + smooth)

    and the loss is 1 - dice_k averaged over classes (weighted by `class_weights` when
    given). Computing over the batch, not per image, keeps classes that are missing from
    one image from dominating.

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      smooth: additive smoothing; with smooth > 0 a class absent from the batch and never
        predicted has loss 0.
      class_weights: optional [K] weights of the per-class losses.
      exponent: power of the terms in the denominator (2 as in V-Net, 1 for plain Dice).

    Returns:
      float32 scalar.
    """
    probs, onehot, _ = _probs_and_onehot(logits, labels, ignore_index)
    weights = _class_vector(class_weights, probs.shape[-1])
    intersection = jnp.sum(probs * onehot, axis=0)
    denominator = jnp.sum(probs**exponent, axis=0) + jnp.sum(onehot**exponent, axis=0)
    dice = (2.0 * intersection + smooth) / jnp.maximum(denominator + smooth, 1e-12)
    # 0 / 0 (smooth == 0 and an empty class) means a perfect score, not NaN.
    dice = jnp.where(denominator + smooth > 0, dice, 1.0)
    return _class_mean(1.0 - dice, weights)


def jaccard_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
    class_weights: Sequence[float] | jax.Array | None = None,
) -> jax.Array:
    """Soft Jaccard (IoU) loss (Rahman & Wang, 2016), per class over the batch.

    Per class k: iou_k = (sum p g + smooth) / (sum p + sum g - sum p g + smooth) with
    softmax probabilities p and one-hot targets g over valid pixels; the loss is
    1 - iou_k averaged over classes (weighted by `class_weights` when given).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      smooth: additive smoothing.
      class_weights: optional [K] weights of the per-class losses.

    Returns:
      float32 scalar.
    """
    probs, onehot, _ = _probs_and_onehot(logits, labels, ignore_index)
    weights = _class_vector(class_weights, probs.shape[-1])
    intersection = jnp.sum(probs * onehot, axis=0)
    union = jnp.sum(probs, axis=0) + jnp.sum(onehot, axis=0) - intersection
    iou = (intersection + smooth) / jnp.maximum(union + smooth, 1e-12)
    iou = jnp.where(union + smooth > 0, iou, 1.0)
    return _class_mean(1.0 - iou, weights)


def tversky_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
    class_weights: Sequence[float] | jax.Array | None = None,
) -> jax.Array:
    """Tversky loss (Salehi et al., 2017), per class over the batch.

    Per class k with soft counts TP = sum p g, FP = sum p (1 - g), FN = sum (1 - p) g
    over valid pixels: t_k = (TP + smooth) / (TP + alpha FP + beta FN + smooth); the loss
    is 1 - t_k averaged over classes. alpha = beta = 0.5 gives the Dice loss with
    exponent 1; beta > alpha penalises false negatives more (better recall).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      alpha: weight of false positives.
      beta: weight of false negatives.
      smooth: additive smoothing.
      class_weights: optional [K] weights of the per-class losses.

    Returns:
      float32 scalar.
    """
    probs, onehot, _ = _probs_and_onehot(logits, labels, ignore_index)
    weights = _class_vector(class_weights, probs.shape[-1])
    tp = jnp.sum(probs * onehot, axis=0)
    fp = jnp.sum(probs, axis=0) - tp
    fn = jnp.sum(onehot, axis=0) - tp
    denominator = tp + alpha * fp + beta * fn + smooth
    score = (tp + smooth) / jnp.maximum(denominator, 1e-12)
    score = jnp.where(denominator > 0, score, 1.0)
    return _class_mean(1.0 - score, weights)


def lovasz_softmax(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    classes: str | Sequence[int] = "present",
) -> jax.Array:
    """Lovász-Softmax loss (Berman et al., 2018) over the flattened batch.

    For each class c, with errors e = |g_c - p_c| over valid pixels sorted in decreasing
    order and g_c sorted alongside, the loss is dot(e_sorted, grad_J(g_sorted)) where
    grad_J is the discrete gradient of the Jaccard loss (the Lovász extension), as in the
    reference `lovasz_softmax_flat`. Void pixels are given error -1 so that they sort
    last, where the Jaccard gradient is 0, which keeps shapes static. The sort is over
    all B*H*W pixels for every class (memory O(B*H*W*K)).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      classes: "present" (average over classes present in the valid labels), "all", or
        a list of class indices to average over.

    Returns:
      float32 scalar.
    """
    probs, onehot, valid = _probs_and_onehot(logits, labels, ignore_index)
    num_classes = probs.shape[-1]
    errors = jnp.abs(onehot - probs)
    sort_key = jnp.where(valid[:, None], jax.lax.stop_gradient(errors), -1.0)
    order = jnp.argsort(-sort_key, axis=0)  # [N, K], per class decreasing error
    errors_sorted = jnp.take_along_axis(errors, order, axis=0)
    fg_sorted = jnp.take_along_axis(onehot, order, axis=0)
    valid_sorted = jnp.take_along_axis(
        jnp.broadcast_to(valid[:, None], errors.shape), order, axis=0
    )
    gts = jnp.sum(fg_sorted, axis=0)
    intersection = gts - jnp.cumsum(fg_sorted, axis=0)
    union = gts + jnp.cumsum(1.0 - fg_sorted, axis=0)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    jaccard_grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    per_class = jnp.sum(
        jnp.where(valid_sorted, errors_sorted, 0.0) * jax.lax.stop_gradient(jaccard_grad),
        axis=0,
    )
    if isinstance(classes, str):
        if classes == "present":
            selected = gts > 0
        elif classes == "all":
            selected = jnp.ones((num_classes,), bool)
        else:
            raise ValueError(f"classes must be 'present', 'all' or a list, got {classes!r}")
    else:
        selected = jnp.zeros((num_classes,), bool).at[jnp.asarray(classes)].set(True)
    # Without valid pixels there is nothing to rank: the loss is 0.
    selected = selected & jnp.any(valid)
    return _masked_mean(per_class, selected)


# ----------------------------------------------------------------------------------------
# Boundary and active-contour losses.


def signed_distance_maps(
    labels: np.ndarray | jax.Array, num_classes: int, *, ignore_index: int = 255
) -> np.ndarray:
    """Signed Euclidean distance map of each class's mask, on host (Kervadec et al.).

    For class k with mask M (void pixels count as outside every class): at a pixel
    outside M, the distance to the nearest pixel of M (> 0); inside M, minus (the
    distance to the nearest pixel outside M, minus 1), so that pixels on the inner
    boundary get 0. Classes absent from an image get an all-zero map (another class
    supervises those pixels), as in the reference `one_hot2dist`. Exact distances from
    `scipy.ndimage.distance_transform_edt`, in pixel units.

    Args:
      labels: int [B, H, W] (numpy or a concrete jax array).
      num_classes: K.
      ignore_index: label value of void pixels.

    Returns:
      float32 [B, H, W, K].
    """
    from scipy import ndimage  # host-only dependency, imported where it is needed

    labels = np.asarray(labels)
    out = np.zeros((*labels.shape, num_classes), np.float32)
    for b in range(labels.shape[0]):
        for k in range(num_classes):
            inside = labels[b] == k
            if not inside.any():
                continue
            outside = ~inside
            dist_out = ndimage.distance_transform_edt(outside) if outside.any() else 0.0
            dist_in = ndimage.distance_transform_edt(inside)
            out[b, ..., k] = dist_out * outside - (dist_in - 1.0) * inside
    return out


def boundary_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    dist_maps: jax.Array | None = None,
    classes: Sequence[int] | None = None,
) -> jax.Array:
    """Boundary loss (Kervadec et al., 2019): softmax probabilities weighted by distance.

    loss = mean over valid pixels x and selected classes k of phi_k(x) * p_k(x), where
    phi_k is the signed distance map of class k's ground truth (`signed_distance_maps`:
    positive outside the object, non-positive inside), so the loss is minimised by
    putting probability mass inside the objects. It can be negative; it is meant to be
    added to a region loss (e.g. `"dice:1.0+boundary:0.01"`) with a weight ramped up
    during training, as in the paper.

    The distance maps are computed exactly on host with scipy. Either pass them in
    (`dist_maps`, e.g. computed in the data pipeline: then the loss is pure jnp and
    fully jittable/shardable) or leave `dist_maps=None`: they are then computed from
    `labels` through `jax.pure_callback`, which also works under `jax.jit` but makes a
    device-to-host round trip each step.

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      dist_maps: optional float [B, H, W, K] signed distance maps.
      classes: class indices to include (e.g. foreground classes only, as in the paper);
        None includes all.

    Returns:
      float32 scalar.
    """
    logits, _, valid = _prepare(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    if dist_maps is None:
        labels = jnp.asarray(labels)
        dist_maps = jax.pure_callback(
            lambda lab: signed_distance_maps(lab, num_classes, ignore_index=ignore_index),
            jax.ShapeDtypeStruct((*labels.shape, num_classes), jnp.float32),
            labels,
            vmap_method="sequential",
        )
    dist_maps = jax.lax.stop_gradient(jnp.asarray(dist_maps, jnp.float32))
    if dist_maps.shape != logits.shape:
        raise ValueError(f"dist_maps shape {dist_maps.shape} != logits shape {logits.shape}")
    probs = jax.nn.softmax(logits, axis=-1)
    weighted = probs * dist_maps
    if classes is not None:
        weighted = weighted[..., jnp.asarray(classes)]
    per_pixel = jnp.mean(weighted, axis=-1)
    return _masked_mean(per_pixel, valid)


def active_contour_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = 255,
    lambda_region: float = 1.0,
    mu_length: float = 1.0,
    eps: float = 1e-8,
) -> jax.Array:
    """Active-contour loss (Chen et al., CVPR 2019), one-vs-rest over classes.

    For each class k, with u = softmax probability of k and v = one-hot target of k:

    - length = mean over positions (i, j) of sqrt((u[i+1, j] - u[i, j])^2
      + (u[i, j+1] - u[i, j])^2 + eps), the contour length of the soft mask; positions
      whose three pixels are not all valid are skipped (volumes [B, D, H, W, K]: the
      same over the three axes, the surface area);
    - region = mean over valid pixels of u (v - 1)^2 + (1 - u) v^2, the Chan-Vese
      fitting terms with fixed c_in = 1, c_out = 0.

    loss = mu_length * length + lambda_region * region, each averaged over classes
    (the reference code uses means rather than sums, as here).

    Args:
      logits: float [B, H, W, K].
      labels: int [B, H, W].
      ignore_index: label value of void pixels.
      lambda_region: weight of the region term.
      mu_length: weight of the length term.
      eps: keeps the square root differentiable where the probability map is flat.

    Returns:
      float32 scalar.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    u = jax.nn.softmax(logits, axis=-1)
    v = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
    region_pixel = jnp.mean(u * (v - 1.0) ** 2 + (1.0 - u) * v**2, axis=-1)
    region = _masked_mean(region_pixel, valid)

    # Forward differences along each spatial axis (H, W; D, H, W for volumes), at the
    # positions that have a next voxel on every axis.
    spatial = range(1, u.ndim - 1)
    base = (slice(None), *(slice(0, -1) for _ in spatial))

    def shifted(axis: int) -> tuple:
        return (slice(None), *(slice(1, None) if a == axis else slice(0, -1) for a in spatial))

    squares = sum((u[shifted(a)] - u[base]) ** 2 for a in spatial)
    length_pixel = jnp.mean(jnp.sqrt(squares + eps), axis=-1)
    length_valid = valid[base]
    for a in spatial:
        length_valid = length_valid & valid[shifted(a)]
    length = _masked_mean(length_pixel, length_valid)
    return mu_length * length + lambda_region * region


# ----------------------------------------------------------------------------------------
# Registry and composition.

LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "ohem_cross_entropy": ohem_cross_entropy,
    "topk_cross_entropy": topk_cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "jaccard": jaccard_loss,
    "tversky": tversky_loss,
    "lovasz": lovasz_softmax,
    "boundary": boundary_loss,
    "active_contour": active_contour_loss,
}

# The function names are accepted too, so that a spec can say what the code says.
_ALIASES = {fn.__name__: name for name, fn in LOSSES.items() if fn.__name__ != name}


def _canonical(name: str) -> str:
    """The LOSSES key for a loss name or function name; ValueError listing known ones."""
    name = name.strip()
    name = _ALIASES.get(name, name)
    if name not in LOSSES:
        known = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {name!r}; known losses: {known}")
    return name


def _parse_spec(spec: str) -> list[tuple[str, float]]:
    """'a:1.0+b:0.5' -> [('a', 1.0), ('b', 0.5)]; a term without ':w' has weight 1."""
    terms = []
    for term in spec.split("+"):
        term = term.strip()
        if not term:
            raise ValueError(f"empty term in loss spec {spec!r}")
        name, _, weight = term.partition(":")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in loss spec {spec!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"weight of {name!r} must be finite, got {value}")
        terms.append((_canonical(name), value))
    return terms


def loss_options(config) -> dict[str, dict[str, Any]]:
    """`config.loss.options` (a JSON object of per-loss keyword arguments) as a dict."""
    text = config.loss.options
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config.loss.options is not valid JSON ({e}): {text!r}") from e
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(
            'config.loss.options must be a JSON object {"loss_name": {"kwarg": value}}; '
            f"got {text!r}"
        )
    return options


def build_loss(
    spec: str,
    *,
    ignore_index: int = 255,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[..., jax.Array]:
    """A loss function from a spec string such as `"cross_entropy:1.0+dice:0.5"`.

    The spec is a `+`-separated list of `name[:weight]` terms (weight 1 when omitted);
    names are keys of `LOSSES` or the function names (`"dice_loss"`). The result is the
    weighted sum of the terms.

    Args:
      spec: the loss spec.
      ignore_index: passed to every term.
      options: per-loss keyword arguments, `{name: {kwarg: value}}`, e.g.
        `{"cross_entropy": {"class_weights": w}, "dice": {"smooth": 0.0}}`. Names and
        keyword arguments are checked here, not at the first step.

    Returns:
      `loss_fn(logits, labels, **extra) -> float32 scalar`; `extra` keyword arguments
      (e.g. `dist_maps` for the boundary loss) go to the terms that accept them.

    Raises:
      ValueError: unknown loss name (the message lists the known ones), bad weight,
        option for a loss not in the spec, or unknown keyword argument.
    """
    terms = _parse_spec(spec)
    names = {name for name, _ in terms}
    kwargs_by_name: dict[str, dict[str, Any]] = {name: {} for name in names}
    for raw_name, kwargs in (options or {}).items():
        name = _canonical(raw_name)
        if name not in names:
            raise ValueError(f"options given for {raw_name!r}, which is not in spec {spec!r}")
        params = inspect.signature(LOSSES[name]).parameters
        for key in kwargs:
            if key not in params or key in ("logits", "labels", "ignore_index"):
                raise ValueError(f"{name} has no option {key!r}")
        kwargs_by_name[name].update(kwargs)
    accepted = {name: set(inspect.signature(LOSSES[name]).parameters) for name in names}

    def loss_fn(logits: jax.Array, labels: jax.Array, **extra: Any) -> jax.Array:
        total = jnp.zeros((), jnp.float32)
        for name, weight in terms:
            call_extra = {k: v for k, v in extra.items() if k in accepted[name]}
            value = LOSSES[name](
                logits,
                labels,
                ignore_index=ignore_index,
                **kwargs_by_name[name],
                **call_extra,
            )
            total = total + weight * value
        return total

    loss_fn.__doc__ = f"Loss {spec!r} (built by segjax.losses.build_loss)."
    return loss_fn


def _resize_to(logits: jax.Array, spatial: tuple[int, ...]) -> jax.Array:
    """Bilinearly resizes [B, h, w, K] logits to [B, H, W, K] when sizes differ."""
    if logits.shape[1:-1] == tuple(spatial):
        return logits
    shape = (logits.shape[0], *spatial, logits.shape[-1])
    return jax.image.resize(logits, shape, method="bilinear")


def se_loss(se_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """EncNet's semantic encoding loss: which classes does each image contain?

    Binary cross-entropy with logits between `se_logits` float [B, K] and the presence
    of each class among the image's labels (1 if any pixel has it), averaged over the
    B * K entries (mmsegmentation's `CrossEntropyLoss(use_sigmoid=True)` on EncHead's
    `se_layer`). Labels outside [0, K), `ignore_index` included, mark no class.

    Args:
      se_logits: float [B, K].
      labels: int [B, H, W].

    Returns:
      float32 scalar.
    """
    se_logits = jnp.asarray(se_logits, jnp.float32)
    num_classes = se_logits.shape[-1]
    present = jnp.any(labels[..., None] == jnp.arange(num_classes), axis=(1, 2))
    # log(1 + exp(x)) - x * y: the stable form of sigmoid cross-entropy.
    return jnp.mean(jnp.logaddexp(0.0, se_logits) - se_logits * present.astype(jnp.float32))


def segmentation_loss(
    outputs: Mapping[str, Any],
    labels: jax.Array,
    loss_fn: Callable[..., jax.Array],
    *,
    aux_weight: float = 0.4,
    se_weight: float = 0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies `loss_fn` to a segmentor's outputs: main head plus auxiliary heads.

    total = loss(outputs["logits"]) + aux_weight * loss(outputs["aux_logits"])
            + aux_weight * sum_i loss(outputs["deep_supervision"][i])
            + se_weight * se_loss(outputs["se_logits"])

    where the auxiliary entries are used only when present. Auxiliary logits whose
    spatial size differs from the labels are bilinearly resized to it first.

    Args:
      outputs: dict with `logits` float [B, H, W, K], optionally `aux_logits`,
        `deep_supervision` (a list of logits) and `se_logits` [B, K] (EncNet).
      labels: int [B, H, W].
      loss_fn: `(logits, labels) -> scalar`, e.g. from `build_loss`.
      aux_weight: weight of each auxiliary term.
      se_weight: weight of the semantic encoding loss (`se_loss`; EncNet and mmseg: 0.2).

    Returns:
      (total float32 scalar, terms) where terms holds the unweighted losses under
      "main", "aux", "deep_supervision_0", ..., "se" and the weighted sum under "total".
    """
    spatial = tuple(labels.shape[1:])
    terms: dict[str, jax.Array] = {"main": loss_fn(outputs["logits"], labels)}
    total = terms["main"]
    if outputs.get("aux_logits") is not None:
        terms["aux"] = loss_fn(_resize_to(outputs["aux_logits"], spatial), labels)
        total = total + aux_weight * terms["aux"]
    for i, ds_logits in enumerate(outputs.get("deep_supervision") or ()):
        key = f"deep_supervision_{i}"
        terms[key] = loss_fn(_resize_to(ds_logits, spatial), labels)
        total = total + aux_weight * terms[key]
    if outputs.get("se_logits") is not None:
        terms["se"] = se_loss(outputs["se_logits"], labels)
        total = total + se_weight * terms["se"]
    terms["total"] = total
    return total, terms


# ----------------------------------------------------------------------------------------
# Unsupervised: Gur et al.'s morphological active-contour loss (needs the image, not labels).


def _line_windows(u: jax.Array) -> list[jax.Array]:
    # The 3-pixel line segments through each pixel of u [B, H, W] in the four directions
    # (horizontal, vertical, both diagonals), edges repeated: 4 stacks [3, B, H, W].
    p = jnp.pad(u, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = u.shape[1:]

    def at(dy, dx):
        return p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    centre = at(0, 0)
    return [
        jnp.stack([at(dy, dx), centre, at(-dy, -dx)])
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))
    ]


def morphological_smoothing(u: jax.Array, steps: int = 3) -> jax.Array:
    """Márquez-Neila et al.'s curvature operators on a soft mask u [B, H, W], `steps` times.

    `SI(u) = max over the 4 line segments S of min_S u` and `IS(u) = min_S max_S u` (3-pixel
    segments through the pixel: horizontal, vertical, two diagonals). One step is
    `IS(SI(u))`, as Gur et al.'s pair of morphological pooling layers. Differentiable
    almost everywhere (max / min route the gradient to one pixel).
    """
    for _ in range(steps):
        u = jnp.max(jnp.stack([jnp.min(s, axis=0) for s in _line_windows(u)]), axis=0)  # SI
        u = jnp.min(jnp.stack([jnp.max(s, axis=0) for s in _line_windows(u)]), axis=0)  # IS
    return u


def morphological_active_contour_loss(
    foreground: jax.Array,
    image: jax.Array,
    *,
    lambda_in: float = 1.0,
    lambda_out: float = 1.0,
    smoothing_steps: int = 3,
    area_weight: float = 0.0,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Gur et al.'s unsupervised active-contour loss (ICCV 2019, the "level set" variant).

    With u = `foreground` [B, H, W] (a soft mask in [0, 1]) and I = `image` [B, H, W, C]:
    c_in = sum I u / sum u and c_out = sum I (1 - u) / sum (1 - u) per image and channel
    (over valid pixels); u_s = `morphological_smoothing(u, smoothing_steps)` (the
    curvature term of morphological ACWE); the loss is the mean over valid pixels of
    sum_c lambda_in (I - c_in)^2 u_s + lambda_out (I - c_out)^2 (1 - u_s), plus
    `area_weight` times the mean of u. No labels: it asks for a smooth mask whose inside
    and outside are each as uniform as possible (Chan-Vese's fitting energy). Gur et al.'s
    rank term (the inside brighter than the outside) is a prior of their vessel images
    and is left out.

    Returns:
      float32 scalar.
    """
    u = foreground.astype(jnp.float32)
    image = image.astype(jnp.float32)
    mask = jnp.ones_like(u) if valid is None else valid.astype(jnp.float32)
    w_in, w_out = (u * mask)[..., None], ((1.0 - u) * mask)[..., None]
    c_in = jnp.sum(image * w_in, (1, 2), keepdims=True) / (
        jnp.sum(w_in, (1, 2), keepdims=True) + 1e-8
    )
    c_out = jnp.sum(image * w_out, (1, 2), keepdims=True) / (
        jnp.sum(w_out, (1, 2), keepdims=True) + 1e-8
    )
    smooth = morphological_smoothing(u, smoothing_steps)
    per_pixel = lambda_in * jnp.sum((image - c_in) ** 2, -1) * smooth + lambda_out * jnp.sum(
        (image - c_out) ** 2, -1
    ) * (1.0 - smooth)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(per_pixel * mask) / count + area_weight * jnp.sum(u * mask) / count
