"""MobileNetV3-Large backbone (Howard et al., 2019) in torchvision's layout.

Layout follows torchvision's ``mobilenet_v3_large().features``: a 3x3 stride-2 stem
conv (16 channels, hardswish), fifteen inverted-residual blocks (``MOBILENET_V3_LARGE``:
kernel, expanded channels, output channels, squeeze-excitation, hardswish, stride; the
paper's Table 1), and the final 1x1 conv to ``6 * 160 = 960`` channels (hardswish), without
the classifier. A block is 1x1 expand (when the expanded width differs from the input's)
-> kxk depthwise -> squeeze-excitation (global average -> 1x1 conv with bias -> ReLU ->
1x1 conv with bias -> hardsigmoid, a per-channel scale; squeeze width
``make_divisible(expanded // 4)``) -> 1x1 linear projection, with a residual when it keeps
stride 1 and the channel count. Channels are ``make_divisible(c * width_mult, 8)``.

``output_stride=16`` is torchvision's ``mobilenet_v3_large(dilated=True)``, the backbone
of its ``lraspp_mobilenet_v3_large`` and ``deeplabv3_mobilenet_v3_large``: the last stage's
first block keeps stride 1 and every block of that stage, its first included, has dilation
2. ``output_stride=8`` dilates the stride-16 stage as well (by 2, the last by 4).

torchvision builds these BatchNorms with ``eps=1e-3`` (momentum 0.01); segjax's BatchNorm has
``eps=1e-5`` and its weight conversion adds the difference to the running variance, the
same normalisation in eval mode (``segjax.weights.convert``).

Example:
    >>> model = MobileNetV3Large(output_stride=16)
    >>> x = jnp.zeros((1, 65, 65, 3))
    >>> feats = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
    >>> {k: v.shape for k, v in feats.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'s4': (1, 17, 17, 24), 'c2': (1, 9, 9, 40), 's8': (1, 9, 9, 40),
     's16': (1, 5, 5, 112), 's32': (1, 5, 5, 960)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.mobilenet import make_divisible
from segjax.models.layers import Conv2D, ConvBNReLU

Array = jax.Array

# torchvision's _mobilenet_v3_conf("mobilenet_v3_large"): per block (kernel, expanded
# channels, output channels, squeeze-excitation, hardswish (else ReLU), stride).
MOBILENET_V3_LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),  # C1
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),  # C2
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),  # C3
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),  # C4
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
# Tests: one block of each kind (each stride, the first SE, the first hardswish, the
# first dilated one) and a residual in the dilated stage, at a quarter of the width.
MOBILENET_V3_TINY_BLOCKS = (1, 3, 6, 10, 12, 13)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation(scale_activation=Hardsigmoid)``: ``x * s(x)``.

    Attributes:
        squeeze: channels of the squeeze (``fc1``) conv.
        dtype: compute dtype; parameters are float32.
    """

    squeeze: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        # Mean in float32: a bfloat16 sum over many pixels loses precision.
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        s = nn.relu(Conv2D(self.squeeze, 1, use_bias=True, dtype=self.dtype, name="fc1")(s))
        s = Conv2D(x.shape[-1], 1, use_bias=True, dtype=self.dtype, name="fc2")(s)
        return x * jax.nn.hard_sigmoid(s).astype(x.dtype)


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project.

    Attributes:
        features: output channels.
        expanded: channels of the expansion (no expand conv when equal to the input's).
        kernel_size: depthwise kernel size (3 or 5).
        strides: depthwise stride.
        dilation: depthwise dilation.
        use_se: add squeeze-excitation after the depthwise conv.
        hardswish: hardswish activations (else ReLU).
        dtype: compute dtype; parameters are float32.
    """

    features: int
    expanded: int
    kernel_size: int = 3
    strides: int = 1
    dilation: int = 1
    use_se: bool = False
    hardswish: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), features]``."""
        cin = x.shape[-1]
        act = jax.nn.hard_swish if self.hardswish else nn.relu
        conv = functools.partial(ConvBNReLU, act=act, dtype=self.dtype)
        y = x
        if self.expanded != cin:
            y = conv(self.expanded, 1, name="expand")(y, train=train)
        y = conv(
            self.expanded,
            self.kernel_size,
            self.strides,
            self.dilation,
            groups=self.expanded,
            name="depthwise",
        )(y, train=train)
        if self.use_se:
            y = SqueezeExcitation(make_divisible(self.expanded // 4), self.dtype, name="se")(y)
        residual = x if self.strides == 1 and cin == self.features else None
        return ConvBNReLU(self.features, 1, act=None, dtype=self.dtype, name="project")(
            y, train=train, residual=residual
        )


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large trunk that returns features at nominal strides 4, 8, 16 and 32.

    Keys are NOMINAL strides as for ``ResNet``: ``"s4"`` (end of the stride-4 stage, 24
    channels), ``"s8"`` (end of the stride-8 stage, 40), ``"s16"`` (end of the stride-16
    stages, 112), ``"s32"`` (the final 1x1 conv, 960), and ``"c2"``: the output of the
    stride-8 stage's FIRST block (40 channels), which torchvision's segmentation models read
    (``stage_indices[-4]``: LR-ASPP's low-level input, DeepLabv3's auxiliary head).
    ``feature_strides()`` gives the true strides under ``output_stride``.

    Attributes:
        width_mult: channel multiplier (torchvision's ``width_mult``).
        blocks: indices into ``MOBILENET_V3_LARGE`` of the blocks to build (None: all 15;
            the tiny test variant keeps a few).
        output_stride: 8, 16 (torchvision's ``dilated=True``) or 32.
        dtype: compute dtype; parameters are float32.
    """

    width_mult: float = 1.0
    blocks: Sequence[int] | None = None
    output_stride: int = 32
    dtype: jnp.dtype = jnp.float32

    def _setting(self) -> list[tuple]:
        chosen = range(len(MOBILENET_V3_LARGE)) if self.blocks is None else self.blocks
        return [MOBILENET_V3_LARGE[i] for i in chosen]

    def _keys(self) -> dict[int, list[str]]:
        # Block index (in `_setting`) -> the keys of its output.
        keys: dict[int, list[str]] = {}
        stride, last = 2, {}
        for i, (*_, s) in enumerate(self._setting()):
            stride *= s
            if s > 1 and stride == 8:
                keys.setdefault(i, []).append("c2")
            last[stride] = i
        for s in (4, 8, 16):
            if s not in last:
                raise ValueError(f"blocks {self.blocks} leave no block at stride {s}")
            keys.setdefault(last[s], []).append(f"s{s}")
        return keys

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key (width 1: ``{"s4": 24, ..., "s32": 960}``)."""
        setting = self._setting()
        channels = {
            k: make_divisible(setting[i][2] * self.width_mult)
            for i, ks in self._keys().items()
            for k in ks
        }
        channels["s32"] = 6 * make_divisible(setting[-1][2] * self.width_mult)
        return channels

    def feature_strides(self) -> dict[str, int]:
        """True spatial stride of each output key under ``output_stride``."""
        nominal = {"s4": 4, "c2": 8, "s8": 8, "s16": 16, "s32": 32}
        return {k: min(s, self.output_stride) for k, s in nominal.items()}

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"s4", "c2", "s8", "s16", "s32"}`` features (class doc)."""
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        keys = self._keys()
        channel = functools.partial(make_divisible, divisor=8)
        x = ConvBNReLU(
            channel(16 * self.width_mult),
            3,
            2,
            act=jax.nn.hard_swish,
            dtype=self.dtype,
            name="stem",
        )(x, train=train)
        stride, dilation = 2, 1
        features = {}
        for i, (k, expanded, out, se, hs, s) in enumerate(self._setting()):
            if s > 1 and stride * s > self.output_stride:
                dilation *= s  # torchvision: the whole stage, first block included, dilated.
                s = 1
            stride *= s
            x = InvertedResidualV3(
                channel(out * self.width_mult),
                channel(expanded * self.width_mult),
                k,
                s,
                dilation,
                se,
                hs,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train=train)
            for key in keys.get(i, []):
                features[key] = x
        features["s32"] = ConvBNReLU(
            6 * x.shape[-1], 1, act=jax.nn.hard_swish, dtype=self.dtype, name="last_conv"
        )(x, train=train)
        return features


# Tests: a quarter of the width, 6 of the 15 blocks (120k parameters, 96k in the last stage).
MobileNetV3LargeTiny = functools.partial(
    MobileNetV3Large, width_mult=0.25, blocks=MOBILENET_V3_TINY_BLOCKS
)
