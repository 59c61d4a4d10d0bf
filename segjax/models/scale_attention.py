"""Attention to scale (Chen et al., 2016): one network over several input scales, fused by a
learned per-pixel soft weight over the scales.

The image is resized to each scale (bilinear), the same backbone, neck and head (shared
weights) run on every copy, and each scale's score map and features (``feature_key``,
DeepLab-LargeFOV's fc7) are resized to the first scale's feature size. The attention model
(two layers as the paper: a 3x3 conv with ReLU over the concatenated features, a 1x1 conv to
one score per scale) gives, after a softmax over the scales, the weight of each scale's
score map at every position; the fused map is the weighted sum. Each scale's score map is
also returned as ``"deep_supervision"`` (the paper's extra supervision).

Note: the shared BatchNorms (if any) see each scale in turn; in training their running
statistics take one update per scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Conv2D, resize_bilinear

Array = jax.Array


class ScaleAttentionSegmentor(nn.Module):
    """A segmentor run at ``scales``, its score maps fused by attention to scale.

    Attributes:
        backbone, neck, head, aux_head: as ``Segmentor``'s (the auxiliary head sees the
            first scale's features).
        scales: input scales; the first gives the fused map's resolution (the paper: 1,
            0.75, 0.5).
        feature_key: the features that the attention model sees.
        attention_channels: channels of the attention model's 3x3 conv (paper: 512).
        dtype: compute dtype of the attention model; parameters are float32.
    """

    backbone: nn.Module
    neck: nn.Module | None
    head: nn.Module
    aux_head: nn.Module | None = None
    scales: Sequence[float] = (1.0, 0.75, 0.5)
    feature_key: str = "fc7"
    attention_channels: int = 512
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"logits", "deep_supervision" (one per scale)[,
        "aux_logits"]}``, float32 ``[B, H, W, K]``."""
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {tuple(self.scales)}")
        size = image.shape[1:3]
        scores, feats, outputs = [], [], {}
        for i, scale in enumerate(self.scales):
            scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            features = self.backbone(resize_bilinear(image, scaled), train=train)
            if self.neck is not None:
                features = self.neck(features, train=train)
            scores.append(self.head(features, train=train).astype(jnp.float32))
            feats.append(features[self.feature_key])
            if i == 0 and self.aux_head is not None:
                aux = self.aux_head(features, train=train).astype(jnp.float32)
                outputs["aux_logits"] = resize_bilinear(aux, size)
        ref = scores[0].shape[1:3]
        scores = [resize_bilinear(s, ref) for s in scores]
        feats = [resize_bilinear(f.astype(jnp.float32), ref).astype(self.dtype) for f in feats]
        a = Conv2D(self.attention_channels, 3, use_bias=True, dtype=self.dtype, name="attn1")(
            jnp.concatenate(feats, axis=-1)
        )
        a = Conv2D(len(self.scales), 1, use_bias=True, dtype=self.dtype, name="attn2")(nn.relu(a))
        weights = jax.nn.softmax(a.astype(jnp.float32), axis=-1)  # [B, h, w, S]
        fused = sum(weights[..., i : i + 1] * s for i, s in enumerate(scores))
        outputs["logits"] = resize_bilinear(fused, size)
        outputs["deep_supervision"] = [resize_bilinear(s, size) for s in scores]
        return outputs
