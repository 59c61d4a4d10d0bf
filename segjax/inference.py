"""Inference modes: whole image, sliding window, multi-scale + flip test-time augmentation.

Every function here is pure jnp with static shapes, built around an `apply_fn(images)
-> logits` closure, so that one `jax.jit` compiles a whole evaluation once:

- `whole_logits`: the model on the full (padded) canvas.
- `sliding_window_logits`: windows of `crop_size` every `stride` pixels (the last row
  and column of windows are moved back to touch the border, as in mmsegmentation's
  `slide_inference`); all windows of all images of the batch go through the model as
  one batch `[B * N, h, w, C]`, and the overlapping logits are averaged, optionally with
  a Gaussian weight that trusts window centres more than their borders (nnU-Net).
- `predict`: any combination of the above with multi-scale and horizontal-flip TTA.
  One view returns its logits; several views return the mean of their softmax
  probabilities (mmsegmentation's `SegTTAModel` convention), so the argmax is the
  prediction either way.
- `resize_to_original`: class scores at the model's canvas back to each image's
  original size (per-image sizes are data, not shapes, so there is no recompilation).

Example:
    >>> mode = InferenceMode(mode="slide", crop_size=(512, 512), stride=(341, 341),
    ...                      scales=(0.75, 1.0, 1.25), flip=True)
    >>> apply_fn = lambda x: model.apply(variables, x, train=False)["logits"]
    >>> scores = jax.jit(lambda x: predict(apply_fn, x, mode))(images)  # [B, H, W, K]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import crf

ApplyFn = Callable[[jax.Array], jax.Array]

MODES = ("whole", "slide")


@dataclasses.dataclass(frozen=True)
class InferenceMode:
    """How class scores are computed from an image batch (all fields static).

    Attributes:
      mode: "whole" (the model on the whole canvas) or "slide" (sliding window).
      crop_size: sliding-window (height, width).
      stride: sliding-window step (height, width); smaller than `crop_size` overlaps.
      gaussian: weight window logits by a Gaussian (sigma = crop / 8) when averaging.
      scales: resize ratios of multi-scale TTA; (1.0,) is no multi-scale.
      flip: also predict the horizontally flipped image (flip TTA).
    """

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    gaussian: bool = False
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"inference mode {self.mode!r}; expected one of {MODES}")
        if min(self.crop_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"crop_size {self.crop_size} and stride {self.stride} must be >= 1")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales {self.scales} must be positive")

    @classmethod
    def from_config(cls, eval_config: ml_collections.ConfigDict) -> InferenceMode:
        """The mode of a config's `eval` block."""
        return cls(
            mode=eval_config.mode,
            crop_size=tuple(int(s) for s in eval_config.crop_size),
            stride=tuple(int(s) for s in eval_config.stride),
            gaussian=bool(eval_config.gaussian),
            scales=tuple(float(s) for s in eval_config.scales),
            flip=bool(eval_config.flip),
        )

    @property
    def num_views(self) -> int:
        """Forward passes (per window) that each image gets."""
        return len(self.scales) * (2 if self.flip else 1)

    def describe(self) -> str:
        """A one-line description for reports, e.g. `slide 128x128/96 + scales (0.75, 1) + flip`."""
        text = self.mode
        if self.mode == "slide":
            text += (
                f" {self.crop_size[0]}x{self.crop_size[1]} stride {self.stride[0]}x{self.stride[1]}"
            )
            text += " gaussian" if self.gaussian else ""
        if tuple(self.scales) != (1.0,):
            text += f" + scales {tuple(self.scales)}"
        if self.flip:
            text += " + flip"
        return text


def whole_logits(apply_fn: ApplyFn, images: jax.Array) -> jax.Array:
    """`apply_fn` on the whole batch: [B, H, W, C] -> logits [B, H, W, K] float32."""
    return apply_fn(images).astype(jnp.float32)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of `crop` every `stride` over `size`, the last at the end.

    `size <= crop` gives one window at 0 (the image is padded up to the crop).
    """
    if size <= crop:
        return [0]
    n = (size - crop + stride - 1) // stride + 1
    return [min(i * stride, size - crop) for i in range(n)]


def gaussian_weights(crop_size: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """float32 [h, w] Gaussian centred in the window, max 1, sigma = `sigma_scale` * size."""
    axes = []
    for n in crop_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2))
    w = np.outer(*axes)
    return (w / w.max()).astype(np.float32)


def sliding_window_logits(
    apply_fn: ApplyFn,
    images: jax.Array,
    *,
    crop_size: Sequence[int],
    stride: Sequence[int],
    gaussian: bool = False,
    window_sharding: Any = None,
) -> jax.Array:
    """Logits of overlapping windows, averaged where they overlap.

    Args:
      apply_fn: `[b, h, w, C] -> [b, h, w, K]` logits.
      images: [B, H, W, C]. Images smaller than the crop are zero-padded up to it (the
        padding's logits are cut off again).
      crop_size: window (h, w).
      stride: window step (h, w).
      gaussian: weight each window's logits by `gaussian_weights(crop_size)`.
      window_sharding: optional sharding of the `[B * N, h, w, C]` window batch (the
        batch axis over the mesh's data axis), so windows are spread over all devices.

    Returns:
      float32 [B, H, W, K]: for every pixel, the (weighted) mean of the logits of the
      windows that contain it.
    """
    b, h, w, c = images.shape
    ch, cw = int(crop_size[0]), int(crop_size[1])
    ph, pw = max(h, ch), max(w, cw)
    if (ph, pw) != (h, w):
        images = jnp.pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    ch, cw = min(ch, ph), min(cw, pw)
    boxes = [
        (y, x)
        for y in window_starts(ph, ch, int(stride[0]))
        for x in window_starts(pw, cw, int(stride[1]))
    ]
    windows = jnp.stack([images[:, y : y + ch, x : x + cw] for y, x in boxes], axis=1)
    windows = windows.reshape(b * len(boxes), ch, cw, c)  # image-major: shards with B
    if window_sharding is not None:
        windows = jax.lax.with_sharding_constraint(windows, window_sharding)
    logits = apply_fn(windows).astype(jnp.float32)
    k = logits.shape[-1]
    logits = logits.reshape(b, len(boxes), ch, cw, k)

    weight = gaussian_weights((ch, cw)) if gaussian else np.ones((ch, cw), np.float32)
    total_weight = np.zeros((ph, pw), np.float32)  # static: computed once on host
    total = jnp.zeros((b, ph, pw, k), jnp.float32)
    for n, (y, x) in enumerate(boxes):
        window_logits = logits[:, n] * weight[None, :, :, None] if gaussian else logits[:, n]
        total = total.at[:, y : y + ch, x : x + cw].add(window_logits)
        total_weight[y : y + ch, x : x + cw] += weight
    return (total / total_weight[None, :, :, None])[:, :h, :w]


def single_view_logits(
    apply_fn: ApplyFn, images: jax.Array, mode: InferenceMode, window_sharding: Any = None
) -> jax.Array:
    """Logits [B, H, W, K] of one view (no TTA) in `mode.mode`."""
    if mode.mode == "whole":
        return whole_logits(apply_fn, images)
    return sliding_window_logits(
        apply_fn,
        images,
        crop_size=mode.crop_size,
        stride=mode.stride,
        gaussian=mode.gaussian,
        window_sharding=window_sharding,
    )


def _mirror(x: jax.Array) -> jax.Array:
    # Horizontal flip of [B, H, W, C]. The barrier keeps XLA's algebraic simplifier from
    # pushing the reverse into the neighbouring resize ops, which crashes the CPU compiler
    # of jaxlib 0.10 ("Invalid binary instruction opcode map") for scales + flip.
    return jax.lax.optimization_barrier(x)[:, :, ::-1]


def predict(
    apply_fn: ApplyFn, images: jax.Array, mode: InferenceMode, *, window_sharding: Any = None
) -> jax.Array:
    """Class scores [B, H, W, K] of `images` [B, H, W, C] in `mode`, at input resolution.

    Each scale `s` resizes the batch (bilinear) to `round(H s) x round(W s)`, predicts it
    (and its mirror image when `mode.flip`, whose scores are mirrored back) and resizes
    the scores back to H x W. One view returns its logits unchanged (so `whole` mode is
    bit-identical to calling the model); several views return the mean of their softmax
    probabilities.
    """
    b, h, w, c = images.shape
    views = []
    for scale in mode.scales:
        size = (max(round(h * scale), 1), max(round(w * scale), 1))
        scaled = images if size == (h, w) else jax.image.resize(images, (b, *size, c), "bilinear")
        flips = (False, True) if mode.flip else (False,)
        for flip in flips:
            x = _mirror(scaled) if flip else scaled
            logits = single_view_logits(apply_fn, x, mode, window_sharding)
            if flip:
                logits = _mirror(logits)
            if size != (h, w):
                logits = jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear")
            views.append(logits)
    if len(views) == 1:
        return views[0]
    return sum(jax.nn.softmax(v, axis=-1) for v in views) / len(views)


def resize_to_original(
    scores: jax.Array,
    resized_hw: jax.Array,
    original_hw: jax.Array,
    out_shape: Sequence[int],
) -> jax.Array:
    """Scores of resized images back to each image's original size (bilinear).

    Image i occupies the top-left `resized_hw[i]` of the canvas; its scores are resampled
    so that the top-left `original_hw[i]` of the output holds them at the original
    resolution (half-pixel centres, like cv2 / `align_corners=False`). Outside the
    resized region the canvas holds padding, so the border row and column are repeated
    before resampling, and nothing of the padding leaks into the image.

    Args:
      scores: float [B, Hc, Wc, K] at the model's canvas.
      resized_hw: int [B, 2], each image's size on the canvas.
      original_hw: int [B, 2], each image's original size.
      out_shape: static (Ho, Wo), the output canvas (at least every original size).

    Returns:
      float32 [B, Ho, Wo, K]; values outside `original_hw[i]` are meaningless (the
      labels there are `ignore_index`).
    """
    _, hc, wc, k = scores.shape
    ho, wo = int(out_shape[0]), int(out_shape[1])

    def one(s, rhw, ohw):
        rhw = jnp.maximum(rhw, 1)
        rows = jnp.minimum(jnp.arange(hc), rhw[0] - 1)
        cols = jnp.minimum(jnp.arange(wc), rhw[1] - 1)
        s = s[rows][:, cols]
        scale = ohw.astype(jnp.float32) / rhw.astype(jnp.float32)
        return jax.image.scale_and_translate(
            s,
            (ho, wo, k),
            (0, 1),
            scale,
            jnp.zeros((2,), jnp.float32),
            method="linear",
            antialias=False,
        )

    return jax.vmap(one)(scores.astype(jnp.float32), resized_hw, original_hw)


def fit_size(height: int, width: int, target: Sequence[int]) -> tuple[int, int]:
    """The (h, w) of an image resized, keeping its aspect ratio, to fit in `target`."""
    ratio = min(target[0] / height, target[1] / width)
    return max(round(height * ratio), 1), max(round(width * ratio), 1)


def crf_params(config: ml_collections.ConfigDict) -> crf.CRFParams | None:
    """The dense CRF of a config's `eval.crf` block when enabled; None when off or absent."""
    block = config.eval.get("crf")
    if block is None or not block.enabled:
        return None
    return crf.CRFParams.from_config(block)


def crf_refine(
    scores: jax.Array,
    images: jax.Array,
    params: crf.CRFParams,
    *,
    num_views: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
    """`predict`'s scores refined by the dense CRF (`segjax.crf.dense_crf`), same convention.

    Args:
      scores: [B, H, W, K] from `predict`: logits (one view) or mean probabilities.
      images: the normalised model input [B, H, W, 3]; `* std + mean` gives the RGB
        (0-255) colours of the appearance kernel.
      params: the CRF.
      num_views: `mode.num_views` (1: `scores` are logits).
      mean, std: the input normalisation (`config.input.mean/std`, 0-255 units).

    Returns:
      [B, H, W, K]: log Q (logits-like, so softmax gives Q) for one view, else Q.
    """
    probs = jax.nn.softmax(scores, axis=-1) if num_views == 1 else scores
    rgb = images.astype(jnp.float32) * jnp.asarray(std, jnp.float32) + jnp.asarray(
        mean, jnp.float32
    )
    q = crf.dense_crf(probs, rgb, params)
    return jnp.log(jnp.maximum(q, 1e-30)) if num_views == 1 else q


def make_predict_fn(
    model,
    mode: InferenceMode,
    *,
    window_sharding: Any = None,
    crf_params: crf.CRFParams | None = None,
    image_mean: Sequence[float] = (0.0, 0.0, 0.0),
    image_std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Callable:
    """`predict_fn(variables, images [B, H, W, C]) -> scores [B, H, W, K]` (pure, jittable).

    `variables` are `{"params", "batch_stats"}`; the model runs in eval mode. With
    `crf_params`, the scores are refined by the dense CRF (`crf_refine`, whose colours
    are `images * image_std + image_mean`).
    """

    def predict_fn(variables, images):
        def apply_fn(x):
            return model.apply(variables, x, train=False)["logits"]

        scores = predict(apply_fn, images, mode, window_sharding=window_sharding)
        if crf_params is None:
            return scores
        return crf_refine(
            scores, images, crf_params, num_views=mode.num_views, mean=image_mean, std=image_std
        )

    return predict_fn
