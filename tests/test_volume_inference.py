"""segjax.volume_inference against a numpy loop over windows written here (MONAI's rules)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import volume_inference


def _window_fn(x):
    # Depends on the whole window (its mean), so blending and placement both matter.
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return x * mean + 0.1 * x**2 - mean


def _gaussian(roi, sigma_scale):
    grids = np.meshgrid(*[np.arange(r) - (r - 1) / 2 for r in roi], indexing="ij")
    w = np.ones(roi)
    for g, r in zip(grids, roi, strict=True):
        w = w * np.exp(-(g**2) / (2 * (sigma_scale * r) ** 2))
    return np.maximum(w, max(w.min(), 1e-3))


def _reference(volumes, roi, overlap, mode, sigma_scale=0.125):
    """MONAI's sliding_window_inference as a plain loop: pad, windows, blend, crop."""
    b, *spatial, c = volumes.shape
    padded_size = [max(s, r) for s, r in zip(spatial, roi, strict=True)]
    lo = [(p - s) // 2 for p, s in zip(padded_size, spatial, strict=True)]
    x = np.zeros((b, *padded_size, c))
    x[:, lo[0] : lo[0] + spatial[0], lo[1] : lo[1] + spatial[1], lo[2] : lo[2] + spatial[2]] = (
        volumes
    )
    starts = []
    for p, r in zip(padded_size, roi, strict=True):
        step = r if p == r else max(int(r * (1 - overlap)), 1)
        axis, s = [], 0
        while True:
            axis.append(min(s, p - r))
            if s + r >= p:
                break
            s += step
        starts.append(axis)
    w = _gaussian(roi, sigma_scale) if mode == "gaussian" else np.ones(roi)
    out = np.zeros(x.shape)
    count = np.zeros(padded_size)
    for z in starts[0]:
        for y in starts[1]:
            for xx in starts[2]:
                sl = (slice(z, z + roi[0]), slice(y, y + roi[1]), slice(xx, xx + roi[2]))
                window = x[(slice(None), *sl)]
                out[(slice(None), *sl)] += _window_fn(window) * w[None, ..., None]
                count[sl] += w
    out /= count[None, ..., None]
    return out[
        :, lo[0] : lo[0] + spatial[0], lo[1] : lo[1] + spatial[1], lo[2] : lo[2] + spatial[2]
    ]


def test_window_starts_follow_monai():
    # 13 voxels, window 8, overlap 0.5: every 4 voxels, the last moved back to end at 13.
    assert volume_inference.scan_interval((13, 8, 20), (8, 8, 8), 0.5) == (4, 8, 4)
    assert volume_inference.window_starts(13, 8, 4) == [0, 4, 5]
    assert volume_inference.window_starts(8, 8, 8) == [0]
    assert volume_inference.window_starts(20, 8, 4) == [0, 4, 8, 12]


@pytest.mark.parametrize(
    "shape, roi, overlap, mode, window_batch",
    [
        ((2, 13, 17, 9, 2), (8, 8, 8), 0.5, "gaussian", 3),  # a last group of repeats
        ((1, 9, 12, 7, 1), (10, 6, 7), 0.25, "constant", 2),  # depth padded up to the roi
        ((2, 11, 8, 10, 1), (6, 8, 5), 0.0, "gaussian", 1),
    ],
)
def test_sliding_window_matches_a_loop_over_windows(shape, roi, overlap, mode, window_batch):
    volumes = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    fn = jax.jit(
        lambda v: volume_inference.sliding_window_inference(
            _window_fn, v, roi_size=roi, overlap=overlap, mode=mode, window_batch=window_batch
        )
    )
    out = fn(jnp.asarray(volumes))
    assert out.shape == shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), _reference(volumes, roi, overlap, mode), atol=2e-5)


def test_importance_map_is_monai_gaussian():
    w = volume_inference.importance_map((5, 8, 3), "gaussian", 0.125)
    np.testing.assert_allclose(w, _gaussian((5, 8, 3), 0.125), rtol=1e-6)
    assert w.dtype == np.float32 and w.min() >= 1e-3
    np.testing.assert_array_equal(volume_inference.importance_map((2, 3), "constant"), 1.0)
    with pytest.raises(ValueError, match="blend mode 'median'"):
        volume_inference.importance_map((2, 3), "median")
