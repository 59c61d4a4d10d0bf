"""UPerNet's head (Xiao et al., ECCV 2018): PPM on the last level + FPN fusion of all levels.

mmsegmentation's ``UPerHead`` (``mmseg/models/decode_heads/uper_head.py``): the coarsest
level goes through pyramid pooling (the ``PyramidPooling`` neck, ``"ppm"``) and a 3x3
conv-BN-ReLU bottleneck; the other levels get 1x1 conv-BN-ReLU laterals; a top-down path
adds each coarser lateral, bilinearly upsampled (half-pixel centres), to the finer one; every
level but the coarsest gets a 3x3 conv-BN-ReLU; all levels are upsampled to the finest one,
concatenated and fused by a 3x3 conv-BN-ReLU, then dropout and the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, ConvBNReLU, resize_bilinear

Array = jax.Array


def _resize(x: Array, size) -> Array:
    # Bilinear in float32 (bf16 weights band the result), back to the compute dtype.
    return resize_bilinear(x.astype(jnp.float32), size).astype(x.dtype)


class UPerHead(nn.Module):
    """PPM + FPN fusion head.

    Attributes:
        num_classes: output classes.
        channels: channels of every lateral, FPN output and of the fusion (mmseg: 512).
        in_keys: backbone levels, finest first; the last one is read through ``ppm_key``.
        ppm_key: the pyramid pooling concatenation of the coarsest level.
        dropout: before the classifier.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    in_keys: Sequence[str] = ("s4", "s8", "s16", "s32")
    ppm_key: str = "ppm"
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Logits ``[B, h0, w0, num_classes]`` at the finest level's size."""

        def conv(k: int, name: str) -> ConvBNReLU:
            return ConvBNReLU(self.channels, k, dtype=self.dtype, name=name)

        laterals = [conv(1, f"lateral_{k}")(features[k], train=train) for k in self.in_keys[:-1]]
        laterals.append(conv(3, "ppm_bottleneck")(features[self.ppm_key], train=train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[1:3])
        outs = [
            conv(3, f"fpn_{k}")(lat, train=train)
            for k, lat in zip(self.in_keys[:-1], laterals[:-1], strict=True)
        ]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        x = jnp.concatenate([_resize(o, size) for o in outs], axis=-1)
        x = conv(3, "fpn_bottleneck")(x, train=train)
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )
