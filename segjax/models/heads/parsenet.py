"""ParseNet (Liu, Rabinovich & Berg, 2015): global context by L2-normalised unpooling.

The global feature is the image-wide average of a feature map; it is "unpooled" (copied to
every position) and concatenated with the local features. The two have very different
scales, so each is L2-normalised over channels and multiplied by a learned per-channel scale
(initialised to ``scale_init``) before the concatenation and the classifier. The paper's
VOC model puts this on DeepLab-LargeFOV's fc7 (segjax: ``LargeFOV`` neck, ``"fc7"``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """``x / max(||x||_2, sqrt(eps))`` along ``axis``, computed in float32."""
    x32 = x.astype(jnp.float32)
    sq = jnp.sum(jnp.square(x32), axis=axis, keepdims=True)
    return (x32 * jax.lax.rsqrt(jnp.maximum(sq, eps))).astype(x.dtype)


class L2NormScale(nn.Module):
    """L2 normalisation over channels followed by a learned per-channel scale (ParseNet).

    Attributes:
        scale_init: initial value of every channel's scale.
        dtype: compute dtype; the scale is float32.
    """

    scale_init: float = 10.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[..., C] -> [..., C]``, each vector normalised to norm ``scale`` per channel."""
        scale = self.param(
            "scale", nn.initializers.constant(self.scale_init), (x.shape[-1],), jnp.float32
        )
        return (l2_normalize(x) * scale.astype(self.dtype)).astype(self.dtype)


class ParseNetHead(nn.Module):
    """Global average pool -> L2Norm+scale -> unpool, concat with L2Norm+scale(local) -> 1x1.

    Attributes:
        num_classes: number of classes ``K``.
        scale_init: initial scale of both normalisations (segjax's default 10; the scale
            is learned, as in the paper, so this only sets the starting point).
        dropout: dropout before the classifier.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    scale_init: float = 10.0
    dropout: float = 0.0
    in_key: str = "fc7"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, K]``."""
        x = features[self.in_key]
        context = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        context = L2NormScale(self.scale_init, self.dtype, name="context_norm")(context)
        local = L2NormScale(self.scale_init, self.dtype, name="local_norm")(x)
        # Unpooling: the global vector at every position, for the classifier to combine.
        context = jnp.broadcast_to(context, local.shape)
        x = jnp.concatenate([local, context], axis=-1)
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            x, train=train
        )
