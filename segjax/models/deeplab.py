"""The DeepLab family's builders: v1 LargeFOV (and ParseNet on its trunk), v2, v3, v3+.

The modules live in ``backbones/``, ``necks/aspp.py`` and ``heads/deeplab*.py``; this file
assembles them into ``Segmentor``s and lists the config names in ``MODELS``.

Defaults: DeepLabv3 as torchvision (output stride 8, plain convs); DeepLabv3+ as the paper
(output stride 16 for training, depthwise-separable ASPP and decoder); v1 and v2 at stride
8, as their papers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from segjax.models.backbones.mobilenet import MobileNetV2, MobileNetV2Tiny
from segjax.models.backbones.resnet import (
    ResNet,
    ResNet18,
    ResNet50,
    ResNet101,
    ResNetMicro,
    ResNetTiny,
)
from segjax.models.backbones.vgg import VGG, VGG16_STAGES, VGG_SMALL_STAGES
from segjax.models.backbones.xception import Xception65, XceptionTiny
from segjax.models.builder_parts import aux_fcn_head, check_aspp_stride
from segjax.models.heads.deeplab import DeepLabV3Head, DeepLabV3PlusHead
from segjax.models.heads.deeplab_v2 import DEEPLAB_V2_RATES, ASPPSumHead, LargeFOV
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.parsenet import ParseNetHead
from segjax.models.necks.aspp import ASPP, ASPP_RATES
from segjax.models.segmentor import Segmentor

# Builder arguments that only a ResNet backbone takes.
_RESNET_OPTIONS = ("deep_stem", "multi_grid", "zero_init_residual")


def deeplab_builder(
    backbone_cls: Callable[..., object],
    *,
    plus: bool,
    default_output_stride: int = 16,
    default_separable: bool = True,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
) -> Callable[..., Segmentor]:
    """A DeepLabv3 (``plus=False``) or v3+ builder on a ResNet, MobileNetV2 or Xception.

    The ResNet options (``deep_stem``, ``multi_grid``, ``zero_init_residual``) are part of
    the builder's signature only when ``backbone_cls`` builds a ``ResNet``.
    """
    resnet = getattr(backbone_cls, "func", backbone_cls) is ResNet

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = False,
        multi_grid: Sequence[int] | None = None,
        zero_init_residual: bool = False,
        separable: bool = default_separable,
        aspp_rates: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> Segmentor:
        """DeepLabv3 / v3+ (ASPP neck; v3+: stride-4 decoder) on a ResNet, MobileNetV2, Xception.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8, 16 or 32 (None: the model's default).
            aux_head: add an FCN auxiliary head on ``"s16"`` (``"aux_logits"``).
            deep_stem: (ResNet only) v1c stem (three 3x3 convs) instead of the 7x7 conv.
            multi_grid: (ResNet only) DeepLabv3 Multi-Grid rates of the last stage's blocks,
                e.g. (1, 2, 4).
            zero_init_residual: (ResNet only) zero-init the last BN scale of each block.
            separable: depthwise-separable ASPP and decoder 3x3 convs.
            aspp_rates: ASPP dilation rates (None: (6, 12, 18) at stride 16, x2 at 8).
            dropout: dropout after the ASPP projection and before the v3+ classifier.
        """
        output_stride = check_aspp_stride(output_stride or default_output_stride)
        options = {}
        if resnet:
            options = dict(
                deep_stem=deep_stem,
                multi_grid=None if multi_grid is None else tuple(multi_grid),
                zero_init_residual=zero_init_residual,
            )
        elif deep_stem or multi_grid is not None or zero_init_residual:
            raise TypeError(f"{_RESNET_OPTIONS} are options of a ResNet backbone only")
        backbone = backbone_cls(output_stride=output_stride, dtype=dtype, **options)
        neck = ASPP(
            rates=tuple(aspp_rates or ASPP_RATES[output_stride]),
            channels=aspp_channels,
            dropout=dropout,
            separable=separable,
            dtype=dtype,
        )
        if plus:
            head = DeepLabV3PlusHead(
                num_classes,
                low_level_channels=low_level_channels,
                channels=decoder_channels,
                separable=separable,
                dropout=dropout,
                dtype=dtype,
            )
        else:
            head = DeepLabV3Head(num_classes, channels=decoder_channels, dtype=dtype)
        channels = backbone.feature_channels()["s16"]
        aux = aux_fcn_head(channels, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    if not resnet:
        signature = inspect.signature(builder)
        builder.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name not in _RESNET_OPTIONS]
        )
    return builder


def largefov_builder(
    *,
    parsenet: bool,
    stages: Sequence[Sequence[int]] = VGG16_STAGES,
    fc_channels: int = 1024,
    default_batch_norm: bool = False,
    default_dropout: float = 0.5,
) -> Callable[..., Segmentor]:
    """DeepLab v1 LargeFOV (``parsenet=False``) or ParseNet on the same VGG-16 trunk.

    ``default_batch_norm`` / ``default_dropout``: the builder's defaults of ``batch_norm``
    and ``dropout`` (the paper's: False, 0.5; the tiny variants': True, 0.1).
    """

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        batch_norm: bool = default_batch_norm,
        rate: int | None = None,
        dropout: float = default_dropout,
    ) -> Segmentor:
        """VGG-16 (3x3 pools, dilated) -> LargeFOV fc6/fc7 -> fc8 or ParseNet context head.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (default, the paper's), 16 or 32.
            aux_head: add an FCN auxiliary head on pool4 (``"s16"``).
            batch_norm: VGG-16-BN trunk instead of the paper's plain VGG-16.
            rate: fc6 dilation; None: 12 at output stride 8, scaled to keep the same field
                of view in pixels at 16 (6) and 32 (3).
            dropout: dropout after fc6 and fc7 (the paper's 0.5).
        """
        output_stride = output_stride or 8
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        backbone = VGG(
            stages=tuple(stages),
            batch_norm=batch_norm,
            pool_kernel=3,
            output_stride=output_stride,
            dtype=dtype,
        )
        neck = LargeFOV(fc_channels, rate or 96 // output_stride, dropout, dtype=dtype)
        if parsenet:
            head = ParseNetHead(num_classes, in_key="fc7", dtype=dtype)
        else:
            head = FCNHead(num_classes, num_convs=0, dropout=0.0, in_key="fc7", dtype=dtype)
        channels = backbone.feature_channels()["s16"]
        aux = aux_fcn_head(channels, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def deeplab_v2_builder(backbone_cls: Callable[..., ResNet]) -> Callable[..., Segmentor]:
    """DeepLab v2: ASPP-sum of four dilated 3x3 classifiers on a dilated ResNet."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = False,
        rates: Sequence[int] | None = None,
    ) -> Segmentor:
        """DeepLab v2 (Chen et al., 2017) on a ResNet.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (default, the paper's) or 16 (rates halved: 3, 6, 9, 12).
            aux_head: add an FCN auxiliary head on ``"s16"``.
            deep_stem: ResNet v1c stem.
            rates: ASPP rates (None: 6, 12, 18, 24 at stride 8).
        """
        output_stride = output_stride or 8
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        backbone = backbone_cls(output_stride=output_stride, deep_stem=deep_stem, dtype=dtype)
        rates = tuple(rates or (r * 8 // output_stride for r in DEEPLAB_V2_RATES))
        head = ASPPSumHead(num_classes, rates=rates, in_key="s32", dtype=dtype)
        channels = backbone.feature_channels()["s16"]
        aux = aux_fcn_head(channels, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


# The tiny LargeFOV models: a 16-64 channel VGG-BN trunk, fc6/fc7 of 64, dropout 0.1.
TINY_LARGEFOV = dict(
    stages=VGG_SMALL_STAGES, fc_channels=64, default_batch_norm=True, default_dropout=0.1
)
_V3 = dict(plus=False, default_output_stride=8, default_separable=False)
_TINY_DECODER = dict(aspp_channels=32, low_level_channels=8, decoder_channels=32)

MODELS: dict[str, Callable[..., Segmentor]] = {
    "deeplabv1_vgg16": largefov_builder(parsenet=False),
    "deeplabv1_tiny": largefov_builder(parsenet=False, **TINY_LARGEFOV),
    # ParseNet's VOC model is LargeFOV's trunk and fc6/fc7 with ParseNet's context head.
    "parsenet_vgg16": largefov_builder(parsenet=True),
    "parsenet_tiny": largefov_builder(parsenet=True, **TINY_LARGEFOV),
    "deeplabv2_resnet101": deeplab_v2_builder(ResNet101),
    "deeplabv2_tiny": deeplab_v2_builder(ResNetMicro),
    "deeplabv3_resnet50": deeplab_builder(ResNet50, **_V3),
    "deeplabv3_resnet101": deeplab_builder(ResNet101, **_V3),
    "deeplabv3plus_resnet18": deeplab_builder(
        ResNet18, plus=True, aspp_channels=128, decoder_channels=128
    ),
    "deeplabv3plus_resnet50": deeplab_builder(ResNet50, plus=True),
    "deeplabv3plus_resnet101": deeplab_builder(ResNet101, plus=True),
    # The default model of `python train.py`: trains on 2 CPU cores in minutes.
    "deeplabv3plus_tiny": deeplab_builder(
        ResNetTiny, plus=True, aspp_channels=64, low_level_channels=24, decoder_channels=64
    ),
    "deeplabv3plus_mobilenetv2": deeplab_builder(MobileNetV2, plus=True),
    "deeplabv3plus_mobilenetv2_tiny": deeplab_builder(MobileNetV2Tiny, plus=True, **_TINY_DECODER),
    "deeplabv3plus_xception65": deeplab_builder(Xception65, plus=True),
    "deeplabv3plus_xception_tiny": deeplab_builder(XceptionTiny, plus=True, **_TINY_DECODER),
}
