"""Self-attention heads: DANet's dual attention (Fu et al., 2019), CCNet's criss-cross
attention (Huang et al., 2019).

Layouts are mmsegmentation's ``DAHead`` and ``CCHead`` (``danet_r50-d8``, ``ccnet_r50-d8``):

- DANet: two branches on the trunk's last features, each a 3x3 conv-BN-ReLU in, one
  attention module (position attention ``PAM``: a non-local block over all ``h * w``
  positions; channel attention ``CAM``: a ``C x C`` affinity, no parameters but its scale),
  a 3x3 conv-BN-ReLU out; the classifier sees the sum of the two branches, and each
  branch has its own classifier whose logits train as deep supervision.
- CCNet: 3x3 conv-BN-ReLU, criss-cross attention applied ``recurrence`` times (the same
  weights each time), 3x3 conv-BN-ReLU, a 3x3 ``conv_cat`` over the input and the result,
  the classifier.

Every attention output is added to its input through a learned scalar ``gamma``,
initialised to 0 (the papers and mmseg: each module starts as the identity).

Affinities are computed in float32 (``preferred_element_type``) and their softmax too;
the weighted sums run in the compute dtype. Criss-cross attention never forms the
``hw x hw`` affinity: per position it computes ``h + w`` affinities (its column and its
row), ``[B, h, w, h + w]`` in all, the position itself counted once.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Classifier, Conv2D, ConvBNReLU

Array = jax.Array

# PyTorch's default nn.Conv2d init (kaiming_uniform with a = sqrt(5)): variance
# 1 / (3 fan_in). mmseg keeps it for the query/key/value projections; a fan-out He init
# would make the initial affinities far larger and the softmax near one-hot.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _projection(features: int, dtype: jnp.dtype, name: str) -> Conv2D:
    """A 1x1 conv with bias (a plain ``nn.Conv2d(c, features, 1)`` in mmseg)."""
    return Conv2D(
        features, 1, use_bias=True, dtype=dtype, kernel_init=torch_default_init, name=name
    )


def _residual_scale(module: nn.Module, init: float, out: Array, x: Array) -> Array:
    """``gamma * out + x`` with a learned scalar ``gamma`` (float32), started at ``init``."""
    gamma = module.param("gamma", nn.initializers.constant(init), (), jnp.float32)
    return (gamma.astype(x.dtype) * out.astype(x.dtype) + x).astype(x.dtype)


class PositionAttention(nn.Module):
    """DANet's position attention module (PAM): a non-local block over all positions.

    ``q, k = 1x1(x)`` (``key_channels``), ``v = 1x1(x)`` (``C``); ``A = softmax_m(q_n . k_m)``
    over all ``N = h * w`` positions (no ``1/sqrt(d)`` scaling, as DANet);
    ``out_n = sum_m A_nm v_m``; returns ``gamma * out + x``. The affinity is ``[B, N, N]``.

    Attributes:
        key_channels: channels of the query and key projections (mmseg: 64 of 512).
        gamma_init: initial residual scale (0: the identity, as the paper).
        dtype: compute dtype; parameters are float32.
    """

    key_channels: int
    gamma_init: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        b, h, w, c = x.shape
        q = _projection(self.key_channels, self.dtype, "query")(x).reshape(b, h * w, -1)
        k = _projection(self.key_channels, self.dtype, "key")(x).reshape(b, h * w, -1)
        v = _projection(c, self.dtype, "value")(x).reshape(b, h * w, c)
        energy = jnp.einsum("bnc,bmc->bnm", q, k, preferred_element_type=jnp.float32)
        attention = jax.nn.softmax(energy, axis=-1).astype(v.dtype)
        out = jnp.einsum("bnm,bmc->bnc", attention, v).reshape(b, h, w, c)
        return _residual_scale(self, self.gamma_init, out, x)


class ChannelAttention(nn.Module):
    """DANet's channel attention module (CAM): a ``C x C`` affinity over the channels.

    ``E = X^T X`` over the ``N`` positions (``X`` is ``[N, C]``), ``A = softmax(max_d E_cd -
    E_cd)`` over ``d`` (DANet's "energy_new": channels that correlate less weigh more),
    ``out_nc = sum_d A_cd X_nd``; returns ``gamma * out + x``. No parameters but ``gamma``.

    Attributes:
        gamma_init: initial residual scale (0: the identity, as the paper).
        dtype: compute dtype.
    """

    gamma_init: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        b, h, w, c = x.shape
        flat = x.astype(self.dtype).reshape(b, h * w, c)
        energy = jnp.einsum("bnc,bnd->bcd", flat, flat, preferred_element_type=jnp.float32)
        energy = jnp.max(energy, axis=-1, keepdims=True) - energy
        attention = jax.nn.softmax(energy, axis=-1).astype(flat.dtype)
        out = jnp.einsum("bcd,bnd->bnc", attention, flat).reshape(b, h, w, c)
        return _residual_scale(self, self.gamma_init, out, x)


def criss_cross_affinities(q: Array, k: Array) -> tuple[Array, Array]:
    """Column and row affinities of criss-cross attention, float32.

    Args:
        q, k: ``[B, h, w, C']``.

    Returns:
        ``(e_col [B, h, w, h], e_row [B, h, w, w])``: ``e_col[b, y, x, i] = q[b, y, x] .
        k[b, i, x]`` with ``-inf`` at ``i == y`` (the position itself is counted in its row
        only), ``e_row[b, y, x, j] = q[b, y, x] . k[b, y, j]``.
    """
    h = q.shape[1]
    e_col = jnp.einsum("byxc,bixc->byxi", q, k, preferred_element_type=jnp.float32)
    self_in_column = jnp.eye(h, dtype=bool)[:, None, :]  # [y, 1, i]: i == y
    e_col = jnp.where(self_in_column, -jnp.inf, e_col)
    e_row = jnp.einsum("byxc,byjc->byxj", q, k, preferred_element_type=jnp.float32)
    return e_col, e_row


class CrissCrossAttention(nn.Module):
    """Criss-cross attention (CCNet's RCCA module, one pass; mmcv's ``CrissCrossAttention``).

    Each position attends to the ``h + w - 1`` positions of its column and row:
    ``q, k = 1x1(x)`` (``C // reduction`` channels), ``v = 1x1(x)`` (``C``), one softmax over
    the concatenated column and row affinities (`criss_cross_affinities`), and
    ``out = sum over the column of A v + sum over the row of A v``; returns ``gamma * out +
    x``. Memory ``O(B h w (h + w))``, never ``O(B (h w)^2)``. Applied twice, information from
    every position reaches every other (CCNet's recurrence R = 2).

    Attributes:
        reduction: ``C / C'`` of the query and key projections (mmcv: 8).
        gamma_init: initial residual scale (0: the identity, as the paper).
        dtype: compute dtype; parameters are float32.
    """

    reduction: int = 8
    gamma_init: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C] -> [B, h, w, C]``."""
        h, c = x.shape[1], x.shape[-1]
        q = _projection(c // self.reduction, self.dtype, "query")(x)
        k = _projection(c // self.reduction, self.dtype, "key")(x)
        v = _projection(c, self.dtype, "value")(x)
        e_col, e_row = criss_cross_affinities(q, k)
        attention = jax.nn.softmax(jnp.concatenate([e_col, e_row], axis=-1), axis=-1)
        attention = attention.astype(v.dtype)
        out = jnp.einsum("byxi,bixc->byxc", attention[..., :h], v)
        out = out + jnp.einsum("byxj,byjc->byxc", attention[..., h:], v)
        return _residual_scale(self, self.gamma_init, out, x)


class DAHead(nn.Module):
    """DANet's head (mmseg ``DAHead``): a PAM branch and a CAM branch, summed.

    Attributes:
        num_classes: classes ``K``.
        channels: channels of both branches (mmseg: 512).
        pam_channels: query/key channels of the position attention (mmseg: 64).
        dropout: before each classifier.
        branch_logits: also return each branch's logits as ``"deep_supervision"`` (mmseg
            trains all three; segjax weighs the branches by ``loss.aux_weight``).
        gamma_init: initial residual scale of both attention modules.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    pam_channels: int = 64
    dropout: float = 0.1
    branch_logits: bool = True
    gamma_init: float = 0.0
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array | dict:
        """``features[in_key]`` -> logits ``[B, h, w, K]`` (a dict with ``"logits"`` and
        ``"deep_supervision"`` ``[pam, cam]`` when ``branch_logits``)."""
        x = features[self.in_key]
        conv = functools.partial(ConvBNReLU, self.channels, 3, dtype=self.dtype)
        classifier = functools.partial(Classifier, self.num_classes, self.dropout, self.dtype)
        pam = conv(name="pam_in_conv")(x, train=train)
        pam = PositionAttention(self.pam_channels, self.gamma_init, self.dtype, name="pam")(pam)
        pam = conv(name="pam_out_conv")(pam, train=train)
        cam = conv(name="cam_in_conv")(x, train=train)
        cam = ChannelAttention(self.gamma_init, self.dtype, name="cam")(cam)
        cam = conv(name="cam_out_conv")(cam, train=train)
        logits = classifier(name="classifier")(pam + cam, train=train)
        if not self.branch_logits:
            return logits
        branches = [
            classifier(name="pam_classifier")(pam, train=train),
            classifier(name="cam_classifier")(cam, train=train),
        ]
        return {"logits": logits, "deep_supervision": branches}


class CCHead(nn.Module):
    """CCNet's head (mmseg ``CCHead``): conv, criss-cross attention x ``recurrence``, conv,
    ``conv_cat`` over the input and the result, classifier.

    Attributes:
        num_classes: classes ``K``.
        channels: channels of the convs and the attention (mmseg: 512).
        recurrence: passes of the (one, weight-shared) criss-cross attention (CCNet: 2).
        dropout: before the classifier.
        gamma_init: initial residual scale of the attention.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    recurrence: int = 2
    dropout: float = 0.1
    gamma_init: float = 0.0
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """``features[in_key]`` ``[B, h, w, C]`` -> logits ``[B, h, w, K]``."""
        if self.recurrence < 1:
            raise ValueError(f"CCHead: recurrence must be >= 1, got {self.recurrence}")
        x = features[self.in_key]
        conv = functools.partial(ConvBNReLU, self.channels, 3, dtype=self.dtype)
        y = conv(name="conv0")(x, train=train)
        attention = CrissCrossAttention(gamma_init=self.gamma_init, dtype=self.dtype, name="cca")
        for _ in range(self.recurrence):
            y = attention(y)
        y = conv(name="conv1")(y, train=train)
        y = conv(name="conv_cat")(jnp.concatenate([x.astype(y.dtype), y], axis=-1), train=train)
        return Classifier(self.num_classes, self.dropout, self.dtype, name="classifier")(
            y, train=train
        )


class ReverseAttentionHead(nn.Module):
    """RAN's reverse attention block (Huang et al., 2017) on one feature level.

    A 3x3 conv-BN-ReLU, then three branches: the original branch predicts class scores
    ``O`` (1x1); the reverse branch predicts, per class, the evidence that a pixel is NOT
    of that class, ``R`` (1x1); the reverse attention mask ``A = sigmoid(-O)`` is large
    where the original branch is unsure or negative. The prediction is
    ``O - A * R``: the reverse evidence is subtracted where the original branch does not
    already decide. ``O`` is also returned as deep supervision (the paper trains the
    original branch with its own loss).

    Attributes:
        num_classes: classes ``K``.
        channels: channels of the shared conv (512 full size).
        dropout: before the 1x1 classifiers.
        in_key: feature key to read.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 512
    dropout: float = 0.1
    in_key: str = "s32"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """``features[in_key]`` -> ``{"logits": O - A * R, "deep_supervision": [O]}``."""
        x = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="conv")(
            features[self.in_key], train=train
        )
        classifier = functools.partial(Classifier, self.num_classes, self.dropout, self.dtype)
        original = classifier(name="original")(x, train=train)
        reverse = classifier(name="reverse")(x, train=train)
        mask = jax.nn.sigmoid(-original.astype(jnp.float32)).astype(original.dtype)
        return {"logits": original - mask * reverse, "deep_supervision": [original]}
