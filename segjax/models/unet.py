"""U-Net (Ronneberger et al., 2015) and UNet++ (Zhou et al., 2018), as Linen modules.

Neither is a backbone -> neck -> head composition (the decoder reads every encoder level),
so each is one module with the ``Segmentor`` contract: ``__call__(image, *, train) ->
{"logits": float32 [B, H, W, K], ...}`` at input size, variables ``params`` and
``batch_stats``.

Padding choice: every 3x3 conv is zero-padded ("same"), as milesial/Pytorch-UNet and most
modern U-Nets, not the paper's unpadded ("valid") convs. With valid convs a 572x572 input
gives 388x388 logits and the skips must be centre-cropped; with same padding the output has
the input's size and the skips need no crop, so the model fits the segjax contract and
whole-image training. Each conv is followed by BatchNorm (the paper predates it), again as
milesial/Pytorch-UNet, and has no bias (BN's shift replaces it).

Odd sizes: the image is zero-padded at the bottom and right to a multiple of the total
stride (2**depth), run, and the logits are cropped back to ``H x W``. Zero is the mean of a
normalised image, so the padding looks like a flat, average border.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import ConvBNReLU, classifier_conv, max_pool, resize_bilinear

Array = jax.Array


def pad_to_multiple(x: Array, multiple: int) -> Array:
    """Zero-pads ``[B, H, W, C]`` at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))


class TransposedConv2x2(nn.Module):
    """PyTorch's ``ConvTranspose2d(kernel_size=2, stride=2)`` as one matmul + depth-to-space.

    A 2x2 stride-2 transposed conv writes each input pixel to its own 2x2 output block,
    ``out[2i + a, 2j + b] = x[i, j] @ kernel[a, b] + bias``, with no overlap, so it is
    exactly an einsum followed by a reshape. That avoids XLA's transposed-convolution path
    (an input-dilated conv that multiplies three zeros out of four).
    Parameters: ``kernel [2, 2, Cin, features]`` and ``bias [features]``, the same count as
    PyTorch's.

    Attributes:
        features: output channels.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, H, W, Cin] -> [B, 2H, 2W, features]``."""
        b, h, w, cin = x.shape
        # PyTorch's default init for ConvTranspose2d: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan)).
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            (2, 2, cin, self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jnp.einsum("bhwc,ijcd->bhiwjd", x.astype(self.dtype), kernel.astype(self.dtype))
        return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class DoubleConv(nn.Module):
    """Two 3x3 conv-BN-ReLU (same padding, no bias).

    Attributes:
        features: output channels of both convs.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, H, W, features]``."""
        x = ConvBNReLU(self.features, 3, dtype=self.dtype, name="conv1")(x, train=train)
        return ConvBNReLU(self.features, 3, dtype=self.dtype, name="conv2")(x, train=train)


def _max_pool2(x: Array) -> Array:
    return max_pool(x, 2, 2)


def _aux_logits(
    bottom: Array, num_classes: int, dtype, train: bool, size, channels: int = 0
) -> Array:
    """FCN auxiliary head (``channels`` wide; 0: a quarter of the input's, at most 256)."""
    channels = channels or min(256, bottom.shape[-1] // 4)
    aux = FCNHead(num_classes, channels=channels, in_key="bottom", dtype=dtype, name="aux_head")(
        {"bottom": bottom}, train=train
    )
    return resize_bilinear(aux.astype(jnp.float32), size)


class UNet(nn.Module):
    """U-Net: ``depth`` max-pool/DoubleConv down stages, transposed-conv up stages, skips.

    Channels ``base_width * 2**i`` at level ``i`` (64 ... 1024 for the paper); each up stage
    is a 2x2 transposed conv halving the channels, concatenation with the skip of the same
    level, and a DoubleConv; a 1x1 conv (with bias) gives the logits. With
    ``base_width=64, depth=4`` and 3 input channels this is milesial/Pytorch-UNet's
    ``UNet(bilinear=False)`` layer for layer.

    mmsegmentation's ``UNet`` backbone with its ``FCNHead``s (``unet-s5-d16``) is the same
    trunk with ``upsample="interp"`` (each up stage: a bilinear 2x upsampling, then a 1x1
    conv-BN-ReLU halving the channels, mmseg's ``InterpConv``), ``head_channels=64`` (an
    FCN head, 3x3 conv-BN-ReLU, dropout 0.1 and a 1x1 classifier, instead of the bare 1x1)
    and ``aux_level=1`` (the auxiliary FCN head on the stride-2 decoder output).

    Attributes:
        num_classes: output classes ``K``.
        base_width: channels of the first level.
        depth: number of down (and up) stages; the total stride is ``2**depth``.
        aux_head: add ``"aux_logits"`` from an FCN head on the bottleneck.
        upsample: ``"transposed"`` (2x2 stride-2 transposed conv) or ``"interp"`` (bilinear
            2x, then a 1x1 conv-BN-ReLU).
        head_channels: 0: a 1x1 classifier; otherwise an FCN head of this width, which the
            auxiliary head then shares.
        aux_level: None: the auxiliary head reads the bottleneck; ``k``: the decoder's
            output at level ``k`` (stride ``2**k``).
        stem_stride: 1: the first level runs at the input's resolution (the paper's);
            2: a 3x3 stride-2 conv-BN-ReLU stem first, so every level runs at half the
            resolution (about a quarter of the cost), and the logits are upsampled
            bilinearly to the input size.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    base_width: int = 64
    depth: int = 4
    aux_head: bool = False
    upsample: str = "transposed"
    head_channels: int = 0
    aux_level: int | None = None
    stem_stride: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` (any H, W) -> ``{"logits": float32 [B, H, W, K]}`` (+ aux)."""
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride!r}")
        h, w = image.shape[1:3]
        x = pad_to_multiple(image.astype(self.dtype), self.stem_stride * 2**self.depth)
        full_size = x.shape[1:3]
        if self.stem_stride == 2:
            x = ConvBNReLU(self.base_width, 3, strides=2, dtype=self.dtype, name="stem")(
                x, train=train
            )
        x = DoubleConv(self.base_width, dtype=self.dtype, name="inc")(x, train=train)
        skips = []
        for i in range(1, self.depth + 1):
            skips.append(x)
            x = DoubleConv(self.base_width * 2**i, dtype=self.dtype, name=f"down{i}")(
                _max_pool2(x), train=train
            )
        if self.upsample not in ("transposed", "interp"):
            raise ValueError(f"upsample must be 'transposed' or 'interp', got {self.upsample!r}")
        levels = {self.depth: x}
        for i in range(self.depth - 1, -1, -1):
            width = self.base_width * 2**i
            if self.upsample == "interp":
                x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
                x = ConvBNReLU(width, 1, dtype=self.dtype, name=f"up{i + 1}_upconv")(x, train=train)
            else:
                x = TransposedConv2x2(width, dtype=self.dtype, name=f"up{i + 1}_upconv")(x)
            x = jnp.concatenate([skips[i], x], axis=-1)
            x = DoubleConv(width, dtype=self.dtype, name=f"up{i + 1}")(x, train=train)
            levels[i] = x
        if self.head_channels:
            logits = FCNHead(
                self.num_classes, self.head_channels, in_key="x", dtype=self.dtype, name="head"
            )({"x": x}, train=train)
        else:
            logits = classifier_conv(self.num_classes, self.dtype, name="classifier")(x)
        logits = logits.astype(jnp.float32)
        if self.stem_stride > 1:
            logits = resize_bilinear(logits, full_size)
        outputs = {"logits": logits[:, :h, :w]}
        if self.aux_head:
            source = levels[self.depth if self.aux_level is None else self.aux_level]
            aux = _aux_logits(
                source, self.num_classes, self.dtype, train, full_size, self.head_channels
            )
            outputs["aux_logits"] = aux[:, :h, :w]
        return outputs


class UNetPlusPlus(nn.Module):
    """UNet++: nested, densely connected skip pathways between encoder and decoder.

    Node ``X[i][j]`` (level ``i``, column ``j``) is a DoubleConv of the concatenation of all
    earlier nodes of its level ``X[i][0..j-1]`` and the 2x bilinear upsampling of
    ``X[i+1][j-1]``; ``X[i][0]`` is the encoder. Channels ``base_width * 2**i`` (32 ... 512
    in the paper). The layout is 4uiiurz1/pytorch-nested-unet's ``NestedUNet`` (VGG blocks of
    two conv-BN-ReLU, bilinear upsampling), with bias-free convs (BN follows) and half-pixel
    bilinear upsampling instead of ``align_corners=True``.

    Logits come from a 1x1 conv on ``X[0][depth]``. With ``deep_supervision`` the shallower
    nested outputs ``X[0][1..depth-1]`` get their own 1x1 classifiers, returned as
    ``outputs["deep_supervision"]`` (a list of float32 logits at input size), which
    ``segjax.losses.segmentation_loss`` adds with the auxiliary weight; at test time a
    pruned model can use any of them.

    Attributes:
        num_classes: output classes ``K``.
        base_width: channels of level 0.
        depth: number of down stages; the total stride is ``2**depth``.
        deep_supervision: also classify ``X[0][1..depth-1]``.
        aux_head: add ``"aux_logits"`` from an FCN head on the bottleneck ``X[depth][0]``.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    base_width: int = 32
    depth: int = 4
    deep_supervision: bool = False
    aux_head: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"logits": float32 [B, H, W, K]}`` (+ deep supervision, aux)."""
        h, w = image.shape[1:3]
        x = pad_to_multiple(image.astype(self.dtype), 2**self.depth)
        nodes: list[list[Array]] = [[] for _ in range(self.depth + 1)]

        def block(i: int, j: int, inputs: Array) -> Array:
            return DoubleConv(self.base_width * 2**i, dtype=self.dtype, name=f"x{i}_{j}")(
                inputs, train=train
            )

        nodes[0].append(block(0, 0, x))
        for i in range(1, self.depth + 1):
            nodes[i].append(block(i, 0, _max_pool2(nodes[i - 1][0])))
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                below = nodes[i + 1][j - 1]
                size = nodes[i][0].shape[1:3]
                up = resize_bilinear(below.astype(jnp.float32), size).astype(below.dtype)
                nodes[i].append(block(i, j, jnp.concatenate([*nodes[i], up], axis=-1)))

        def classify(j: int) -> Array:
            logits = classifier_conv(self.num_classes, self.dtype, name=f"classifier{j}")(
                nodes[0][j]
            )
            return logits[:, :h, :w].astype(jnp.float32)

        outputs: dict = {"logits": classify(self.depth)}
        if self.deep_supervision:
            outputs["deep_supervision"] = [classify(j) for j in range(1, self.depth)]
        if self.aux_head:
            size = nodes[0][0].shape[1:3]
            aux = _aux_logits(nodes[self.depth][0], self.num_classes, self.dtype, train, size)
            outputs["aux_logits"] = aux[:, :h, :w]
        return outputs


def unet_builder(default_base_width: int, default_depth: int) -> Callable[..., UNet]:
    """A U-Net builder with the given default width and depth."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        base_width: int = default_base_width,
        depth: int = default_depth,
        stem_stride: int = 1,
    ) -> UNet:
        """U-Net (same padding, BN, transposed-conv up); see ``segjax.models.unet``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: must be None: the decoder returns to full resolution.
            aux_head: add an FCN auxiliary head on the bottleneck (``"aux_logits"``).
            base_width: channels of the first level (64 in the paper).
            depth: number of down / up stages (4 in the paper).
            stem_stride: 2: a stride-2 stem, every level at half resolution (``UNet``).
        """
        check_fixed_stride("U-Net", output_stride, 1)
        return UNet(
            num_classes, base_width, depth, aux_head=aux_head, stem_stride=stem_stride, dtype=dtype
        )

    return builder


def unetpp_builder(default_base_width: int, default_depth: int) -> Callable[..., UNetPlusPlus]:
    """A UNet++ builder with the given default width and depth."""

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
        check_fixed_stride("UNet++", output_stride, 1)
        return UNetPlusPlus(
            num_classes,
            base_width,
            depth,
            deep_supervision=deep_supervision,
            aux_head=aux_head,
            dtype=dtype,
        )

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": unet_builder(64, 4),
    "unet_tiny": unet_builder(4, 3),
    "unetpp": unetpp_builder(32, 4),
    "unetpp_tiny": unetpp_builder(4, 3),
}
