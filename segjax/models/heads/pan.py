"""PAN (Li et al., 2018, "Pyramid Attention Network"): feature pyramid attention (FPA) on the
deepest features and global attention upsampling (GAU) back to stride 4.

Layout of segmentation_models_pytorch's ``PANDecoder`` (``decoder_channels=32``, a 3x3
classifier, output stride 16): FPA's pyramid is three 2x max-pooled levels with 7x7, 5x5
and 3x3 (twice) one-channel convs, added top-down and multiplied pixel-wise with a 1x1
projection of the input, plus a global-pooling branch; each GAU multiplies a 3x3 conv of
the lower level by a channel gate (global pooling, 1x1 conv-BN, sigmoid) computed from
the higher level, and adds the higher level upsampled. Differences from smp: convolutions
before a BatchNorm carry no bias (segjax's ``ConvBNReLU``), upsampling uses half-pixel
centres, and the pooled levels have ``ceil(n / 2)`` rows (-inf padding), so that odd sizes
work; the top-down additions resize to the level below.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU, classifier_conv, max_pool, resize_bilinear

Array = jax.Array


def _pool2(x: Array) -> Array:
    # 2x2 max pooling, stride 2, ceil(n / 2) outputs (the odd row / column padded by -inf).
    h, w = x.shape[1:3]
    return max_pool(x, 2, 2, ((0, h % 2), (0, w % 2)))


def _up(x: Array, like: Array) -> Array:
    # Bilinear resize of x to like's spatial size, in float32, back to x's dtype.
    return resize_bilinear(x.astype(jnp.float32), like.shape[1:3]).astype(x.dtype)


class FeaturePyramidAttention(nn.Module):
    """FPA: ``up(pyramid) * conv1x1(x) + up(conv1x1(gap(x)))``, ``[B, h, w, channels]``.

    Attributes:
        channels: output channels (smp: ``decoder_channels``).
        dtype: compute dtype; parameters are float32.
    """

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, h, w, C] -> [B, h, w, channels]``."""
        conv = functools.partial(ConvBNReLU, dtype=self.dtype)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        context = conv(self.channels, 1, name="branch1")(pooled, train=train)
        mid = conv(self.channels, 1, name="mid")(x, train=train)
        x1 = conv(1, 7, name="down1")(_pool2(x), train=train)
        x2 = conv(1, 5, name="down2")(_pool2(x1), train=train)
        x3 = conv(1, 3, name="down3_conv1")(_pool2(x2), train=train)
        x3 = conv(1, 3, name="down3_conv2")(x3, train=train)
        y = conv(1, 5, name="conv2")(x2, train=train) + _up(x3, x2)
        y = conv(1, 7, name="conv1")(x1, train=train) + _up(y, x1)
        return _up(y, x) * mid + context.astype(mid.dtype)


class GlobalAttentionUpsample(nn.Module):
    """GAU: ``up(high) + conv3x3(low) * sigmoid(bn(conv1x1(gap(high))))``.

    Attributes:
        channels: channels of ``high`` and of the output.
        dtype: compute dtype; parameters are float32.
    """

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, low: Array, high: Array, *, train: bool) -> Array:
        """``low`` ``[B, h, w, C_low]``, ``high`` ``[B, h', w', channels]`` -> ``[B, h, w,
        channels]``."""
        pooled = jnp.mean(high.astype(jnp.float32), axis=(1, 2), keepdims=True)
        gate = ConvBNReLU(self.channels, 1, act=None, dtype=self.dtype, name="gate")(
            pooled.astype(high.dtype), train=train
        )
        low = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="low_conv")(low, train=train)
        return _up(high, low) + low * jax.nn.sigmoid(gate).astype(low.dtype)


class PANHead(nn.Module):
    """FPA on ``"s32"``, GAUs with ``"s16"``, ``"s8"``, ``"s4"``, a 3x3 classifier at stride 4.

    Note: in train mode the FPA's and GAUs' global-pooling BNs normalise one value per image
    and channel, so training needs a batch of at least 2 images.

    Attributes:
        num_classes: classes ``K``.
        channels: decoder channels (smp: 32).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """ResNet features -> logits ``[B, h4, w4, K]`` at ``features["s4"]``'s size."""
        gau = functools.partial(GlobalAttentionUpsample, self.channels, self.dtype)
        y = FeaturePyramidAttention(self.channels, self.dtype, name="fpa")(
            features["s32"], train=train
        )
        for key in ("s16", "s8", "s4"):
            y = gau(name=f"gau_{key}")(features[key], y, train=train)
        return classifier_conv(self.num_classes, self.dtype, 3, name="classifier")(y)
