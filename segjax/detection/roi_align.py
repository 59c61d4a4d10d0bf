"""RoIAlign (He et al., Mask R-CNN) over one feature map or an FPN, by gathers.

Each output bin of a box averages `sampling_ratio x sampling_ratio` bilinear samples at
regularly spaced points; a sample more than one pixel outside the map counts 0, and
coordinates in `[-1, 0)` are clamped to 0, as torchvision's kernel. `aligned=True`
shifts box coordinates by -0.5 pixel (Detectron2's pixel model); `aligned=False` is the
legacy one with boxes at least 1 x 1. The sampling ratio is fixed (> 0): torchvision's
adaptive `sampling_ratio=-1` would give data-dependent sample counts.

Implementation: the four neighbours of every sample are gathered from the flattened
features (all FPN levels concatenated, so each box reads its own level with one gather)
and weighted; cost and memory grow with boxes x bins x samples x channels, not with the
feature map's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _axis_samples(start, size, bins: int, ratio: int, length):
    """Per axis: `(low, high, w_low, w_high)` `[..., bins * ratio]` of the bilinear taps.

    `start`, `size`: `[...]` box start and extent in feature pixels; `length`: `[...]`
    the feature map's length along this axis. Weights are 0 for samples outside
    `[-1, length]`.
    """
    bin_size = size / bins
    i = jnp.arange(bins * ratio)
    offsets = (i // ratio) + ((i % ratio) + 0.5) / ratio
    p = start[..., None] + offsets * bin_size[..., None]
    length = length[..., None]
    inside = (p >= -1.0) & (p <= length)
    p = jnp.maximum(p, 0.0)
    low = jnp.floor(p).astype(jnp.int32)
    at_end = low >= length - 1
    low = jnp.where(at_end, length - 1, low).astype(jnp.int32)
    high = jnp.where(at_end, length - 1, low + 1).astype(jnp.int32)
    p = jnp.where(at_end, low.astype(p.dtype), p)
    frac = p - low
    w_low = jnp.where(inside, 1.0 - frac, 0.0)
    w_high = jnp.where(inside, frac, 0.0)
    return low, high, w_low, w_high


def _align_flat(
    flat: Array,
    boxes: Array,
    heights: Array,
    widths: Array,
    offsets: Array,
    scales: Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    channels: Array | None = None,
) -> Array:
    """RoIAlign of `boxes` `[B, R, 4]` from `flat` `[B, N, C]` (levels concatenated).

    `heights`, `widths`, `offsets` (first flat index of the level) and `scales`
    (spatial scale): `[B, R]`, the level each box reads. With `channels` `[B, R]` int,
    box `r` reads only channel `channels[b, r]` (output channel dim 1).
    """
    ph, pw = output_size
    s = sampling_ratio
    shift = 0.5 if aligned else 0.0
    x1 = boxes[..., 0] * scales - shift
    y1 = boxes[..., 1] * scales - shift
    x2 = boxes[..., 2] * scales - shift
    y2 = boxes[..., 3] * scales - shift
    bw, bh = x2 - x1, y2 - y1
    if not aligned:
        bw, bh = jnp.maximum(bw, 1.0), jnp.maximum(bh, 1.0)
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, bh, ph, s, heights)  # [B, R, ph*s]
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, bw, pw, s, widths)  # [B, R, pw*s]
    base = offsets[..., None, None]
    w = widths[..., None, None]

    source = flat if channels is None else flat.reshape(flat.shape[0], -1)

    def tap(ys, xs):
        index = base + ys[..., :, None] * w + xs[..., None, :]  # [B, R, ph*s, pw*s]
        if channels is not None:
            index = index * flat.shape[-1] + channels[..., None, None]
        got = jax.vmap(lambda f, i: f[i])(source, index.reshape(index.shape[0], -1))
        return got.reshape(*index.shape, -1)

    def weight(wy, wx):
        return (wy[..., :, None] * wx[..., None, :])[..., None]

    out = (
        weight(wy_lo, wx_lo) * tap(y_lo, x_lo)
        + weight(wy_lo, wx_hi) * tap(y_lo, x_hi)
        + weight(wy_hi, wx_lo) * tap(y_hi, x_lo)
        + weight(wy_hi, wx_hi) * tap(y_hi, x_hi)
    )
    b, r = boxes.shape[:2]
    out = out.reshape(b, r, ph, s, pw, s, out.shape[-1])
    return jnp.mean(out, axis=(3, 5))


def _align_one_level(
    features: Array,
    boxes: Array,
    output_size: Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    channels: Array | None = None,
) -> Array:
    """`_align_flat` over one feature map `[B, H, W, C]` for every box `[B, R, 4]` (float32)."""
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio={sampling_ratio}: expected >= 1 (static sample count)")
    b, h, w, c = features.shape
    r = boxes.shape[1]

    def full(v, dtype):
        return jnp.full((b, r), v, dtype)

    return _align_flat(
        features.reshape(b, h * w, c).astype(jnp.float32),
        boxes.astype(jnp.float32),
        full(h, jnp.int32),
        full(w, jnp.int32),
        full(0, jnp.int32),
        full(spatial_scale, jnp.float32),
        tuple(output_size),
        sampling_ratio,
        aligned,
        channels=channels,
    )


def roi_align(
    features: Array,
    boxes: Array,
    output_size: Sequence[int],
    *,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Array:
    """RoIAlign of `boxes` `[B, R, 4]` (image pixels) from `features` `[B, H, W, C]`.

    Returns `[B, R, ph, pw, C]` in the features' dtype (computed in float32). Box `r` of
    image `b` reads image `b`'s features; `spatial_scale` maps image to feature pixels
    (1 / stride). As `torchvision.ops.roi_align(..., sampling_ratio > 0)`.
    """
    out = _align_one_level(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return out.astype(features.dtype)


def roi_align_channel(
    features: Array,
    boxes: Array,
    channels: Array,
    output_size: Sequence[int],
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Array:
    """`[B, R, ph, pw]` float32: RoIAlign of box `r` from channel `channels[b, r]` only.

    `features` `[B, H, W, G]` (e.g. an image's G ground-truth masks), `boxes` `[B, R, 4]`,
    `channels` `[B, R]` int in `[0, G)`. Equals `roi_align(...)[..., channel]` without
    sampling the other channels (Mask R-CNN's mask targets, torchvision's
    `project_masks_on_boxes`).
    """
    g = features.shape[-1]
    channels = jnp.clip(channels, 0, g - 1).astype(jnp.int32)
    out = _align_one_level(
        features, boxes, output_size, spatial_scale, sampling_ratio, aligned, channels
    )
    return out[..., 0]


def fpn_levels(
    boxes: Array,
    k_min: int,
    k_max: int,
    *,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Array:
    """Level index in `[0, k_max - k_min]` of each box `[..., 4]` (torchvision's `LevelMapper`).

    `floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)`, clamped to
    `[k_min, k_max]`, minus `k_min` (FPN paper, eq. 1). Zero-area boxes go to `k_min`.
    """
    area = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(
        boxes[..., 3] - boxes[..., 1], 0
    )
    s = jnp.sqrt(area)
    level = jnp.floor(canonical_level + jnp.log2(jnp.maximum(s, 1e-12) / canonical_scale) + eps)
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence[Array],
    strides: Sequence[int],
    boxes: Array,
    output_size: Sequence[int],
    *,
    sampling_ratio: int = 2,
    aligned: bool = True,
    levels: Array | None = None,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Array:
    """RoIAlign from the FPN level of each box (torchvision's `MultiScaleRoIAlign`).

    Args:
      features: per level `[B, H_l, W_l, C]`, finest first (P2-P5 in Mask R-CNN).
      strides: per level, a power of 2 (4, 8, 16, 32); level `l` is FPN level
        `log2(strides[l])`.
      boxes: `[B, R, 4]` in image pixels.
      output_size: `(ph, pw)`.
      sampling_ratio, aligned: as `roi_align`.
      levels: optional `[B, R]` int level index per box (default: `fpn_levels` by size);
        PANet's adaptive pooling passes each level in turn.
      canonical_scale, canonical_level: `fpn_levels`' eq. 1 constants.

    Returns:
      `[B, R, ph, pw, C]` in the features' dtype.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio={sampling_ratio}: expected >= 1 (static sample count)")
    k = [round(float(np.log2(s))) for s in strides]
    if [2**x for x in k] != list(strides) or k != list(range(k[0], k[0] + len(k))):
        raise ValueError(f"strides {tuple(strides)}: expected consecutive powers of 2")
    if levels is None:
        levels = fpn_levels(
            boxes,
            k[0],
            k[-1],
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )
    b, c = features[0].shape[0], features[0].shape[-1]
    flat = jnp.concatenate([f.reshape(b, -1, c) for f in features], axis=1).astype(jnp.float32)
    hs = np.array([f.shape[1] for f in features], np.int32)
    ws = np.array([f.shape[2] for f in features], np.int32)
    starts = np.concatenate([[0], np.cumsum(hs * ws)[:-1]]).astype(np.int32)
    scales = 1.0 / np.asarray(strides, np.float32)
    out = _align_flat(
        flat,
        boxes.astype(jnp.float32),
        jnp.asarray(hs)[levels],
        jnp.asarray(ws)[levels],
        jnp.asarray(starts)[levels],
        jnp.asarray(scales)[levels],
        tuple(output_size),
        sampling_ratio,
        aligned,
    )
    return out.astype(features[0].dtype)
