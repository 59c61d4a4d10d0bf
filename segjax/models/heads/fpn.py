"""Panoptic-FPN semantic head (Kirillov et al., 2019), as mmsegmentation's ``FPNHead``.

Each pyramid level at stride ``s`` goes through ``max(1, log2(s / 4))`` 3x3 conv-BN-ReLU
layers, each followed (for ``s > 4``) by a bilinear 2x upsampling; the levels, all at
stride 4, are summed and classified.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, ConvBNReLU, resize_bilinear

Array = jax.Array


class FPNSemanticHead(nn.Module):
    """Per-level conv + upsample to the finest level, sum, dropout, 1x1 classifier.

    Upsampling goes to the exact size of the next finer level (not a blind factor 2), so
    the levels of an odd-sized input line up; with even sizes this is mmseg's 2x upsampling
    (bilinear, half-pixel centres). ``upsample="x2"`` is mmseg's ``FPNHead`` at any size:
    each 2x upsampling doubles the size, and each level's map is then resized to the finest
    level's size before the sum (the same result when the input size divides by 32).

    Attributes:
        num_classes: number of output channels (classes).
        channels: channels of the per-level convs (mmseg: 128).
        in_keys: pyramid levels, finest first, at strides 4, 8, 16, 32.
        dropout: dropout before the classifier (mmseg: 0.1).
        upsample: ``"to_next"`` (the default, above) or ``"x2"`` (mmsegmentation's).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 128
    in_keys: Sequence[str] = ("fpn_s4", "fpn_s8", "fpn_s16", "fpn_s32")
    dropout: float = 0.1
    upsample: str = "to_next"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Levels ``[B, h_k, w_k, C]`` -> logits ``[B, h_0, w_0, num_classes]`` (stride 4)."""
        if self.upsample not in ("to_next", "x2"):
            raise ValueError(f"upsample must be 'to_next' or 'x2', got {self.upsample!r}")
        sizes = [features[k].shape[1:3] for k in self.in_keys]
        total = None
        for level, key in enumerate(self.in_keys):
            x = features[key]
            for j in range(max(1, level)):
                x = ConvBNReLU(self.channels, 3, dtype=self.dtype, name=f"level{level}_conv{j}")(
                    x, train=train
                )
                if level > 0:
                    size = sizes[level - 1 - j]
                    if self.upsample == "x2":
                        size = (2 * x.shape[1], 2 * x.shape[2])
                    x = resize_bilinear(x.astype(jnp.float32), size).astype(x.dtype)
            if self.upsample == "x2":
                x = resize_bilinear(x.astype(jnp.float32), sizes[0]).astype(x.dtype)
            total = x if total is None else total + x
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            total, train=train
        )
