"""Compact-context heads: EMANet's expectation-maximisation attention (Li et al., 2019) and
EncNet's context encoding (Zhang et al., 2018).

Layouts are mmsegmentation's ``EMAHead`` (``emanet_r50-d8``) and ``EncHead``
(``encnet_r50-d8``, without lateral connections):

- EMANet: a 3x3 conv-BN-ReLU to ``ema_channels``, a 1x1 projection, EM attention (``K``
  bases, ``T`` EM iterations), ReLU, a 1x1 conv-BN, the sum with the projection's input and
  a ReLU, a 3x3 bottleneck, a 3x3 ``conv_cat`` over the head's input and the result, the
  classifier. The bases' starting point is a running average (``batch_stats``), updated in
  training with momentum 0.1 as mmseg.
- EncNet: a 3x3 bottleneck, the context encoding module (a learned residual encoder over
  ``K`` codewords, BN over the codes, ReLU, mean over the codes, a fully connected layer
  with a sigmoid that scales every channel: ``relu(x + x * gamma)``), the classifier; the
  encoded vector also predicts which classes are in the image (``"se_logits"`` ``[B, K]``,
  for the semantic encoding loss, ``losses.se_loss``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.heads.attention import torch_default_init
from segjax.models.layers import Classifier, Conv2D, ConvBNReLU, batch_norm

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def _l2_normalize(x: Array, axis: int) -> Array:
    # torch.nn.functional.normalize(p=2, eps=1e-12): x / max(||x||, eps).
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


class EMAttention(nn.Module):
    """Expectation-maximisation attention (mmseg ``EMAModule``).

    With features ``X`` ``[N, C]`` and bases ``mu`` ``[C, K]`` (unit columns), ``T``
    iterations of E: ``Z = softmax_k(X mu)``, M: ``mu = l2norm_C(X^T Z / sum_n Z)``; the
    output is the low-rank reconstruction ``Z mu^T`` ``[N, C]``. The iterations run without
    gradient (as the paper and mmseg), except that the last E-step's responsibilities
    ``Z`` keep their gradient with respect to ``X``: mmseg computes them without one too, so
    its input projection gets no gradient (mmseg freezes it); here it trains. Values are
    the same. In training, the batch mean of the final bases, L2-normalised, updates the
    running bases: ``bases = (1 - momentum) * bases + momentum * new``.

    Attributes:
        num_bases: ``K`` (mmseg: 64).
        num_stages: EM iterations ``T`` (mmseg: 3).
        momentum: update rate of the running bases (mmseg: 0.1).
        dtype: output dtype; the EM runs in float32.
    """

    num_bases: int = 64
    num_stages: int = 3
    momentum: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        if self.num_stages < 1:
            raise ValueError(f"EMAttention: num_stages must be >= 1, got {self.num_stages}")
        b, h, w, c = x.shape

        def init_bases() -> Array:
            # mmseg: normal(0, sqrt(2 / K)), each basis (column) L2-normalised.
            shape = (c, self.num_bases)
            mu = jax.random.normal(self.make_rng("params"), shape) * (2.0 / self.num_bases) ** 0.5
            return _l2_normalize(mu, axis=0)

        bases = self.variable("batch_stats", "bases", init_bases)
        feats = x.astype(jnp.float32).reshape(b, h * w, c)
        fixed = jax.lax.stop_gradient(feats)
        mu = jnp.broadcast_to(bases.value, (b, c, self.num_bases))
        for stage in range(self.num_stages):
            last = stage == self.num_stages - 1
            z = jax.nn.softmax(
                jnp.einsum("bnc,bck->bnk", feats if last else fixed, mu, precision=_HIGHEST), -1
            )
            z_sum = jnp.sum(jax.lax.stop_gradient(z), axis=1, keepdims=True)
            z_normed = jax.lax.stop_gradient(z) / jnp.maximum(z_sum, 1e-12)
            mu = _l2_normalize(jnp.einsum("bnc,bnk->bck", fixed, z_normed, precision=_HIGHEST), 1)
        recon = jnp.einsum("bck,bnk->bnc", mu, z, precision=_HIGHEST)
        if train and not self.is_initializing():
            new = _l2_normalize(jnp.mean(mu, axis=0), axis=0)
            bases.value = (1 - self.momentum) * bases.value + self.momentum * new
        return recon.reshape(b, h, w, c).astype(self.dtype)


class EMAHead(nn.Module):
    """EMANet's head (mmseg ``EMAHead``, ``concat_input=True``).

    Attributes:
        num_classes: classes ``K``.
        ema_channels: channels of the EM attention (mmseg: 512).
        channels: channels of the bottleneck and ``conv_cat`` (mmseg: 256).
        num_bases: EM bases (mmseg: 64).
        num_stages: EM iterations (mmseg: 3).
        dropout: before the classifier.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    ema_channels: int = 512
    channels: int = 256
    num_bases: int = 64
    num_stages: int = 3
    dropout: float = 0.1
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, K]``."""
        x = features[self.in_key]
        identity = ConvBNReLU(self.ema_channels, 3, dtype=self.dtype, name="ema_in_conv")(
            x, train=train
        )
        # mmseg's ema_mid_conv: 1x1 with bias, no norm ("project (0, inf) -> (-inf, inf)").
        y = Conv2D(self.ema_channels, 1, use_bias=True, dtype=self.dtype, name="ema_mid_conv")(
            identity
        )
        y = EMAttention(self.num_bases, self.num_stages, dtype=self.dtype, name="ema")(
            y, train=train
        )
        # relu(identity + bn(conv(relu(recon)))): the sum and the ReLU fused into the BN.
        y = ConvBNReLU(self.ema_channels, 1, dtype=self.dtype, name="ema_out_conv")(
            nn.relu(y), train=train, residual=identity
        )
        y = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="bottleneck")(y, train=train)
        y = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="conv_cat")(
            jnp.concatenate([x.astype(y.dtype), y], axis=-1), train=train
        )
        return Classifier(self.num_classes, self.dropout, self.dtype, name="classifier")(
            y, train=train
        )


class Encoding(nn.Module):
    """The encoding layer (mmseg ``Encoding``): a learned residual encoder over codewords.

    For features ``x_n`` ``[N, C]``, codewords ``c_k`` and smoothing factors ``s_k``:
    ``a_nk = softmax_k(s_k ||x_n - c_k||^2)``, ``e_k = sum_n a_nk (x_n - c_k)``. The squared
    distances are expanded (``|x|^2 - 2 x.c + |c|^2``), so no ``[N, K, C]`` array is formed.
    Initialised as mmseg: codewords uniform in ``+-1 / sqrt(K C)``, ``s`` uniform in
    ``[-1, 0)``.

    Attributes:
        num_codes: ``K`` (mmseg: 32).
    """

    num_codes: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, N, C] -> [B, K, C]`` float32."""
        c = x.shape[-1]
        std = 1.0 / (self.num_codes * c) ** 0.5
        codewords = self.param(
            "codewords",
            lambda key, shape: jax.random.uniform(key, shape, minval=-std, maxval=std),
            (self.num_codes, c),
        )
        scale = self.param(
            "scale",
            lambda key, shape: jax.random.uniform(key, shape, minval=-1.0, maxval=0.0),
            (self.num_codes,),
        )
        xf = x.astype(jnp.float32)
        distances = (
            jnp.sum(jnp.square(xf), -1, keepdims=True)
            - 2.0 * jnp.einsum("bnc,kc->bnk", xf, codewords, precision=_HIGHEST)
            + jnp.sum(jnp.square(codewords), -1)
        )
        assignment = jax.nn.softmax(scale * distances, axis=-1)
        weighted = jnp.einsum("bnk,bnc->bkc", assignment, xf, precision=_HIGHEST)
        return weighted - jnp.sum(assignment, axis=1)[..., None] * codewords


class EncHead(nn.Module):
    """EncNet's head (mmseg ``EncHead``, ``add_lateral=False``).

    Attributes:
        num_classes: classes ``K``.
        channels: channels of the bottleneck and the encoding (mmseg: 512).
        num_codes: codewords (mmseg: 32).
        se_loss: also return ``"se_logits"`` ``[B, K]`` (a linear layer on the encoded
            vector) for the semantic encoding loss.
        dropout: before the classifier.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    num_codes: int = 32
    se_loss: bool = True
    dropout: float = 0.1
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array | dict:
        """``features[in_key]`` -> logits ``[B, h, w, K]`` (a dict with ``"logits"`` and
        ``"se_logits"`` when ``se_loss``)."""
        x = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="bottleneck")(
            features[self.in_key], train=train
        )
        b, h, w, c = x.shape
        projected = ConvBNReLU(c, 1, dtype=self.dtype, name="encoding_project")(x, train=train)
        encoded = Encoding(self.num_codes, name="encoding")(projected.reshape(b, h * w, c))
        # mmseg's BatchNorm1d(num_codes) on [B, K, C]: statistics per code over B and C.
        bn = batch_norm(train, jnp.float32, name="encoding_bn", relu=True)
        encoded = jnp.swapaxes(bn(jnp.swapaxes(encoded, 1, 2)), 1, 2)
        encoded = jnp.mean(encoded, axis=1)  # [B, C]
        dense = functools.partial(nn.Dense, dtype=jnp.float32, kernel_init=torch_default_init)
        gamma = jax.nn.sigmoid(dense(c, name="fc")(encoded)).astype(x.dtype)
        x = nn.relu(x + x * gamma[:, None, None, :])
        logits = Classifier(self.num_classes, self.dropout, self.dtype, name="classifier")(
            x, train=train
        )
        if not self.se_loss:
            return logits
        return {"logits": logits, "se_logits": dense(self.num_classes, name="se_layer")(encoded)}
