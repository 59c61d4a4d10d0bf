"""The attention family's builders (survey 3.8): DANet and CCNet on a dilated ResNet.

The heads live in ``heads/attention.py``. Each full-size model is mmsegmentation's
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


_TINY = {"aux_channels": 16, "default_gamma_init": TINY_GAMMA_INIT}

MODELS: dict[str, Callable[..., Segmentor]] = {
    "danet_resnet50": danet_builder(ResNet50),
    "danet_resnet101": danet_builder(ResNet101),
    "danet_tiny": danet_builder(ResNetMicro, channels=16, pam_channels=4, **_TINY),
    "ccnet_resnet50": ccnet_builder(ResNet50),
    "ccnet_resnet101": ccnet_builder(ResNet101),
    "ccnet_tiny": ccnet_builder(ResNetMicro, channels=16, **_TINY),
}
