"""VGG-16 (Simonyan & Zisserman, 2015) as a segmentation backbone, with and without BatchNorm.

Layout of torchvision's ``vgg16`` / ``vgg16_bn`` ``features``: five stages of 3x3 convs
(with bias; BN after each conv in the ``_bn`` variant) and ReLU, each stage followed by a
max pool. Outputs are the five pooled maps keyed by NOMINAL stride (``"s2"`` = pool1 ...
``"s32"`` = pool5), as ``ResNet``'s keys; ``feature_strides()`` gives the true strides.

Pooling (the padding choice): every stride-2 pool maps ``n`` cells to ``ceil(n / 2)``, as
Caffe's ceil-mode pooling (FCN, SegNet) and as every other segjax backbone. ``pool_kernel=2``
is a 2x2/2 pool whose odd last row/column is padded with -inf (FCN, SegNet, torchvision);
``pool_kernel=3`` is DeepLab's 3x3/2 pool with padding 1. So a stride-``s`` map has
``ceil(H / s)`` cells and cell ``i`` covers input pixels ``[s i, s (i + 1))``: maps of all
levels align at offset 0, which is what FCN's skips and SegNet's unpooling rely on.

``output_stride`` 16 or 8 turns pool5 (and pool4) into 3x3 stride-1 pools with padding 1 and
dilates the following convs by 2 (DeepLab v1: pool4 and pool5 at stride 1, conv5 at rate 2;
the layers after pool5 are the head's and dilate themselves).

``VGGFullyConv`` is fc6/fc7 of the VGG classifier as convolutions (FCN, DeconvNet:
7x7 and 1x1 with 4096 channels; DeepLab-LargeFOV: 3x3 at rate 12 with 1024 channels).

Example:
    >>> model = VGG16()
    >>> x = jnp.zeros((1, 97, 131, 3))
    >>> feats = jax.eval_shape(lambda x: model.init_with_output(
    ...     jax.random.key(0), x, train=False)[0], x)
    >>> feats["s32"].shape  # ceil(97 / 32), ceil(131 / 32)
    (1, 4, 5, 512)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Conv2D, batch_norm, max_pool

Array = jax.Array

FEATURE_KEYS = ("s2", "s4", "s8", "s16", "s32")
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Tests and the tiny registered models: one narrow conv per stage.
VGG_TINY_STAGES = ((8,), (8,), (16,), (16,), (16,))
# The tiny LargeFOV models (DeepLab v1, ParseNet, attention to scale): one conv per stage,
# 16-64 channels. With VGG_TINY_STAGES, or without BatchNorm, LargeFOV stays at the
# always-background score of segjax_shapes after 600-1,000 steps (README, "Trained zoo").
VGG_SMALL_STAGES = ((16,), (32,), (32,), (64,), (64,))


class VGGConv(nn.Module):
    """3x3 conv (with bias, as VGG) -> optional BatchNorm -> ReLU.

    Attributes:
        features: output channels.
        kernel_size: square kernel size.
        dilation: kernel dilation.
        batch_norm: BN after the conv (``vgg16_bn``).
        dtype: compute dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, H, W, features]`` (same size: symmetric padding)."""
        x = Conv2D(
            self.features,
            self.kernel_size,
            dilation=self.dilation,
            use_bias=True,
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.batch_norm:
            return batch_norm(train, self.dtype, name="bn", relu=True)(x)
        return nn.relu(x)


def max_pool_ceil(x: Array, kernel: int, stride: int, ceil_mode: bool = True) -> Array:
    """Max pool that maps ``n`` cells to ``ceil(n / stride)``; -inf padding never wins.

    ``kernel=2, stride=2``: pads the odd last row/column (Caffe's ceil mode); with
    ``ceil_mode=False`` drops it instead (``floor(n / 2)``: torchvision's ``MaxPool2d(2, 2)``).
    ``kernel=3``: padding 1 on each side (DeepLab's pool, and its stride-1 pool4/pool5).
    """
    if kernel == 2 and stride == 2 and not ceil_mode:
        return max_pool(x, 2, 2)
    if kernel == 2 and stride == 2:  # "SAME": an odd last row/column gets a padded pair
        return max_pool(x, 2, 2, ((0, x.shape[1] % 2), (0, x.shape[2] % 2)))
    if kernel == 3:
        return max_pool(x, 3, stride, ((1, 1), (1, 1)))
    raise ValueError(f"unsupported pool: kernel {kernel}, stride {stride}")


class VGG(nn.Module):
    """VGG trunk (convolutional part) returning its five pooled maps.

    Attributes:
        stages: output channels of the convs of each of the five stages.
        batch_norm: BN after every conv (``vgg16_bn``, SegNet, DeconvNet).
        pool_kernel: 2 (2x2/2 ceil-mode pools: FCN, SegNet) or 3 (3x3/2 pad 1: DeepLab).
        output_stride: 8, 16 or 32; pools beyond it have stride 1 and later convs dilate.
        ceil_mode: 2x2 pools map ``n`` to ``ceil(n / 2)`` (the default, see the module
            doc); False: ``floor(n / 2)``, torchvision's ``vgg16().features`` exactly (the
            same weights; only odd-sized maps differ).
        dtype: compute dtype; parameters are float32.
    """

    stages: Sequence[Sequence[int]] = VGG16_STAGES
    batch_norm: bool = False
    pool_kernel: int = 2
    output_stride: int = 32
    ceil_mode: bool = True
    dtype: jnp.dtype = jnp.float32

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key (VGG-16: 64, 128, 256, 512, 512)."""
        return {k: stage[-1] for k, stage in zip(FEATURE_KEYS, self.stages, strict=True)}

    def feature_strides(self) -> dict[str, int]:
        """True spatial stride of each output key under ``output_stride``."""
        return {k: min(2 ** (i + 1), self.output_stride) for i, k in enumerate(FEATURE_KEYS)}

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """Runs the trunk.

        Args:
            x: images ``[B, H, W, 3]``, any size.
            train: BN batch statistics when True (no effect without BN).

        Returns:
            ``{"s2": pool1, "s4": pool2, "s8": pool3, "s16": pool4, "s32": pool5}``, each
            ``[B, ceil(H / s), ceil(W / s), C]`` with ``s`` from ``feature_strides()``.
        """
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if len(self.stages) != 5:
            raise ValueError(f"VGG needs 5 stages, got {len(self.stages)}")
        conv = functools.partial(VGGConv, batch_norm=self.batch_norm, dtype=self.dtype)
        features = {}
        stride, dilation = 1, 1
        for i, widths in enumerate(self.stages):
            for j, width in enumerate(widths):
                x = conv(width, dilation=dilation, name=f"conv{i + 1}_{j + 1}")(x, train=train)
            if stride * 2 <= self.output_stride:
                stride *= 2
                x = max_pool_ceil(x, self.pool_kernel, 2, self.ceil_mode)
            else:
                # DeepLab: a stride-1 3x3 pool keeps the size; the next convs see a 2x
                # coarser grid than they were designed for, hence the doubled dilation.
                x = max_pool_ceil(x, 3, 1)
                dilation *= 2
            features[FEATURE_KEYS[i]] = x
        return features


VGG16 = functools.partial(VGG, stages=VGG16_STAGES, batch_norm=False)
VGG16BN = functools.partial(VGG, stages=VGG16_STAGES, batch_norm=True)
VGGTiny = functools.partial(VGG, stages=VGG_TINY_STAGES)


class VGGFullyConv(nn.Module):
    """fc6 and fc7 of VGG as convolutions: kxk conv -> ReLU -> dropout -> 1x1 -> ReLU -> dropout.

    FCN (Long et al.): ``kernel_size=7, channels=4096`` ("convolutionalised" fc6/fc7; segjax
    pads fc6 'same' instead of FCN's 100-pixel input padding, see ``segjax.models.fcn``).
    DeepLab-LargeFOV: ``kernel_size=3, dilation=12, channels=1024``. DeconvNet adds BN
    (``batch_norm=True``) and no dropout.

    Attributes:
        channels: channels of fc6 and fc7.
        kernel_size: fc6 kernel size.
        dilation: fc6 dilation.
        dropout: dropout after each ReLU (VGG, FCN, DeepLab: 0.5).
        batch_norm: BN after fc6 and fc7 (DeconvNet).
        dtype: compute dtype; parameters are float32.
    """

    channels: int = 4096
    kernel_size: int = 7
    dilation: int = 1
    dropout: float = 0.5
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, h, w, C] -> [B, h, w, channels]``."""
        for name, k, d in (("fc6", self.kernel_size, self.dilation), ("fc7", 1, 1)):
            x = VGGConv(
                self.channels, k, d, batch_norm=self.batch_norm, dtype=self.dtype, name=name
            )(x, train=train)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x
