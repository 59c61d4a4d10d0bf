"""Pyramid Pooling Module (PSPNet, Zhao et al., 2017).

Adaptive average pooling follows PyTorch's ``AdaptiveAvgPool2d``: bin ``i`` of ``b`` over a
length ``n`` averages ``[floor(i * n / b), ceil((i + 1) * n / b))``, so bins overlap when
``b`` does not divide ``n`` and every bin is non-empty for any ``n >= 1`` (odd sizes and
sizes smaller than the bin count included). The pooling is a product with two static
``[b, n]`` averaging matrices, one per spatial axis: exact, and a plain matmul for XLA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.layers import ConvBNReLU, resize_bilinear

Array = jax.Array


def adaptive_pool_matrix(n: int, bins: int) -> np.ndarray:
    """``[bins, n]`` averaging weights of PyTorch's adaptive average pooling."""
    m = np.zeros((bins, n), np.float32)
    for i in range(bins):
        start, end = (i * n) // bins, math.ceil((i + 1) * n / bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Array, bins: int | tuple[int, int]) -> Array:
    """``[B, H, W, C] -> [B, bh, bw, C]`` adaptive average pooling (PyTorch semantics), float32."""
    bh, bw = (bins, bins) if isinstance(bins, int) else bins
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], bh))
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], bw))
    # float32 and HIGHEST precision: sums over many pixels, and TPUs default to bf16 matmuls.
    return jnp.einsum(
        "bhwc,ih,jw->bijc", x.astype(jnp.float32), ph, pw, precision=jax.lax.Precision.HIGHEST
    )


class PyramidPooling(nn.Module):
    """PPM: per bin, adaptive average pool -> 1x1 conv-BN-ReLU -> bilinear upsample; concat.

    As mmsegmentation's ``PPM`` in ``PSPHead``: every branch has ``channels`` outputs (512 in
    PSPNet, a quarter of ResNet's 2048), is upsampled with half-pixel centres
    (``align_corners=False``) and concatenated after the input features. The 3x3 bottleneck
    and classifier that follow are an ``FCNHead`` on ``out_key``.

    Note: in train mode the 1-bin branch's BN normalises one value per image, so it needs a
    batch of at least 2 images (as PyTorch).

    Attributes:
        bins: output sizes of the pooling branches.
        channels: channels of each branch.
        in_key: feature key to read (PSPNet: the last stage, ``"s32"``).
        out_key: key of the concatenation ``[B, h, w, C + len(bins) * channels]``.
        dtype: compute dtype; parameters are float32.
    """

    bins: Sequence[int] = (1, 2, 3, 6)
    channels: int = 512
    in_key: str = "s32"
    out_key: str = "ppm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Adds ``features[out_key]`` at ``features[in_key]``'s size; returns a new dict."""
        x = features[self.in_key]
        outs = [x]
        for b in self.bins:
            y = adaptive_avg_pool(x, b).astype(x.dtype)
            y = ConvBNReLU(self.channels, 1, dtype=self.dtype, name=f"bin{b}")(y, train=train)
            # Upsample in float32 (bilinear weights in bf16 band), then back to compute dtype.
            outs.append(resize_bilinear(y.astype(jnp.float32), x.shape[1:3]).astype(x.dtype))
        return {**features, self.out_key: jnp.concatenate(outs, axis=-1)}
