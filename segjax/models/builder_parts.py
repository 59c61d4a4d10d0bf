"""What several model builders share: the auxiliary FCN head and the output-stride checks.

Family modules (``segjax.models.deeplab``, ``unet``, ...) import this; it imports no family
and not the registry, so the import graph stays ``registry -> families -> builder_parts``.
The tiny backbones that several tiny models use are partials next to their classes
(``ResNetMicro`` in ``backbones/resnet.py``, ``VGG_TINY_STAGES`` in ``backbones/vgg.py``).
"""

from __future__ import annotations

import jax.numpy as jnp

from segjax.models.heads.fcn import FCNHead
from segjax.models.necks.aspp import ASPP_RATES


def aux_fcn_head(s16_channels: int, num_classes: int, dtype: jnp.dtype) -> FCNHead:
    """The auxiliary FCN head on ``"s16"`` (stage 3 / pool4): a quarter of its channels, <= 256.

    torchvision's ``FCNHead(1024, K)`` on ResNet-50's stage 3 (256 channels) is the model.
    """
    return FCNHead(num_classes, channels=min(256, s16_channels // 4), in_key="s16", dtype=dtype)


def check_fixed_stride(name: str, output_stride: int | None, fixed: int) -> None:
    """Models whose stride is part of their design accept ``output_stride`` None or ``fixed``."""
    if output_stride not in (None, fixed):
        raise ValueError(
            f"{name} has a fixed output stride of {fixed}; output_stride must be None or "
            f"{fixed}, got {output_stride}"
        )


def check_aspp_stride(output_stride: int) -> int:
    """``output_stride`` itself, if ASPP has default rates for it (8, 16 or 32)."""
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
    return output_stride


def check_stride_choice(name: str, output_stride: int | None, allowed: tuple[int, ...]) -> int:
    """``output_stride`` if it is one of ``allowed``; None gives ``allowed[0]`` (the default)."""
    stride = output_stride or allowed[0]
    if stride not in allowed:
        raise ValueError(f"{name}: output_stride must be one of {allowed}, got {output_stride}")
    return stride
