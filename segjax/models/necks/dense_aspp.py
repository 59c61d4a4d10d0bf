"""DenseASPP (Yang et al., CVPR 2018): atrous convolutions densely connected in a cascade.

Each layer sees the concatenation of the input and every earlier layer's output: a 1x1
conv-BN-ReLU to ``inter_channels`` (256), a 3x3 conv-BN-ReLU of ``growth`` (64) channels at
its rate (3, 6, 12, 18, 24), dropout (0.1); its output is concatenated in front. The neck's
output, ``C + len(rates) * growth`` channels, goes to a classifier. This is the layout of the
paper's Fig. 2 with the widths of its reference PyTorch port (``DenseASPPBlock(C, 256, 64)``),
norms as conv-BN-ReLU (the paper's DenseNet uses BN-ReLU-conv; same parameter count).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU

Array = jax.Array


class DenseASPP(nn.Module):
    """Densely connected atrous convolutions on ``features[in_key]``.

    Attributes:
        rates: dilation of each layer, in order.
        inter_channels: the 1x1 reduction of each layer.
        growth: output channels of each layer.
        dropout: after each layer (rng collection ``"dropout"``).
        in_key: features to read (a dilated ResNet's ``"s32"``).
        out_key: key of the ``[B, h, w, C + len(rates) * growth]`` output.
        dtype: compute dtype; parameters are float32.
    """

    rates: Sequence[int] = (3, 6, 12, 18, 24)
    inter_channels: int = 256
    growth: int = 64
    dropout: float = 0.1
    in_key: str = "s32"
    out_key: str = "dense_aspp"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Returns a new dict: ``features`` plus ``out_key``."""
        x = features[self.in_key]
        for rate in self.rates:
            y = ConvBNReLU(self.inter_channels, 1, dtype=self.dtype, name=f"reduce{rate}")(
                x, train=train
            )
            y = ConvBNReLU(self.growth, 3, dilation=rate, dtype=self.dtype, name=f"atrous{rate}")(
                y, train=train
            )
            if self.dropout > 0:
                y = nn.Dropout(self.dropout, deterministic=not train)(y)
            x = jnp.concatenate([y, x], axis=-1)
        return {**features, self.out_key: x}
