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

from segjax.models.backbones.resnet import ResNet, ResNet18, ResNet50, ResNet101, ResNetTiny
from segjax.models.heads.deeplab import DeepLabV3Head, DeepLabV3PlusHead
from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import PixelMLP
from segjax.models.necks.aspp import ASPP, ASPP_RATES
from segjax.models.segmentor import Segmentor

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
