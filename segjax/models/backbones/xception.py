"""Aligned Xception-65 (the DeepLabv3+ version, Chen et al., 2018) with dilation.

Layout follows TF DeepLab's ``xception_65`` and timm's ``xception65`` (``XceptionAligned``):

- stem: 3x3 conv 32 stride 2, 3x3 conv 64 (each conv-BN-ReLU);
- entry flow: Xception modules 128, 256, 728, each with stride 2 on its third conv;
- middle flow: 16 modules of 728 channels with identity shortcuts;
- exit flow: a module (728, 1024, 1024) with stride 2, then (1536, 1536, 2048) without
  shortcut, its separable convs carrying their own ReLUs.

An Xception module is three 3x3 depthwise-separable convs (depthwise -> BN -> pointwise ->
BN; every max-pool of the original Xception replaced by a strided separable conv), each
preceded by a ReLU (pre-activation), plus a shortcut that is the identity, or a strided 1x1
conv + BN when the shape changes. The shortcut reads the block input before the ReLU.

``output_stride`` in {8, 16, 32} turns the stride of the exit flow (16) and of entry block 3
(8) into dilation; as timm and TF DeepLab, a block whose stride is removed still runs at the
previous dilation and the following blocks use the new one.

Feature keys (nominal strides, as timm's ``feature_info``): ``"s4"`` is the ReLU'd input of
entry block 2's strided conv (256 channels at stride 4: the DeepLabv3+ low-level features),
``"s8"`` the same point in entry block 3 (728), ``"s16"`` in the exit flow's first block
(1024), ``"s32"`` the final 2048-channel output.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU

Array = jax.Array


class SeparableConvBN(nn.Module):
    """Depthwise kxk -> BN (-> ReLU) -> pointwise 1x1 -> BN (-> ReLU); timm's ``SeparableConv2d``.

    Attributes:
        features: output channels.
        strides: stride of the depthwise conv.
        dilation: dilation of the depthwise conv.
        act: ReLU after both BNs (the last exit-flow module); otherwise no activation inside.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    act: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        act = nn.relu if self.act else None
        cin = x.shape[-1]
        x = ConvBNReLU(
            cin,
            3,
            self.strides,
            self.dilation,
            groups=cin,
            act=act,
            dtype=self.dtype,
            name="depthwise",
        )(x, train=train)
        return ConvBNReLU(self.features, 1, act=act, dtype=self.dtype, name="pointwise")(
            x, train=train
        )


class XceptionModule(nn.Module):
    """Three separable convs (stride on the third) plus a shortcut.

    Attributes:
        features: output channels of the three convs.
        strides: stride of the third conv and of the projection shortcut.
        dilation: dilation of all three depthwise convs.
        start_with_relu: pre-activation ReLU before each conv (False: ReLUs inside the convs).
        skip: add a shortcut (identity, or 1x1 conv + BN when the shape changes).
        dtype: compute dtype; parameters are float32.
    """

    features: Sequence[int]
    strides: int = 1
    dilation: int = 1
    start_with_relu: bool = True
    skip: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
        """Returns ``(output, pre_stride)``: the block output and its third conv's input."""
        y = x
        pre_stride = x
        for i, f in enumerate(self.features):
            if self.start_with_relu:
                y = nn.relu(y)
            if i == 2:
                pre_stride = y
            y = SeparableConvBN(
                f,
                self.strides if i == 2 else 1,
                self.dilation,
                act=not self.start_with_relu,
                dtype=self.dtype,
                name=f"sepconv{i + 1}",
            )(y, train=train)
        if not self.skip:
            return y, pre_stride
        if self.strides != 1 or x.shape[-1] != self.features[-1]:
            x = ConvBNReLU(
                self.features[-1], 1, self.strides, act=None, dtype=self.dtype, name="shortcut"
            )(x, train=train)
        return x + y, pre_stride


class AlignedXception(nn.Module):
    """Aligned Xception trunk (no classifier) returning features at nominal strides 4-32.

    Attributes:
        stem_widths: channels of the two stem convs.
        entry_widths: channels of the three entry-flow modules (each strided).
        middle_blocks: number of middle-flow modules (16 for Xception-65).
        exit_widths: channels of the two exit-flow modules (three convs each).
        output_stride: 8, 16 or 32.
        dtype: compute dtype; parameters are float32.
    """

    stem_widths: Sequence[int] = (32, 64)
    entry_widths: Sequence[int] = (128, 256, 728)
    middle_blocks: int = 16
    exit_widths: Sequence[Sequence[int]] = ((728, 1024, 1024), (1536, 1536, 2048))
    output_stride: int = 16
    dtype: jnp.dtype = jnp.float32

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key (Xception-65: 256, 728, 1024, 2048)."""
        return {
            "s4": self.entry_widths[1],
            "s8": self.entry_widths[2],
            "s16": self.exit_widths[0][1],
            "s32": self.exit_widths[1][2],
        }

    def feature_strides(self) -> dict[str, int]:
        """True spatial stride of each output key under ``output_stride``."""
        return {
            k: min(s, self.output_stride)
            for k, s in zip(("s4", "s8", "s16", "s32"), (4, 8, 16, 32), strict=True)
        }

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"s4", "s8", "s16", "s32"}`` features (see the module doc)."""
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        conv = functools.partial(ConvBNReLU, dtype=self.dtype)
        x = conv(self.stem_widths[0], 3, 2, name="stem_conv1")(x, train=train)
        x = conv(self.stem_widths[1], 3, name="stem_conv2")(x, train=train)
        blocks = [
            (f"entry{i + 1}", (w, w, w), 2, True, True) for i, w in enumerate(self.entry_widths)
        ]
        mid = self.entry_widths[-1]
        blocks += [
            (f"middle{i + 1}", (mid, mid, mid), 1, True, True) for i in range(self.middle_blocks)
        ]
        blocks += [
            ("exit1", tuple(self.exit_widths[0]), 2, True, True),
            ("exit2", tuple(self.exit_widths[1]), 1, False, False),
        ]
        stride, dilation = 2, 1
        pre_stride_keys = {"entry2": "s4", "entry3": "s8", "exit1": "s16"}
        features = {}
        for name, widths, s, start_with_relu, skip in blocks:
            block_dilation = dilation
            if s > 1 and stride * s > self.output_stride:
                dilation *= s  # This block keeps the previous rate; later blocks use the new one.
                s = 1
            stride *= s
            x, pre = XceptionModule(
                widths, s, block_dilation, start_with_relu, skip, dtype=self.dtype, name=name
            )(x, train=train)
            if name in pre_stride_keys:
                features[pre_stride_keys[name]] = pre
        features["s32"] = x
        return dict(sorted(features.items(), key=lambda kv: int(kv[0][1:])))


Xception65 = functools.partial(AlignedXception)
# Tests: the same flows at 8-128 channels with one middle block (about 30k parameters).
XceptionTiny = functools.partial(
    AlignedXception,
    stem_widths=(8, 16),
    entry_widths=(16, 24, 32),
    middle_blocks=1,
    exit_widths=((32, 48, 48), (64, 64, 96)),
)
