"""OCRNet (Yuan, Chen & Wang, ECCV 2020) on HRNetV2 and on a dilated ResNet: mmseg's layouts.

mmsegmentation's cascade of two decode heads, as a ``Segmentor``: the first head (an FCN
head giving the soft object regions) is the ``SoftObjectRegions`` neck, the OCR head
(``heads/ocr.py``) reads its logits, and the auxiliary output is those same logits
(``FeatureLogits``), which mmseg trains with loss weight 0.4 (segjax's default
``aux_weight``): train with ``aux_head=True`` as the paper does. ``aux_head=False`` drops
only that loss term (the first head still learns through the OCR head); the first head is
part of the model either way, so the parameter count does not change.

- ``ocrnet_hr48`` (mmseg ``ocrnet_hr48``; ``ocrnet_hr18`` / ``ocrnet_hr18s`` likewise): on
  the HRNetV2 representation, first head ``FCNHead(15W, 15W, kernel_size=1)`` without
  dropout, ``OCRHead(channels=512, ocr_channels=256)`` without dropout, output stride 4.
- ``ocrnet_r101_d8`` / ``ocrnet_r50_d8`` (mmseg ``ocrnet_r101-d8``): ResNet v1c at output
  stride 8, first head ``FCNHead(1024, 256)`` (3x3, dropout 0.1) on stage 3, the OCR head
  on stage 4 with dropout 0.1.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.hrnet import HRNet, HRNetTiny, HRNetW18, HRNetW18Small, HRNetW48
from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.builder_parts import check_fixed_stride, check_stride_choice
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.ocr import FeatureLogits, OCRHead, SoftObjectRegions
from segjax.models.hrnet import hrnetv2_fcn_head
from segjax.models.necks.resize_concat import ResizeConcat
from segjax.models.segmentor import Segmentor


def ocrnet_hrnet_builder(
    backbone_cls: Callable[..., HRNet], *, channels: int = 512, ocr_channels: int = 256
) -> Callable[..., Segmentor]:
    """An OCRNet builder on the HRNetV2 representation of ``backbone_cls``."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        fuse_upsample: str = "bilinear",
    ) -> Segmentor:
        """OCRNet on HRNetV2 (mmseg ``ocrnet_hr*``), logits at stride 4.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 4 (fixed by the design).
            aux_head: output the soft object regions as ``"aux_logits"`` (mmseg's 0.4 loss).
            fuse_upsample: the trunk's fusion upsampling, ``"bilinear"`` (mmseg) or
                ``"nearest"`` (timm's ImageNet HRNets; ``backbones/hrnet.py``).
        """
        check_fixed_stride("OCRNet-HRNetV2", output_stride, 4)
        backbone = backbone_cls(dtype=dtype, fuse_upsample=fuse_upsample)
        fcn = hrnetv2_fcn_head(backbone, num_classes, dtype)
        head = OCRHead(
            num_classes,
            channels=channels,
            ocr_channels=ocr_channels,
            dropout=0.0,
            in_key="hrnetv2",
            dtype=dtype,
        )
        return Segmentor(
            backbone=backbone,
            neck=SoftObjectRegions(fcn, pre=ResizeConcat()),
            head=head,
            aux_head=FeatureLogits() if aux_head else None,
        )

    return builder


def ocrnet_resnet_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    channels: int = 512,
    ocr_channels: int = 256,
    region_channels: int = 256,
) -> Callable[..., Segmentor]:
    """An OCRNet builder on a dilated ResNet v1c (mmseg ``ocrnet_r*-d8``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """OCRNet on a dilated ResNet v1c (mmseg ``ocrnet_r101-d8``).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; mmseg's ``-d8``) or 16.
            aux_head: output the soft object regions as ``"aux_logits"`` (mmseg's 0.4 loss).
            dropout: before both classifiers.
        """
        stride = check_stride_choice("OCRNet-ResNet", output_stride, (8, 16))
        backbone = backbone_cls(output_stride=stride, deep_stem=True, dtype=dtype)
        fcn = FCNHead(
            num_classes, channels=region_channels, dropout=dropout, in_key="s16", dtype=dtype
        )
        head = OCRHead(
            num_classes,
            channels=channels,
            ocr_channels=ocr_channels,
            dropout=dropout,
            in_key="s32",
            dtype=dtype,
        )
        return Segmentor(
            backbone=backbone,
            neck=SoftObjectRegions(fcn),
            head=head,
            aux_head=FeatureLogits() if aux_head else None,
        )

    return builder


MODELS: dict[str, Callable[..., Segmentor]] = {
    "ocrnet_hr18s": ocrnet_hrnet_builder(HRNetW18Small),
    "ocrnet_hr18": ocrnet_hrnet_builder(HRNetW18),
    "ocrnet_hr48": ocrnet_hrnet_builder(HRNetW48),
    "ocrnet_r50_d8": ocrnet_resnet_builder(ResNet50),
    "ocrnet_r101_d8": ocrnet_resnet_builder(ResNet101),
    # Tests: HRNet-tiny (4-32 channels), 16-channel OCR.
    "ocrnet_tiny": ocrnet_hrnet_builder(HRNetTiny, channels=16, ocr_channels=8),
    "ocrnet_resnet_tiny": ocrnet_resnet_builder(
        ResNetMicro, channels=16, ocr_channels=8, region_channels=8
    ),
}
