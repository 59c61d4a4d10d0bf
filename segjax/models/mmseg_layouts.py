"""mmsegmentation's model layouts, exactly, so that its checkpoints load (``segjax.weights``).

Each builder gives the module tree of one mmsegmentation config (a v1c ResNet, the decode
head's widths, kernel sizes and extra convs), with segjax's modules:

- ``mmseg_fcn_r50_d8`` / ``mmseg_fcn_r101_d8`` (``fcn_r50-d8``): two 3x3 convs of 512
  and a ``conv_cat`` over the input, v1c stem;
- ``mmseg_deeplabv3plus_r50_d8`` / ``_r101_d8`` (``deeplabv3plus_r50-d8``): 512 channels, a
  3x3 ASPP projection, v1c stem, output stride 8;
- ``mmseg_fpn_r50`` (``fpn_r50``): each level upsampled 2x per conv, then resized to stride 4;
- ``mmseg_unet_s5_d16`` (``unet-s5-d16``, i.e. ``fcn_unet_s5-d16``): bilinear + 1x1 up
  stages, an FCN head, the auxiliary head on the stride-2 decoder level.

``pspnet_r50-d8`` is segjax's ``pspnet_resnet50`` as it is. The auxiliary head of the
ResNet models is mmsegmentation's ``FCNHead(1024, 256)`` on stage 3 (``aux_head=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet50, ResNet101
from segjax.models.builder_parts import aux_fcn_head
from segjax.models.heads.deeplab import DeepLabV3PlusHead
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.fpn import FPNSemanticHead
from segjax.models.necks.aspp import ASPP
from segjax.models.necks.fpn import FPN
from segjax.models.segmentor import Segmentor
from segjax.models.unet import UNet


def _check_stride(name: str, output_stride: int | None, allowed: tuple[int, ...]) -> int:
    stride = output_stride or allowed[0]
    if stride not in allowed:
        raise ValueError(f"{name}: output_stride must be one of {allowed}, got {output_stride}")
    return stride


def _aux(num_classes: int, dtype) -> FCNHead:
    # mmseg's auxiliary_head: FCNHead(in_channels=1024, channels=256, num_convs=1) on stage 3.
    return aux_fcn_head(1024, num_classes, dtype)


def _fcn_parts(num_classes: int, stride: int, dropout: float, dtype):
    # fcn_r*-d8: FCNHead(2048, 512, num_convs=2, concat_input=True) on stage 4.
    head = FCNHead(
        num_classes,
        channels=512,
        num_convs=2,
        concat_input=True,
        dropout=dropout,
        in_key="s32",
        dtype=dtype,
    )
    return None, head


def _deeplabv3plus_parts(num_classes: int, stride: int, dropout: float, dtype):
    # deeplabv3plus_r*-d8: DepthwiseSeparableASPPHead(2048, 512), a 3x3 bottleneck.
    neck = ASPP(
        rates=(12, 24, 36) if stride == 8 else (6, 12, 18),
        channels=512,
        dropout=0.0,
        separable=True,
        project_kernel_size=3,
        dtype=dtype,
    )
    head = DeepLabV3PlusHead(
        num_classes,
        low_level_channels=48,
        channels=512,
        separable=True,
        dropout=dropout,
        dtype=dtype,
    )
    return neck, head


def resnet_d8(depth_cls, parts, title: str) -> Callable[..., Segmentor]:
    """An mmsegmentation ``*_r{50,101}-d8`` builder: ``parts`` gives its neck and head."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """mmsegmentation's layout on a dilated ResNet v1c (see the module docstring).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: the auxiliary FCN head on stage 3 (``"aux_logits"``).
            dropout: before the classifier.
        """
        stride = _check_stride(title, output_stride, (8, 16))
        backbone = depth_cls(output_stride=stride, deep_stem=True, dtype=dtype)
        neck, head = parts(num_classes, stride, dropout, dtype)
        aux = _aux(num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def fpn_r50(
    *,
    num_classes: int,
    dtype: jnp.dtype = jnp.float32,
    output_stride: int | None = None,
    aux_head: bool = False,
    dropout: float = 0.1,
) -> Segmentor:
    """``fpn_r50``: ResNet-50 v1c, FPN(256), FPNHead(128) with mmseg's 2x upsampling.

    Args:
        num_classes: output classes.
        dtype: compute dtype; params are float32.
        output_stride: None or 32.
        aux_head: add an FCN auxiliary head on stage 3 (mmseg's ``fpn_r50`` has none).
        dropout: before the classifier.
    """
    _check_stride("mmseg FPN", output_stride, (32,))
    return Segmentor(
        backbone=ResNet50(output_stride=32, deep_stem=True, dtype=dtype),
        neck=FPN(channels=256, dtype=dtype),
        head=FPNSemanticHead(
            num_classes, channels=128, dropout=dropout, upsample="x2", dtype=dtype
        ),
        aux_head=_aux(num_classes, dtype) if aux_head else None,
    )


def unet_s5_d16(
    *,
    num_classes: int,
    dtype: jnp.dtype = jnp.float32,
    output_stride: int | None = None,
    aux_head: bool = False,
    base_width: int = 64,
) -> UNet:
    """``unet-s5-d16``: mmseg's UNet backbone (InterpConv up stages) with FCN heads.

    Args:
        num_classes: output classes.
        dtype: compute dtype; params are float32.
        output_stride: must be None (the decoder returns to full resolution).
        aux_head: the auxiliary FCN head on the stride-2 decoder level (mmseg's
            ``in_index=3``).
        base_width: channels of the first level (64).
    """
    if output_stride is not None:
        raise ValueError(f"mmseg_unet_s5_d16: output_stride must be None, got {output_stride}")
    return UNet(
        num_classes,
        base_width,
        4,
        aux_head=aux_head,
        upsample="interp",
        head_channels=base_width,
        aux_level=1,
        dtype=dtype,
    )


MODELS: dict[str, Callable[..., object]] = {
    "mmseg_fcn_r50_d8": resnet_d8(ResNet50, _fcn_parts, "mmseg FCN"),
    "mmseg_fcn_r101_d8": resnet_d8(ResNet101, _fcn_parts, "mmseg FCN"),
    "mmseg_deeplabv3plus_r50_d8": resnet_d8(ResNet50, _deeplabv3plus_parts, "mmseg DeepLabv3+"),
    "mmseg_deeplabv3plus_r101_d8": resnet_d8(ResNet101, _deeplabv3plus_parts, "mmseg DeepLabv3+"),
    "mmseg_fpn_r50": fpn_r50,
    "mmseg_unet_s5_d16": unet_s5_d16,
    # Tests: the same trunk at 8 channels.
    "mmseg_unet_tiny": functools.partial(unet_s5_d16, base_width=8),
}
