"""DeepLabv3 and DeepLabv3+ decode heads (Chen et al., 2017 and 2018).

The ASPP lives in the neck (``segjax.models.necks.aspp.ASPP``), which adds its output to the
feature dict under ``"aspp"``; these heads read that key (and, for v3+, the low-level
``"s4"`` features). A head returns logits at feature resolution; the ``Segmentor`` resizes
them to the input.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, ConvBNReLU, conv_block, resize_bilinear

Array = jax.Array


class DeepLabV3Head(nn.Module):
    """torchvision's ``DeepLabHead`` after its ASPP: 3x3 conv-BN-ReLU -> 1x1 classifier.

    Attributes:
        num_classes: number of output channels (classes).
        channels: channels of the 3x3 conv.
        dropout: dropout before the classifier (torchvision: none).
        in_key: key of the ASPP output in the feature dict.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 256
    dropout: float = 0.0
    in_key: str = "aspp"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, num_classes]``."""
        x = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="conv")(
            features[self.in_key], train=train
        )
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ decoder: fuse upsampled ASPP output with projected low-level features.

    ``low = conv1x1-BN-ReLU(features[low_level_key])`` (48 channels in the paper);
    the ASPP output is bilinearly resized (half-pixel centres) to ``low``'s size,
    concatenated with it, refined by two 3x3 conv-BN-ReLU (depthwise-separable when
    ``separable``, as the paper and mmseg's ``DepthwiseSeparableASPPHead``) and classified.

    Attributes:
        num_classes: number of output channels (classes).
        low_level_channels: channels of the low-level projection.
        channels: channels of the two 3x3 decoder convs.
        separable: depthwise-separable decoder convs.
        dropout: dropout before the classifier (mmseg: 0.1).
        in_key: key of the ASPP output.
        low_level_key: key of the low-level features (stride 4).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    low_level_channels: int = 48
    channels: int = 256
    separable: bool = False
    dropout: float = 0.1
    in_key: str = "aspp"
    low_level_key: str = "s4"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Features -> logits ``[B, h4, w4, num_classes]`` at ``features[low_level_key]``'s size."""
        low = ConvBNReLU(self.low_level_channels, 1, dtype=self.dtype, name="low_level")(
            features[self.low_level_key], train=train
        )
        x = resize_bilinear(features[self.in_key], low.shape[1:3]).astype(low.dtype)
        x = jnp.concatenate([x, low], axis=-1)
        for i in range(2):
            x = conv_block(
                self.channels, separable=self.separable, dtype=self.dtype, name=f"fuse{i}"
            )(x, train=train)
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )
