"""OCRNet's head: object-contextual representations (Yuan, Chen & Wang, ECCV 2020).

mmsegmentation's ``OCRHead`` (``mmseg/models/decode_heads/ocr_head.py``), step by step:

1. ``feats``: a 3x3 conv-BN-ReLU of ``channels`` (512) on the input features.
2. Soft object regions: the logits ``[B, h, w, K]`` of a first, auxiliary FCN head (the
   ``SoftObjectRegions`` neck), softmax-normalised over the ``h * w`` pixels per class.
3. Object region representations: ``[B, K, channels]``, each the region-weighted sum of
   ``feats`` (``SpatialGatherModule``).
4. Pixel-region relation: ``softmax_k(q_p . k_k / sqrt(ocr_channels))`` with queries from
   ``feats`` and keys from the region representations, each two 1x1 conv-BN-ReLUs to
   ``ocr_channels`` (256); values one 1x1 conv-BN-ReLU.
5. Object-contextual representation: the relation-weighted values, a 1x1 conv-BN-ReLU back to
   ``channels``, concatenated with ``feats`` and fused by a 1x1 conv-BN-ReLU
   (``ObjectAttentionBlock``), then dropout and the classifier.

The region representations are a K-point "image" ``[B, K, 1, C]``, so the key and value
convs are ordinary 1x1 conv-BN-ReLUs over ``B * K`` samples, as in mmseg. The relation costs
``h * w * K`` (no ``HW x HW`` affinity). Softmaxes and products run in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import Classifier, ConvBNReLU

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


class SoftObjectRegions(nn.Module):
    """A neck that adds ``features[out_key]``: the logits of ``fcn`` (OCR's object regions).

    The same logits are OCRNet's auxiliary output (``FeatureLogits`` as the aux head), trained
    with weight 0.4 as in mmseg's ``ocrnet_*`` configs.

    Attributes:
        fcn: the first head (``FCNHead``) that gives ``[B, h, w, K]`` logits.
        pre: a neck applied first (OCR on HRNet: ``ResizeConcat``), or None.
        out_key: key of its logits.
    """

    fcn: FCNHead
    pre: nn.Module | None = None
    out_key: str = "object_regions"

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Returns a new dict: ``features`` (after ``pre``) plus ``out_key``."""
        if self.pre is not None:
            features = self.pre(features, train=train)
        return {**features, self.out_key: self.fcn(features, train=train)}


class FeatureLogits(nn.Module):
    """A parameter-free head that returns ``features[key]`` (logits a neck computed)."""

    key: str = "object_regions"

    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[key]`` ``[B, h, w, K]``."""
        del train
        return features[self.key]


class OCRHead(nn.Module):
    """Object-contextual representations head (see the module docstring).

    Attributes:
        num_classes: output classes ``K`` (must equal the object regions' channels).
        channels: width of ``feats`` and of the output representation (512).
        ocr_channels: width of queries, keys and values (256).
        dropout: before the classifier.
        in_key: features to read.
        regions_key: the soft object regions' logits ``[B, h, w, K]`` at ``in_key``'s size.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    ocr_channels: int = 256
    dropout: float = 0.1
    in_key: str = "s32"
    regions_key: str = "object_regions"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, num_classes]``."""
        x = features[self.in_key]
        regions = features[self.regions_key]
        if regions.shape[:3] != x.shape[:3] or regions.shape[-1] != self.num_classes:
            raise ValueError(
                f"OCRHead: {self.regions_key!r} must be [B, h, w, {self.num_classes}] at "
                f"{self.in_key!r}'s size {x.shape[:3]}, got {regions.shape}"
            )

        def conv(features: int, kernel: int, name: str) -> ConvBNReLU:
            return ConvBNReLU(features, kernel, dtype=self.dtype, name=name)

        b, h, w, _ = x.shape
        feats = conv(self.channels, 3, "bottleneck")(x, train=train)
        # Object region representations: per class, a softmax over pixels weights feats.
        probs = jax.nn.softmax(regions.astype(jnp.float32).reshape(b, h * w, -1), axis=1)
        flat = feats.astype(jnp.float32).reshape(b, h * w, self.channels)
        context = jnp.einsum("bnk,bnc->bkc", probs, flat, precision=_HIGHEST)
        context = context[:, :, None, :].astype(self.dtype)  # a [B, K, 1, C] "image"

        query = conv(self.ocr_channels, 1, "query_project0")(feats, train=train)
        query = conv(self.ocr_channels, 1, "query_project1")(query, train=train)
        key = conv(self.ocr_channels, 1, "key_project0")(context, train=train)
        key = conv(self.ocr_channels, 1, "key_project1")(key, train=train)
        value = conv(self.ocr_channels, 1, "value_project")(context, train=train)
        # Pixel-region relation, scaled as mmseg's matmul_norm, softmax over the K regions.
        sim = jnp.einsum(
            "bnc,bkc->bnk",
            query.astype(jnp.float32).reshape(b, h * w, -1),
            key.astype(jnp.float32).reshape(b, -1, self.ocr_channels),
            precision=_HIGHEST,
        )
        sim = jax.nn.softmax(sim * self.ocr_channels**-0.5, axis=-1)
        ctx = jnp.einsum(
            "bnk,bkc->bnc",
            sim,
            value.astype(jnp.float32).reshape(b, -1, self.ocr_channels),
            precision=_HIGHEST,
        )
        ctx = ctx.reshape(b, h, w, self.ocr_channels).astype(self.dtype)
        ctx = conv(self.channels, 1, "out_project")(ctx, train=train)
        out = conv(self.channels, 1, "fuse")(jnp.concatenate([ctx, feats], axis=-1), train=train)
        return Classifier(self.num_classes, self.dropout, dtype=self.dtype, name="classifier")(
            out, train=train
        )
