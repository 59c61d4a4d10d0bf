"""Fully connected CRF (Krähenbühl & Koltun, 2011): mean-field inference in pure JAX.

The CRF over the pixels of one image has the energy

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j),
    k(f_i, f_j) = w_a exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)
                + w_s exp(-|p_i - p_j|^2 / 2 theta_gamma^2),

with unaries U = -log P from a model's class probabilities P, positions p (pixels),
colours I (RGB, 0-255) and a label compatibility mu (Potts: mu(l, l') = [l != l']).
Mean-field inference keeps a factorised Q_i(l) and repeats, `iterations` times,

    Q_i(l) <- softmax_l(-U_i(l) - sum_l' mu(l, l') sum_m w_m sum_{j != i} k_m(f_i, f_j) Q_j(l')).

Everything here is jnp with static shapes, so `jax.jit` compiles the whole inference
(a `lax.fori_loop` over the iterations) once and runs it on device.

Filtering (the sums over all j) is the expensive part; two ways are offered:
- `"dense"`: the exact [N, N] kernel matrix (N = H W pixels); for small images (memory
  N^2 floats).
- `"grid"`: the smoothness kernel is a Gaussian of the position only, so it is computed
  exactly and cheaply as two separable 1-D Gaussian matrix products (over rows, then
  columns). The appearance (bilateral) kernel is approximated on a down-sampled
  bilateral grid (Paris & Durand 2006; Chen et al. 2007) over the 5-D feature space
  (y/theta_alpha, x/theta_alpha, r/theta_beta, g/theta_beta, b/theta_beta): multilinear
  splatting onto a grid of spacing `grid_spacing` (in kernel standard deviations), a
  separable Gaussian blur, multilinear slicing. Splat and slice each blur the kernel by
  a tent (variance s^2 / 6 per axis on average), so the grid's blur has variance
  1 - s^2 / 3 and is rescaled to keep the kernel's peak at 1. Its error against exact
  filtering is measured in `tests/test_crf.py` and written in docs/crf.md.
`"auto"` is dense up to `dense_max_pixels` pixels, the grid above.

Example:
    >>> params = CRFParams(iterations=10, bilateral_weight=4, theta_alpha=121,
    ...                    theta_beta=5, spatial_weight=3, theta_gamma=3)
    >>> q = jax.jit(lambda p, im: dense_crf(p, im, params))(probs, rgb)  # [B, H, W, K]
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

METHODS = ("auto", "dense", "grid")
_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters (all static; `config.eval.crf` holds the same keys).

    Attributes:
      iterations: mean-field iterations (>= 1).
      bilateral_weight: w_a, weight of the appearance (bilateral) kernel (>= 0).
      theta_alpha: the appearance kernel's position standard deviation, pixels (> 0).
      theta_beta: the appearance kernel's colour standard deviation, 0-255 units (> 0).
      spatial_weight: w_s, weight of the smoothness kernel (>= 0).
      theta_gamma: the smoothness kernel's position standard deviation, pixels (> 0).
      method: "dense" (exact), "grid" (bilateral grid) or "auto" (dense when small).
      dense_max_pixels: "auto" filters exactly up to this many pixels per image.
      grid_spacing: bilateral grid spacing in kernel standard deviations, (0, 1].
    """

    iterations: int = 10
    bilateral_weight: float = 4.0
    theta_alpha: float = 80.0
    theta_beta: float = 13.0
    spatial_weight: float = 3.0
    theta_gamma: float = 3.0
    method: str = "auto"
    dense_max_pixels: int = 4096
    grid_spacing: float = 1.0

    def __post_init__(self):
        problems = []
        if not (isinstance(self.iterations, int) and self.iterations >= 1):
            problems.append(f"iterations={self.iterations!r}: expected an integer >= 1")
        for name in ("bilateral_weight", "spatial_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name}={value!r}: expected a finite number >= 0")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name}={value!r}: expected a kernel width > 0")
        if self.method not in METHODS:
            problems.append(f"method={self.method!r}: expected one of {METHODS}")
        if not (0 < self.grid_spacing <= 1.0):
            problems.append(f"grid_spacing={self.grid_spacing!r}: expected a number in (0, 1]")
        if not (isinstance(self.dense_max_pixels, int) and self.dense_max_pixels >= 1):
            problems.append(f"dense_max_pixels={self.dense_max_pixels!r}: expected an integer >= 1")
        if problems:
            raise ValueError("CRF parameters not allowed: " + "; ".join(problems))

    @classmethod
    def from_config(cls, crf_config: ml_collections.ConfigDict) -> CRFParams:
        """The parameters of a config's `eval.crf` block (its `enabled` key aside)."""
        return cls(
            iterations=int(crf_config.iterations),
            bilateral_weight=float(crf_config.bilateral_weight),
            theta_alpha=float(crf_config.theta_alpha),
            theta_beta=float(crf_config.theta_beta),
            spatial_weight=float(crf_config.spatial_weight),
            theta_gamma=float(crf_config.theta_gamma),
            method=str(crf_config.method),
            dense_max_pixels=int(crf_config.dense_max_pixels),
            grid_spacing=float(crf_config.grid_spacing),
        )

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"dense CRF {self.iterations} it, bilateral w={self.bilateral_weight:g} "
            f"xy={self.theta_alpha:g} rgb={self.theta_beta:g}, spatial w={self.spatial_weight:g} "
            f"xy={self.theta_gamma:g}, {self.method}"
        )


def potts(num_classes: int) -> np.ndarray:
    """The Potts compatibility [K, K]: 1 between different labels, 0 on the diagonal."""
    return 1.0 - np.eye(num_classes, dtype=np.float32)


def bilateral_features(image: jax.Array, theta_alpha: float, theta_beta: float) -> jax.Array:
    """[H, W, 3] RGB (0-255) -> [H, W, 5] features (y, x, r, g, b) in kernel std units."""
    h, w, _ = image.shape
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32))
    pos = jnp.stack([yy.T, xx.T], axis=-1) / theta_alpha
    return jnp.concatenate([pos, image.astype(jnp.float32) / theta_beta], axis=-1)


def dense_filter(features: jax.Array, values: jax.Array) -> jax.Array:
    """Exact `sum_{j != i} exp(-|f_i - f_j|^2 / 2) v_j`: features [N, D], values [N, K]."""
    sq = jnp.sum(features**2, axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * features @ features.T, 0.0)
    kernel = jnp.exp(-0.5 * d2)
    return kernel @ values - values  # the diagonal is exp(0) = 1: drop j == i


def _gaussian_matrix(n: int, theta: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float64)
    return np.exp(-0.5 * ((x[:, None] - x[None, :]) / theta) ** 2).astype(np.float32)


def spatial_filter(values: jax.Array, theta: float) -> jax.Array:
    """Exact smoothness filtering of [H, W, K]: a separable Gaussian (std `theta`), no self."""
    h, w, _ = values.shape
    out = jnp.einsum("ab,bwk->awk", _gaussian_matrix(h, theta), values)
    out = jnp.einsum("cw,awk->ack", _gaussian_matrix(w, theta), out)
    return out - values


def _grid_blur(grid: jax.Array, axis: int, taps: np.ndarray) -> jax.Array:
    # 1-D blur along `axis` of a grid already zero-padded by len(taps) // 2 on each side.
    r = len(taps) // 2
    n = grid.shape[axis]
    out = 0.0
    for k, t in enumerate(taps):
        shift = k - r
        lo, hi = max(shift, 0), n + min(shift, 0)
        part = jax.lax.slice_in_dim(grid, lo, hi, axis=axis)
        pad = [(0, 0)] * grid.ndim
        pad[axis] = (max(-shift, 0), max(shift, 0))
        out = out + float(t) * jnp.pad(part, pad)
    return out


def _blur_sigma(spacing: float) -> float:
    # Splat and slice each add a tent's variance (s^2 / 6 per axis, on average over where
    # a pixel falls between grid points): the blur makes up the rest of variance 1.
    return math.sqrt(max(1.0 - spacing**2 / 3.0, 1e-3))


def _blur_radius(spacing: float) -> int:
    return max(math.ceil(2.5 * _blur_sigma(spacing) / spacing), 1)


def grid_shape(
    height: int, width: int, theta_alpha: float, theta_beta: float, spacing: float
) -> tuple[int, ...]:
    """Cells per axis (y, x, r, g, b) of the bilateral grid of an H x W RGB (0-255) image."""
    r = _blur_radius(spacing)
    extents = ((height - 1) / theta_alpha, (width - 1) / theta_alpha, *[255.0 / theta_beta] * 3)
    return tuple(math.floor(e / spacing) + 2 + 2 * r for e in extents)


def grid_filter(
    image: jax.Array,
    values: jax.Array,
    theta_alpha: float,
    theta_beta: float,
    spacing: float = 1.0,
) -> jax.Array:
    """Approximate bilateral filtering on a down-sampled grid (`dense_filter`'s sum).

    Args:
      image: [H, W, 3] RGB in 0-255 (the grid's colour extent is fixed to it; values
        outside are clipped onto its border cells).
      values: [H, W, K].
      theta_alpha, theta_beta: the kernel's position and colour standard deviations.
      spacing: grid spacing in kernel standard deviations (1: one cell per std).

    Returns:
      [H, W, K] approximating `sum_{j != i} exp(-|f_i - f_j|^2 / 2) v_j` with
      f = `bilateral_features(image, theta_alpha, theta_beta)`.
    """
    h, w, _ = image.shape
    k = values.shape[-1]
    d = 5
    r = _blur_radius(spacing)
    dims = grid_shape(h, w, theta_alpha, theta_beta, spacing)
    f = bilateral_features(jnp.clip(image, 0, 255), theta_alpha, theta_beta)
    f = f.reshape(h * w, d) / spacing
    base = jnp.floor(f)
    frac = f - base
    base = base.astype(jnp.int32) + r
    strides = np.cumprod((1, *dims[::-1][:-1]))[::-1].astype(np.int32)
    v = values.reshape(h * w, k)
    cells = int(np.prod(dims))
    grid = jnp.zeros((cells, k), values.dtype)
    corners = []
    for corner in itertools.product((0, 1), repeat=d):
        c = np.asarray(corner, np.int32)
        idx = jnp.sum(jnp.minimum(base + c, np.asarray(dims) - 1) * strides, axis=-1)
        wt = jnp.prod(jnp.where(c == 1, frac, 1.0 - frac), axis=-1)
        corners.append((idx, wt))
        grid = grid.at[idx].add(wt[:, None] * v)
    grid = grid.reshape(*dims, k)
    sigma = _blur_sigma(spacing)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) * spacing / sigma) ** 2)
    for axis in range(d):
        grid = _grid_blur(grid, axis, taps)
    # A peak-1 blur of std sigma after two unit-mass tents peaks at sigma per axis.
    grid = grid.reshape(cells, k) / sigma**d
    out = 0.0
    for idx, wt in corners:
        out = out + wt[:, None] * grid[idx]
    return (out - v).reshape(h, w, k)


def _use_dense(params: CRFParams, height: int, width: int) -> bool:
    if params.method == "auto":
        return height * width <= params.dense_max_pixels
    return params.method == "dense"


def dense_kernel(image: jax.Array, params: CRFParams) -> tuple[jax.Array, jax.Array]:
    """The exact kernels [N, N] (appearance, smoothness) of an [H, W, 3] image, diagonal 0."""
    h, w, _ = image.shape
    n = h * w

    def gram(f):
        sq = jnp.sum(f**2, axis=-1)
        d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0.0)
        return jnp.exp(-0.5 * d2) - jnp.eye(n, dtype=jnp.float32)

    feats = bilateral_features(image, params.theta_alpha, params.theta_beta).reshape(n, 5)
    pos = bilateral_features(image, params.theta_gamma, 1.0)[..., :2].reshape(n, 2)
    return gram(feats), gram(pos)


def make_pairwise(
    image: jax.Array,
    params: CRFParams,
    bilateral_weight: jax.Array | float,
    spatial_weight: jax.Array | float,
):
    """`pairwise(q [H, W, K]) -> sum_m w_m sum_{j != i} k_m(f_i, f_j) q_j`, [H, W, K].

    Exact (one [N, N] matrix, built once for all iterations) or on the bilateral grid
    as `params.method` says; the smoothness kernel is exact either way.
    """
    h, w, _ = image.shape
    if _use_dense(params, h, w):
        app, smooth = dense_kernel(image, params)
        matrix = bilateral_weight * app + spatial_weight * smooth

        def pairwise(q):
            return (matrix @ q.reshape(h * w, -1)).reshape(q.shape)

        return pairwise

    def pairwise(q):
        app = grid_filter(image, q, params.theta_alpha, params.theta_beta, params.grid_spacing)
        return bilateral_weight * app + spatial_weight * spatial_filter(q, params.theta_gamma)

    return pairwise


def mean_field(
    unary: jax.Array,
    image: jax.Array,
    params: CRFParams,
    compatibility: jax.Array | None = None,
    *,
    bilateral_weight: jax.Array | float | None = None,
    spatial_weight: jax.Array | float | None = None,
    return_history: bool = False,
    return_logits: bool = False,
) -> jax.Array:
    """Mean-field inference of one image's dense CRF.

    Args:
      unary: [H, W, K] unary energies U = -log P.
      image: [H, W, 3] RGB in 0-255.
      params: kernel widths, weights, iterations, filtering method.
      compatibility: [K, K] mu(l, l') (default: Potts).
      bilateral_weight, spatial_weight: override `params`' weights with (traced,
        learnable) values; CRF-as-RNN passes its parameters here.
      return_history: also return Q after every iteration, [iterations, H, W, K].
      return_logits: return the last update's scores `-U - message` instead of Q
        (their softmax is Q): CRF-as-RNN's logits.

    Returns:
      Q [H, W, K] float32, the marginals after `params.iterations` parallel updates
      (starting from Q = softmax(-U)); with `return_history`, `(Q, history)`.
    """
    k = unary.shape[-1]
    unary = unary.astype(jnp.float32)
    mu = jnp.asarray(potts(k) if compatibility is None else compatibility, jnp.float32)
    wa = params.bilateral_weight if bilateral_weight is None else bilateral_weight
    ws = params.spatial_weight if spatial_weight is None else spatial_weight
    pairwise = make_pairwise(image.astype(jnp.float32), params, wa, ws)

    def scores(q):
        return -unary - jnp.einsum("hwm,lm->hwl", pairwise(q), mu)

    def step(q):
        return jax.nn.softmax(scores(q), axis=-1)

    q0 = jax.nn.softmax(-unary, axis=-1)
    if return_logits:
        return scores(jax.lax.fori_loop(0, params.iterations - 1, lambda _, q: step(q), q0))
    if return_history:

        def scan_step(q, _):
            q = step(q)
            return q, q

        return jax.lax.scan(scan_step, q0, None, params.iterations)
    return jax.lax.fori_loop(0, params.iterations, lambda _, q: step(q), q0)


def mean_field_energy(
    q: jax.Array,
    unary: jax.Array,
    image: jax.Array,
    params: CRFParams,
    compatibility: jax.Array | None = None,
) -> jax.Array:
    """The mean-field free energy KL(Q || P) - log Z of one image, a scalar.

    `sum_i <U_i, Q_i> + 1/2 sum_i <Q_i, message_i> + sum_i <Q_i, log Q_i>`, with the
    pairwise message of the update (each pair counted once).
    """
    mu = jnp.asarray(potts(q.shape[-1]) if compatibility is None else compatibility, jnp.float32)
    pairwise = make_pairwise(
        image.astype(jnp.float32), params, params.bilateral_weight, params.spatial_weight
    )
    msg = jnp.einsum("hwm,lm->hwl", pairwise(q), mu)
    entropy_term = jnp.sum(q * jnp.log(jnp.maximum(q, _EPS)))
    return jnp.sum(q * unary) + 0.5 * jnp.sum(q * msg) + entropy_term


def dense_crf(probs: jax.Array, images: jax.Array, params: CRFParams) -> jax.Array:
    """The CRF's marginals of a batch: probs [B, H, W, K], images [B, H, W, 3] (0-255).

    Unaries are `-log(max(probs, 1e-8))`; returns Q [B, H, W, K] float32.
    """
    unary = -jnp.log(jnp.maximum(probs.astype(jnp.float32), _EPS))
    # One image at a time: the dense kernel and the grid are per image and large.
    return jax.lax.map(lambda args: mean_field(*args, params), (unary, images))
