"""MobileNetV2 backbone (Sandler et al., 2018) with dilation for dense prediction.

Layout follows torchvision's ``mobilenet_v2().features`` (3x3 stem conv 32, then inverted
residual blocks ``(t, c, n, s)`` = ``(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
(6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)``, ReLU6, channels rounded with
``_make_divisible(c * width_mult, 8)``), without the classifier. The final 1x1 conv to 1280
channels is left out by default, as in mmsegmentation's ``MobileNetV2`` (segmentation heads
read the 320-channel features); ``last_conv=True`` keeps it.

``output_stride`` in {8, 16, 32} replaces the stride of stage 6 (and of stage 4 for 8) by
dilation. As mmsegmentation (``strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4,
4)`` at output stride 8), every block of a dilated stage, its first included, uses the new
dilation.

Example:
    >>> model = MobileNetV2(output_stride=16)
    >>> x = jnp.zeros((1, 65, 65, 3))
    >>> feats = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
    >>> {k: v.shape for k, v in feats.items()}
    {'s4': (1, 17, 17, 24), 's8': (1, 9, 9, 32), 's16': (1, 5, 5, 96), 's32': (1, 5, 5, 320)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBNReLU

Array = jax.Array

# torchvision's inverted_residual_setting: (expand ratio t, channels c, blocks n, stride s).
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# The stage whose output is each nominal-stride key (0-based index into the setting).
_KEY_STAGES = {"s4": 1, "s8": 2, "s16": 4, "s32": 6}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, at most -10%."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (stride, dilation, ReLU6) -> 1x1 linear project.

    The residual is added when the block keeps stride 1 and the channel count.

    Attributes:
        features: output channels.
        strides: stride of the depthwise conv.
        dilation: dilation of the depthwise conv.
        expand_ratio: hidden channels = ``round(in_channels * expand_ratio)``; 1: no expand conv.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    expand_ratio: int = 6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        cin = x.shape[-1]
        hidden = round(cin * self.expand_ratio)
        conv = functools.partial(ConvBNReLU, act=nn.relu6, dtype=self.dtype)
        y = x
        if self.expand_ratio != 1:
            y = conv(hidden, 1, name="expand")(y, train=train)
        y = conv(hidden, 3, self.strides, self.dilation, groups=hidden, name="depthwise")(
            y, train=train
        )
        y = ConvBNReLU(self.features, 1, act=None, dtype=self.dtype, name="project")(y, train=train)
        if self.strides == 1 and cin == self.features:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk that returns features at nominal strides 4, 8, 16 and 32.

    Keys are NOMINAL strides as for ``ResNet``: ``"s4"`` (stage 2, 24 channels), ``"s8"``
    (stage 3, 32), ``"s16"`` (stage 5, 96), ``"s32"`` (stage 7, 320; 1280 with
    ``last_conv``); ``feature_strides()`` gives the true strides under ``output_stride``.
    A stride-2 layer maps ``n`` to ``ceil(n / 2)``, so any (odd) input size works.

    Attributes:
        width_mult: channel multiplier (torchvision's ``width_mult``).
        depths: blocks per stage (None: the paper's ``(1, 2, 3, 4, 3, 3, 1)``).
        output_stride: 8, 16 or 32.
        last_conv: keep torchvision's final 1x1 conv-BN-ReLU6 (to 1280 channels).
        dtype: compute dtype; parameters are float32.
    """

    width_mult: float = 1.0
    depths: Sequence[int] | None = None
    output_stride: int = 32
    last_conv: bool = False
    dtype: jnp.dtype = jnp.float32

    def _stage_channels(self) -> list[int]:
        return [make_divisible(c * self.width_mult) for _, c, _, _ in MOBILENET_V2_SETTING]

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key (width 1: ``{"s4": 24, ..., "s32": 320}``)."""
        channels = {k: self._stage_channels()[i] for k, i in _KEY_STAGES.items()}
        if self.last_conv:
            channels["s32"] = make_divisible(1280 * max(1.0, self.width_mult))
        return channels

    def feature_strides(self) -> dict[str, int]:
        """True spatial stride of each output key under ``output_stride``."""
        return {
            k: min(s, self.output_stride) for k, s in zip(_KEY_STAGES, (4, 8, 16, 32), strict=True)
        }

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"s4", "s8", "s16", "s32"}`` features (see the class doc)."""
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        depths = self.depths or [n for _, _, n, _ in MOBILENET_V2_SETTING]
        if len(depths) != len(MOBILENET_V2_SETTING):
            raise ValueError(f"depths needs 7 stages, got {tuple(depths)}")
        stem = make_divisible(32 * self.width_mult)
        x = ConvBNReLU(stem, 3, 2, act=nn.relu6, dtype=self.dtype, name="stem")(x, train=train)
        stride, dilation = 2, 1
        features = {}
        stage_keys = {i: k for k, i in _KEY_STAGES.items()}
        for i, ((t, _, _, s), c, n) in enumerate(
            zip(MOBILENET_V2_SETTING, self._stage_channels(), depths, strict=True)
        ):
            if s > 1 and stride * s > self.output_stride:
                dilation *= s  # mmseg: the whole stage, first block included, is dilated.
                s = 1
            stride *= s
            for j in range(n):
                x = InvertedResidual(
                    c,
                    s if j == 0 else 1,
                    dilation,
                    t,
                    dtype=self.dtype,
                    name=f"stage{i + 1}_block{j}",
                )(x, train=train)
            if i == len(MOBILENET_V2_SETTING) - 1 and self.last_conv:
                x = ConvBNReLU(
                    self.feature_channels()["s32"],
                    1,
                    act=nn.relu6,
                    dtype=self.dtype,
                    name="last_conv",
                )(x, train=train)
            if i in stage_keys:
                features[stage_keys[i]] = x
        return features


# Tests: a quarter of the width, one block per stage (channels 8-80, about 30k parameters).
MobileNetV2Tiny = functools.partial(MobileNetV2, width_mult=0.25, depths=(1, 1, 1, 1, 1, 1, 1))
