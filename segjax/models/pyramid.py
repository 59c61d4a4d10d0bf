"""The pyramid family's builders (survey 3.4): PSPNet and semantic FPN on a ResNet.

The modules live in ``necks/ppm.py``, ``necks/fpn.py`` and ``heads/fpn.py``; this file
assembles them into ``Segmentor``s in mmsegmentation's ``pspnet_r50-d8`` and ``fpn_r50``
layouts and lists the config names in ``MODELS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.fpn import FPNSemanticHead
from segjax.models.necks.fpn import FPN
from segjax.models.necks.ppm import PyramidPooling
from segjax.models.segmentor import Segmentor


def pspnet_builder(
    backbone_cls: Callable[..., ResNet], *, ppm_channels: int = 512, aux_channels: int = 256
) -> Callable[..., Segmentor]:
    """A PSPNet builder: dilated ResNet-v1c, pyramid pooling, 3x3 bottleneck, classifier."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> Segmentor:
        """PSPNet (mmsegmentation's ``pspnet_r50-d8`` layout).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8, 16 or 32 (None: 8, as the paper and mmseg's ``-d8``).
            aux_head: add the FCN auxiliary head on stage 3 (``"s16"``, ``"aux_logits"``),
                weighted 0.4 in the paper and mmseg.
            deep_stem: ResNet v1c stem (mmseg's PSPNet backbone).
            bins: pyramid pooling output sizes.
            dropout: dropout before the classifiers.
        """
        output_stride = output_stride or 8
        backbone = backbone_cls(output_stride=output_stride, deep_stem=deep_stem, dtype=dtype)
        neck = PyramidPooling(bins=tuple(bins), channels=ppm_channels, dtype=dtype)
        head = FCNHead(
            num_classes, channels=ppm_channels, dropout=dropout, in_key="ppm", dtype=dtype
        )
        aux = None
        if aux_head:
            # mmseg's auxiliary FCNHead: 256 channels whatever the trunk (not a quarter).
            aux = FCNHead(
                num_classes, channels=aux_channels, dropout=dropout, in_key="s16", dtype=dtype
            )
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def fpn_builder(
    backbone_cls: Callable[..., ResNet], *, fpn_channels: int = 256, head_channels: int = 128
) -> Callable[..., Segmentor]:
    """A semantic FPN builder (Panoptic FPN's semantic branch, mmseg's ``fpn_r50``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = True,
        dropout: float = 0.1,
    ) -> Segmentor:
        """Semantic FPN on a ResNet (v1c deep stem by default, as mmseg's ``fpn_r50``).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32: the pyramid needs all four strides.
            aux_head: add an FCN auxiliary head on the backbone's ``"s16"``.
            deep_stem: ResNet v1c stem.
            dropout: dropout before the classifier.
        """
        check_fixed_stride("FPN", output_stride, 32)
        backbone = backbone_cls(output_stride=32, deep_stem=deep_stem, dtype=dtype)
        neck = FPN(channels=fpn_channels, dtype=dtype)
        head = FPNSemanticHead(num_classes, channels=head_channels, dropout=dropout, dtype=dtype)
        channels = backbone.feature_channels()["s16"]
        aux = aux_fcn_head(channels, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


MODELS: dict[str, Callable[..., Segmentor]] = {
    "pspnet_resnet50": pspnet_builder(ResNet50),
    "pspnet_resnet101": pspnet_builder(ResNet101),
    "pspnet_tiny": pspnet_builder(ResNetMicro, ppm_channels=16, aux_channels=16),
    "fpn_resnet50": fpn_builder(ResNet50),
    "fpn_tiny": fpn_builder(ResNetMicro, fpn_channels=16, head_channels=16),
}
