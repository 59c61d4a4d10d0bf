"""ResNet backbones (He et al., 2016) with dilation for dense prediction.

Layout follows torchvision ("ResNet v1b": the stride of a bottleneck sits on its 3x3 conv,
the projection shortcut is a strided 1x1 conv + BN), with mmsegmentation's ``ResNetV1c`` deep
stem (three 3x3 convs, ``stem_width // 2, stem_width // 2, stem_width``) as an option.

``output_stride`` in {8, 16, 32} replaces the stride of the last one or two stages by
dilation, as torchvision's ``replace_stride_with_dilation`` does: the first block of a dilated
stage keeps the previous dilation and the next blocks use the new one, which equals mmseg's
``contract_dilation=True``. ``multi_grid`` multiplies the dilation of each block of the last
stage (DeepLabv3's Multi-Grid, e.g. ``(1, 2, 4)``).

Example:
    >>> model = ResNet50(output_stride=16)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 65, 65, 3)), train=False)
    >>> feats = model.apply(variables, jnp.zeros((1, 65, 65, 3)), train=False)
    >>> {k: v.shape for k, v in feats.items()}  # s32 is at stride 16: strides became dilation
    {'s4': (1, 17, 17, 256), 's8': (1, 9, 9, 512), 's16': (1, 5, 5, 1024), 's32': (1, 5, 5, 2048)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU, max_pool

Array = jax.Array

FEATURE_KEYS = ("s4", "s8", "s16", "s32")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Dilation is applied to the first conv only, as in mmsegmentation's ``BasicBlock``
    (torchvision's refuses dilation for this block).

    Attributes:
        features: channels of the block's convs (output = ``features * expansion``).
        strides: stride of the first conv and of the shortcut.
        dilation: dilation of the first conv.
        zero_init_residual: start the last BN's scale at 0, so the block starts as identity.
        dtype: compute dtype; parameters are float32.
    """

    expansion: ClassVar[int] = 1

    features: int
    strides: int = 1
    dilation: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        out_features = self.features * self.expansion
        y = ConvBNReLU(
            self.features, 3, self.strides, self.dilation, dtype=self.dtype, name="conv1"
        )(x, train=train)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = ConvBNReLU(
                out_features, 1, self.strides, act=None, dtype=self.dtype, name="downsample"
            )(x, train=train)
        # relu(bn(conv2(y)) + x), the sum and the ReLU fused into the BatchNorm.
        return ConvBNReLU(
            out_features,
            3,
            zero_init_bn=self.zero_init_residual,
            dtype=self.dtype,
            name="conv2",
        )(y, train=train, residual=x)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand x4, plus residual (ResNet-50+).

    Attributes:
        features: channels of the 1x1 and 3x3 convs (output = ``features * expansion``).
        strides: stride of the 3x3 conv (v1b) and of the shortcut.
        dilation: dilation of the 3x3 conv.
        zero_init_residual: start the last BN's scale at 0, so the block starts as identity.
        dtype: compute dtype; parameters are float32.
    """

    expansion: ClassVar[int] = 4

    features: int
    strides: int = 1
    dilation: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), 4 * features]``."""
        out_features = self.features * self.expansion
        y = ConvBNReLU(self.features, 1, dtype=self.dtype, name="conv1")(x, train=train)
        y = ConvBNReLU(
            self.features, 3, self.strides, self.dilation, dtype=self.dtype, name="conv2"
        )(y, train=train)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = ConvBNReLU(
                out_features, 1, self.strides, act=None, dtype=self.dtype, name="downsample"
            )(x, train=train)
        # relu(bn(conv3(y)) + x), the sum and the ReLU fused into the BatchNorm.
        return ConvBNReLU(
            out_features,
            1,
            zero_init_bn=self.zero_init_residual,
            dtype=self.dtype,
            name="conv3",
        )(y, train=train, residual=x)


class ResNet(nn.Module):
    """ResNet trunk (no classifier) that returns the outputs of its four stages.

    Output keys are NOMINAL strides: ``"s4"`` (C2, stage 1), ``"s8"`` (C3), ``"s16"`` (C4),
    ``"s32"`` (C5). With ``output_stride=16`` the ``"s32"`` features are spatially at stride
    16, and with ``output_stride=8`` both ``"s16"`` and ``"s32"`` are at stride 8, because
    those strides became dilation; ``feature_strides()`` gives the true strides. A stride-2
    layer maps a size ``n`` to ``ceil(n / 2)``, so an ``H x W`` input gives ``"s4"`` of size
    ``ceil(ceil(H / 2) / 2)``, and so on, for any (odd) size.

    Attributes:
        stage_sizes: number of blocks in each of the four stages.
        block_cls: ``BasicBlock`` or ``Bottleneck``.
        base_width: channels of the first stage's convs; stage ``i`` uses
            ``base_width * 2**i`` (times ``block_cls.expansion`` at its output).
        stem_width: output channels of the stem.
        deep_stem: ResNet v1c stem (3x3 convs ``stem_width // 2, stem_width // 2,
            stem_width``) instead of one 7x7 conv.
        output_stride: 8, 16 or 32; the stride of the deepest features.
        multi_grid: per-block dilation multipliers for the last stage, one per block
            (DeepLabv3 uses ``(1, 2, 4)`` on ResNet-50/101's three-block stage 4).
        zero_init_residual: start each block's last BN scale at 0 (Goyal et al., 2017).
        block_dilations: per stage, None or absolute dilation rates cycled over its blocks
            (DUC-HDC's hybrid dilated convolution: ``(None, None, (1, 2, 3), (5, 9, 17))``);
            they replace the rates above for that stage.
        dtype: compute dtype (``bfloat16`` for mixed precision); parameters are float32.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module] = Bottleneck
    base_width: int = 64
    stem_width: int = 64
    deep_stem: bool = False
    output_stride: int = 32
    multi_grid: Sequence[int] | None = None
    zero_init_residual: bool = False
    block_dilations: Sequence[Sequence[int] | None] | None = None
    dtype: jnp.dtype = jnp.float32

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key, e.g. ResNet-50: ``{"s4": 256, ..., "s32": 2048}``."""
        expansion = self.block_cls.expansion
        return {k: self.base_width * 2**i * expansion for i, k in enumerate(FEATURE_KEYS)}

    def feature_strides(self) -> dict[str, int]:
        """True spatial stride of each output key under ``output_stride``."""
        return {k: min(4 * 2**i, self.output_stride) for i, k in enumerate(FEATURE_KEYS)}

    def _check(self) -> None:
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if len(self.stage_sizes) != 4:
            raise ValueError(f"stage_sizes must have 4 stages, got {self.stage_sizes}")
        if self.multi_grid is not None and len(self.multi_grid) != self.stage_sizes[-1]:
            raise ValueError(
                f"multi_grid {tuple(self.multi_grid)} needs one rate per block of the last "
                f"stage ({self.stage_sizes[-1]} blocks)"
            )
        if self.block_dilations is not None and len(self.block_dilations) != 4:
            raise ValueError(
                f"block_dilations needs one entry (None or rates) per stage, got "
                f"{self.block_dilations}"
            )

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """Runs the trunk.

        Args:
            x: images ``[B, H, W, 3]``.
            train: batch statistics (and their running-average update) when True.

        Returns:
            ``{"s4": [B, H4, W4, C2], "s8": ..., "s16": ..., "s32": ...}`` with channels
            ``feature_channels()`` and spatial strides ``feature_strides()``.
        """
        self._check()
        conv = functools.partial(ConvBNReLU, dtype=self.dtype)
        if self.deep_stem:
            x = conv(self.stem_width // 2, 3, 2, name="stem_conv1")(x, train=train)
            x = conv(self.stem_width // 2, 3, name="stem_conv2")(x, train=train)
            x = conv(self.stem_width, 3, name="stem_conv3")(x, train=train)
        else:
            x = conv(self.stem_width, 7, 2, name="stem_conv1")(x, train=train)
        # -inf padding (flax's max_pool default) = PyTorch's MaxPool2d(3, 2, padding=1).
        x = max_pool(x, 3, 2, ((1, 1), (1, 1)))

        features = {}
        stride, dilation = 4, 1
        last = len(self.stage_sizes) - 1
        for i, num_blocks in enumerate(self.stage_sizes):
            block_stride, previous_dilation = (1 if i == 0 else 2), dilation
            if block_stride == 2 and stride * 2 > self.output_stride:
                # This stage would exceed output_stride: trade its stride for dilation.
                dilation *= 2
                block_stride = 1
            stride *= block_stride
            for j in range(num_blocks):
                if i == last and self.multi_grid is not None:
                    block_dilation = dilation * self.multi_grid[j]
                else:
                    # As torchvision: the first block still sees the previous dilation.
                    block_dilation = previous_dilation if j == 0 else dilation
                if self.block_dilations is not None and self.block_dilations[i] is not None:
                    rates = self.block_dilations[i]
                    block_dilation = rates[j % len(rates)]
                x = self.block_cls(
                    features=self.base_width * 2**i,
                    strides=block_stride if j == 0 else 1,
                    dilation=block_dilation,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_block{j}",
                )(x, train=train)
            features[FEATURE_KEYS[i]] = x
        return features


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
# Tests and the default fast config: one BasicBlock per stage, widths 16/32/64/128.
ResNetTiny = functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, base_width=16, stem_width=16
)
# Tests and the tiny registered models (PSPNet, FPN, LinkNet, FCN, DeepLab v2, ...): one
# BasicBlock per stage, widths 8/16/32/64 (about 80k parameters).
ResNetMicro = functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, base_width=8, stem_width=8
)
