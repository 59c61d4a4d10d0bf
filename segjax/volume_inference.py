"""Sliding-window inference over volumes (N-D), as MONAI's `sliding_window_inference`.

One pure jnp function with static shapes, so that a whole volume's prediction is one
`jax.jit` program whatever the number of windows:

- the volume is zero-padded (MONAI: symmetrically, `cval`) up to the window where it is
  smaller, and the prediction cropped back;
- windows of `roi_size` start every `interval = int(roi * (1 - overlap))` voxels along
  each axis (the whole axis when the window covers it), the last one moved back to touch
  the border (MONAI's `dense_patch_slices`);
- the windows go through the model `window_batch` positions at a time (MONAI's
  `sw_batch_size`; each call sees `B * window_batch` windows), inside one `lax.scan`, so
  the program's size does not grow with the number of windows;
- each window's logits are weighted by an importance map (`"constant"`: ones;
  `"gaussian"`: a separable Gaussian of sigma `sigma_scale * roi` per axis, peak 1,
  clamped below at `max(min, 1e-3)`, MONAI's `compute_importance_map`), added into the
  output, and the sum divided by the summed weights.

Example:
    >>> apply_fn = lambda x: model.apply(variables, x, train=False)["logits"]
    >>> logits = jax.jit(lambda v: sliding_window_inference(
    ...     apply_fn, v, roi_size=(64, 64, 64), overlap=0.5, mode="gaussian"))(volumes)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BLEND_MODES = ("constant", "gaussian")

__all__ = [
    "BLEND_MODES",
    "importance_map",
    "scan_interval",
    "sliding_window_inference",
    "window_starts",
]


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple:
    """MONAI's step between windows per axis: the roi where it covers the axis, else
    `int(roi * (1 - overlap))`, at least 1."""
    out = []
    for size, roi in zip(image_size, roi_size, strict=True):
        out.append(roi if roi == size else max(int(roi * (1 - overlap)), 1))
    return tuple(out)


def window_starts(size: int, roi: int, interval: int) -> list[int]:
    """Start offsets along one axis: every `interval` until a window reaches the end, the
    last one moved back so that it ends at `size` (`size >= roi`)."""
    starts = []
    for i in range(max(math.ceil(size / interval), 1)):
        start = i * interval
        starts.append(min(start, size - roi))
        if start + roi >= size:
            break
    return starts


def importance_map(
    roi_size: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125
) -> np.ndarray:
    """float32 `roi_size` weights of a window's voxels (MONAI's `compute_importance_map`).

    `"constant"`: all ones. `"gaussian"`: the product over axes of
    `exp(-x^2 / (2 (sigma_scale * roi)^2))` with `x` the offset from the window centre,
    clamped below at `max(min, 1e-3)` so that no voxel has weight 0.
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode {mode!r}; expected one of {BLEND_MODES}")
    if mode == "constant":
        return np.ones(tuple(roi_size), np.float32)
    weights = np.ones((), np.float64)
    for roi in roi_size:
        x = np.arange(roi, dtype=np.float64) - (roi - 1) / 2.0
        g = np.exp(-(x**2) / (2 * (roi * sigma_scale) ** 2))
        weights = np.multiply.outer(weights, g)
    weights = weights.astype(np.float32)
    return np.maximum(weights, max(float(weights.min()), 1e-3))


def sliding_window_inference(
    apply_fn: Callable[[jax.Array], jax.Array],
    volumes: jax.Array,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    mode: str = "constant",
    sigma_scale: float = 0.125,
    window_batch: int = 1,
    cval: float = 0.0,
) -> jax.Array:
    """Logits of overlapping windows, blended by an importance map.

    Args:
      apply_fn: `[n, *roi_size, C] -> [n, *roi_size, K]` logits (channels last).
      volumes: float [B, *spatial, C] (e.g. [B, D, H, W, C]).
      roi_size: the window's spatial size.
      overlap: share of a window that its neighbour overlaps, in [0, 1).
      mode: `"constant"` or `"gaussian"` importance (see `importance_map`).
      sigma_scale: the Gaussian's sigma as a share of the window.
      window_batch: window positions per model call (MONAI's `sw_batch_size`).
      cval: value of the padding of volumes smaller than the window.

    Returns:
      float32 [B, *spatial, K]: per voxel, the weighted mean of the logits of the windows
      that hold it.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    spatial = tuple(int(s) for s in volumes.shape[1:-1])
    roi = tuple(int(r) for r in roi_size)
    if len(roi) != len(spatial):
        raise ValueError(f"roi_size {roi} must have one size per spatial axis of {spatial}")
    b, c = volumes.shape[0], volumes.shape[-1]
    padded = tuple(max(s, r) for s, r in zip(spatial, roi, strict=True))
    before = [(p - s) // 2 for p, s in zip(padded, spatial, strict=True)]
    if padded != spatial:
        pads = [(0, 0)] + [
            (lo, p - s - lo) for lo, p, s in zip(before, padded, spatial, strict=True)
        ]
        volumes = jnp.pad(volumes, [*pads, (0, 0)], constant_values=cval)
    interval = scan_interval(padded, roi, overlap)
    per_axis = [window_starts(p, r, i) for p, r, i in zip(padded, roi, interval, strict=True)]
    starts = np.asarray(list(itertools.product(*per_axis)), np.int32)  # [N, ndim]
    weights = importance_map(roi, mode, sigma_scale)

    # The count map is the same for every volume: summed on the host.
    count = np.zeros(padded, np.float32)
    for start in starts:
        count[tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))] += weights

    # Groups of `window_batch` positions; the last is filled with repeats of weight 0.
    groups = -(-len(starts) // window_batch)
    fill = groups * window_batch - len(starts)
    group_starts = np.concatenate([starts, np.repeat(starts[-1:], fill, 0)])
    group_scale = np.concatenate([np.ones(len(starts)), np.zeros(fill)]).astype(np.float32)
    group_starts = group_starts.reshape(groups, window_batch, len(roi))
    group_scale = group_scale.reshape(groups, window_batch)
    w = jnp.asarray(weights)[None, ..., None]
    zero = jnp.zeros((), jnp.int32)

    def cut(start):
        return jax.lax.dynamic_slice(volumes, (zero, *start, zero), (b, *roi, c))

    def step(total, group):
        g_starts, g_scale = group
        windows = jax.vmap(cut)(g_starts)  # [G, B, *roi, C]
        windows = jnp.swapaxes(windows, 0, 1).reshape(b * window_batch, *roi, c)
        logits = apply_fn(windows).astype(jnp.float32)
        logits = logits.reshape(b, window_batch, *roi, logits.shape[-1])
        for j in range(window_batch):
            index = (zero, *g_starts[j], zero)
            current = jax.lax.dynamic_slice(total, index, (b, *roi, total.shape[-1]))
            total = jax.lax.dynamic_update_slice(
                total, current + logits[:, j] * w * g_scale[j], index
            )
        return total, None

    k = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((b, *roi, c), volumes.dtype)).shape[-1]
    total = jnp.zeros((b, *padded, k), jnp.float32)
    total, _ = jax.lax.scan(step, total, (jnp.asarray(group_starts), jnp.asarray(group_scale)))
    out = total / jnp.asarray(count)[None, ..., None]
    if padded != spatial:
        out = out[
            (slice(None), *(slice(lo, lo + s) for lo, s in zip(before, spatial, strict=True)))
        ]
    return out
