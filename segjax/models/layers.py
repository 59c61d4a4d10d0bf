"""Building blocks shared by backbones, necks and heads.

All modules here are NHWC Linen modules with a compute ``dtype`` (``bfloat16`` for mixed
precision) and float32 parameters. Convolutions use explicit, PyTorch-style symmetric
padding (``dilation * (kernel_size // 2)`` on each side) rather than ``"SAME"``: the output
sizes are the same (``ceil(H / stride)``), but symmetric padding keeps the sampling grid of
torchvision / mmsegmentation, so that their pretrained weights can be ported unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# torchvision / mmseg initialise convolutions with kaiming_normal_(mode="fan_out", relu).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding that keeps ``ceil(H / stride)`` outputs, as PyTorch's ``padding=k//2``."""
    p = dilation * (kernel_size // 2)
    return ((p, p), (p, p))


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
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=(self.strides, self.strides),
            padding=conv_padding(self.kernel_size, self.dilation),
            kernel_dilation=(self.dilation, self.dilation),
            feature_group_count=self.groups,
            use_bias=False,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
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
