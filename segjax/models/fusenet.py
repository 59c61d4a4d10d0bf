"""FuseNet (Hazirbas et al., ACCV 2016): two VGG-16-BN encoders, depth fused into RGB.

The input is one RGB-D image ``[B, H, W, 3 + D]``: the first ``rgb_channels`` (3) bands
are RGB, the rest depth (``D = 1``; three for HHA). A depth encoder (VGG-16-BN, its first
conv taking ``D`` channels) runs beside the RGB encoder; after each of the five stages
(before the pool) the depth features are added element-wise into the RGB stream
("sparse fusion", FuseNet-SF5). The decoder is SegNet's: it mirrors the RGB encoder and
unpools with the RGB encoder's argmax indices (``segjax.models.segnet``); the last
conv (3x3) is the classifier. Dropout (0.4) follows pools 3-5 of both encoders and
decoder stages 5-3, as in the authors' Caffe model and its PyTorch port
(github.com/MehmetAygun/fusenet-pytorch). That port averages the two streams
(``(rgb + depth) / 2``); the paper sums them, and so does segjax (same parameters).

Early fusion needs no model of its own: any registered 2-D model takes the RGB-D image
as a 4-band input (``config.input.depth = True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import FEATURE_KEYS, VGG16_STAGES, VGG_TINY_STAGES, VGGConv
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride
from segjax.models.layers import classifier_conv
from segjax.models.segnet import (
    logits_and_aux,
    max_pool_with_argmax,
    max_unpool,
    mirrored_decoder_widths,
)

Array = jax.Array

# Encoder stages followed by dropout (0-based: after pools 3, 4 and 5).
_DROPOUT_STAGES = (2, 3, 4)


class FuseNet(nn.Module):
    """FuseNet-SF5: a depth encoder's features summed into the RGB encoder after each stage.

    Attributes:
        num_classes: number of classes ``K``.
        stages: conv widths of the five stages of both encoders (VGG-16's by default).
        rgb_channels: leading input bands that are RGB; the remaining ones are depth.
        dropout: rate after pools 3-5 and decoder stages 5-3 (train mode only).
        aux_head: a head on the fused encoder features (e.g. pool4, ``"s16"``).
        dtype: compute dtype; parameters are float32, logits float32.
    """

    num_classes: int
    stages: Sequence[Sequence[int]] = VGG16_STAGES
    rgb_channels: int = 3
    dropout: float = 0.4
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3 + D]`` (any size) -> ``{"logits": float32 [B, H, W, K]}`` (+ aux).

        Raises:
            ValueError: the image has no depth band (``C <= rgb_channels``).
        """
        if image.shape[-1] <= self.rgb_channels:
            raise ValueError(
                f"FuseNet takes RGB-D images [B, H, W, {self.rgb_channels} + depth]; got "
                f"{image.shape[-1]} channels (set config.input.depth=True on an RGB-D dataset)"
            )
        rgb, depth = image[..., : self.rgb_channels], image[..., self.rgb_channels :]
        conv = functools.partial(VGGConv, batch_norm=True, dtype=self.dtype)
        drop = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
        n = len(self.stages)

        depth_features = []
        d = depth
        for i, widths in enumerate(self.stages):
            for j, width in enumerate(widths):
                d = conv(width, name=f"depth_conv{i + 1}_{j + 1}")(d, train=train)
            depth_features.append(d)
            if i + 1 < n:  # The last stage's pool would feed nothing.
                d, _ = max_pool_with_argmax(d)
                if i in _DROPOUT_STAGES:
                    d = drop()(d)

        features, indices, sizes = {}, [], []
        x = rgb
        for i, widths in enumerate(self.stages):
            for j, width in enumerate(widths):
                x = conv(width, name=f"rgb_conv{i + 1}_{j + 1}")(x, train=train)
            x = x + depth_features[i]
            sizes.append(x.shape[1:3])
            x, idx = max_pool_with_argmax(x)
            indices.append(idx)
            if i in _DROPOUT_STAGES:
                x = drop()(x)
            features[FEATURE_KEYS[i]] = x

        for step, widths in enumerate(mirrored_decoder_widths(self.stages, last=self.num_classes)):
            i = n - 1 - step  # The encoder stage this decoder stage mirrors.
            x = max_unpool(x, indices[i], sizes[i])
            for j, width in enumerate(widths):
                name = f"dec_conv{i + 1}_{j + 1}"
                if i == 0 and j == len(widths) - 1:
                    x = classifier_conv(width, self.dtype, kernel_size=3, name=name)(x)
                else:
                    x = conv(width, name=name)(x, train=train)
            if i in _DROPOUT_STAGES:
                x = drop()(x)
        return logits_and_aux(x, self.aux_head, features, image.shape[1:3], train)


def fusenet_builder(
    stages: Sequence[Sequence[int]] = VGG16_STAGES,
) -> Callable[..., FuseNet]:
    """A FuseNet builder (VGG-16-BN encoders, or narrower `stages`)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        rgb_channels: int = 3,
    ) -> FuseNet:
        """FuseNet-SF5 on RGB-D images ``[B, H, W, rgb_channels + D]``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (five pools, undone by five unpoolings).
            aux_head: an FCN auxiliary head on the fused pool4 features (``"s16"``).
            rgb_channels: how many leading bands are RGB (the rest is depth).
        """
        check_fixed_stride("FuseNet", output_stride, 32)
        aux = aux_fcn_head(stages[3][-1], num_classes, dtype) if aux_head else None
        return FuseNet(
            num_classes,
            stages=tuple(map(tuple, stages)),
            rgb_channels=rgb_channels,
            aux_head=aux,
            dtype=dtype,
        )

    return builder


# RGB-D models: the registry keeps them apart from the RGB models of ``MODELS`` (whose
# contract tests feed 3-band images) as ``RGBD_MODELS``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "fusenet": fusenet_builder(),
    "fusenet_tiny": fusenet_builder(VGG_TINY_STAGES),
}
