"""Level-set active contours as a differentiable layer, and the CNN that drives them.

Chan-Vese level sets (Chan & Vese, "Active contours without edges", 2001) with the
parameters that DALS / TDAC (Hatamizadeh et al., "Deep Active Lesion Segmentation",
2019; "End-to-End Trainable Deep Active Contour Models", 2020) let a CNN predict per
pixel. Conventions: `phi` [B, H, W] float32 is positive inside the contour (the
foreground), `H_eps(phi) = (1 + (2 / pi) atan(phi / eps)) / 2` its smoothed inside
indicator and `delta_eps = H_eps'`. The energy of `phi` on an image `u` [B, H, W, C]:

    E(phi) = mu * sum |grad H_eps(phi)|
             + sum_x lambda_in(x) |u(x) - c_in|^2 H_eps(phi(x))
             + sum_x lambda_out(x) |u(x) - c_out|^2 (1 - H_eps(phi(x)))

(sums over pixels; `|.|^2` over channels), `c_in` / `c_out` the means of `u` inside /
outside, weighted by `H_eps` / `1 - H_eps` (the minimisers of E for a fixed `phi`). One
evolution step is explicit gradient descent on it (the Euler-Lagrange equation):

    phi <- phi + dt * delta_eps(phi) * (mu * div(grad phi / |grad phi|)
                                        - lambda_in |u - c_in|^2 + lambda_out |u - c_out|^2)

With `window > 0` the means are local (Lankton & Tannenbaum's localised Chan-Vese, which
DALS uses): `c_in(x)`, `c_out(x)` over the `window x window` box around `x`. `evolve`
unrolls `steps` of them with `lax.fori_loop`; every operation is smooth, so gradients
flow from the final `phi` to the initial one, to the parameter maps and to the image.

`LevelSetSegmentor` wraps any registered segmentor as the CNN: its output channels are
the initial level set and the two parameter maps (TDAC), optionally a learned "image"
channel to fit the means on; the evolved level set is its output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

REGION_INPUTS = ("image", "learned")


def heaviside(phi: Array, eps: float) -> Array:
    """`H_eps(phi) = (1 + (2 / pi) atan(phi / eps)) / 2`, the smoothed inside indicator."""
    return 0.5 * (1.0 + (2.0 / jnp.pi) * jnp.arctan(phi / eps))


def dirac(phi: Array, eps: float) -> Array:
    """`delta_eps(phi) = eps / (pi (eps^2 + phi^2))`, the derivative of `heaviside`."""
    return eps / (jnp.pi * (eps**2 + phi**2))


def _shift(x: Array, axis: int, offset: int) -> Array:
    # x[i + offset] along `axis` (1 or 2), edge values repeated (Neumann boundary).
    n = x.shape[axis]
    index = jnp.clip(jnp.arange(n) + offset, 0, n - 1)
    return jnp.take(x, index, axis=axis)


def gradient(phi: Array) -> tuple[Array, Array]:
    """Central differences `(d/dy, d/dx)` of `phi` [B, H, W], Neumann boundary."""
    dy = 0.5 * (_shift(phi, 1, 1) - _shift(phi, 1, -1))
    dx = 0.5 * (_shift(phi, 2, 1) - _shift(phi, 2, -1))
    return dy, dx


def curvature(phi: Array, eps: float = 1e-8) -> Array:
    """`div(grad phi / |grad phi|)` [B, H, W] by central differences."""
    dy, dx = gradient(phi)
    norm = jnp.sqrt(dy**2 + dx**2 + eps)
    ny, nx = dy / norm, dx / norm
    return gradient(ny)[0] + gradient(nx)[1]


def _box_sum(x: Array, window: int) -> Array:
    # Sum of x [B, H, W, C] over the window x window box around each pixel (zero outside).
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1), "SAME")


def region_means(image: Array, inside: Array, window: int = 0) -> tuple[Array, Array]:
    """(c_in, c_out) of `image` [B, H, W, C] weighted by `inside` [B, H, W] in [0, 1].

    `window = 0`: one mean per image and channel, shaped [B, 1, 1, C]; `window > 0`
    (odd): local means over the box around each pixel, [B, H, W, C].
    """
    w_in = inside[..., None]
    w_out = 1.0 - w_in
    tiny = 1e-8
    if window <= 0:
        axes = (1, 2)
        c_in = jnp.sum(image * w_in, axes, keepdims=True) / (
            jnp.sum(w_in, axes, keepdims=True) + tiny
        )
        c_out = jnp.sum(image * w_out, axes, keepdims=True) / (
            jnp.sum(w_out, axes, keepdims=True) + tiny
        )
        return c_in, c_out
    c_in = _box_sum(image * w_in, window) / (_box_sum(w_in, window) + tiny)
    c_out = _box_sum(image * w_out, window) / (_box_sum(w_out, window) + tiny)
    return c_in, c_out


def chan_vese_energy(
    phi: Array,
    image: Array,
    lambda_in: Array | float = 1.0,
    lambda_out: Array | float = 1.0,
    *,
    mu: float = 0.1,
    eps: float = 1.0,
) -> Array:
    """E(phi) per image [B] (module docstring; global means). `phi` [B, H, W],
    `image` [B, H, W, C], `lambda_*` scalars or [B, H, W] maps."""
    h = heaviside(phi, eps)
    c_in, c_out = region_means(image, h, 0)
    dy, dx = gradient(h)
    length = jnp.sum(jnp.sqrt(dy**2 + dx**2 + 1e-12), axis=(1, 2))
    fit_in = jnp.sum((image - c_in) ** 2, axis=-1)
    fit_out = jnp.sum((image - c_out) ** 2, axis=-1)
    region = jnp.sum(lambda_in * fit_in * h + lambda_out * fit_out * (1.0 - h), axis=(1, 2))
    return mu * length + region


def chan_vese_step(
    phi: Array,
    image: Array,
    lambda_in: Array | float,
    lambda_out: Array | float,
    *,
    dt: float,
    mu: float,
    eps: float,
    window: int = 0,
) -> Array:
    """One explicit gradient-descent step of the (local, if `window > 0`) energy."""
    c_in, c_out = region_means(image, heaviside(phi, eps), window)
    force = -lambda_in * jnp.sum((image - c_in) ** 2, axis=-1) + lambda_out * jnp.sum(
        (image - c_out) ** 2, axis=-1
    )
    return phi + dt * dirac(phi, eps) * (mu * curvature(phi) + force)


def evolve(
    phi: Array,
    image: Array,
    lambda_in: Array | float = 1.0,
    lambda_out: Array | float = 1.0,
    *,
    steps: int,
    dt: float = 0.5,
    mu: float = 0.1,
    eps: float = 1.0,
    window: int = 0,
) -> Array:
    """`phi` [B, H, W] after `steps` Chan-Vese steps on `image` [B, H, W, C] (in float32,
    or float64 for float64 inputs), unrolled with `lax.fori_loop` (differentiable in
    every argument)."""
    dtype = jnp.promote_types(jnp.result_type(phi, image), jnp.float32)
    phi, image = phi.astype(dtype), image.astype(dtype)

    def body(_, p):
        return chan_vese_step(p, image, lambda_in, lambda_out, dt=dt, mu=mu, eps=eps, window=window)

    return jax.lax.fori_loop(0, steps, body, phi)


def binary_logits(phi: Array) -> Array:
    """[B, H, W] level set -> 2-class logits [B, H, W, 2] with softmax = sigmoid(phi)."""
    return jnp.stack([-0.5 * phi, 0.5 * phi], axis=-1)


class LevelSetSegmentor(nn.Module):
    """A CNN that predicts a level set and its parameter maps, evolved by Chan-Vese.

    The CNN (any segmentor built with `num_outputs(region_input)` classes) gives per
    pixel: `phi0` (channel 0), `lambda_in = softplus(ch 1)`, `lambda_out =
    softplus(ch 2)` and, with `region_input="learned"`, the 1-channel "image" the
    means are fitted on (ch 3); with `"image"` the means are fitted on the input image.
    `steps = 0` returns `phi0`: the CNN alone.

    Attributes:
        cnn: `__call__(image, *, train) -> {"logits": [B, H, W, 3 or 4], ...}`.
        steps: evolution steps.
        dt, mu, eps, window: see `evolve`.
        region_input: `"image"` or `"learned"`.
    """

    cnn: nn.Module
    steps: int = 10
    dt: float = 0.5
    mu: float = 0.1
    eps: float = 1.0
    window: int = 0
    region_input: str = "image"

    @staticmethod
    def num_outputs(region_input: str) -> int:
        """Output channels the CNN needs for `region_input`."""
        if region_input not in REGION_INPUTS:
            raise ValueError(f"region_input {region_input!r}; expected one of {REGION_INPUTS}")
        return 3 if region_input == "image" else 4

    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """`image` [B, H, W, 3] -> `{"logits": [B, H, W, 2]}` (+ `"aux_logits"`: the
        CNN's own level set, and `"level_set"`: the evolved `phi`)."""
        maps = self.cnn(image, train=train)["logits"].astype(jnp.float32)
        if maps.shape[-1] != self.num_outputs(self.region_input):
            raise ValueError(
                f"LevelSetSegmentor: the CNN gives {maps.shape[-1]} channels, expected "
                f"{self.num_outputs(self.region_input)} for region_input={self.region_input!r}"
            )
        phi0 = maps[..., 0]
        if self.steps == 0:
            return {"logits": binary_logits(phi0), "level_set": phi0}
        fit_on = image.astype(jnp.float32) if self.region_input == "image" else maps[..., 3:4]
        phi = evolve(
            phi0,
            fit_on,
            jax.nn.softplus(maps[..., 1]),
            jax.nn.softplus(maps[..., 2]),
            steps=self.steps,
            dt=self.dt,
            mu=self.mu,
            eps=self.eps,
            window=self.window,
        )
        return {"logits": binary_logits(phi), "aux_logits": binary_logits(phi0), "level_set": phi}
