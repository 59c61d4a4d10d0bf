"""RefineNet (Lin et al., CVPR 2017): multi-path refinement with chained residual pooling.

RefineNet-4-cascade, in the layout of the paper's Fig. 2-3 and its common PyTorch port
(``RefineNet4Cascade``): each ResNet stage is adapted by a 3x3 conv (no bias) to ``2F``
(stage 4) or ``F`` channels (F = 256); RefineNet-4 refines stage 4 alone, RefineNet-3..1
each fuse the previous block's output with the next finer stage. A block:

- per input path, two residual conv units (RCU: ReLU, 3x3 conv with bias, ReLU, 3x3 conv, +
  input);
- multi-resolution fusion (paths > 1): a 3x3 conv (no bias) per path to the block's width,
  bilinear upsampling to the finest path, sum;
- chained residual pooling (CRP): ReLU, then a chain of ``pool_blocks`` (2) x [5x5 max pool
  stride 1, 3x3 conv], each result added to the running sum;
- one output RCU.

After RefineNet-1 (stride 4): two RCUs, dropout and a 1x1 classifier. No BatchNorm in the
refinement path (as the paper); the ResNet trunk keeps its BatchNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, Conv2D, max_pool, resize_bilinear

Array = jax.Array


# Residual branches (an RCU's second conv, CRP's convs) start small: with no normalisation
# in the refinement path, He-initialised branches double the activations' scale at every
# sum, and a from-scratch RefineNet-tiny's loss reached 75 by step 100 (the paper starts
# from an ImageNet ResNet and a 1e-4 learning rate).
_BRANCH_INIT = nn.initializers.variance_scaling(0.02, "fan_in", "normal")


def _conv(features: int, bias: bool, dtype, name: str, branch: bool = False) -> Conv2D:
    if branch:
        return Conv2D(features, 3, use_bias=bias, kernel_init=_BRANCH_INIT, dtype=dtype, name=name)
    return Conv2D(features, 3, use_bias=bias, dtype=dtype, name=name)


class ResidualConvUnit(nn.Module):
    """``x + conv(relu(conv(relu(x))))``, 3x3 convs at the input's width."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        c = x.shape[-1]
        y = _conv(c, True, self.dtype, "conv1")(nn.relu(x))
        return x + _conv(c, False, self.dtype, "conv2", branch=True)(nn.relu(y))


class ChainedResidualPool(nn.Module):
    """ReLU, then ``pool_blocks`` x (5x5 max pool stride 1 -> 3x3 conv), residually summed."""

    pool_blocks: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        x = nn.relu(x)
        path = x
        for i in range(self.pool_blocks):
            path = max_pool(path, 5, 1, ((2, 2), (2, 2)))
            path = _conv(x.shape[-1], False, self.dtype, f"conv{i}", branch=True)(path)
            x = x + path
        return x


class RefineNetBlock(nn.Module):
    """RCUs per path -> multi-resolution fusion -> chained residual pooling -> output RCU.

    Attributes:
        features: the block's output width.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, paths: Sequence[Array]) -> Array:
        """Paths coarsest first; output ``[B, h, w, features]`` at the finest path's size."""
        paths = [
            ResidualConvUnit(self.dtype, name=f"path{i}_rcu1")(
                ResidualConvUnit(self.dtype, name=f"path{i}_rcu0")(p)
            )
            for i, p in enumerate(paths)
        ]
        if len(paths) == 1:
            x = paths[0]
        else:
            size = paths[-1].shape[1:3]
            x = None
            for i, p in enumerate(paths):
                y = _conv(self.features, False, self.dtype, f"fusion{i}")(p)
                y = resize_bilinear(y.astype(jnp.float32), size).astype(y.dtype)
                x = y if x is None else x + y
        x = ChainedResidualPool(dtype=self.dtype, name="crp")(x)
        return ResidualConvUnit(self.dtype, name="output_rcu")(x)


class RefineNetHead(nn.Module):
    """RefineNet-4-cascade on ``in_keys`` (finest first), logits at the finest level.

    Attributes:
        num_classes: output classes.
        features: F; stage 4's adapted width and RefineNet-4's is ``2F``.
        in_keys: backbone levels, finest first.
        dropout: before the classifier.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    features: int = 256
    in_keys: Sequence[str] = ("s4", "s8", "s16", "s32")
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Logits ``[B, h0, w0, num_classes]`` at ``in_keys[0]``'s size."""
        n = len(self.in_keys)
        widths = [self.features] * (n - 1) + [2 * self.features]
        adapted = [
            _conv(w, False, self.dtype, f"adapt_{k}")(features[k])
            for k, w in zip(self.in_keys, widths, strict=True)
        ]
        x = RefineNetBlock(2 * self.features, self.dtype, name=f"refinenet{n}")([adapted[-1]])
        for i in range(n - 2, -1, -1):
            x = RefineNetBlock(self.features, self.dtype, name=f"refinenet{i + 1}")([x, adapted[i]])
        x = ResidualConvUnit(self.dtype, name="output_rcu0")(x)
        x = ResidualConvUnit(self.dtype, name="output_rcu1")(x)
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )
