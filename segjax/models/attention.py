"""The attention family's builders (survey 3.8, 3.11): DANet, CCNet, EMANet, EncNet, RAN and
PAN on a dilated ResNet; attention to scale on DeepLab-LargeFOV.

The heads live in ``heads/attention.py`` (DANet, CCNet, RAN), ``heads/context.py`` (EMANet,
EncNet) and ``heads/pan.py``; attention to scale in ``scale_attention.py``.
The DANet, CCNet, EMANet and EncNet models are mmsegmentation's ``*_r{50,101}-d8`` layouts:
a ResNet v1c (deep stem) at output stride 8, the head on stage 4, and with
``aux_head=True`` mmseg's auxiliary ``FCNHead(1024, 256)`` on stage 3; RAN uses the same
trunk, PAN segmentation_models_pytorch's (a plain ResNet at output stride 16). The tiny
variants are the same graphs on a one-block ResNet (8-64 channels) or a tiny VGG with
8-32-channel heads; the DANet and CCNet ones start their attention scales at 0.1 instead of
0, so that every parameter has a gradient from the first step (the contract tests check
exactly that).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.backbones.vgg import VGG16_STAGES
from segjax.models.deeplab import TINY_LARGEFOV, largefov_builder
from segjax.models.heads.attention import CCHead, DAHead, ReverseAttentionHead
from segjax.models.heads.context import EMAHead, EncHead
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.pan import PANHead
from segjax.models.scale_attention import ScaleAttentionSegmentor
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
    default_stride: int = 8,
) -> Segmentor:
    """``head`` on mmseg's ``-d8`` trunk (``output_stride`` None = ``default_stride``, 8 or
    16), with mmseg's auxiliary ``FCNHead`` on stage 3 (``aux_channels``: 256 full size)."""
    stride = output_stride or default_stride
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


def ran_builder(
    backbone_cls: Callable[..., ResNet], *, channels: int = 512, aux_channels: int = 256
) -> Callable[..., Segmentor]:
    """A RAN builder: one reverse attention block on stage 4 of a dilated ResNet v1c."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
    ) -> Segmentor:
        """RAN: original, reverse and reverse-attention branches on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem.
            dropout: before the classifiers.
        """
        head = ReverseAttentionHead(num_classes, channels, dropout, dtype=dtype)
        return d8_segmentor(
            backbone_cls,
            head,
            title="RAN",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=dropout,
        )

    return builder


def pan_builder(
    backbone_cls: Callable[..., ResNet], *, channels: int = 32, aux_channels: int = 256
) -> Callable[..., Segmentor]:
    """A PAN builder (segmentation_models_pytorch's ``PAN``: 32 decoder channels, stride 16)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = False,
    ) -> Segmentor:
        """PAN: feature pyramid attention + global attention upsampling on a ResNet.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 16 (None; smp's PAN) or 8.
            aux_head: an auxiliary FCN head on stage 3 (``"aux_logits"``).
            deep_stem: ResNet v1c stem (smp: the torchvision ResNet, no).
        """
        return d8_segmentor(
            backbone_cls,
            PANHead(num_classes, channels, dtype=dtype),
            title="PAN",
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            aux_channels=aux_channels,
            deep_stem=deep_stem,
            dropout=0.1,
            default_stride=16,
        )

    return builder


def scale_attention_builder(
    *,
    stages=VGG16_STAGES,
    fc_channels: int = 1024,
    attention_channels: int = 512,
    default_batch_norm: bool = False,
    default_dropout: float = 0.5,
) -> Callable[..., ScaleAttentionSegmentor]:
    """An attention-to-scale builder on DeepLab-LargeFOV (the paper's network)."""
    base_builder = largefov_builder(parsenet=False, stages=stages, fc_channels=fc_channels)

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        batch_norm: bool = default_batch_norm,
        scales: tuple[float, ...] = (1.0, 0.75, 0.5),
        dropout: float = default_dropout,
    ) -> ScaleAttentionSegmentor:
        """DeepLab-LargeFOV (VGG-16) shared over ``scales``, fused by attention to scale.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; the paper's), 16 or 32.
            aux_head: an FCN auxiliary head on pool4 of the first scale.
            batch_norm: VGG-16-BN trunk instead of the paper's plain VGG-16.
            scales: input scales (the paper: 1, 0.75, 0.5).
            dropout: dropout after fc6 and fc7.
        """
        base = base_builder(
            num_classes=num_classes,
            dtype=dtype,
            output_stride=output_stride,
            aux_head=aux_head,
            batch_norm=batch_norm,
            dropout=dropout,
        )
        return ScaleAttentionSegmentor(
            backbone=base.backbone,
            neck=base.neck,
            head=base.head,
            aux_head=base.aux_head,
            scales=tuple(scales),
            attention_channels=attention_channels,
            dtype=dtype,
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
    "ran_resnet101": ran_builder(ResNet101),
    "ran_tiny": ran_builder(ResNetMicro, channels=16, aux_channels=16),
    "pan_resnet50": pan_builder(ResNet50),
    "pan_resnet101": pan_builder(ResNet101),
    "pan_tiny": pan_builder(ResNetMicro, channels=8, aux_channels=16),
    "scale_attention_vgg16": scale_attention_builder(),
    "scale_attention_tiny": scale_attention_builder(attention_channels=16, **TINY_LARGEFOV),
}
