"""Context modules of the survey on ResNet trunks: UPerNet, DenseASPP, DUC-HDC, RefineNet.

- ``upernet_r50`` (mmseg ``upernet_r50``): ResNet-50 v1c at output stride 32, pyramid pooling
  (1, 2, 3, 6; 512 channels) on stage 4 and ``UPerHead(512)`` over the four stages
  (``heads/uper.py``); mmseg's config also has the auxiliary ``FCNHead(1024, 256)``
  (``aux_head=True``).
- ``denseaspp_r101`` (Yang et al., CVPR 2018): the paper's backbones are DenseNets; segjax
  puts DenseASPP (``necks/dense_aspp.py``: rates 3-24, 256 -> 64 per layer) on a dilated
  ResNet-101 v1c at output stride 8, the trunk every other segjax context module uses, so
  that the context modules compare on one trunk (and ResNet weights load); a dropout +
  1x1 classifier on the 2048 + 5 * 64 channels.
- ``duc_hdc_r101`` (Wang et al., WACV 2018, "Understanding convolution for semantic
  segmentation"): ResNet-101 v1b at output stride 8 with hybrid dilated convolution (stage 3's
  23 blocks cycle rates 1, 2, 3; stage 4's three blocks use 5, 9, 17, the paper's
  "ResNet-101 + DUC + HDC" rates), then the dense upsampling convolution (``heads/duc.py``).
- ``refinenet_r101`` (Lin et al., CVPR 2017): RefineNet-4-cascade on ResNet-101 v1b (output
  stride 32), F = 256 (``heads/refinenet.py``); logits at stride 4.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride, check_stride_choice
from segjax.models.heads.duc import DUCHead, DUCSegmentor
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.refinenet import RefineNetHead
from segjax.models.heads.uper import UPerHead
from segjax.models.necks.dense_aspp import DenseASPP
from segjax.models.necks.ppm import PyramidPooling
from segjax.models.segmentor import Segmentor

# DUC-HDC's hybrid dilation rates per ResNet stage (None: the stage's usual rates).
HDC_RATES = (None, None, (1, 2, 3), (5, 9, 17))


def _aux(backbone: ResNet, num_classes: int, dtype, aux_head: bool) -> FCNHead | None:
    # mmseg's FCNHead(1024, 256) on stage 3 for ResNet-50/101; a quarter for tiny trunks.
    return (
        aux_fcn_head(backbone.feature_channels()["s16"], num_classes, dtype) if aux_head else None
    )


def upernet_builder(
    backbone_cls: Callable[..., ResNet], *, channels: int = 512
) -> Callable[..., Segmentor]:
    """A UPerNet builder (mmseg ``upernet_r50``)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """UPerNet: ResNet v1c, PPM on stage 4, FPN fusion of the four stages.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (the pyramid needs all strides); logits at stride 4.
            aux_head: mmseg's auxiliary FCN head on stage 3 (``"aux_logits"``).
            dropout: before the classifier.
        """
        check_fixed_stride("UPerNet", output_stride, 32)
        backbone = backbone_cls(output_stride=32, deep_stem=True, dtype=dtype)
        neck = PyramidPooling(channels=channels, dtype=dtype)
        head = UPerHead(num_classes, channels=channels, dropout=dropout, dtype=dtype)
        aux = _aux(backbone, num_classes, dtype, aux_head)
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def denseaspp_builder(
    backbone_cls: Callable[..., ResNet], *, inter_channels: int = 256, growth: int = 64
) -> Callable[..., Segmentor]:
    """A DenseASPP builder on a dilated ResNet v1c."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """DenseASPP on a dilated ResNet v1c.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (None; the paper's) or 16.
            aux_head: an FCN auxiliary head on stage 3 (``"aux_logits"``).
            dropout: after each DenseASPP layer and before the classifier.
        """
        stride = check_stride_choice("DenseASPP", output_stride, (8, 16))
        backbone = backbone_cls(output_stride=stride, deep_stem=True, dtype=dtype)
        # Rates 3..24 were chosen for output stride 8; at 16 they are halved (rounded up).
        rates = tuple(-(-r * 8 // stride) for r in (3, 6, 12, 18, 24))
        neck = DenseASPP(
            rates=rates, inter_channels=inter_channels, growth=growth, dropout=dropout, dtype=dtype
        )
        head = FCNHead(num_classes, num_convs=0, dropout=dropout, in_key="dense_aspp", dtype=dtype)
        aux = _aux(backbone, num_classes, dtype, aux_head)
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def duc_hdc_builder(backbone_cls: Callable[..., ResNet]) -> Callable[..., DUCSegmentor]:
    """A DUC-HDC builder: ResNet with hybrid dilation rates, dense upsampling convolution."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> DUCSegmentor:
        """DUC-HDC (ResNet at output stride 8, HDC rates, DUC head).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 8 (the HDC rates are those of stride 8).
            aux_head: an FCN auxiliary head on stage 3 (``"aux_logits"``).
        """
        check_fixed_stride("DUC-HDC", output_stride, 8)
        backbone = backbone_cls(output_stride=8, block_dilations=HDC_RATES, dtype=dtype)
        head = DUCHead(num_classes, upscale=8, dtype=dtype)
        aux = _aux(backbone, num_classes, dtype, aux_head)
        return DUCSegmentor(backbone=backbone, head=head, aux_head=aux)

    return builder


def refinenet_builder(
    backbone_cls: Callable[..., ResNet], *, features: int = 256
) -> Callable[..., Segmentor]:
    """A RefineNet-4-cascade builder on a ResNet (v1b, output stride 32)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """RefineNet-4-cascade; logits at stride 4.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (the cascade needs all four strides).
            aux_head: an FCN auxiliary head on stage 3 (``"aux_logits"``).
            dropout: before the classifier.
        """
        check_fixed_stride("RefineNet", output_stride, 32)
        backbone = backbone_cls(output_stride=32, dtype=dtype)
        head = RefineNetHead(num_classes, features=features, dropout=dropout, dtype=dtype)
        aux = _aux(backbone, num_classes, dtype, aux_head)
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


MODELS: dict[str, Callable[..., object]] = {
    "upernet_r50": upernet_builder(ResNet50),
    "upernet_r101": upernet_builder(ResNet101),
    "denseaspp_r101": denseaspp_builder(ResNet101),
    "duc_hdc_r101": duc_hdc_builder(ResNet101),
    "refinenet_r101": refinenet_builder(ResNet101),
    # Tests: one-block ResNets (8-64 channels), 16-channel heads.
    "upernet_tiny": upernet_builder(ResNetMicro, channels=16),
    "denseaspp_tiny": denseaspp_builder(ResNetMicro, inter_channels=16, growth=8),
    "duc_hdc_tiny": duc_hdc_builder(ResNetMicro),
    "refinenet_tiny": refinenet_builder(ResNetMicro, features=16),
}
