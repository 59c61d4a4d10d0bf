"""torchvision's MobileNetV3-Large segmentation models: LR-ASPP and DeepLabv3.

Both on ``MobileNetV3Large(output_stride=16)`` (torchvision's ``dilated=True``), with
torchvision's heads and parameter counts (``tests/models/test_realtime.py``):

- ``lraspp_mobilenet_v3_large``: the Lite R-ASPP head on the last conv (960 channels,
  stride 16) and the C2 tap (``"c2"``, 40 channels, stride 8); torchvision has no auxiliary
  head for it; ``aux_head=True`` adds DeepLabv3-MobileNetV3's one (a segjax extension);
- ``deeplabv3_mobilenet_v3_large``: ASPP with rates (12, 24, 36) at stride 16 (torchvision's
  ``DeepLabHead`` defaults), dropout 0.5 after the projection, the 3x3 conv and the
  classifier; ``aux_head=True`` is torchvision's ``aux_loss=True``: ``FCNHead(40, K)`` (10
  channels) on ``"c2"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from segjax.models.backbones.mobilenet_v3 import MobileNetV3Large, MobileNetV3LargeTiny
from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.deeplab import DeepLabV3Head
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.lraspp import LRASPPHead
from segjax.models.necks.aspp import ASPP
from segjax.models.segmentor import Segmentor

# torchvision's DeepLabHead(960, K) on the dilated MobileNetV3: rates (12, 24, 36) at stride 16.
TV_MOBILENET_ASPP_RATES = (12, 24, 36)


def _aux(backbone: MobileNetV3Large, num_classes: int, dtype: jnp.dtype) -> FCNHead:
    # torchvision's FCNHead(aux_inplanes, K) on the C2 tap: in_channels // 4 channels.
    channels = backbone.feature_channels()["c2"] // 4
    return FCNHead(num_classes, channels=channels, in_key="c2", dtype=dtype)


def lraspp_builder(
    backbone_cls: Callable[..., MobileNetV3Large], *, default_channels: int = 128
) -> Callable[..., Segmentor]:
    """An LR-ASPP builder on a MobileNetV3-Large backbone."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        channels: int = default_channels,
    ) -> Segmentor:
        """LR-ASPP on MobileNetV3-Large (torchvision's ``lraspp_mobilenet_v3_large``).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 16 (the only one: torchvision's dilated backbone) or None.
            aux_head: add DeepLabv3-MobileNetV3's FCN auxiliary head on ``"c2"`` (torchvision's
                LR-ASPP has none).
            channels: the head's ``inter_channels`` (torchvision: 128).
        """
        check_fixed_stride("lraspp_mobilenet_v3_large", output_stride, 16)
        backbone = backbone_cls(output_stride=16, dtype=dtype)
        head = LRASPPHead(num_classes, channels=channels, dtype=dtype)
        aux = _aux(backbone, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


def deeplabv3_mobilenet_builder(
    backbone_cls: Callable[..., MobileNetV3Large], *, default_channels: int = 256
) -> Callable[..., Segmentor]:
    """A DeepLabv3 builder on a MobileNetV3-Large backbone, as torchvision's."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        channels: int = default_channels,
        aspp_rates: Sequence[int] = TV_MOBILENET_ASPP_RATES,
        dropout: float = 0.5,
    ) -> Segmentor:
        """DeepLabv3 on MobileNetV3-Large (torchvision's ``deeplabv3_mobilenet_v3_large``).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 or 16 (default, torchvision's dilated backbone).
            aux_head: torchvision's ``aux_loss=True``: an FCN head on ``"c2"``.
            channels: channels of the ASPP branches and of the head's 3x3 conv (256).
            aspp_rates: ASPP rates (torchvision: 12, 24, 36 at stride 16).
            dropout: dropout after the ASPP projection (torchvision: 0.5).
        """
        output_stride = output_stride or 16
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        backbone = backbone_cls(output_stride=output_stride, dtype=dtype)
        neck = ASPP(rates=tuple(aspp_rates), channels=channels, dropout=dropout, dtype=dtype)
        head = DeepLabV3Head(num_classes, channels=channels, dtype=dtype)
        aux = _aux(backbone, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


MODELS: dict[str, Callable[..., Segmentor]] = {
    "lraspp_mobilenet_v3_large": lraspp_builder(MobileNetV3Large),
    "lraspp_mobilenet_v3_tiny": lraspp_builder(MobileNetV3LargeTiny, default_channels=16),
    "deeplabv3_mobilenet_v3_large": deeplabv3_mobilenet_builder(MobileNetV3Large),
    "deeplabv3_mobilenet_v3_tiny": deeplabv3_mobilenet_builder(
        MobileNetV3LargeTiny, default_channels=16
    ),
}
