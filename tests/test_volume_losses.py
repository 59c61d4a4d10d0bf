"""The segmentation losses on volumes [B, D, H, W, K] (segjax.losses is dimension-generic)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses

K = 3


def _volume_batch(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 4, 5, 6, K)).astype(np.float32)
    labels = rng.integers(0, K, (2, 4, 5, 6)).astype(np.int32)
    labels[0, 1, 2] = 255
    return logits, labels


# Sums and means over voxels: the value cannot depend on how the voxels are laid out.
VOXELWISE = ["cross_entropy", "focal", "dice", "lovasz"] + [
    pytest.param(n, marks=pytest.mark.slow)
    for n in ("ohem_cross_entropy", "topk_cross_entropy", "jaccard", "tversky")
]


@pytest.mark.parametrize("name", VOXELWISE)
def test_voxelwise_and_region_losses_equal_their_2d_value_on_the_flattened_volume(name):
    logits, labels = _volume_batch()
    fn = jax.jit(losses.build_loss(name))
    value = fn(jnp.asarray(logits), jnp.asarray(labels))
    flat = fn(jnp.asarray(logits.reshape(2, 20, 6, K)), jnp.asarray(labels.reshape(2, 20, 6)))
    np.testing.assert_allclose(value, flat, rtol=1e-5)
    assert np.isfinite(float(value))


def test_soft_dice_is_vnets_formulation_in_3d():
    # Milletari et al.: D = 2 sum(p g) / (sum p^2 + sum g^2), per class over the batch.
    logits, labels = _volume_batch(1)
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
    valid = labels != 255
    dice = []
    for k in range(K):
        g = ((labels == k) & valid).astype(np.float64)
        pk = p[..., k] * valid
        dice.append((2 * (pk * g).sum() + 1) / ((pk**2).sum() + (g**2).sum() + 1))
    expected = 1 - np.mean(dice)
    got = jax.jit(lambda x, y: losses.dice_loss(x, y, exponent=2, smooth=1.0))(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_active_contour_in_3d_matches_a_loop():
    logits, labels = _volume_batch(2)
    labels[:] = np.where(labels == 255, 0, labels)
    u = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1), np.float64)
    v = np.eye(K)[labels]
    region = np.mean(u * (v - 1) ** 2 + (1 - u) * v**2)
    lengths = []
    b, d, h, w, _ = u.shape
    for n in range(b):
        for z in range(d - 1):
            for y in range(h - 1):
                for x in range(w - 1):
                    c = u[n, z, y, x]
                    sq = (u[n, z + 1, y, x] - c) ** 2 + (u[n, z, y + 1, x] - c) ** 2
                    sq += (u[n, z, y, x + 1] - c) ** 2
                    lengths.append(np.mean(np.sqrt(sq + 1e-8)))
    got = jax.jit(losses.active_contour_loss)(logits, labels)
    np.testing.assert_allclose(got, np.mean(lengths) + region, rtol=1e-5)
