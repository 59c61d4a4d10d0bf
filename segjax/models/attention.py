"""The attention family's builders (survey 3.8, 3.11): DANet, CCNet, EMANet and EncNet on a
dilated ResNet.

The heads live in ``heads/attention.py`` (DANet, CCNet) and ``heads/context.py`` (EMANet,
EncNet). Each full-size model is mmsegmentation's
``*_r{50,101}-d8`` layout: a ResNet v1c (deep stem) at output stride 8, the head on stage 4,
and with ``aux_head=True`` mmseg's auxiliary ``FCNHead(1024, 256)`` on stage 3. The tiny
variants are the same graphs on a one-block ResNet (8-64 channels) with 16-channel heads;
their attention scales start at 0.1 instead of 0, so that every parameter has a gradient
from the first step (the contract tests check exactly that).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.heads.attention import CCHead, DAHead
from segjax.models.heads.context import EMAHead, EncHead
from segjax.models.heads.fcn import FCNHead
from segjax.models.segmentor import Segmentor

# The tiny variants' initial attention scale (see the module docstring).
TINY_GAMMA_INIT = 0.1


def d8_segmentor(
    backbone_cls: Callable[..., ResNet],
    head,
    *,
    title: str,
    num_classes: int,
    dtype: jnp.dtype,
    output_stride: int | None,
    aux_head: bool,
    aux_channels: int,
    deep_stem: bool,
    dropout: float,
) -> Segmentor:
    """``head`` on mmseg's ``-d8`` trunk (``output_stride`` None = 8, or 16), with mmseg's
    auxiliary ``FCNHead`` on stage 3 (``aux_channels``: 256 full size) when ``aux_head``."""
    stride = output_stride or 8
    if stride not in (8, 16):
        raise ValueError(f"{title}: output_stride must be 8 or 16, got {output_stride}")
    backbone = backbone_cls(output_stride=stride, deep_stem=deep_stem, dtype=dtype)
    aux = None
    if aux_head:
        aux = FCNHead(num_classes, aux_channels, dropout=dropout, in_key="s16", dtype=dtype)
    return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)


def danet_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    channels: int = 512,
    pam_channels: int = 64,
    aux_channels: int = 256,
    default_gamma_init: float = 0.0,
) -> Callable[..., Segmentor]:
    """A DANet builder (mmseg ``danet_r50-d8``: ``DAHead(2048, 512, pam_channels=64)``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
        branch_logits: bool = True,
        gamma_init: float = default_gamma_init,
    ) -> Segmentor:
        """DANet: position + channel attention on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem.
            dropout: before the classifiers.
            branch_logits: also return the PAM and CAM branches' logits
                (``"deep_supervision"``, weighted by ``loss.aux_weight``).
            gamma_init: initial residual scale of the attention modules.
        """
        head = DAHead(
            num_classes,
            channels=channels,
            pam_channels=pam_channels,
            dropout=dropout,
            branch_logits=branch_logits,
            gamma_init=gamma_init,
            dtype=dtype,
        )
        return d8_segmentor(
            backbone_cls,
            head,
            title="DANet",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=dropout,
        )

    return builder


def ccnet_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    channels: int = 512,
    aux_channels: int = 256,
    default_gamma_init: float = 0.0,
) -> Callable[..., Segmentor]:
    """A CCNet builder (mmseg ``ccnet_r50-d8``: ``CCHead(2048, 512, recurrence=2)``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
        recurrence: int = 2,
        gamma_init: float = default_gamma_init,
    ) -> Segmentor:
        """CCNet: recurrent criss-cross attention on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem.
            dropout: before the classifier.
            recurrence: passes of the criss-cross attention (2: the paper's R = 2).
            gamma_init: initial residual scale of the attention.
        """
        head = CCHead(
            num_classes,
            channels=channels,
            recurrence=recurrence,
            dropout=dropout,
            gamma_init=gamma_init,
            dtype=dtype,
        )
        return d8_segmentor(
            backbone_cls,
            head,
            title="CCNet",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=dropout,
        )

    return builder


def emanet_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    ema_channels: int = 512,
    channels: int = 256,
    aux_channels: int = 256,
) -> Callable[..., Segmentor]:
    """An EMANet builder (mmseg ``emanet_r50-d8``: ``EMAHead(2048, 256, ema_channels=512)``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
        num_bases: int = 64,
        num_stages: int = 3,
    ) -> Segmentor:
        """EMANet: expectation-maximisation attention on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem.
            dropout: before the classifier.
            num_bases: EM bases ``K`` (64).
            num_stages: EM iterations ``T`` (3).
        """
        head = EMAHead(
            num_classes,
            ema_channels=ema_channels,
            channels=channels,
            num_bases=num_bases,
            num_stages=num_stages,
            dropout=dropout,
            dtype=dtype,
        )
        return d8_segmentor(
            backbone_cls,
            head,
            title="EMANet",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=dropout,
        )

    return builder


def encnet_builder(
    backbone_cls: Callable[..., ResNet], *, channels: int = 512, aux_channels: int = 256
) -> Callable[..., Segmentor]:
    """An EncNet builder (mmseg ``encnet_r50-d8``: ``EncHead(2048, 512, num_codes=32)``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
        num_codes: int = 32,
        se_loss: bool = True,
    ) -> Segmentor:
        """EncNet: the context encoding module on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem.
            dropout: before the classifier.
            num_codes: codewords of the encoding layer (32).
            se_loss: also output ``"se_logits"`` [B, K], trained by the semantic encoding
                loss (``loss.se_weight``, 0.2 as mmseg).
        """
        head = EncHead(
            num_classes,
            channels=channels,
            num_codes=num_codes,
            se_loss=se_loss,
            dropout=dropout,
            dtype=dtype,
        )
        return d8_segmentor(
            backbone_cls,
            head,
            title="EncNet",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=dropout,
        )

    return builder


_TINY = {"aux_channels": 16, "default_gamma_init": TINY_GAMMA_INIT}

MODELS: dict[str, Callable[..., Segmentor]] = {
    "danet_resnet50": danet_builder(ResNet50),
    "danet_resnet101": danet_builder(ResNet101),
    "danet_tiny": danet_builder(ResNetMicro, channels=16, pam_channels=4, **_TINY),
    "ccnet_resnet50": ccnet_builder(ResNet50),
    "ccnet_resnet101": ccnet_builder(ResNet101),
    "ccnet_tiny": ccnet_builder(ResNetMicro, channels=16, **_TINY),
    "emanet_resnet50": emanet_builder(ResNet50),
    "emanet_resnet101": emanet_builder(ResNet101),
    "emanet_tiny": emanet_builder(ResNetMicro, ema_channels=16, channels=16, aux_channels=16),
    "encnet_resnet50": encnet_builder(ResNet50),
    "encnet_resnet101": encnet_builder(ResNet101),
    "encnet_tiny": encnet_builder(ResNetMicro, channels=16, aux_channels=16),
}
