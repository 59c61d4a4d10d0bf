"""The HRNetV2 representation: every level resized to the finest one and concatenated.

mmsegmentation's ``input_transform="resize_concat"`` of a decode head (bilinear, half-pixel
centres, ``align_corners=False``), as a parameter-free neck, so that any head (FCN, OCR) can
read it under one key.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import resize_bilinear

Array = jax.Array


class ResizeConcat(nn.Module):
    """Adds ``features[out_key]``: ``in_keys`` upsampled to ``in_keys[0]``'s size, concatenated.

    Attributes:
        in_keys: levels to concatenate, the first one giving the size.
        out_key: key of the ``[B, h0, w0, sum of channels]`` output.
    """

    in_keys: Sequence[str] = ("s4", "s8", "s16", "s32")
    out_key: str = "hrnetv2"

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Returns a new dict: ``features`` plus ``out_key``."""
        del train
        first = features[self.in_keys[0]]
        size = first.shape[1:3]
        # Resize in float32 (bilinear weights in bf16 band), concatenate in compute dtype.
        parts = [
            resize_bilinear(features[k].astype(jnp.float32), size).astype(first.dtype)
            for k in self.in_keys
        ]
        return {**features, self.out_key: jnp.concatenate(parts, axis=-1)}
