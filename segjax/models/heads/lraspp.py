"""Lite R-ASPP head (Howard et al., 2019, "Searching for MobileNetV3"), torchvision's layout.

torchvision's ``LRASPPHead``: on the high-level features, a 1x1 conv-BN-ReLU (``cbr``)
multiplied by a global gate (average pool -> 1x1 conv without bias -> sigmoid; ``scale``),
bilinearly resized to the low-level features, classified by a 1x1 conv with bias
(``high_classifier``) and added to a 1x1 classifier of the low-level features
(``low_classifier``). The logits are at the low-level features' resolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Conv2D, ConvBNReLU, classifier_conv, resize_bilinear

Array = jax.Array


class LRASPPHead(nn.Module):
    """``low_classifier(low) + high_classifier(resize(cbr(high) * scale(high)))``.

    Attributes:
        num_classes: number of output channels (classes).
        channels: channels of ``cbr`` and ``scale`` (torchvision's ``inter_channels``: 128).
        high_key: key of the high-level features (MobileNetV3's last conv, stride 16).
        low_key: key of the low-level features (torchvision's C2 tap, stride 8).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 128
    high_key: str = "s32"
    low_key: str = "c2"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Features -> logits ``[B, h, w, num_classes]`` at ``features[low_key]``'s size."""
        high, low = features[self.high_key], features[self.low_key]
        x = ConvBNReLU(self.channels, 1, dtype=self.dtype, name="cbr")(high, train=train)
        # Mean in float32: a bfloat16 sum over many pixels loses precision.
        pooled = jnp.mean(high.astype(jnp.float32), axis=(1, 2), keepdims=True)
        gate = Conv2D(self.channels, 1, dtype=self.dtype, name="scale")(pooled.astype(high.dtype))
        x = x * jax.nn.sigmoid(gate).astype(x.dtype)
        x = resize_bilinear(x, low.shape[1:3])
        low_logits = classifier_conv(self.num_classes, self.dtype, name="low_classifier")(low)
        high_logits = classifier_conv(self.num_classes, self.dtype, name="high_classifier")(x)
        return low_logits + high_logits
