"""Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et al., 2017; v3+, Chen et al., 2018).

A neck reads the backbone's feature dict and returns it with its own output added under a
new key, so that a head can use both the neck output and raw backbone levels (DeepLabv3+
takes ``"aspp"`` and ``"s4"``; an auxiliary FCN head takes ``"s16"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU, conv_block

Array = jax.Array

# The DeepLab papers' rates: (6, 12, 18) at output stride 16, doubled at 8.
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class ASPP(nn.Module):
    """ASPP: 1x1 conv, dilated 3x3 convs, image pooling; concat; 1x1 projection.

    Each branch is conv -> BN -> ReLU with ``channels`` outputs. The image-pooling branch
    averages over all pixels, applies its 1x1 conv-BN-ReLU and is broadcast back (an exact
    bilinear upsampling of a 1x1 map), as torchvision's ``ASPPPooling``. The concatenation
    is projected by a 1x1 conv-BN-ReLU and dropout, as torchvision's ``ASPP``.

    Note: in train mode the pooling branch's BN normalises one value per image, so it needs
    a batch of at least 2 images to carry a gradient (PyTorch raises an error for 1).

    Attributes:
        rates: dilation rates of the 3x3 branches, e.g. ``(6, 12, 18)`` at output stride 16.
        channels: channels of every branch and of the output.
        image_pooling: add the global-average-pooling branch.
        dropout: dropout rate after the projection (rng collection ``"dropout"``).
        separable: depthwise-separable 3x3 branches (DeepLabv3+, mmseg's
            ``DepthwiseSeparableASPPHead``); the 1x1 and pooling branches stay plain.
        project_kernel_size: kernel of the projection conv: 1 (torchvision, the paper) or
            3 (mmsegmentation's ``bottleneck``).
        in_key: feature key to read.
        out_key: key under which the output is added to the feature dict.
        dtype: compute dtype; parameters are float32.
    """

    rates: Sequence[int] = (6, 12, 18)
    channels: int = 256
    image_pooling: bool = True
    dropout: float = 0.1
    separable: bool = False
    project_kernel_size: int = 1
    in_key: str = "s32"
    out_key: str = "aspp"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Adds ``features[out_key]``: ``[B, h, w, channels]`` at ``features[in_key]``'s size.

        Args:
            features: backbone features; ``features[in_key]`` is ``[B, h, w, C]``.
            train: batch statistics and dropout when True.

        Returns:
            A new dict: ``features`` plus ``out_key``.
        """
        x = features[self.in_key]
        branches = [ConvBNReLU(self.channels, 1, dtype=self.dtype, name="branch0")(x, train=train)]
        for i, rate in enumerate(self.rates):
            branch = conv_block(
                self.channels,
                dilation=rate,
                separable=self.separable,
                dtype=self.dtype,
                name=f"branch{i + 1}",
            )
            branches.append(branch(x, train=train))
        if self.image_pooling:
            # Mean in float32: a bfloat16 sum over many pixels loses precision.
            pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
            pooled = ConvBNReLU(self.channels, 1, dtype=self.dtype, name="image_pool")(
                pooled.astype(x.dtype), train=train
            )
            branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.channels)))
        y = jnp.concatenate(branches, axis=-1)
        y = ConvBNReLU(self.channels, self.project_kernel_size, dtype=self.dtype, name="project")(
            y, train=train
        )
        if self.dropout > 0:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return {**features, self.out_key: y}
