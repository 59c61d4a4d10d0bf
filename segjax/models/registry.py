"""One flat registry: config name -> builder of a ``Segmentor``.

Every builder has the signature::

    builder(*, num_classes: int, dtype=jnp.float32, output_stride: int | None = None,
            aux_head: bool = False, **model_specific_kwargs) -> Segmentor

``output_stride=None`` picks the model's default. An argument that a builder does not
accept is an error that names it and lists the accepted ones; nothing is silently ignored.

Example:
    >>> model = build_model("deeplabv3plus_resnet50", num_classes=21, output_stride=8)
    >>> sorted(MODELS)[:2]
    ['deeplabv3_resnet101', 'deeplabv3_resnet50']
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from segjax.models.backbones.mobilenet import MobileNetV2, MobileNetV2Tiny
from segjax.models.backbones.resnet import (
    BasicBlock,
    ResNet,
    ResNet18,
    ResNet50,
    ResNet101,
    ResNetTiny,
)
from segjax.models.backbones.resnet import BasicBlock as _BasicBlock
from segjax.models.backbones.vgg import VGG, VGG16_STAGES
from segjax.models.backbones.xception import Xception65, XceptionTiny
from segjax.models.fcn import FCN
from segjax.models.heads.deeplab import DeepLabV3Head, DeepLabV3PlusHead
from segjax.models.heads.deeplab_v2 import DEEPLAB_V2_RATES, ASPPSumHead, LargeFOV
from segjax.models.heads.fcn import FCNHead
from segjax.models.heads.fpn import FPNSemanticHead
from segjax.models.heads.parsenet import ParseNetHead
from segjax.models.layers import PixelMLP
from segjax.models.linknet import LinkNet
from segjax.models.mmseg_layouts import MMSEG_MODELS
from segjax.models.necks.aspp import ASPP, ASPP_RATES
from segjax.models.necks.fpn import FPN
from segjax.models.necks.ppm import PyramidPooling
from segjax.models.segmentor import Segmentor
from segjax.models.segnet import DeconvNet, SegNet
from segjax.models.unet import UNet, UNetPlusPlus

MODELS: dict[str, Callable[..., Segmentor]] = {}


class UnknownModelError(KeyError, ValueError):
    """An unknown model name; a ``KeyError`` and a ``ValueError``, so either catch works."""

    def __str__(self) -> str:
        # KeyError's __str__ shows the repr of its argument; show the message as written.
        return str(self.args[0])


def _register(name: str, fn: Callable[..., Segmentor]) -> None:
    """Adds ``fn`` under ``name``, wrapped so that unknown keyword arguments are named."""
    accepted = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def builder(**kwargs) -> Segmentor:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"model {name!r} got unknown arguments {unknown}; it accepts {sorted(accepted)}"
            )
        return fn(**kwargs)

    builder.__name__ = builder.__qualname__ = name
    MODELS[name] = builder


def build_model(name: str, *, num_classes: int, dtype: jnp.dtype = jnp.float32, **kwargs):
    """Builds the registered model ``name``.

    Args:
        name: a key of ``MODELS``.
        num_classes: number of output classes ``K`` (logits are ``[B, H, W, K]``).
        dtype: compute dtype (``jnp.bfloat16`` for mixed precision); params stay float32.
        **kwargs: the builder's other arguments (``output_stride``, ``aux_head``, ...).

    Returns:
        An unbound ``Segmentor``.

    Raises:
        UnknownModelError: (a ``KeyError`` and ``ValueError``) for an unknown name; the
            message lists the known names.
        TypeError: for an argument that the builder does not accept.
    """
    if name not in MODELS:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)


def _deeplab_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    plus: bool,
    default_output_stride: int,
    default_separable: bool,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
) -> Callable[..., Segmentor]:
    """A DeepLabv3 (``plus=False``) or v3+ builder on a ResNet backbone."""

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
        """DeepLab on a ResNet.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8, 16 or 32 (None: the model's default).
            aux_head: add an FCN auxiliary head on ``"s16"`` (``"aux_logits"``).
            deep_stem: ResNet v1c stem (three 3x3 convs) instead of the 7x7 conv.
            multi_grid: DeepLabv3 Multi-Grid rates of the last stage's blocks, e.g. (1, 2, 4).
            zero_init_residual: zero-init the last BN scale of each residual block.
            separable: depthwise-separable ASPP and decoder 3x3 convs.
            aspp_rates: ASPP dilation rates (None: (6, 12, 18) at stride 16, x2 at 8).
            dropout: dropout after the ASPP projection and before the v3+ classifier.
        """
        output_stride = output_stride or default_output_stride
        if output_stride not in ASPP_RATES:
            raise ValueError(
                f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}"
            )
        backbone = backbone_cls(
            output_stride=output_stride,
            deep_stem=deep_stem,
            multi_grid=None if multi_grid is None else tuple(multi_grid),
            zero_init_residual=zero_init_residual,
            dtype=dtype,
        )
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
        aux = None
        if aux_head:
            # torchvision's FCNHead width: a quarter of the stage-3 channels (256 on ResNet-50).
            aux_channels = min(256, backbone.feature_channels()["s16"] // 4)
            aux = FCNHead(num_classes, channels=aux_channels, in_key="s16", dtype=dtype)
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def pixel_mlp(
    *,
    num_classes: int,
    dtype: jnp.dtype = jnp.float32,
    output_stride: int | None = None,
    aux_head: bool = False,
    widths: Sequence[int] = (64, 64),
) -> Segmentor:
    """Per-pixel colour classifier: 1x1 convs ``3 -> 64 -> 64 -> K``, no spatial context.

    Args:
        num_classes: output classes.
        dtype: compute dtype; params are float32.
        output_stride: accepted, like every builder, so that one config can switch models;
            it has no effect: the model has no stride to trade for dilation and always
            works at full resolution.
        aux_head: must be False (there is no intermediate level to supervise).
        widths: channels of the hidden 1x1 layers.
    """
    del output_stride  # Always stride 1; see the docstring.
    if aux_head:
        raise ValueError("pixel_mlp has no auxiliary head")
    return Segmentor(
        backbone=PixelMLP(widths=tuple(widths), dtype=dtype),
        neck=None,
        head=FCNHead(num_classes, num_convs=0, dropout=0.0, in_key="s1", dtype=dtype),
    )


# Defaults: DeepLabv3 as torchvision (output stride 8, plain convs); DeepLabv3+ as the paper
# (output stride 16 for training, depthwise-separable ASPP and decoder).
_register(
    "deeplabv3_resnet50",
    _deeplab_builder(ResNet50, plus=False, default_output_stride=8, default_separable=False),
)
_register(
    "deeplabv3_resnet101",
    _deeplab_builder(ResNet101, plus=False, default_output_stride=8, default_separable=False),
)
_register(
    "deeplabv3plus_resnet18",
    _deeplab_builder(
        ResNet18,
        plus=True,
        default_output_stride=16,
        default_separable=True,
        aspp_channels=128,
        decoder_channels=128,
    ),
)
_register(
    "deeplabv3plus_resnet50",
    _deeplab_builder(ResNet50, plus=True, default_output_stride=16, default_separable=True),
)
_register(
    "deeplabv3plus_resnet101",
    _deeplab_builder(ResNet101, plus=True, default_output_stride=16, default_separable=True),
)
# The default model of `python train.py`: trains on 2 CPU cores in minutes.
_register(
    "deeplabv3plus_tiny",
    _deeplab_builder(
        ResNetTiny,
        plus=True,
        default_output_stride=16,
        default_separable=True,
        aspp_channels=64,
        low_level_channels=24,
        decoder_channels=64,
    ),
)
_register("pixel_mlp", pixel_mlp)


# --- U-Net / UNet++ / LinkNet, PSPNet, FPN, DeepLabv3+ on MobileNetV2 and Xception ------------

# Tests: a ResNet of one BasicBlock per stage at 8-64 channels (about 80k parameters).
_ResNetMicro = functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), block_cls=_BasicBlock, base_width=8, stem_width=8
)


def _no_output_stride(name: str, output_stride: int | None, fixed: int) -> None:
    """Models with a fixed total stride accept only None (or that stride itself)."""
    if output_stride not in (None, fixed):
        raise ValueError(
            f"{name} has a fixed output stride of {fixed}; output_stride must be None, got "
            f"{output_stride}"
        )


def _aux_fcn(backbone, num_classes: int, dtype: jnp.dtype) -> FCNHead:
    """The FCN auxiliary head on ``"s16"``: a quarter of its channels, at most 256."""
    channels = min(256, backbone.feature_channels()["s16"] // 4)
    return FCNHead(num_classes, channels=channels, in_key="s16", dtype=dtype)


def _deeplabv3plus_builder(
    backbone_cls: Callable[..., object],
    *,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
) -> Callable[..., Segmentor]:
    """A DeepLabv3+ builder on a MobileNetV2 or Xception backbone (output stride 16)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        separable: bool = True,
        aspp_rates: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> Segmentor:
        """DeepLabv3+ (separable ASPP and decoder) on MobileNetV2 / aligned Xception.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8, 16 or 32 (None: 16, the paper's training stride).
            aux_head: add an FCN auxiliary head on ``"s16"`` (``"aux_logits"``).
            separable: depthwise-separable ASPP and decoder 3x3 convs.
            aspp_rates: ASPP dilation rates (None: (6, 12, 18) at stride 16, x2 at 8).
            dropout: dropout after the ASPP projection and before the classifier.
        """
        output_stride = output_stride or 16
        if output_stride not in ASPP_RATES:
            raise ValueError(
                f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}"
            )
        backbone = backbone_cls(output_stride=output_stride, dtype=dtype)
        neck = ASPP(
            rates=tuple(aspp_rates or ASPP_RATES[output_stride]),
            channels=aspp_channels,
            dropout=dropout,
            separable=separable,
            dtype=dtype,
        )
        head = DeepLabV3PlusHead(
            num_classes,
            low_level_channels=low_level_channels,
            channels=decoder_channels,
            separable=separable,
            dropout=dropout,
            dtype=dtype,
        )
        aux = _aux_fcn(backbone, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def _pspnet_builder(
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
            aux = FCNHead(
                num_classes, channels=aux_channels, dropout=dropout, in_key="s16", dtype=dtype
            )
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def _fpn_builder(
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
        _no_output_stride("FPN", output_stride, 32)
        backbone = backbone_cls(output_stride=32, deep_stem=deep_stem, dtype=dtype)
        neck = FPN(channels=fpn_channels, dtype=dtype)
        head = FPNSemanticHead(num_classes, channels=head_channels, dropout=dropout, dtype=dtype)
        aux = _aux_fcn(backbone, num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def _unet_builder(default_base_width: int, default_depth: int) -> Callable[..., UNet]:
    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        base_width: int = default_base_width,
        depth: int = default_depth,
    ) -> UNet:
        """U-Net (same padding, BN, transposed-conv up); see ``segjax.models.unet``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: must be None: the decoder returns to full resolution.
            aux_head: add an FCN auxiliary head on the bottleneck (``"aux_logits"``).
            base_width: channels of the first level (64 in the paper).
            depth: number of down / up stages (4 in the paper).
        """
        _no_output_stride("U-Net", output_stride, 1)
        return UNet(num_classes, base_width, depth, aux_head=aux_head, dtype=dtype)

    return builder


def _unetpp_builder(default_base_width: int, default_depth: int) -> Callable[..., UNetPlusPlus]:
    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        base_width: int = default_base_width,
        depth: int = default_depth,
        deep_supervision: bool = False,
    ) -> UNetPlusPlus:
        """UNet++ (nested dense skips); see ``segjax.models.unet``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: must be None: the decoder returns to full resolution.
            aux_head: add an FCN auxiliary head on the bottleneck (``"aux_logits"``).
            base_width: channels of level 0 (32 in the paper).
            depth: number of down stages (4 in the paper).
            deep_supervision: also return ``"deep_supervision"``: logits of the shallower
                nested outputs, added to the loss by ``segmentation_loss``.
        """
        _no_output_stride("UNet++", output_stride, 1)
        return UNetPlusPlus(
            num_classes,
            base_width,
            depth,
            deep_supervision=deep_supervision,
            aux_head=aux_head,
            dtype=dtype,
        )

    return builder


def _linknet_builder(encoder_cls: Callable[..., ResNet]) -> Callable[..., LinkNet]:
    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> LinkNet:
        """LinkNet on a ResNet encoder; see ``segjax.models.linknet``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (the decoder undoes the encoder's five strides).
            aux_head: add an FCN auxiliary head on the encoder's ``"s16"``.
        """
        _no_output_stride("LinkNet", output_stride, 32)
        return LinkNet(num_classes, encoder_cls(dtype=dtype), aux_head=aux_head, dtype=dtype)

    return builder


_register("deeplabv3plus_mobilenetv2", _deeplabv3plus_builder(MobileNetV2))
_register(
    "deeplabv3plus_mobilenetv2_tiny",
    _deeplabv3plus_builder(
        MobileNetV2Tiny, aspp_channels=32, low_level_channels=8, decoder_channels=32
    ),
)
_register("deeplabv3plus_xception65", _deeplabv3plus_builder(Xception65))
_register(
    "deeplabv3plus_xception_tiny",
    _deeplabv3plus_builder(
        XceptionTiny, aspp_channels=32, low_level_channels=8, decoder_channels=32
    ),
)
_register("pspnet_resnet50", _pspnet_builder(ResNet50))
_register("pspnet_resnet101", _pspnet_builder(ResNet101))
_register("pspnet_tiny", _pspnet_builder(_ResNetMicro, ppm_channels=16, aux_channels=16))
_register("fpn_resnet50", _fpn_builder(ResNet50))
_register("fpn_tiny", _fpn_builder(_ResNetMicro, fpn_channels=16, head_channels=16))
_register("unet", _unet_builder(64, 4))
_register("unet_tiny", _unet_builder(4, 3))
_register("unetpp", _unetpp_builder(32, 4))
_register("unetpp_tiny", _unetpp_builder(4, 3))
_register("linknet_resnet18", _linknet_builder(ResNet18))
_register("linknet_tiny", _linknet_builder(_ResNetMicro))


# --- FCN-32s/16s/8s, FCN-ResNet, ParseNet, DeepLab v1/v2, SegNet, DeconvNet ------------------

# Tests: VGG with one 8-16-channel conv per stage; ResNet with one BasicBlock per stage at 8-64.
_VGG_TINY = ((8,), (8,), (16,), (16,), (16,))
_ResNet8 = functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, base_width=8, stem_width=8
)


def _fixed_stride(name: str, output_stride: int | None, fixed: int) -> None:
    """Models whose stride is part of their design accept ``output_stride`` None or ``fixed``."""
    if output_stride not in (None, fixed):
        raise ValueError(
            f"{name} has a fixed output stride of {fixed}; output_stride must be None or "
            f"{fixed}, got {output_stride}"
        )


def _s16_aux_head(s16_channels: int, num_classes: int, dtype: jnp.dtype) -> FCNHead:
    """The auxiliary FCN head on ``"s16"`` (VGG: pool4): a quarter of its channels, <= 256."""
    return FCNHead(num_classes, channels=min(256, s16_channels // 4), in_key="s16", dtype=dtype)


def _fcn_vgg_builder(
    stride: int, stages: Sequence[Sequence[int]] = VGG16_STAGES, fc_channels: int = 4096
) -> Callable[..., FCN]:
    """An FCN-{stride}s builder on a VGG trunk."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> FCN:
        """FCN on VGG-16 (Long et al.), skips fused at stride ``stride``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (the trunk's stride is fixed; the variant's 32/16/8
                is the finest skip, part of the model's name).
            aux_head: add an FCN auxiliary head on pool4 (``"aux_logits"``).
            batch_norm: VGG-16-BN trunk instead of the paper's plain VGG-16.
            dropout: dropout after fc6 and fc7.
        """
        _fixed_stride(f"fcn{stride}s", output_stride, 32)
        backbone = VGG(stages=tuple(stages), batch_norm=batch_norm, dtype=dtype)
        aux = None
        if aux_head:
            aux = _s16_aux_head(backbone.feature_channels()["s16"], num_classes, dtype)
        return FCN(
            num_classes,
            backbone,
            stride=stride,
            fc_channels=fc_channels,
            dropout=dropout,
            aux_head=aux,
            dtype=dtype,
        )

    return builder


def _fcn_resnet_builder(backbone_cls: Callable[..., ResNet]) -> Callable[..., Segmentor]:
    """torchvision's ``fcn_resnet*``: ``FCNHead(C5, K)`` on a dilated ResNet."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        deep_stem: bool = False,
        dropout: float = 0.1,
    ) -> Segmentor:
        """FCN head (3x3 conv to C5/4, BN, ReLU, dropout, 1x1) on a ResNet.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: 8 (default, as torchvision), 16 or 32.
            aux_head: add torchvision's auxiliary ``FCNHead`` on ``"s16"``.
            deep_stem: ResNet v1c stem.
            dropout: dropout before the classifier (torchvision: 0.1).
        """
        backbone = backbone_cls(output_stride=output_stride or 8, deep_stem=deep_stem, dtype=dtype)
        channels = backbone.feature_channels()
        head = FCNHead(
            num_classes, channels=channels["s32"] // 4, dropout=dropout, in_key="s32", dtype=dtype
        )
        aux = _s16_aux_head(channels["s16"], num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


def _largefov_builder(
    *, parsenet: bool, stages: Sequence[Sequence[int]] = VGG16_STAGES, fc_channels: int = 1024
) -> Callable[..., Segmentor]:
    """DeepLab v1 LargeFOV (``parsenet=False``) or ParseNet on the same VGG-16 trunk."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        batch_norm: bool = False,
        rate: int | None = None,
        dropout: float = 0.5,
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
            dropout: dropout after fc6 and fc7.
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
        aux = None
        if aux_head:
            aux = _s16_aux_head(backbone.feature_channels()["s16"], num_classes, dtype)
        return Segmentor(backbone=backbone, neck=neck, head=head, aux_head=aux)

    return builder


def _deeplab_v2_builder(backbone_cls: Callable[..., ResNet]) -> Callable[..., Segmentor]:
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
        aux = None
        if aux_head:
            aux = _s16_aux_head(backbone.feature_channels()["s16"], num_classes, dtype)
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


def _unpooling_builder(
    model_cls: type[SegNet] | type[DeconvNet],
    stages: Sequence[Sequence[int]] = VGG16_STAGES,
    **model_kwargs,
) -> Callable[..., SegNet | DeconvNet]:
    """A SegNet or DeconvNet builder (VGG-16-BN encoder, pooling-index decoder)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> SegNet | DeconvNet:
        """SegNet / DeconvNet; logits come back at input resolution through unpooling.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (five 2x2 pools, undone by five unpoolings).
            aux_head: add an FCN auxiliary head on the encoder's pool4 (``"s16"``).
        """
        _fixed_stride(model_cls.__name__, output_stride, 32)
        aux = _s16_aux_head(stages[3][-1], num_classes, dtype) if aux_head else None
        return model_cls(
            num_classes,
            stages=tuple(map(tuple, stages)),
            aux_head=aux,
            dtype=dtype,
            **model_kwargs,
        )

    return builder


_register("fcn32s_vgg16", _fcn_vgg_builder(32))
_register("fcn16s_vgg16", _fcn_vgg_builder(16))
_register("fcn8s_vgg16", _fcn_vgg_builder(8))
_register("fcn8s_tiny", _fcn_vgg_builder(8, _VGG_TINY, fc_channels=32))
_register("fcn_resnet50", _fcn_resnet_builder(ResNet50))
_register("fcn_resnet101", _fcn_resnet_builder(ResNet101))
_register("fcn_resnet_tiny", _fcn_resnet_builder(_ResNet8))
_register("parsenet_vgg16", _largefov_builder(parsenet=True))
_register("parsenet_tiny", _largefov_builder(parsenet=True, stages=_VGG_TINY, fc_channels=32))
_register("deeplabv1_vgg16", _largefov_builder(parsenet=False))
_register("deeplabv1_tiny", _largefov_builder(parsenet=False, stages=_VGG_TINY, fc_channels=32))
_register("deeplabv2_resnet101", _deeplab_v2_builder(ResNet101))
_register("deeplabv2_tiny", _deeplab_v2_builder(_ResNet8))
_register("segnet_vgg16", _unpooling_builder(SegNet))
_register("segnet_tiny", _unpooling_builder(SegNet, _VGG_TINY))
_register("deconvnet_vgg16", _unpooling_builder(DeconvNet))
_register("deconvnet_tiny", _unpooling_builder(DeconvNet, _VGG_TINY, fc_channels=32))

# mmsegmentation's layouts, for its checkpoints (segjax.weights; see mmseg_layouts.py).
for _name, _builder in MMSEG_MODELS.items():
    _register(_name, _builder)
