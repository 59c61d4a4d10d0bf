"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, 2015) on VGG-16.

The original skip architecture (``fcn.berkeleyvision.org``, ``voc-fcn{32,16,8}s/net.py``):
VGG-16 -> fc6 (7x7, 4096) -> fc7 (1x1, 4096) -> ``score_fr`` (1x1 to K); FCN-16s adds a 2x
learned upsampling (``upscore2``) fused by a sum with ``score_pool4`` (1x1 on pool4), FCN-8s
then a second 2x (``upscore_pool4``) fused with ``score_pool3``; a final learned upsampling
by 32, 16 or 8 gives the logits. Every upsampling is a transposed convolution (kernel 2f,
stride f, no bias) initialised to bilinear interpolation and learned
(``segjax.models.upsampling.LearnedUpsample``).

Padding choice (differs from the Caffe model, same parameters): the original pads the input
by 100 pixels so that fc6's VALID 7x7 conv sees at least one window, then crops every fused
map with offsets (5, 9, 31) computed by Caffe's ``coord_map``. segjax instead pads fc6
'same' (3 pixels each side) and uses ceil-mode pools (``segjax.models.backbones.vgg``), so a
stride-``s`` map has ``ceil(H / s)`` cells aligned with the input at offset 0, and a 2x
upsampling of the stride-32 map (``2 ceil(H / 32)`` cells) covers the stride-16 map; every
crop keeps the top-left ``ceil(H / s)`` cells (offset 0), and the final crop gives exactly
``H x W`` logits for any input size (97x131 included), with no wasted 100-pixel border.

Initialisation: the score layers use Flax's default (LeCun normal) rather than the Caffe
model's zeros, because segjax trains from scratch: with zero score layers every trunk
parameter would get a zero gradient on the first step.

The auxiliary head (``aux_head``), as for every segjax model, is an FCN head on pool4
(``"s16"``) whose logits are bilinearly resized to the input.

Also here: torchvision's FCN head on a dilated ResNet (``fcn_resnet*``) and the per-pixel
colour baseline (``pixel_mlp``), a bare classifier with no spatial context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.backbones.vgg import VGG, VGG16_STAGES, VGG_TINY_STAGES, VGGFullyConv
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import PixelMLP, classifier_conv, resize_bilinear
from segjax.models.segmentor import Segmentor
from segjax.models.upsampling import LearnedUpsample

Array = jax.Array

# Skip levels fused by each variant, coarsest first (pool4, then pool3).
FCN_SKIPS = {32: (), 16: ("s16",), 8: ("s16", "s8")}
_SKIP_NAMES = {"s16": ("upscore2", "score_pool4"), "s8": ("upscore_pool4", "score_pool3")}


class FCN(nn.Module):
    """FCN-32s / 16s / 8s: VGG trunk, fc6/fc7 as convs, score layers, learned upsampling.

    Attributes:
        num_classes: number of classes ``K``.
        backbone: a VGG trunk at output stride 32 (``{"s8": pool3, "s16": pool4, "s32":
            pool5, ...}``).
        stride: 32, 16 or 8: FCN-32s, FCN-16s or FCN-8s.
        fc_channels: channels of fc6 and fc7 (4096).
        fc_kernel: fc6 kernel size (7).
        dropout: dropout after fc6 and fc7 (0.5).
        aux_head: a head on the backbone features (e.g. ``FCNHead(in_key="s16")``) whose
            logits are resized bilinearly to the input as ``"aux_logits"``; None for none.
        dtype: compute dtype; parameters are float32, logits float32.
    """

    num_classes: int
    backbone: nn.Module
    stride: int = 8
    fc_channels: int = 4096
    fc_kernel: int = 7
    dropout: float = 0.5
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """Segments a batch of images.

        Args:
            image: normalised images ``[B, H, W, 3]``, any H and W.
            train: dropout (rng ``"dropout"``) and BN batch statistics when True.

        Returns:
            ``{"logits": float32 [B, H, W, K]}`` (plus ``"aux_logits"`` with an aux head).
        """
        if self.stride not in FCN_SKIPS:
            raise ValueError(f"FCN stride must be one of {sorted(FCN_SKIPS)}, got {self.stride}")
        size = image.shape[1:3]
        features = self.backbone(image, train=train)
        x = VGGFullyConv(
            self.fc_channels, self.fc_kernel, dropout=self.dropout, dtype=self.dtype, name="fc"
        )(features["s32"], train=train)
        score = self._score(x, "score_fr")
        for key in FCN_SKIPS[self.stride]:
            skip = features[key]
            up_name, score_name = _SKIP_NAMES[key]
            # 2x upsampling gives 2 ceil(n / 2) >= n cells: crop to the skip's size.
            score = LearnedUpsample(2, dtype=self.dtype, name=up_name)(score, skip.shape[1:3])
            score = score + self._score(skip, score_name)
        # The last upsampling runs in float32: its output is the logits.
        logits = LearnedUpsample(self.stride, dtype=jnp.float32, name=f"upscore{self.stride}")(
            score.astype(jnp.float32), size
        )
        outputs = {"logits": logits}
        if self.aux_head is not None:
            aux = self.aux_head(features, train=train).astype(jnp.float32)
            outputs["aux_logits"] = resize_bilinear(aux, size)
        return outputs

    def _score(self, x: Array, name: str) -> Array:
        return classifier_conv(self.num_classes, self.dtype, name=name)(x)


def fcn_vgg_builder(
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
        check_fixed_stride(f"fcn{stride}s", output_stride, 32)
        backbone = VGG(stages=tuple(stages), batch_norm=batch_norm, dtype=dtype)
        channels = backbone.feature_channels()["s16"]
        return FCN(
            num_classes,
            backbone,
            stride=stride,
            fc_channels=fc_channels,
            dropout=dropout,
            aux_head=aux_fcn_head(channels, num_classes, dtype) if aux_head else None,
            dtype=dtype,
        )

    return builder


def fcn_resnet_builder(backbone_cls: Callable[..., ResNet]) -> Callable[..., Segmentor]:
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
        aux = aux_fcn_head(channels["s16"], num_classes, dtype) if aux_head else None
        return Segmentor(backbone=backbone, neck=None, head=head, aux_head=aux)

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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s_vgg16": fcn_vgg_builder(32),
    "fcn16s_vgg16": fcn_vgg_builder(16),
    "fcn8s_vgg16": fcn_vgg_builder(8),
    "fcn8s_tiny": fcn_vgg_builder(8, VGG_TINY_STAGES, fc_channels=32),
    "fcn_resnet50": fcn_resnet_builder(ResNet50),
    "fcn_resnet101": fcn_resnet_builder(ResNet101),
    "fcn_resnet_tiny": fcn_resnet_builder(ResNetMicro),
    "pixel_mlp": pixel_mlp,
}
