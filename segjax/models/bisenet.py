"""BiSeNet v1 (Yu et al., 2018, "BiSeNet: Bilateral Segmentation Network for Real-time
Semantic Segmentation"): a spatial path and a context path, fused.

Layout as mmsegmentation's ``BiSeNetV1`` (``configs/_base_/models/bisenetv1_r18-d32.py``):

- spatial path: 7x7 stride-2 conv (64), 3x3 stride-2 (64), 3x3 stride-2 (64), 1x1 (128),
  each conv-BN-ReLU: stride 8, 128 channels;
- context path on ResNet-18: a global context (average pool -> 1x1 conv-BN-ReLU, 128) added
  to the attention refinement module (ARM) of the stride-32 features; nearest 2x upsampling,
  a 3x3 conv-BN-ReLU (``head32``); added to the ARM of the stride-16 features, nearest 2x
  upsampling, a 3x3 conv-BN-ReLU (``head16``), at stride 8. An ARM is a 3x3 conv-BN-ReLU to
  128 channels times a channel attention (average pool -> 1x1 conv-BN -> sigmoid);
- feature fusion module (FFM): the two paths concatenated, a 1x1 conv-BN-ReLU (256), plus
  itself times a channel attention (average pool -> 1x1 conv-BN-ReLU -> sigmoid);
- decode head: an FCN head (3x3 conv-BN-ReLU 256, dropout 0.1, classifier) on the FFM;
  ``aux_head=True``: mmseg's first auxiliary head, an FCN head (64 channels) on the context
  path's stride-8 output (``"context8"``). mmseg's second one, on ``head32``'s output, is
  not built: a ``Segmentor`` has one auxiliary output.

Parameter counts pinned in ``tests/models/test_realtime.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet18, ResNetMicro
from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import ConvBNReLU
from segjax.models.segmentor import Segmentor

Array = jax.Array


def _pooled(x: Array) -> Array:
    # Global average in float32 (a bfloat16 sum over many pixels loses precision).
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)


def _up2_nearest(x: Array, size) -> Array:
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, int(size[0]), int(size[1]), c), method="nearest")


class AttentionRefinement(nn.Module):
    """ARM: ``y = conv3x3-BN-ReLU(x)``; ``y * sigmoid(BN(conv1x1(mean(y))))``."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        y = ConvBNReLU(self.features, 3, dtype=self.dtype, name="conv")(x, train=train)
        a = ConvBNReLU(self.features, 1, act=None, dtype=self.dtype, name="attention")(
            _pooled(y), train=train
        )
        return y * jax.nn.sigmoid(a).astype(y.dtype)


class FeatureFusion(nn.Module):
    """FFM: ``f = conv1x1-BN-ReLU(concat)``; ``f + f * sigmoid(conv1x1-BN-ReLU(mean(f)))``."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, spatial: Array, context: Array, *, train: bool) -> Array:
        x = jnp.concatenate([spatial, context.astype(spatial.dtype)], axis=-1)
        f = ConvBNReLU(self.features, 1, dtype=self.dtype, name="conv")(x, train=train)
        a = ConvBNReLU(self.features, 1, dtype=self.dtype, name="attention")(
            _pooled(f), train=train
        )
        return f + f * jax.nn.sigmoid(a).astype(f.dtype)


class BiSeNetV1Backbone(nn.Module):
    """Spatial path + context path (on ``context``, a ResNet) + FFM.

    Returns ``{"fuse": FFM output (stride 8), "context8": head16's output (stride 8),
    "context16": head32's output (stride 16)}``.

    Attributes:
        context: the context path's trunk (a segjax ``ResNet``, output stride 32).
        spatial_channels: the spatial path's four convs (mmseg: 64, 64, 64, 128).
        context_channels: channels of the ARMs, the global context and the heads (128).
        fuse_channels: the FFM's output channels (256).
        dtype: compute dtype; parameters are float32.
    """

    context: ResNet
    spatial_channels: tuple[int, ...] = (64, 64, 64, 128)
    context_channels: int = 128
    fuse_channels: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        dt, c = self.dtype, self.context_channels
        x = image.astype(dt)
        for i, (width, k, s) in enumerate(
            zip(self.spatial_channels, (7, 3, 3, 1), (2, 2, 2, 1), strict=True)
        ):
            x = ConvBNReLU(width, k, s, dtype=dt, name=f"spatial{i}")(x, train=train)
        feats = self.context(image, train=train)
        s16, s32 = feats["s16"], feats["s32"]
        gap = ConvBNReLU(c, 1, dtype=dt, name="global_context")(_pooled(s32), train=train)
        y = AttentionRefinement(c, dt, name="arm32")(s32, train=train) + gap
        y = _up2_nearest(y, s16.shape[1:3])
        context16 = ConvBNReLU(c, 3, dtype=dt, name="head32")(y, train=train)
        y = AttentionRefinement(c, dt, name="arm16")(s16, train=train) + context16
        y = _up2_nearest(y, feats["s8"].shape[1:3])
        context8 = ConvBNReLU(c, 3, dtype=dt, name="head16")(y, train=train)
        fuse = FeatureFusion(self.fuse_channels, dt, name="ffm")(x, context8, train=train)
        return {"fuse": fuse, "context8": context8, "context16": context16}


def bisenet_builder(
    context_cls: Callable[..., ResNet],
    *,
    spatial_channels: tuple[int, ...] = (64, 64, 64, 128),
    context_channels: int = 128,
    fuse_channels: int = 256,
    aux_channels: int = 64,
) -> Callable[..., Segmentor]:
    """A BiSeNet v1 builder on a ResNet context path."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> Segmentor:
        """BiSeNet v1 (mmsegmentation's ``bisenetv1_r18-d32`` layout).

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 8 (the fused features'; the context path runs to 32).
            aux_head: mmseg's first auxiliary FCN head, on the context path's stride-8 output.
        """
        check_fixed_stride("BiSeNet v1", output_stride, 8)
        backbone = BiSeNetV1Backbone(
            context_cls(output_stride=32, dtype=dtype),
            spatial_channels=spatial_channels,
            context_channels=context_channels,
            fuse_channels=fuse_channels,
            dtype=dtype,
        )
        head = FCNHead(num_classes, channels=fuse_channels, in_key="fuse", dtype=dtype)
        aux = (
            FCNHead(num_classes, channels=aux_channels, in_key="context8", dtype=dtype)
            if aux_head
            else None
        )
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

    return builder


MODELS: dict[str, Callable[..., Segmentor]] = {
    "bisenetv1_resnet18": bisenet_builder(ResNet18),
    "bisenetv1_tiny": bisenet_builder(
        ResNetMicro,
        spatial_channels=(8, 8, 8, 16),
        context_channels=16,
        fuse_channels=32,
        aux_channels=8,
    ),
}
