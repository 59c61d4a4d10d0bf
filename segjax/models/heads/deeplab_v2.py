"""DeepLab v1 (LargeFOV) and DeepLab v2 (ASPP) heads (Chen et al., 2015 and 2017).

DeepLab v1 "LargeFOV" on VGG-16 (``deeplab-public`` ``DeepLab-LargeFOV/train.prototxt``):
the trunk has 3x3/2 pools with padding 1, pool4 and pool5 at stride 1 and conv5 at rate 2
(``VGG16(output_stride=8, pool_kernel=3)``); then ``pool5a`` (3x3 average pool, stride 1,
padding 1), fc6 as a 3x3 conv at rate 12 with 1024 channels, fc7 1x1 with 1024 channels
(ReLU and dropout 0.5 after each) and fc8, a 1x1 classifier. ``LargeFOV`` is the part up to
fc7 and adds ``"fc7"`` to the feature dict, so that ParseNet can reuse it; the classifier is
``FCNHead(num_convs=0, in_key="fc7")``.

DeepLab v2 on ResNet-101 (``deeplab-v2`` ``ResNet-101`` prototxt): ASPP as the SUM of four
3x3 classifiers (conv to K with bias) at rates 6, 12, 18, 24 on the stride-8 ``"s32"``
features (``ASPPSumHead``); it differs from v3's ASPP neck (concatenation, BN, image pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGGFullyConv
from segjax.models.layers import Conv2D

Array = jax.Array

DEEPLAB_V2_RATES = (6, 12, 18, 24)


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV's pool5a + fc6 (3x3, rate 12, 1024) + fc7 (1x1, 1024), as a neck.

    Attributes:
        channels: channels of fc6 and fc7 (1024).
        rate: fc6 dilation (12 at output stride 8).
        dropout: dropout after fc6 and fc7 (0.5).
        in_key: feature key to read (pool5, ``"s32"``).
        out_key: key under which fc7's output is added.
        dtype: compute dtype; parameters are float32.
    """

    channels: int = 1024
    rate: int = 12
    dropout: float = 0.5
    in_key: str = "s32"
    out_key: str = "fc7"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Adds ``features[out_key]`` ``[B, h, w, channels]`` at ``features[in_key]``'s size."""
        x = features[self.in_key]
        # pool5a: average over the 3x3 window, padding counted (Caffe AVE pooling divides by 9).
        x = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        x = VGGFullyConv(
            self.channels, 3, self.rate, dropout=self.dropout, dtype=self.dtype, name="fc"
        )(x, train=train)
        return {**features, self.out_key: x}


class ASPPSumHead(nn.Module):
    """DeepLab v2's ASPP: ``sum_r conv3x3_rate_r(x)``, each conv straight to ``K`` logits.

    Attributes:
        num_classes: number of classes ``K``.
        rates: dilation rates of the branches (6, 12, 18, 24 at output stride 8).
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    rates: Sequence[int] = DEEPLAB_V2_RATES
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, K]``."""
        del train  # No BN, no dropout: the branches are bare classifiers.
        x = features[self.in_key]
        branches = [
            Conv2D(
                self.num_classes,
                3,
                dilation=rate,
                use_bias=True,
                # The prototxt's gaussian(std=0.01) filler for the fc1_* classifiers.
                kernel_init=nn.initializers.normal(0.01),
                dtype=self.dtype,
                name=f"branch{i}",
            )(x)
            for i, rate in enumerate(self.rates)
        ]
        return sum(branches[1:], branches[0])
