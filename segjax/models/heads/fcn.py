"""FCN-style head: a few convs and a classifier on one feature level.

Used as the auxiliary head on ``"s16"`` (stage 3), as torchvision's and mmsegmentation's
``FCNHead``, and with ``num_convs=0`` as a bare classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, ConvBNReLU

Array = jax.Array


class FCNHead(nn.Module):
    """``num_convs`` x (conv-BN-ReLU) -> dropout -> 1x1 classifier on ``features[in_key]``.

    With the defaults this is torchvision's ``FCNHead(1024, K)`` on ResNet-50's stage 3:
    3x3 conv to 256 channels, BN, ReLU, dropout 0.1, 1x1 conv to ``K``.

    Attributes:
        num_classes: number of output channels (classes).
        channels: channels of the convs.
        num_convs: number of conv-BN-ReLU layers before the classifier (0: classifier only).
        kernel_size: kernel size of those convs.
        dropout: dropout before the classifier (rng collection ``"dropout"``).
        in_key: feature key to read.
        concat_input: concatenate the input with the convs' output and fuse them with one
            more conv-BN-ReLU (``conv_cat``) before the classifier, as mmsegmentation's
            ``FCNHead(concat_input=True)`` (its ``fcn_r50-d8``).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 256
    num_convs: int = 1
    kernel_size: int = 3
    dropout: float = 0.1
    in_key: str = "s16"
    concat_input: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, num_classes]``."""
        x = inputs = features[self.in_key]
        for i in range(self.num_convs):
            x = ConvBNReLU(self.channels, self.kernel_size, dtype=self.dtype, name=f"conv{i}")(
                x, train=train
            )
        if self.concat_input:
            x = ConvBNReLU(self.channels, self.kernel_size, dtype=self.dtype, name="conv_cat")(
                jnp.concatenate([inputs.astype(x.dtype), x], axis=-1), train=train
            )
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )
