"""Building blocks shared by backbones, necks and heads.

All modules here are NHWC Linen modules with a compute ``dtype`` (``bfloat16`` for mixed
precision) and float32 parameters. Convolutions use explicit, PyTorch-style symmetric
padding (``dilation * (kernel_size // 2)`` on each side) rather than ``"SAME"``: the output
sizes are the same (``ceil(H / stride)``), but symmetric padding keeps the sampling grid of
torchvision / mmsegmentation, so that their pretrained weights can be ported unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# torchvision / mmseg initialise convolutions with kaiming_normal_(mode="fan_out", relu).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding that keeps ``ceil(H / stride)`` outputs, as PyTorch's ``padding=k//2``."""
    p = dilation * (kernel_size // 2)
    return ((p, p), (p, p))


# A kxk convolution is computed tap by tap (see `conv2d`) on the CPU when at least this share
# of its multiply-adds would read padding (XLA:CPU's convolution kernels compute them), or
# its dilation is at least this (XLA:CPU's dilated convolutions are slow: 1.6x slower than
# tap by tap at rate 4, 512 channels; README "Performance"), or it is depthwise, and its
# output has at least this many pixels (below, one op per tap costs more than it saves).
TAP_SPLIT_MIN_PADDING_SHARE = 0.2
TAP_SPLIT_MIN_DILATION = 4
TAP_SPLIT_MIN_OUTPUT_PIXELS = 64


def _tap_windows(size: int, kernel: int, dilation: int, stride: int) -> list[tuple[int, int, int]]:
    """Per tap of one spatial dim: ``(first output, output count, first input)``; count 0 = dead.

    Symmetric padding ``dilation * (kernel // 2)``; output ``o`` of tap ``t`` reads input
    ``o * stride + t * dilation - pad``, so only outputs whose input lies inside count.
    """
    pad = dilation * (kernel // 2)
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    windows = []
    for t in range(kernel):
        offset = t * dilation - pad
        first = max(0, -(offset // stride))  # ceil(-offset / stride)
        last = min(out - 1, (size - 1 - offset) // stride)
        count = max(0, last - first + 1)
        windows.append((first, count, first * stride + offset))
    return windows


def _window(x: Array, start: tuple[int, int], count: tuple[int, int], stride: int) -> Array:
    """``x[:, h0 : ... : stride, w0 : ... : stride]``: ``count`` rows and columns from ``start``."""
    (h0, w0), (nh, nw) = start, count
    b, _, _, c = x.shape
    limit = (b, h0 + (nh - 1) * stride + 1, w0 + (nw - 1) * stride + 1, c)
    return lax.slice(x, (0, h0, w0, 0), limit, (1, stride, stride, 1))


def _pad_to(y: Array, first: tuple[int, int], out_hw: tuple[int, int]) -> Array:
    # Zero-pads a window of outputs starting at `first` to the whole output.
    (oh, ow), (nh, nw) = first, y.shape[1:3]
    return jnp.pad(y, ((0, 0), (oh, out_hw[0] - oh - nh), (ow, out_hw[1] - ow - nw), (0, 0)))


def _conv_taps(
    x: Array, kernel: Array, h_windows, w_windows, out_hw: tuple[int, int], stride: int
) -> Array:
    # Sum over live taps of (the input window it reads) @ (its kernel slice), each product
    # zero-padded to the output size: no multiply-add reads padding.
    depthwise = kernel.shape[2] == 1 and x.shape[-1] > 1
    out = None
    for i, (oh, nh, ih) in enumerate(h_windows):
        for j, (ow, nw, iw) in enumerate(w_windows):
            if nh == 0 or nw == 0:
                continue
            window = _window(x, (ih, iw), (nh, nw), stride)
            if depthwise:
                y = window * kernel[i, j, 0]
            else:
                y = jnp.einsum("bhwc,cf->bhwf", window, kernel[i, j])
            y = _pad_to(y, (oh, ow), out_hw)
            out = y if out is None else out + y
    return out


def _conv_xla(x: Array, kernel: Array, strides: int, dilation: int, groups: int) -> Array:
    # One XLA convolution over the live taps only (dead ones lie at the ends of each dim).
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    h_windows = _tap_windows(h, k, dilation, strides)
    w_windows = _tap_windows(w, k, dilation, strides)
    live_h = [t for t, (_, n, _) in enumerate(h_windows) if n]
    live_w = [t for t, (_, n, _) in enumerate(w_windows) if n]
    kernel = kernel[live_h[0] : live_h[-1] + 1, live_w[0] : live_w[-1] + 1]
    padding = []
    for size, live in ((h, live_h), (w, live_w)):
        out = _out_size(size, k, dilation, strides)
        low = dilation * (k // 2) - live[0] * dilation
        high = (out - 1) * strides + dilation * (live[-1] - live[0]) + 1 - size - low
        padding.append((low, high))
    return lax.conv_general_dilated(
        x,
        kernel,
        (strides, strides),
        padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _out_size(size: int, kernel: int, dilation: int, stride: int) -> int:
    return (size + 2 * dilation * (kernel // 2) - dilation * (kernel - 1) - 1) // stride + 1


def _use_taps(x_shape, kernel_shape, strides: int, dilation: int, groups: int, method: str) -> bool:
    # Whether `conv2d` computes the forward tap by tap (see its docstring).
    k = kernel_shape[0]
    _, h, w, cin = x_shape
    depthwise = groups > 1 and groups == cin == kernel_shape[-1]
    if k == 1 or not (groups == 1 or depthwise):
        return False
    if method == "taps":
        return True
    h_windows = _tap_windows(h, k, dilation, strides)
    w_windows = _tap_windows(w, k, dilation, strides)
    out_h, out_w = _out_size(h, k, dilation, strides), _out_size(w, k, dilation, strides)
    live = sum(n for _, n, _ in h_windows) * sum(n for _, n, _ in w_windows)
    padding_share = 1.0 - live / (k * k * out_h * out_w)
    large = out_h * out_w >= TAP_SPLIT_MIN_OUTPUT_PIXELS
    wasteful = padding_share >= TAP_SPLIT_MIN_PADDING_SHARE or dilation >= TAP_SPLIT_MIN_DILATION
    return jax.default_backend() == "cpu" and large and (depthwise or wasteful)


def _conv_forward(x: Array, kernel: Array, strides: int, dilation: int, groups: int, method: str):
    k = kernel.shape[0]
    if k == 1 and groups == 1 and jax.default_backend() == "cpu":
        # A matrix product: XLA:CPU's 1x1 convolutions are slower (README "Performance").
        if strides > 1:
            x = x[:, ::strides, ::strides]
        return jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0])
    _, h, w, _ = x.shape
    if _use_taps(x.shape, kernel.shape, strides, dilation, groups, method):
        out_hw = (_out_size(h, k, dilation, strides), _out_size(w, k, dilation, strides))
        h_windows = _tap_windows(h, k, dilation, strides)
        w_windows = _tap_windows(w, k, dilation, strides)
        return _conv_taps(x, kernel, h_windows, w_windows, out_hw, strides)
    return _conv_xla(x, kernel, strides, dilation, groups)


# Weight gradients by matrix products, one per live tap, without patches (XLA:CPU copies
# each window twice to concatenate them; README "Performance"). A tap's product is either
# over the whole output (its input window zero-padded to the output's size: copies Cin
# channels per output pixel) or over only the outputs whose input it reads (copies Cin +
# Cout channels per such pixel, multiplies only there): the cheaper one, with a copied
# float costing WGRAD_COPY_FLOPS multiply-adds (2-core CPU: ~10 GB/s copied, ~250 GFLOP/s).
WGRAD_COPY_FLOPS = 50
# kxk convs with under WGRAD_MIN_CHANNELS input channels (the 7x7 stem; tiny test models,
# whose compile time the per-tap products lengthen), or under WGRAD_ANY_SIZE_CHANNELS with
# an input over WGRAD_MAX_INPUT_BYTES, keep autodiff's kernel gradient.
WGRAD_MIN_CHANNELS = 64
WGRAD_ANY_SIZE_CHANNELS = 256
WGRAD_MAX_INPUT_BYTES = 16 * 2**20


def _gram(a: Array, b: Array) -> Array:
    """``a^T b`` over all leading dims: ``[..., m], [..., n] -> [m, n]``.

    XLA:CPU's library matrix products want the contracted dim of the left operand minor, so
    the left operand is transposed (a copy, into which XLA fuses its elementwise producers);
    the narrower of the two is put on the left, and the product transposed back.
    """
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    # Sums over every pixel of the batch: accumulated and returned in float32.
    if a.shape[-1] <= b.shape[-1]:
        return jnp.einsum("nm,nk->mk", a, b, preferred_element_type=jnp.float32)
    return jnp.einsum("nk,nm->km", b, a, preferred_element_type=jnp.float32).T


def _weight_grad(x: Array, g: Array, k: int, strides: int, dilation: int) -> Array:
    """``d(sum(conv2d(x, kernel) * g)) / d(kernel)`` as matrix products, ``[k, k, Cin, Cout]``."""
    _, h, w, cin = x.shape
    _, out_h, out_w, cout = g.shape
    h_windows = _tap_windows(h, k, dilation, strides)
    w_windows = _tap_windows(w, k, dilation, strides)
    # Per output pixel: copying the padded window vs copying both windows (and multiplying
    # only there), for the share of outputs the tap covers.
    whole = WGRAD_COPY_FLOPS * cin + cin * cout
    part = WGRAD_COPY_FLOPS * (cin + cout) + cin * cout
    blocks = {}
    for i, (oh, nh, ih) in enumerate(h_windows):
        for j, (ow, nw, iw) in enumerate(w_windows):
            if nh == 0 or nw == 0:
                continue
            window = _window(x, (ih, iw), (nh, nw), strides)
            if (nh, nw) == (out_h, out_w):
                blocks[i, j] = _gram(window, g)
            elif whole <= part * nh * nw / (out_h * out_w):
                blocks[i, j] = _gram(_pad_to(window, (oh, ow), (out_h, out_w)), g)
            else:
                blocks[i, j] = _gram(window, g[:, oh : oh + nh, ow : ow + nw])
    zeros = jnp.zeros((cin, cout), jnp.float32)
    rows = [jnp.stack([blocks.get((i, j), zeros) for j in range(k)]) for i in range(k)]
    return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_dot_wgrad(x: Array, kernel: Array, strides: int, dilation: int, method: str) -> Array:
    # A groups-1 conv whose weight gradient is computed by `_weight_grad`: XLA:CPU
    # computes the transposed convolution that autodiff gives for it 2-15x slower than the
    # same multiply-adds as matrix products (README "Performance").
    return _conv_forward(x, kernel, strides, dilation, 1, method)


def _conv_dot_wgrad_fwd(x, kernel, strides, dilation, method):
    return _conv_forward(x, kernel, strides, dilation, 1, method), (x, kernel)


def _conv_dot_wgrad_bwd(strides, dilation, method, residuals, g):
    x, kernel = residuals
    _, x_vjp = jax.vjp(lambda x: _conv_forward(x, kernel, strides, dilation, 1, method), x)
    (dx,) = x_vjp(g)
    dw = _weight_grad(x, g, kernel.shape[0], strides, dilation).astype(kernel.dtype)
    return dx, dw


_conv_dot_wgrad.defvjp(_conv_dot_wgrad_fwd, _conv_dot_wgrad_bwd)


def conv2d(
    x: Array,
    kernel: Array,
    *,
    strides: int = 1,
    dilation: int = 1,
    groups: int = 1,
    method: str | None = None,
) -> Array:
    """NHWC convolution with symmetric padding ``dilation * (k // 2)``, skipping dead taps.

    Equal to ``lax.conv_general_dilated(x, kernel, (s, s), conv_padding(k, dilation),
    rhs_dilation=(dilation, dilation), feature_group_count=groups)`` up to float rounding,
    values and gradients.

    ``method`` (default ``$SEGJAX_CONV``, else ``"auto"``):

    - ``"auto"``: the taps of a dilated kernel that read only padding (DeepLab's ASPP rate
      36 on a 32x32 map: all but the centre) are dropped, on every backend. On the CPU:
      a 1x1 conv (groups 1) is a matrix product; a kxk conv is computed tap by tap when its
      output has at least ``TAP_SPLIT_MIN_OUTPUT_PIXELS`` pixels and either at least
      ``TAP_SPLIT_MIN_PADDING_SHARE`` of its multiply-adds would read padding (large
      dilations), or its dilation is at least ``TAP_SPLIT_MIN_DILATION``, or it is
      depthwise (XLA:CPU's dilated and grouped convolutions are slow), else it is one XLA
      convolution; and the kernel gradient of a groups-1 conv (kxk: with at least
      ``WGRAD_MIN_CHANNELS`` input channels, and at least ``WGRAD_ANY_SIZE_CHANNELS`` or
      an input of at most ``WGRAD_MAX_INPUT_BYTES``) is computed as matrix products
      (`_weight_grad`), not as the transposed convolution of autodiff.
    - ``"taps"``: as ``"auto"`` on the CPU, with every kxk forward tap by tap (groups 1 or
      depthwise), whatever the backend.
    - ``"xla"``: one XLA convolution over every tap and plain autodiff (what ``nn.Conv``
      does).

    Tap by tap, each tap is one matrix product (depthwise: one product per channel) over
    only the input window it reads, zero-padded to the output and summed; XLA:CPU's
    convolution computes the padded multiply-adds too.

    Args:
        x: ``[B, H, W, Cin]``.
        kernel: ``[k, k, Cin / groups, Cout]`` (HWIO), k odd.
        strides: spatial stride.
        dilation: kernel dilation.
        groups: feature groups (``groups == Cin == Cout``: depthwise).
        method: ``"auto"``, ``"taps"`` or ``"xla"``.

    Returns:
        ``[B, ceil(H / strides), ceil(W / strides), Cout]``.
    """
    method = method or os.environ.get("SEGJAX_CONV", "auto")
    if method not in ("auto", "taps", "xla"):
        raise ValueError(f"conv method must be 'auto', 'taps' or 'xla', got {method!r}")
    k = kernel.shape[0]
    if method == "xla":
        return lax.conv_general_dilated(
            x,
            kernel,
            (strides, strides),
            conv_padding(k, dilation),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )
    on_cpu = jax.default_backend() == "cpu"
    cin = x.shape[-1]
    matrix_wgrad = k == 1 or (
        cin >= WGRAD_MIN_CHANNELS
        and (cin >= WGRAD_ANY_SIZE_CHANNELS or _at_most_bytes(x, WGRAD_MAX_INPUT_BYTES))
    )
    if groups == 1 and (on_cpu or method == "taps") and matrix_wgrad:
        return _conv_dot_wgrad(x, kernel, strides, dilation, method)
    return _conv_forward(x, kernel, strides, dilation, groups, method)


def _at_most_bytes(x: Array, limit: int) -> bool:
    # False for a symbolic (jax.export shape-polymorphic) batch: its size is not known.
    return jax.core.is_constant_shape(x.shape) and x.size * x.dtype.itemsize <= limit


class Conv2D(nn.Module):
    """An NHWC conv with PyTorch-style symmetric padding, computed by `conv2d`.

    The same parameters as ``nn.Conv`` (``kernel`` ``[k, k, Cin / groups, features]``
    float32, ``bias`` ``[features]`` when ``use_bias``) and the same result as
    ``nn.Conv(padding=conv_padding(k, dilation))``, without the multiply-adds that read only
    padding.

    Attributes:
        features: output channels.
        kernel_size: square, odd kernel size.
        strides: spatial stride.
        dilation: kernel dilation (atrous rate).
        groups: ``feature_group_count``.
        use_bias: add a learned bias.
        dtype: compute dtype; parameters are float32.
        kernel_init: initialiser of the kernel (default: torchvision's kaiming fan-out).
        bias_init: initialiser of the bias.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = conv_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        k = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, x.shape[-1] // self.groups, self.features)
        )
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, strides=self.strides, dilation=self.dilation, groups=self.groups)
        return y if bias is None else y + bias


def _bn_normalize(x, mean, inv, scale, bias, residual, relu: bool):
    # float32 (x - mean) * inv * scale + bias (+ residual), then ReLU; [C] statistics.
    y = (x.astype(jnp.float32) - mean) * (inv * scale) + bias
    if residual is not None:
        y = y + residual.astype(jnp.float32)
    return jnp.maximum(y, 0.0) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _bn_train(x: Array, scale: Array, bias: Array, residual: Array | None, eps: float, relu: bool):
    """Training BatchNorm (+ residual, + ReLU) over all but the last axis: ``(y, mean, var)``.

    Statistics in float32, variance as ``E[x^2] - E[x]^2`` clipped at 0 (flax's
    ``use_fast_variance``); ``y`` in ``x``'s dtype. The backward pass is the closed-form
    one (two per-channel sums, then one elementwise pass that recomputes the normalised
    input instead of keeping it): autodiff through the statistics gives XLA more passes
    over the activations.
    """
    return _bn_train_fwd(x, scale, bias, residual, eps, relu)[0]


def _bn_train_fwd(x, scale, bias, residual, eps, relu):
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axes)
    var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
    inv = lax.rsqrt(var + eps)
    y = _bn_normalize(x, mean, inv, scale, bias, residual, relu).astype(x.dtype)
    # With a ReLU, its output (kept anyway: the next layer's input) gives the mask. A
    # scalar stands for the residual in the backward pass: its dtype, for its gradient.
    marker = None if residual is None else jnp.zeros((), residual.dtype)
    return (y, mean, var), (x, mean, inv, scale, y if relu else None, marker)


def _bn_train_bwd(eps, relu, residuals, cotangents):
    del eps
    x, mean, inv, scale, y, marker = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xf = x.astype(jnp.float32)
    g = g.astype(jnp.float32)
    if relu:
        g = jnp.where(y > 0, g, 0.0)
    g_bias = jnp.sum(g, axes)
    # sum(g * xhat) without xhat (one array fewer to write and read; the same cancellation
    # as the variance's E[x^2] - E[x]^2).
    g_scale = (jnp.sum(g * xf, axes) - mean * g_bias) * inv
    # d/dx of y, scale * inv * (g - mean(g) - xhat * mean(g * xhat)), and of the mean and
    # variance outputs (E[x], E[x^2] - E[x]^2), as a * g + b * x + c per channel.
    a = scale * inv
    b = (2.0 * g_var - a * inv * g_scale) / n
    c = (g_mean - a * g_bias) / n - b * mean
    gx = a * g + b * xf + c
    g_residual = None if marker is None else g.astype(marker.dtype)
    return gx.astype(x.dtype), g_scale, g_bias, g_residual


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis (+ residual, + ReLU, fused), with ``nn.BatchNorm``'s variables.

    The same parameters (``scale``, ``bias``) and statistics (``batch_stats``: ``mean``,
    ``var``, the biased variance) as ``nn.BatchNorm(momentum, epsilon)``, and the same
    values up to float rounding; training uses `_bn_train` (a closed-form backward pass).
    The statistics are over every axis but the last of the global batch (under ``jit`` on a
    sharded batch, XLA reduces across devices).

    Attributes:
        use_running_average: normalise with the running statistics (evaluation).
        momentum: running-average decay.
        epsilon: added to the variance.
        relu: apply ``max(y, 0)`` last.
        dtype: output dtype (statistics and arithmetic in float32).
        scale_init: initialiser of the scale.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    relu: bool = False
    dtype: jnp.dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x: Array, residual: Array | None = None) -> Array:
        """``[..., C] -> [..., C]``; ``residual`` (``x``'s shape) is added before the ReLU."""
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if self.use_running_average:
            inv = lax.rsqrt(ra_var.value + self.epsilon)
            y = _bn_normalize(x, ra_mean.value, inv, scale, bias, residual, self.relu)
            return y.astype(self.dtype)
        y, mean, var = _bn_train(x, scale, bias, residual, self.epsilon, self.relu)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)


def batch_norm(
    train: bool,
    dtype: jnp.dtype,
    name: str | None = None,
    zero_init: bool = False,
    relu: bool = False,
) -> Callable[..., Array]:
    """The one BatchNorm of segjax: momentum 0.9, eps 1e-5, global statistics under ``jit``.

    No ``axis_name``: training jits over a batch sharded on a Mesh, so the mean and variance
    that XLA computes are already over the global batch. Called as ``bn(x, residual=None)``:
    ``relu`` fuses a ReLU after it, and a ``residual`` is added before the ReLU (ResNet's
    ``relu(bn(conv(y)) + x)``), each one pass over the activations less, each way.
    ``$SEGJAX_BN=flax`` gives ``nn.BatchNorm`` (autodiff through its statistics), the sum
    and the ReLU unfused instead (for comparison: README "Performance").
    """
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    if os.environ.get("SEGJAX_BN", "fused") == "flax":
        bn = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            name=name,
        )

        def unfused(x: Array, residual: Array | None = None) -> Array:
            y = bn(x) if residual is None else bn(x) + residual
            return nn.relu(y) if relu else y

        return unfused
    return BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        relu=relu,
        dtype=dtype,
        scale_init=scale_init,
        name=name,
    )


def _pool_windows(x: Array, k: int, stride: int, padding) -> list[Array]:
    # The k*k strided views of the -inf-padded input, one per window position (row-major).
    _, h, w, _ = x.shape
    (top, bottom), (left, right) = padding
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    out = ((h + top + bottom - k) // stride + 1, (w + left + right - k) // stride + 1)
    return [_window(xp, (i, j), out, stride) for i in range(k) for j in range(k)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, k: int, stride: int, padding) -> Array:
    return _max_pool_fwd(x, k, stride, padding)[0]


def _max_pool_fwd(x, k, stride, padding):
    windows = _pool_windows(x, k, stride, padding)
    best, arg = windows[0], jnp.zeros(windows[0].shape, jnp.int8)
    for t, window in enumerate(windows[1:], 1):
        arg = jnp.where(window > best, jnp.int8(t), arg)  # the first maximum keeps it
        best = jnp.maximum(best, window)  # (propagates NaN)
    return best, (arg, x.shape)


def _max_pool_bwd(k, stride, padding, residuals, g):
    # Each output's gradient goes to its window's first maximum: per window position, the
    # gradients it won, spread back onto the padded input's grid (a strided pad), summed.
    arg, (_, h, w, _) = residuals
    (top, bottom), (left, right) = padding
    out_h, out_w = g.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    dx = None
    for t in range(k * k):
        i, j = divmod(t, k)
        won = jnp.where(arg == t, g, zero)
        config = (
            (0, 0, 0),
            (i, h + top + bottom - i - (out_h - 1) * stride - 1, stride - 1),
            (j, w + left + right - j - (out_w - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        )
        spread = lax.pad(won, zero, config)
        dx = spread if dx is None else dx + spread
    return (dx[:, top : top + h, left : left + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(
    x: Array, window: int, strides: int, padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))
) -> Array:
    """``nn.max_pool(x, (window, window), (strides, strides), padding)``, -inf padding.

    The same values, and the same gradient (each output's to the first maximum of its
    window, as XLA's ``select_and_scatter``), computed from ``window**2`` strided views:
    XLA:CPU's gradient of ``reduce_window`` builds index arrays (ResNet's stem pool at
    batch 4, 256x256: 60 ms forward and backward, 5 ms this way).

    Args:
        x: ``[B, H, W, C]``.
        window: square window size (at most 11).
        strides: spatial stride.
        padding: ``((top, bottom), (left, right))``.

    Returns:
        ``[B, (H + top + bottom - window) // strides + 1, (W + ...) // strides + 1, C]``.
    """
    if not 1 <= window <= 11:
        raise ValueError(f"max_pool window must be 1..11, got {window}")
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _max_pool(x, window, strides, padding)


def resize_bilinear(x: Array, size: Sequence[int]) -> Array:
    """Bilinear resize of ``[B, H, W, C]`` to ``[B, *size, C]`` with half-pixel centres.

    Matches PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` when upsampling.
    ``antialias=False`` so that downsampling samples rather than box-filters, as PyTorch does.
    A resize to the same size is skipped, which keeps it exact and free.
    """
    h, w = int(size[0]), int(size[1])
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(
        x, (x.shape[0], h, w, x.shape[3]), method="bilinear", antialias=False
    ).astype(x.dtype)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional activation.

    Attributes:
        features: output channels.
        kernel_size: square kernel size.
        strides: spatial stride.
        dilation: kernel dilation (atrous rate).
        groups: ``feature_group_count`` (``features == in_channels == groups`` is depthwise).
        act: activation after the norm; ``None`` for none (e.g. before a residual sum).
        zero_init_bn: initialise the BN scale at 0 (residual branches start as identity).
        dtype: compute dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    act: Callable[[Array], Array] | None = nn.relu
    zero_init_bn: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, residual: Array | None = None) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``.

        ``residual`` (the output's shape) is added after the norm, before the activation.
        """
        x = Conv2D(
            self.features,
            self.kernel_size,
            strides=self.strides,
            dilation=self.dilation,
            groups=self.groups,
            dtype=self.dtype,
            name="conv",
        )(x)
        bn = batch_norm(
            train, self.dtype, name="bn", zero_init=self.zero_init_bn, relu=self.act is nn.relu
        )
        if self.act is None or self.act is nn.relu:
            return bn(x, residual)
        x = bn(x) if residual is None else bn(x) + residual
        return self.act(x)


class SeparableConvBNReLU(nn.Module):
    """Depthwise-separable conv: depthwise kxk -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU.

    The layout of mmsegmentation's ``DepthwiseSeparableConvModule`` (norm and activation after
    both the depthwise and the pointwise conv), used by DeepLabv3+'s ASPP and decoder.

    Attributes:
        features: output channels.
        kernel_size: depthwise kernel size.
        dilation: depthwise dilation (atrous rate).
        dtype: compute dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, H, W, features]``."""
        cin = x.shape[-1]
        x = ConvBNReLU(
            cin,
            self.kernel_size,
            dilation=self.dilation,
            groups=cin,
            dtype=self.dtype,
            name="depthwise",
        )(x, train=train)
        return ConvBNReLU(self.features, 1, dtype=self.dtype, name="pointwise")(x, train=train)


def conv_block(
    features: int,
    *,
    kernel_size: int = 3,
    dilation: int = 1,
    separable: bool = False,
    dtype: jnp.dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
    """A conv-BN-ReLU, depthwise-separable when ``separable`` and ``kernel_size > 1``."""
    if separable and kernel_size > 1:
        return SeparableConvBNReLU(features, kernel_size, dilation, dtype=dtype, name=name)
    return ConvBNReLU(features, kernel_size, dilation=dilation, dtype=dtype, name=name)


def classifier_conv(
    num_classes: int, dtype: jnp.dtype, kernel_size: int = 1, name: str | None = None
) -> Conv2D:
    """A conv with bias to class logits, initialised as ``nn.Conv``'s defaults (LeCun normal)."""
    return Conv2D(
        num_classes,
        kernel_size,
        use_bias=True,
        dtype=dtype,
        kernel_init=nn.initializers.lecun_normal(),
        name=name,
    )


class Classifier(nn.Module):
    """Dropout -> 1x1 conv with bias to ``num_classes`` logits (the ``conv_seg`` of mmseg).

    Attributes:
        num_classes: output channels.
        dropout: dropout rate before the classifier (rng collection ``"dropout"``).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, C] -> [B, H, W, num_classes]``."""
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return classifier_conv(self.num_classes, self.dtype, name="conv")(x)


class PixelMLP(nn.Module):
    """A per-pixel colour classifier's trunk: a stack of 1x1 conv -> BN -> ReLU.

    A "backbone" that sees one pixel's colour and nothing else, the baseline that shows how
    much a dataset needs spatial context. BN keeps the ``batch_stats`` collection that every
    segjax model has; in eval mode it is a per-channel affine map, so the model stays strictly
    per-pixel (in train mode it only shares batch statistics, never neighbours).

    Attributes:
        widths: channels of each 1x1 layer.
        dtype: compute dtype; parameters are float32.
    """

    widths: Sequence[int] = (64, 64)
    dtype: jnp.dtype = jnp.float32

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key."""
        return {"s1": self.widths[-1]}

    def feature_strides(self) -> dict[str, int]:
        """Spatial stride of each output key."""
        return {"s1": 1}

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3] -> {"s1": [B, H, W, widths[-1]]}``."""
        for i, w in enumerate(self.widths):
            x = ConvBNReLU(w, 1, dtype=self.dtype, name=f"layer{i + 1}")(x, train=train)
        return {"s1": x}
