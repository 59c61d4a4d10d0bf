"""Dense CRF mean-field inference against plain loops over all pixel pairs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import crf


def _loop_mean_field(unary, image, p: crf.CRFParams, mu):
    # The update of Krähenbühl & Koltun written pixel pair by pixel pair.
    h, w, k = unary.shape
    pix = [(y, x) for y in range(h) for x in range(w)]
    kern = np.zeros((h * w, h * w))
    for i, (yi, xi) in enumerate(pix):
        for j, (yj, xj) in enumerate(pix):
            if i == j:
                continue
            d_pos = (yi - yj) ** 2 + (xi - xj) ** 2
            d_rgb = float(np.sum((image[yi, xi] - image[yj, xj]) ** 2))
            kern[i, j] = p.bilateral_weight * math.exp(
                -d_pos / (2 * p.theta_alpha**2) - d_rgb / (2 * p.theta_beta**2)
            ) + p.spatial_weight * math.exp(-d_pos / (2 * p.theta_gamma**2))
    u = unary.reshape(h * w, k).astype(np.float64)
    q = np.exp(-u) / np.exp(-u).sum(-1, keepdims=True)
    for _ in range(p.iterations):
        new = np.zeros_like(q)
        for i in range(h * w):
            energy = u[i].copy()
            for label in range(k):
                for j in range(h * w):
                    for other in range(k):
                        energy[label] += mu[label, other] * kern[i, j] * q[j, other]
            e = np.exp(-(energy - energy.min()))
            new[i] = e / e.sum()
        q = new
    return q.reshape(h, w, k)


def _image(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2] = (200, 30, 30)
    img[h // 2 :] = (30, 60, 210)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.float32)


def test_mean_field_matches_pairwise_loops():
    rng = np.random.default_rng(0)
    h, w, k = 4, 3, 3
    image = _image(rng, h, w)
    unary = rng.normal(0, 1.5, (h, w, k)).astype(np.float32)
    mu = rng.uniform(0, 1.5, (k, k)).astype(np.float32)
    p = crf.CRFParams(
        iterations=3,
        bilateral_weight=1.3,
        theta_alpha=2.0,
        theta_beta=40.0,
        spatial_weight=0.8,
        theta_gamma=1.5,
        method="dense",
    )
    want = _loop_mean_field(unary, image, p, mu)
    got = jax.jit(lambda u, im: crf.mean_field(u, im, p, mu))(unary, image)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    # Potts is the default compatibility.
    potts = _loop_mean_field(unary, image, p, crf.potts(k))
    np.testing.assert_allclose(np.asarray(crf.mean_field(unary, image, p)), potts, atol=2e-5)


def test_spatial_filter_is_exact():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.uniform(size=(5, 7, 2)), jnp.float32)
    pos = crf.bilateral_features(jnp.zeros((5, 7, 3)), 2.0, 1.0)[..., :2].reshape(35, 2)
    want = crf.dense_filter(pos, q.reshape(35, 2)).reshape(5, 7, 2)
    np.testing.assert_allclose(crf.spatial_filter(q, 2.0), want, rtol=1e-5, atol=1e-5)


def test_grid_filter_error_against_exact():
    # The figure docs/crf.md quotes: relative L2 error of the bilateral grid (spacing 1).
    rng = np.random.default_rng(2)
    h, w = 12, 12
    image = jnp.asarray(_image(rng, h, w))
    q = jax.nn.softmax(jnp.asarray(rng.normal(0, 2, (h, w, 3)), jnp.float32), -1)
    feats = crf.bilateral_features(image, 6.0, 40.0).reshape(h * w, 5)
    exact = crf.dense_filter(feats, q.reshape(h * w, 3)).reshape(h, w, 3)
    approx = jax.jit(lambda im, v: crf.grid_filter(im, v, 6.0, 40.0, 1.0))(image, q)
    rel = float(jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact))
    assert rel < 0.1, rel


def test_energy_decreases_over_iterations():
    rng = np.random.default_rng(3)
    h, w, k = 8, 8, 3
    image = jnp.asarray(_image(rng, h, w))
    unary = jnp.asarray(rng.normal(0, 1.0, (h, w, k)), jnp.float32)
    p = crf.CRFParams(
        iterations=6,
        bilateral_weight=2.0,
        theta_alpha=4.0,
        theta_beta=30.0,
        spatial_weight=1.0,
        theta_gamma=1.0,
        method="dense",
    )

    def energies(u, im):
        _, history = crf.mean_field(u, im, p, return_history=True)
        q0 = jax.nn.softmax(-u, -1)
        qs = jnp.concatenate([q0[None], history])
        return jax.vmap(lambda q: crf.mean_field_energy(q, u, im, p))(qs)

    e = np.asarray(jax.jit(energies)(unary, image))
    assert np.all(np.diff(e) <= 1e-4 * np.abs(e[:-1])), e
    assert e[-1] < e[0] - 1.0, e


@pytest.mark.parametrize(
    "field, value",
    [("iterations", 0), ("theta_alpha", -1.0), ("theta_beta", 0.0), ("theta_gamma", -3.0)],
)
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        crf.CRFParams(**{field: value})


def test_crf_refine_keeps_the_score_convention():
    from segjax import inference

    rng = np.random.default_rng(4)
    rgb = _image(rng, 5, 6)[None]
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    images = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    logits = jnp.asarray(rng.normal(0, 2, (1, 5, 6, 3)), jnp.float32)
    p = crf.CRFParams(iterations=2, theta_alpha=3.0, theta_beta=30.0, theta_gamma=1.0)
    want = crf.dense_crf(jax.nn.softmax(logits, -1), jnp.asarray(rgb), p)
    one = inference.crf_refine(logits, images, p, num_views=1, mean=mean, std=std)
    np.testing.assert_allclose(jax.nn.softmax(one, -1), want, atol=1e-5)
    probs = jax.nn.softmax(logits, -1)
    two = inference.crf_refine(probs, images, p, num_views=2, mean=mean, std=std)
    np.testing.assert_allclose(two, want, atol=1e-5)
