"""Dice and Hausdorff 95 of segjax.volume_metrics against brute force written here."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import volume_metrics


def _surface_points(mask):
    # A voxel of the mask with a 6-neighbour outside the mask or outside the volume.
    points = []
    for idx in zip(*np.nonzero(mask), strict=True):
        for axis, delta in itertools.product(range(mask.ndim), (-1, 1)):
            n = list(idx)
            n[axis] += delta
            if not 0 <= n[axis] < mask.shape[axis] or not mask[tuple(n)]:
                points.append(idx)
                break
    return np.asarray(points, np.float64).reshape(-1, mask.ndim)


def _brute_hd(a, b, spacing, q=95):
    pa, pb = _surface_points(a) * spacing, _surface_points(b) * spacing
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


def _blob(rng, shape, p):
    from scipy import ndimage

    return ndimage.binary_opening(rng.random(shape) < p) | (rng.random(shape) < 0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_over_surface_points(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 7)
    a, b = _blob(rng, shape, 0.55), _blob(rng, shape, 0.5)
    spacing = (2.0, 0.7, 1.3)
    got = volume_metrics.hausdorff_distance(a, b, spacing)
    np.testing.assert_allclose(got, _brute_hd(a, b, np.asarray(spacing)), rtol=1e-9)
    full = volume_metrics.hausdorff_distance(a, b, spacing, percentile=None)
    np.testing.assert_allclose(full, _brute_hd(a, b, np.asarray(spacing), q=100), rtol=1e-9)


def test_hd95_by_hand_and_empty_conventions():
    a = np.zeros((5, 5, 5), bool)
    b = np.zeros((5, 5, 5), bool)
    a[1, 2, 2] = True
    b[4, 2, 2] = True
    # 3 voxels apart along the first axis, spaced 2 mm: 6 mm both ways.
    assert volume_metrics.hausdorff_distance(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert np.isnan(volume_metrics.hausdorff_distance(a & False, b & False))
    assert volume_metrics.hausdorff_distance(a, b & False) == np.inf
    assert volume_metrics.hausdorff_distance(a & False, b) == np.inf


def test_dice_terms_match_a_numpy_loop():
    rng = np.random.default_rng(3)
    k, ignore = 3, 255
    logits = rng.normal(size=(2, 6, 5, 4, k)).astype(np.float32)
    labels = rng.integers(0, k, (2, 6, 5, 4)).astype(np.int32)
    labels[0, 0] = ignore
    labels[1][labels[1] == 2] = 0  # class 2 absent from volume 1: NaN Dice
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
    pred = probs.argmax(-1)
    terms = jax.jit(lambda p, q, y: volume_metrics.dice_terms(p, q, y, ignore_index=ignore))(
        probs, pred, labels
    )
    hard, soft = volume_metrics.dice_from_terms(np.asarray(terms))
    for v in range(2):
        valid = labels[v] != ignore
        for c in range(k):
            g = (labels[v] == c) & valid
            p = (pred[v] == c) & valid
            if not g.any():
                assert np.isnan(hard[v, c]) and np.isnan(soft[v, c])
                continue
            np.testing.assert_allclose(hard[v, c], 2 * (p & g).sum() / (p.sum() + g.sum()))
            s = probs[v, ..., c] * valid
            np.testing.assert_allclose(
                soft[v, c], 2 * (s * g).sum() / (s.sum() + g.sum()), rtol=1e-5
            )
    assert np.isnan(hard[1, 2])


def test_volume_scores_average_defined_values_and_count_infinite_ones():
    hard = np.array([[0.9, 0.5, np.nan], [0.7, 0.3, 0.2]])
    hd = np.array([[1.0, 2.0, np.nan], [3.0, np.inf, 4.0]])
    scores = volume_metrics.volume_scores(hard, hard, hd, include=np.array([False, True, True]))
    np.testing.assert_allclose(scores["dice"], [0.8, 0.4, 0.2])
    np.testing.assert_allclose(scores["hd95"], [2.0, 2.0, 4.0])
    np.testing.assert_array_equal(scores["hd95_infinite"], [0, 1, 0])
    np.testing.assert_array_equal(scores["volumes"], [2, 2, 1])
    assert scores["mean_dice"] == pytest.approx(0.3)
    assert scores["mean_hd95"] == pytest.approx(3.0)
