"""Feature Pyramid Network neck (Lin et al., 2017), as mmsegmentation's ``FPN``.

Laterals are 1x1 convs (with bias, no norm) to ``channels``; the top-down path adds each
coarser lateral, upsampled by nearest neighbour (PyTorch's ``mode="nearest"``: source index
``floor(i * n_in / n_out)``) to the finer lateral's size, so odd sizes work; each sum is
smoothed by a 3x3 conv (with bias). Weights are Xavier-uniform, as mmseg's ``FPN``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.layers import Conv2D

Array = jax.Array


def resize_nearest(x: Array, size: Sequence[int]) -> Array:
    """``[B, h, w, C] -> [B, *size, C]``; PyTorch nearest: row ``i`` reads ``floor(i * h / H)``."""
    h, w = x.shape[1:3]
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return x[:, rows][:, :, cols]


class FPN(nn.Module):
    """Lateral 1x1 convs + top-down nearest upsampling + 3x3 output convs.

    Attributes:
        in_keys: backbone levels, finest first.
        channels: channels of every pyramid level.
        out_prefix: output ``f"{out_prefix}{key}"`` for each input key.
        dtype: compute dtype; parameters are float32.
    """

    in_keys: Sequence[str] = ("s4", "s8", "s16", "s32")
    channels: int = 256
    out_prefix: str = "fpn_"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Adds ``fpn_s4`` ... ``fpn_s32``: ``[B, h_k, w_k, channels]`` at each level's size."""
        del train  # No norm, no dropout.

        def conv(k: int, name: str) -> Conv2D:
            return Conv2D(
                self.channels,
                k,
                use_bias=True,
                kernel_init=nn.initializers.xavier_uniform(),
                dtype=self.dtype,
                name=name,
            )

        laterals = [conv(1, f"lateral_{k}")(features[k]) for k in self.in_keys]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + resize_nearest(laterals[i + 1], laterals[i].shape[1:3])
        outs = {
            f"{self.out_prefix}{k}": conv(3, f"output_{k}")(lat)
            for k, lat in zip(self.in_keys, laterals, strict=True)
        }
        return {**features, **outs}
