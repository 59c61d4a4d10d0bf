"""Building blocks shared by backbones, necks and heads.

All modules here are NHWC Linen modules with a compute ``dtype`` (``bfloat16`` for mixed
precision) and float32 parameters. Convolutions use explicit, PyTorch-style symmetric
padding (``dilation * (kernel_size // 2)`` on each side) rather than ``"SAME"``: the output
sizes are the same (``ceil(H / stride)``), but symmetric padding keeps the sampling grid of
torchvision / mmsegmentation, so that their pretrained weights can be ported unchanged.
"""

from __future__ import annotations

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


def _conv_taps(
    x: Array, kernel: Array, h_windows, w_windows, out_hw: tuple[int, int], stride: int
) -> Array:
    # Sum over live taps of (the input window it reads) @ (its kernel slice), each product
    # zero-padded to the output size: no multiply-add reads padding.
    depthwise = kernel.shape[2] == 1 and x.shape[-1] > 1
    b, _, _, cin = x.shape
    out = None
    for i, (oh, nh, ih) in enumerate(h_windows):
        for j, (ow, nw, iw) in enumerate(w_windows):
            if nh == 0 or nw == 0:
                continue
            window = lax.slice(
                x,
                (0, ih, iw, 0),
                (b, ih + (nh - 1) * stride + 1, iw + (nw - 1) * stride + 1, cin),
                (1, stride, stride, 1),
            )
            if depthwise:
                y = window * kernel[i, j, 0]
            else:
                y = jnp.einsum("bhwc,cf->bhwf", window, kernel[i, j])
            pads = ((0, 0), (oh, out_hw[0] - oh - nh), (ow, out_hw[1] - ow - nw), (0, 0))
            y = jnp.pad(y, pads)
            out = y if out is None else out + y
    return out


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
    rhs_dilation=(dilation, dilation), feature_group_count=groups)`` up to float rounding.

    ``method`` (default ``$SEGJAX_CONV``, else ``"auto"``):

    - ``"auto"``: the taps of a dilated kernel that read only padding (DeepLab's ASPP rate
      36 on a 32x32 map: all but the centre) are dropped, on every backend; on the CPU, the
      conv is computed tap by tap when its output has at least
      ``TAP_SPLIT_MIN_OUTPUT_PIXELS`` pixels and either at least
      ``TAP_SPLIT_MIN_PADDING_SHARE`` of its multiply-adds would read padding (large
      dilations), or its dilation is at least ``TAP_SPLIT_MIN_DILATION``, or it is
      depthwise (XLA:CPU's dilated and grouped convolutions are slow).
    - ``"taps"``: tap by tap whenever groups is 1 or the conv is depthwise.
    - ``"xla"``: one XLA convolution over every tap (what ``nn.Conv`` does).

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
    _, h, w, cin = x.shape
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
    h_windows = _tap_windows(h, k, dilation, strides)
    w_windows = _tap_windows(w, k, dilation, strides)
    out_hw = tuple(
        (size + 2 * dilation * (k // 2) - dilation * (k - 1) - 1) // strides + 1 for size in (h, w)
    )
    depthwise = groups > 1 and groups == cin == kernel.shape[-1]
    if k > 1 and (groups == 1 or depthwise):
        live = sum(n for _, n, _ in h_windows) * sum(n for _, n, _ in w_windows)
        padding_share = 1.0 - live / (k * k * out_hw[0] * out_hw[1])
        on_cpu = jax.default_backend() == "cpu"
        large = out_hw[0] * out_hw[1] >= TAP_SPLIT_MIN_OUTPUT_PIXELS
        wasteful = (
            padding_share >= TAP_SPLIT_MIN_PADDING_SHARE or dilation >= TAP_SPLIT_MIN_DILATION
        )
        if method == "taps" or (on_cpu and large and (depthwise or wasteful)):
            return _conv_taps(x, kernel, h_windows, w_windows, out_hw, strides)
    # One XLA convolution over the live taps only (they are contiguous, dead ones at the ends).
    live_h = [t for t, (_, n, _) in enumerate(h_windows) if n]
    live_w = [t for t, (_, n, _) in enumerate(w_windows) if n]
    kernel = kernel[live_h[0] : live_h[-1] + 1, live_w[0] : live_w[-1] + 1]
    padding = []
    for size, out, live in ((h, out_hw[0], live_h), (w, out_hw[1], live_w)):
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
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        k = self.kernel_size
        kernel = self.param(
            "kernel", conv_kernel_init, (k, k, x.shape[-1] // self.groups, self.features)
        )
        bias = (
            self.param("bias", nn.initializers.zeros_init(), (self.features,))
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, strides=self.strides, dilation=self.dilation, groups=self.groups)
        return y if bias is None else y + bias


def batch_norm(train: bool, dtype: jnp.dtype, name: str | None = None, zero_init: bool = False):
    """The one BatchNorm of segjax: momentum 0.9, eps 1e-5, global statistics under ``jit``.

    No ``axis_name``: training jits over a batch sharded on a Mesh, so the mean and variance
    that XLA computes are already over the global batch.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


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
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        x = Conv2D(
            self.features,
            self.kernel_size,
            strides=self.strides,
            dilation=self.dilation,
            groups=self.groups,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = batch_norm(train, self.dtype, name="bn", zero_init=self.zero_init_bn)(x)
        if self.act is not None:
            x = self.act(x)
        return x


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
        return nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="conv"
        )(x)


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
