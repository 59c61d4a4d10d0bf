"""Dense upsampling convolution (DUC; Wang et al., WACV 2018): logits by pixel shuffle.

A 3x3 conv (with bias) maps the stride-``r`` features to ``r * r * K`` channels, and a
depth-to-space rearrangement (pixel shuffle) turns each cell's ``r x r x K`` block into the
full-resolution logits of the ``r x r`` pixels it covers: the upsampling is learned, with no
interpolation. Output ``[B, r h, r w, K]``; ``DUCSegmentor`` crops it to the input size.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import classifier_conv, resize_bilinear

Array = jax.Array


def depth_to_space(x: Array, r: int) -> Array:
    """``[B, h, w, r * r * C] -> [B, r h, r w, C]``: channel ``c r^2 + i r + j`` -> (i, j), c.

    PyTorch's ``pixel_shuffle`` order, so a ported DUC conv needs no channel permutation.
    """
    b, h, w, c = x.shape
    k = c // (r * r)
    x = x.reshape(b, h, w, k, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, k)


class DUCHead(nn.Module):
    """3x3 conv to ``upscale**2 * num_classes`` channels, then pixel shuffle.

    Attributes:
        num_classes: output classes.
        upscale: the features' stride ``r`` (8 for a ResNet at output stride 8).
        in_key: features to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    upscale: int = 8
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, r h, r w, num_classes]``."""
        del train
        r = self.upscale
        x = classifier_conv(r * r * self.num_classes, self.dtype, kernel_size=3, name="duc")(
            features[self.in_key]
        )
        return depth_to_space(x, r)


class DUCSegmentor(nn.Module):
    """Backbone -> DUC head, logits cropped (top-left) to the input size, + auxiliary head.

    A stride-``r`` cell ``i`` covers input rows ``[r i, r i + r)`` (segjax's convs pad
    symmetrically, so ``ceil(H / r)`` cells start at row 0); cropping, not resizing, keeps
    that alignment for any (odd) size. The auxiliary head's logits are resized as in
    ``Segmentor``. Same call contract and variables as ``Segmentor``.

    Attributes:
        backbone: ``__call__(x, *, train) -> dict[str, Array]``.
        head: a ``DUCHead``.
        aux_head: or None.
    """

    backbone: nn.Module
    head: DUCHead
    aux_head: nn.Module | None = None

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"logits": float32 [B, H, W, K]}`` (+ ``"aux_logits"``)."""
        h, w = image.shape[1:3]
        features = self.backbone(image, train=train)
        logits = self.head(features, train=train).astype(jnp.float32)
        if logits.shape[1] < h or logits.shape[2] < w:
            raise ValueError(
                f"DUC logits {logits.shape[1:3]} do not cover the input {(h, w)}: the head's "
                f"upscale must equal the features' stride"
            )
        outputs = {"logits": logits[:, :h, :w]}
        if self.aux_head is not None:
            aux = self.aux_head(features, train=train).astype(jnp.float32)
            outputs["aux_logits"] = resize_bilinear(aux, (h, w))
        return outputs
