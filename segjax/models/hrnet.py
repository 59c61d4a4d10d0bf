"""HRNetV2 + FCN head (Sun/Wang et al.): mmsegmentation's ``fcn_hr18s``/``fcn_hr18``/``fcn_hr48``.

The HRNet trunk (``backbones/hrnet.py``) gives four branches at strides 4-32; the HRNetV2
representation (``necks/resize_concat.py``) upsamples all of them to stride 4 and
concatenates them (``W + 2W + 4W + 8W = 15W`` channels), and mmseg's FCN head on it is a 1x1
conv-BN-ReLU of ``15W`` channels and the 1x1 classifier, no dropout (``kernel_size=1,
num_convs=1, concat_input=False, dropout_ratio=-1``).

The logits are at stride 4 for any input, so ``output_stride`` is 4 (or None). mmseg's
``fcn_hr*`` has no auxiliary head; ``aux_head=True`` adds segjax's usual FCN head on the
stride-16 branch (a quarter of its channels).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from segjax.models.backbones.hrnet import (
    HRNet,
    HRNetTiny,
    HRNetW18,
    HRNetW18Small,
    HRNetW32,
    HRNetW48,
)
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.necks.resize_concat import ResizeConcat
from segjax.models.segmentor import Segmentor


def hrnetv2_fcn_head(backbone: HRNet, num_classes: int, dtype: jnp.dtype) -> FCNHead:
    """mmseg's FCN head on the HRNetV2 representation: 1x1 conv-BN-ReLU (15W), classifier."""
    channels = sum(backbone.feature_channels().values())
    return FCNHead(
        num_classes, channels=channels, kernel_size=1, dropout=0.0, in_key="hrnetv2", dtype=dtype
    )


def fcn_hrnet_builder(backbone_cls: Callable[..., HRNet]) -> Callable[..., Segmentor]:
    """An FCN-HRNetV2 builder on ``backbone_cls``."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        fuse_upsample: str = "bilinear",
    ) -> Segmentor:
        """HRNetV2 + FCN head (mmseg ``fcn_hr*``), logits at stride 4.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 4 (the head's resolution; fixed by the design).
            aux_head: an FCN auxiliary head on the stride-16 branch (``"aux_logits"``).
            fuse_upsample: the trunk's fusion upsampling, ``"bilinear"`` (mmseg) or
                ``"nearest"`` (timm's ImageNet HRNets; ``backbones/hrnet.py``).
        """
        check_fixed_stride("HRNetV2", output_stride, 4)
        backbone = backbone_cls(dtype=dtype, fuse_upsample=fuse_upsample)
        head = hrnetv2_fcn_head(backbone, num_classes, dtype)
        channels = backbone.feature_channels()["s16"]
        aux = aux_fcn_head(channels, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=ResizeConcat(), head=head, aux_head=aux)

    return builder


MODELS: dict[str, Callable[..., Segmentor]] = {
    "fcn_hr18s": fcn_hrnet_builder(HRNetW18Small),
    "fcn_hr18": fcn_hrnet_builder(HRNetW18),
    "fcn_hr32": fcn_hrnet_builder(HRNetW32),
    "fcn_hr48": fcn_hrnet_builder(HRNetW48),
    "fcn_hr_tiny": fcn_hrnet_builder(HRNetTiny),
}
