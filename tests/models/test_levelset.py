"""The level-set layer: gradients against finite differences, the Chan-Vese energy going
down on a synthetic image, the morphological operators and Gur et al.'s loss against
numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses
from segjax.models import levelset


def _disk_image(size=32, noise=0.15, seed=0):
    # A bright disk on a dark background, with noise; its mask.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size * 0.55) ** 2 + (xx - size * 0.45) ** 2 < (size * 0.25) ** 2
    image = mask.astype(np.float32) + noise * rng.standard_normal((size, size))
    return image[None, :, :, None].astype(np.float32), mask


def _circle(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return (r - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2))[None].astype(np.float32)


def test_evolution_lowers_the_chan_vese_energy_and_finds_the_disk():
    image, mask = _disk_image()
    phi0 = _circle(32, 14, 14, 10.0)  # a circle off the disk, half on the background
    kwargs = {"dt": 1.0, "mu": 0.2, "eps": 1.0}

    @jax.jit
    def run(phi):
        energies, phis = [], []
        for _ in range(8):
            energies.append(levelset.chan_vese_energy(phi, image, mu=kwargs["mu"]))
            phi = levelset.evolve(phi, image, steps=40, **kwargs)
            phis.append(phi)
        energies.append(levelset.chan_vese_energy(phi, image, mu=kwargs["mu"]))
        return jnp.stack(energies)[:, 0], phi

    energies, phi = (np.asarray(x) for x in run(jnp.asarray(phi0)))
    assert np.all(np.diff(energies) <= 1e-3 * abs(energies[0])), energies
    assert energies[-1] < 0.7 * energies[0]
    found = phi[0] > 0
    iou = (found & mask).sum() / (found | mask).sum()
    assert iou > 0.9, iou


@pytest.mark.parametrize("window", [pytest.param(0, marks=pytest.mark.slow), 5])
def test_gradients_of_the_unrolled_evolution_match_finite_differences(window):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        image = jnp.asarray(rng.random((1, 9, 10, 2)))
        phi0 = jnp.asarray(rng.normal(size=(1, 9, 10)))
        lam_in = jnp.asarray(rng.random((1, 9, 10)) + 0.5)
        lam_out = jnp.asarray(rng.random((1, 9, 10)) + 0.5)
        weights = jnp.asarray(rng.normal(size=(1, 9, 10)))

        def f(phi, lam_in, lam_out, image):
            phi = levelset.evolve(
                phi, image, lam_in, lam_out, steps=4, dt=0.3, mu=0.2, window=window
            )
            return jnp.sum(weights * levelset.heaviside(phi, 1.0))

        args = (phi0, lam_in, lam_out, image)
        h = 1e-6
        directions = [jnp.asarray(rng.normal(size=a.shape)) for a in args]

        @jax.jit
        def check():
            # Per argument: the gradient along a random direction against the central
            # difference along it (every entry of the gradient counts), one program.
            grads = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
            analytic, numeric = [], []
            for k, (arg, v) in enumerate(zip(args, directions, strict=True)):
                up, down = list(args), list(args)
                up[k], down[k] = arg + h * v, arg - h * v
                numeric.append((f(*up) - f(*down)) / (2 * h))
                analytic.append(jnp.sum(grads[k] * v))
            return jnp.stack(analytic), jnp.stack(numeric)

        analytic, numeric = check()
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
        assert np.all(np.abs(analytic) > 1e-3)


def _si_is_reference(u):
    # Márquez-Neila's SI and IS with 3-pixel segments, plain loops, edges repeated.
    _, h, w = u.shape
    directions = [(0, 1), (1, 0), (1, 1), (1, -1)]

    def value(x, i, j):
        return x[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]

    def op(x, inner, outer):
        out = np.empty_like(x)
        for i in range(h):
            for j in range(w):
                out[i, j] = outer(
                    inner(value(x, i + s * dy, j + s * dx) for s in (-1, 0, 1))
                    for dy, dx in directions
                )
        return out

    si = np.stack([op(x, min, max) for x in u])
    return si, np.stack([op(x, max, min) for x in si])


def test_morphological_operators_and_loss_equal_their_definitions():
    rng = np.random.default_rng(2)
    u = rng.random((2, 6, 7)).astype(np.float32)
    _, expected = _si_is_reference(u)
    smoothing = jax.jit(losses.morphological_smoothing, static_argnums=1)
    np.testing.assert_allclose(smoothing(jnp.asarray(u), 1), expected)
    # One isolated bright pixel is removed by SI; a one-pixel hole is filled by IS.
    spot = np.zeros((2, 6, 7), np.float32)
    spot[0, 2, 2] = 1.0
    assert float(jnp.max(smoothing(jnp.asarray(spot), 1))) == 0.0
    assert float(jnp.min(smoothing(jnp.asarray(1 - spot), 1))) == 1.0

    image = rng.random((2, 6, 7, 3)).astype(np.float32)
    valid = rng.random((2, 6, 7)) > 0.2
    got = jax.jit(losses.morphological_active_contour_loss, static_argnames="smoothing_steps")(
        jnp.asarray(u),
        jnp.asarray(image),
        lambda_in=1.5,
        lambda_out=0.5,
        smoothing_steps=1,
        area_weight=0.3,
        valid=jnp.asarray(valid),
    )
    total, count = 0.0, valid.sum()
    for b in range(2):
        m = valid[b]
        c_in = (image[b] * (u[b] * m)[..., None]).sum((0, 1)) / (u[b] * m).sum()
        c_out = (image[b] * ((1 - u[b]) * m)[..., None]).sum((0, 1)) / ((1 - u[b]) * m).sum()
        fit = 1.5 * ((image[b] - c_in) ** 2).sum(-1) * expected[b]
        fit += 0.5 * ((image[b] - c_out) ** 2).sum(-1) * (1 - expected[b])
        total += (fit * m).sum() + 0.3 * (u[b] * m).sum()
    np.testing.assert_allclose(float(got), total / count, rtol=1e-5)

    # Unsupervised: the mask of the bright disk fits its image better than a shifted one.
    disk, mask = _disk_image(24, noise=0.05)

    def score(m):
        return float(
            losses.morphological_active_contour_loss(jnp.asarray(m[None], jnp.float32), disk)
        )

    assert score(mask) < score(np.roll(mask, 6, axis=1))
