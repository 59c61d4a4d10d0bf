"""Volumetric segmentation models on NDHWC: 3-D U-Net (Çiçek et al., 2016) and V-Net
(Milletari et al., 2016).

Both keep the ``Segmentor`` call contract in 3-D: ``__call__(volume [B, D, H, W, C], *,
train) -> {"logits": float32 [B, D, H, W, K]}`` at input size, variables ``params`` and
``batch_stats`` (float32 whatever the compute dtype). They are registered in the
registry's ``VOLUME_MODELS`` (``segjax.models.registry``), which the volume task
(``segjax.tasks.volume``) reads.

Shared choices (as ``segjax.models.unet`` for the 2-D U-Net):

- every conv is zero-padded to keep its size ("same"), not the papers' unpadded
  ("valid") convs, so the logits have the input's size and skips need no crop; a volume
  whose sides are not multiples of the total stride ``2**depth`` is zero-padded at the
  far end of each axis and the logits cropped back;
- each conv is followed by BatchNorm (3-D U-Net uses it; V-Net had none, but its common
  PyTorch port, mattmacy/vnet.pytorch, adds it) and has no bias;
- a 2x2x2 stride-2 transposed conv writes each voxel to its own 2x2x2 block, so it is one
  einsum and a reshape (`TransposedConv2x2x2`), not XLA's input-dilated convolution;
- kernels are initialised as the 2-D models' (kaiming normal, fan-out) but sampled as a
  flat vector and reshaped (`flat_variance_scaling`): XLA:CPU takes seconds to compile
  the random numbers of each 5-D shape, which made the tiny models' init compile for a
  minute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.builder_parts import check_fixed_stride
from segjax.models.layers import batch_norm

Array = jax.Array

__all__ = ["MODELS", "PReLU", "TransposedConv2x2x2", "UNet3D", "VNet", "pad_spatial_to_multiple"]


def flat_variance_scaling(scale: float, mode: str, distribution: str) -> Callable:
    """``nn.initializers.variance_scaling(scale, mode, distribution)`` of a conv kernel
    ``[*window, in, out]`` (distribution ``"normal"`` or ``"uniform"``), drawn as one flat
    vector and reshaped: the same distribution, compiled in a fraction of the time."""

    def init(key: Array, shape: Sequence[int], dtype=jnp.float32) -> Array:
        receptive = math.prod(shape[:-2])
        fan = receptive * (shape[-2] if mode == "fan_in" else shape[-1])
        std = math.sqrt(scale / fan)
        size = (math.prod(shape),)
        if distribution == "normal":
            flat = jax.random.normal(key, size, dtype) * std
        elif distribution == "uniform":
            flat = jax.random.uniform(key, size, dtype, -math.sqrt(3) * std, math.sqrt(3) * std)
        else:
            raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
        return flat.reshape(shape)

    return init


# torchvision's kaiming_normal_(mode="fan_out", relu), as segjax.models.layers' 2-D convs.
conv3d_kernel_init = flat_variance_scaling(2.0, "fan_out", "normal")


def pad_spatial_to_multiple(x: Array, multiple: int) -> Array:
    """Zero-pads every spatial axis of ``[B, *spatial, C]`` at its end to a multiple."""
    pads = [(0, -s % multiple) for s in x.shape[1:-1]]
    if not any(p for _, p in pads):
        return x
    return jnp.pad(x, [(0, 0), *pads, (0, 0)])


def _crop(x: Array, spatial: Sequence[int]) -> Array:
    return x[(slice(None), *(slice(0, s) for s in spatial))]


class PReLU(nn.Module):
    """PyTorch's ``nn.PReLU()``: one learned negative slope, initialised at 0.25."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Any shape -> the same shape: ``x`` where positive, ``slope * x`` elsewhere."""
        slope = self.param("negative_slope", nn.initializers.constant(0.25), (), jnp.float32)
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class Conv3DBNAct(nn.Module):
    """Conv3d (no bias, same padding) -> BatchNorm -> activation (ReLU, PReLU or none).

    Attributes:
        features: output channels.
        kernel_size: cubic kernel size (odd, or equal to ``strides`` for a down-conv).
        strides: stride on every spatial axis.
        act: ``"relu"``, ``"prelu"`` or ``"none"``.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    act: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, residual: Array | None = None) -> Array:
        """``[B, D, H, W, Cin] -> [B, D / s, H / s, W / s, features]``; ``residual`` (the
        output's shape) is added after the norm, before the activation."""
        k = self.kernel_size
        pad = (k - 1) // 2 if self.strides == 1 else 0
        x = nn.Conv(
            self.features,
            (k, k, k),
            strides=self.strides,
            padding=[(pad, pad)] * 3,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv3d_kernel_init,
            name="conv",
        )(x)
        if self.act == "relu":
            return batch_norm(train, self.dtype, name="bn", relu=True)(x, residual)
        x = batch_norm(train, self.dtype, name="bn")(x, residual)
        if self.act == "prelu":
            return PReLU(name="prelu")(x)
        if self.act != "none":
            raise ValueError(f"act must be 'relu', 'prelu' or 'none', got {self.act!r}")
        return x


class TransposedConv2x2x2(nn.Module):
    """``ConvTranspose3d(kernel_size=2, stride=2)`` as one einsum and a depth-to-space.

    ``out[2d + a, 2h + b, 2w + c] = x[d, h, w] @ kernel[a, b, c] + bias``. Parameters
    ``kernel [2, 2, 2, Cin, features]`` and ``bias [features]``, PyTorch's count.

    Attributes:
        features: output channels.
        use_bias: add a learned bias (off when a BatchNorm follows).
        dtype: compute dtype; parameters are float32.
    """

    features: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, D, H, W, Cin] -> [B, 2D, 2H, 2W, features]``."""
        b, d, h, w, cin = x.shape
        kernel = self.param(
            "kernel",
            flat_variance_scaling(1 / 3, "fan_in", "uniform"),
            (2, 2, 2, cin, self.features),
            jnp.float32,
        )
        y = jnp.einsum("bdhwc,ijkce->bdihjwke", x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(b, 2 * d, 2 * h, 2 * w, self.features)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def _classifier(num_classes: int, dtype: jnp.dtype, name: str) -> nn.Conv:
    kernel_init = flat_variance_scaling(1.0, "fan_in", "normal")  # nn.Conv's LeCun scale
    return nn.Conv(
        num_classes, (1, 1, 1), use_bias=True, dtype=dtype, kernel_init=kernel_init, name=name
    )


class UNet3D(nn.Module):
    """3-D U-Net (Çiçek et al., 2016): the 2-D U-Net with 3-D convs, pools and up-convs.

    Analysis level ``i`` (``0 .. depth - 1``): two 3x3x3 conv-BN-ReLU of
    ``base_width * 2**i`` and ``base_width * 2**(i + 1)`` channels (the paper doubles the
    channels before each pooling, to avoid bottlenecks), then a 2x2x2 max-pool; the bottom
    level likewise. Synthesis level ``i``: a 2x2x2 stride-2 up-conv keeping the channels,
    concatenation with the analysis features of the level, two 3x3x3 conv-BN-ReLU of
    ``base_width * 2**(i + 1)``; a 1x1x1 conv gives the logits. ``base_width=32,
    depth=3`` is the paper's network (32-64, 64-128, 128-256, 256-512 channels).

    Attributes:
        num_classes: output classes ``K``.
        base_width: channels of the first conv.
        depth: number of poolings (and up-convs); the total stride is ``2**depth``.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    base_width: int = 32
    depth: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, volume: Array, *, train: bool) -> dict[str, Array]:
        """``[B, D, H, W, C]`` -> ``{"logits": float32 [B, D, H, W, K]}``."""
        spatial = volume.shape[1:-1]
        x = pad_spatial_to_multiple(volume.astype(self.dtype), 2**self.depth)

        def level(x: Array, first: int, second: int, name: str) -> Array:
            x = Conv3DBNAct(first, dtype=self.dtype, name=f"{name}_conv1")(x, train=train)
            return Conv3DBNAct(second, dtype=self.dtype, name=f"{name}_conv2")(x, train=train)

        skips = []
        for i in range(self.depth):
            width = self.base_width * 2**i
            x = level(x, width, 2 * width, f"down{i}")
            skips.append(x)
            x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
        width = self.base_width * 2**self.depth
        x = level(x, width, 2 * width, "bottom")
        for i in reversed(range(self.depth)):
            x = TransposedConv2x2x2(x.shape[-1], dtype=self.dtype, name=f"up{i}_upconv")(x)
            x = jnp.concatenate([skips[i], x], axis=-1)
            width = self.base_width * 2 ** (i + 1)
            x = level(x, width, width, f"up{i}")
        logits = _classifier(self.num_classes, self.dtype, "classifier")(x)
        return {"logits": _crop(logits, spatial).astype(jnp.float32)}


class VNet(nn.Module):
    """V-Net (Milletari et al., 2016): residual stages, strided-conv down-sampling, PReLU.

    Stage ``i`` of the left path has ``base_width * 2**i`` channels and
    ``encoder_convs[i]`` convs of ``kernel_size``^3 (5 in the paper); its input is added to
    the output of its last conv (after the norm, before the PReLU): each stage learns a
    residual. The first stage's input is the volume, tiled over the channels to the
    stage's width (the paper's "replicated 16 times" of a one-channel volume). Between
    stages a 2x2x2 stride-2 conv doubles the channels (down-sampling by a learned conv,
    not pooling). The right path mirrors it: a 2x2x2 stride-2 up-conv to half the stage's
    width, concatenated with the left path's features of the level, ``decoder_convs``
    convs and the residual sum; a 1x1x1 conv gives the logits. Every activation is a
    PReLU. ``base_width=16, encoder_convs=(1, 2, 3, 3, 3), decoder_convs=(3, 3, 2, 1)``
    is the paper's network (16 ... 256 channels, total stride 16).

    Attributes:
        num_classes: output classes ``K``.
        base_width: channels of the first stage.
        encoder_convs: convs of each left-path stage (its length is ``depth + 1``).
        decoder_convs: convs of each right-path stage, deepest first (``depth`` values).
        kernel_size: cubic kernel of the stage convs.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    base_width: int = 16
    encoder_convs: Sequence[int] = (1, 2, 3, 3, 3)
    decoder_convs: Sequence[int] = (3, 3, 2, 1)
    kernel_size: int = 5
    dtype: jnp.dtype = jnp.float32

    def _stage(self, x: Array, num_convs: int, width: int, train: bool, name: str) -> Array:
        residual = x
        for j in range(num_convs):
            last = j == num_convs - 1
            x = Conv3DBNAct(
                width,
                self.kernel_size,
                act="none" if last else "prelu",
                dtype=self.dtype,
                name=f"{name}_conv{j}",
            )(x, train=train, residual=residual if last else None)
        return PReLU(name=f"{name}_prelu")(x)

    @nn.compact
    def __call__(self, volume: Array, *, train: bool) -> dict[str, Array]:
        """``[B, D, H, W, C]`` -> ``{"logits": float32 [B, D, H, W, K]}``."""
        depth = len(self.encoder_convs) - 1
        if len(self.decoder_convs) != depth:
            raise ValueError(
                f"V-Net: decoder_convs {tuple(self.decoder_convs)} must have one value per "
                f"down-sampling ({depth}, from encoder_convs {tuple(self.encoder_convs)})"
            )
        spatial = volume.shape[1:-1]
        x = pad_spatial_to_multiple(volume.astype(self.dtype), 2**depth)
        width = self.base_width
        tiled = jnp.tile(x, (1, 1, 1, 1, -(-width // x.shape[-1])))[..., :width]
        x = Conv3DBNAct(width, self.kernel_size, act="none", dtype=self.dtype, name="in_conv")(
            x, train=train, residual=tiled
        )
        x = PReLU(name="in_prelu")(x)
        skips = [x]
        for i in range(1, depth + 1):
            width = self.base_width * 2**i
            x = Conv3DBNAct(width, 2, strides=2, act="prelu", dtype=self.dtype, name=f"down{i}")(
                x, train=train
            )
            x = self._stage(x, self.encoder_convs[i], width, train, f"enc{i}")
            skips.append(x)
        for n, i in enumerate(reversed(range(depth))):
            width = 2 * self.base_width * 2**i
            x = TransposedConv2x2x2(
                width // 2, use_bias=False, dtype=self.dtype, name=f"up{i}_upconv"
            )(x)
            x = PReLU(name=f"up{i}_upprelu")(batch_norm(train, self.dtype, name=f"up{i}_bn")(x))
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = self._stage(x, self.decoder_convs[n], width, train, f"dec{i}")
        logits = _classifier(self.num_classes, self.dtype, "classifier")(x)
        return {"logits": _crop(logits, spatial).astype(jnp.float32)}


def _check_full_resolution(name: str, output_stride: int | None, aux_head: bool) -> None:
    check_fixed_stride(name, output_stride, 1)
    if aux_head:
        raise ValueError(f"{name} has no auxiliary head; aux_head must be False")


def unet3d_builder(default_base_width: int, default_depth: int) -> Callable[..., UNet3D]:
    """A 3-D U-Net builder with the given default width and depth."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        base_width: int = default_base_width,
        depth: int = default_depth,
    ) -> UNet3D:
        """3-D U-Net (same padding, BN); see ``segjax.models.volumetric``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: must be None or 1: the decoder returns to full resolution.
            aux_head: must be False (no auxiliary head).
            base_width: channels of the first conv (32 in the paper).
            depth: number of poolings (3 in the paper).
        """
        _check_full_resolution("3-D U-Net", output_stride, aux_head)
        return UNet3D(num_classes, base_width, depth, dtype=dtype)

    return builder


def vnet_builder(
    default_base_width: int,
    default_encoder_convs: tuple[int, ...],
    default_decoder_convs: tuple[int, ...],
    default_kernel_size: int,
) -> Callable[..., VNet]:
    """A V-Net builder with the given defaults."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        base_width: int = default_base_width,
        encoder_convs: Sequence[int] = default_encoder_convs,
        decoder_convs: Sequence[int] = default_decoder_convs,
        kernel_size: int = default_kernel_size,
    ) -> VNet:
        """V-Net (residual stages, strided-conv down-sampling, PReLU, BN).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: must be None or 1: the decoder returns to full resolution.
            aux_head: must be False (no auxiliary head).
            base_width: channels of the first stage (16 in the paper).
            encoder_convs: convs per left-path stage ((1, 2, 3, 3, 3) in the paper).
            decoder_convs: convs per right-path stage, deepest first ((3, 3, 2, 1)).
            kernel_size: cubic kernel of the stage convs (5 in the paper).
        """
        _check_full_resolution("V-Net", output_stride, aux_head)
        return VNet(
            num_classes,
            base_width,
            tuple(encoder_convs),
            tuple(decoder_convs),
            kernel_size,
            dtype=dtype,
        )

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet3d": unet3d_builder(32, 3),
    "unet3d_tiny": unet3d_builder(4, 2),
    "vnet": vnet_builder(16, (1, 2, 3, 3, 3), (3, 3, 2, 1), 5),
    "vnet_tiny": vnet_builder(4, (1, 2, 2), (2, 1), 3),
}
