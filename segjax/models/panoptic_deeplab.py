"""Panoptic-DeepLab (Cheng et al., CVPR 2020): one backbone, two ASPP + decoder branches.

    backbone -> semantic ASPP -> decoder (fuses s8, s4) -> 5x5 head -> class logits
             -> instance ASPP -> decoder (fuses s8, s4) -> 5x5 head -> center heatmap
                                                        -> 5x5 head -> center offsets

The ASPP's dilated branches are depthwise separable (the paper's, detectron2's
``USE_DEPTHWISE_SEPARABLE_CONV``). Each decoder upsamples its ASPP output to the next
shallower level, concatenates the level's 1x1-projected features and fuses them with a
5x5 depthwise-separable conv-BN-ReLU (down to stride 4); each head is a 5x5
depthwise-separable conv-BN-ReLU and a 1x1 conv with bias. The sizes are the paper's and
detectron2's ``PanopticDeepLab``:
ASPP 256 channels on the (stride-16) last stage, semantic decoder 256 with projections
64 (s8) and 32 (s4), head 256; instance decoder 128 with projections 32 and 16, heads 32.

Outputs, resized to the input (bilinear, half-pixel centres, float32): ``logits``
[B, H, W, K], ``center`` [B, H, W] (the heatmap, no activation: regressed to Gaussians),
``offset`` [B, H, W, 2] (y, x) in input pixels (the stride-4 prediction times the resize
factor), and ``aux_logits`` with ``aux_head=True`` (an FCN head on ``"s16"``).
The targets, losses and the post-processing that groups pixels into instances are in
``segjax.data.panoptic_targets``, ``segjax.tasks.panoptic`` and
``segjax.panoptic_inference``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet50, ResNetTiny
from segjax.models.builder_parts import aux_fcn_head, check_aspp_stride
from segjax.models.layers import ConvBNReLU, SeparableConvBNReLU, classifier_conv, resize_bilinear
from segjax.models.necks.aspp import ASPP, ASPP_RATES

Array = jax.Array


class PanopticDecoder(nn.Module):
    """ASPP on the deepest features, then fusion with shallower levels down to stride 4.

    Attributes:
        rates: ASPP dilation rates.
        aspp_channels: ASPP channels.
        low_level_keys: shallower feature keys, deepest first (``("s8", "s4")``).
        project_channels: 1x1 projection channels of each low level.
        channels: channels of each fusion conv (the decoder's output).
        in_key: the deepest features (``"s32"``, at stride 16 with output stride 16).
        dropout: dropout after the ASPP projection.
        dtype: compute dtype; parameters are float32.
    """

    rates: Sequence[int]
    aspp_channels: int
    low_level_keys: Sequence[str]
    project_channels: Sequence[int]
    channels: int
    in_key: str = "s32"
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> Array:
        """Features -> ``[B, h4, w4, channels]`` at ``features[low_level_keys[-1]]``'s size."""
        aspp = ASPP(
            rates=tuple(self.rates),
            channels=self.aspp_channels,
            dropout=self.dropout,
            separable=True,
            in_key=self.in_key,
            dtype=self.dtype,
            name="aspp",
        )
        x = aspp(features, train=train)["aspp"]
        for i, (key, width) in enumerate(
            zip(self.low_level_keys, self.project_channels, strict=True)
        ):
            low = ConvBNReLU(width, 1, dtype=self.dtype, name=f"project{i}")(
                features[key], train=train
            )
            x = resize_bilinear(x, low.shape[1:3]).astype(low.dtype)
            x = jnp.concatenate([x, low], axis=-1)
            x = SeparableConvBNReLU(self.channels, 5, dtype=self.dtype, name=f"fuse{i}")(
                x, train=train
            )
        return x


class PanopticHead(nn.Module):
    """A 5x5 depthwise-separable conv-BN-ReLU, then a 1x1 conv with bias to ``outputs``."""

    channels: int
    outputs: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, h, w, C] -> [B, h, w, outputs]``."""
        x = SeparableConvBNReLU(self.channels, 5, dtype=self.dtype, name="conv")(x, train=train)
        return classifier_conv(self.outputs, self.dtype, name="predictor")(x)


class PanopticDeepLab(nn.Module):
    """Panoptic-DeepLab: semantic logits, instance center heatmap and center offsets.

    Attributes:
        backbone: ``__call__(x, *, train) -> {"s4", "s8", "s16", "s32"}``.
        num_classes: K semantic classes.
        semantic: the semantic branch's decoder.
        instance: the instance branch's decoder.
        semantic_head_channels, instance_head_channels: channels of the heads' 5x5 convs.
        aux_head: an auxiliary semantic head on the backbone (``aux_logits``), or None.
        dtype: compute dtype; parameters are float32.
    """

    backbone: nn.Module
    num_classes: int
    semantic: PanopticDecoder
    instance: PanopticDecoder
    semantic_head_channels: int = 256
    instance_head_channels: int = 32
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``image`` [B, H, W, 3] (normalised) -> the outputs of the module docstring."""
        size = image.shape[1:3]
        features = self.backbone(image, train=train)
        semantic = self.semantic(features, train=train)
        instance = self.instance(features, train=train)
        logits = PanopticHead(
            self.semantic_head_channels, self.num_classes, self.dtype, name="semantic_head"
        )(semantic, train=train)
        center = PanopticHead(self.instance_head_channels, 1, self.dtype, name="center_head")(
            instance, train=train
        )
        offset = PanopticHead(self.instance_head_channels, 2, self.dtype, name="offset_head")(
            instance, train=train
        )
        # Offsets are predicted in stride-4 pixels: scale them with the resize.
        scale = jnp.asarray([size[0] / offset.shape[1], size[1] / offset.shape[2]], jnp.float32)
        outputs = {
            "logits": resize_bilinear(logits.astype(jnp.float32), size),
            "center": resize_bilinear(center.astype(jnp.float32), size)[..., 0],
            "offset": resize_bilinear(offset.astype(jnp.float32), size) * scale,
        }
        if self.aux_head is not None:
            aux = self.aux_head(features, train=train).astype(jnp.float32)
            outputs["aux_logits"] = resize_bilinear(aux, size)
        return outputs


def panoptic_deeplab_builder(
    backbone_cls: Callable[..., nn.Module],
    *,
    aspp_channels: int = 256,
    semantic_channels: int = 256,
    semantic_project: Sequence[int] = (64, 32),
    semantic_head_channels: int = 256,
    instance_aspp_channels: int = 256,
    instance_channels: int = 128,
    instance_project: Sequence[int] = (32, 16),
    instance_head_channels: int = 32,
) -> Callable[..., PanopticDeepLab]:
    """A Panoptic-DeepLab builder on a backbone with ``"s4"``, ``"s8"``, ``"s16"``, ``"s32"``."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        aspp_rates: Sequence[int] | None = None,
        dropout: float = 0.1,
    ) -> PanopticDeepLab:
        """Panoptic-DeepLab (semantic + center + offset outputs) on a ResNet.

        Args:
            num_classes: semantic classes (stuff and things).
            dtype: compute dtype; params are float32.
            output_stride: 16 (default, the paper's), 8 or 32.
            aux_head: add an FCN auxiliary semantic head on ``"s16"`` (``"aux_logits"``).
            aspp_rates: ASPP dilation rates of both branches (None: (6, 12, 18) at 16).
            dropout: dropout after each ASPP projection.
        """
        output_stride = check_aspp_stride(output_stride or 16)
        rates = tuple(aspp_rates or ASPP_RATES[output_stride])
        backbone = backbone_cls(output_stride=output_stride, dtype=dtype)

        def decoder(aspp: int, channels: int, project: Sequence[int], name: str):
            return PanopticDecoder(
                rates=rates,
                aspp_channels=aspp,
                low_level_keys=("s8", "s4"),
                project_channels=tuple(project),
                channels=channels,
                dropout=dropout,
                dtype=dtype,
                name=name,
            )

        aux = None
        if aux_head:
            aux = aux_fcn_head(backbone.feature_channels()["s16"], num_classes, dtype)
        return PanopticDeepLab(
            backbone=backbone,
            num_classes=num_classes,
            semantic=decoder(aspp_channels, semantic_channels, semantic_project, "semantic"),
            instance=decoder(
                instance_aspp_channels, instance_channels, instance_project, "instance"
            ),
            semantic_head_channels=semantic_head_channels,
            instance_head_channels=instance_head_channels,
            aux_head=aux,
            dtype=dtype,
        )

    return builder


MODELS: dict[str, Callable[..., PanopticDeepLab]] = {
    "panoptic_deeplab_r50": panoptic_deeplab_builder(ResNet50),
    # CPU training on segjax_shapes_panoptic in minutes (tiny ResNet, 16-128 channels).
    "panoptic_deeplab_tiny": panoptic_deeplab_builder(
        ResNetTiny,
        aspp_channels=64,
        semantic_channels=64,
        semantic_project=(32, 16),
        semantic_head_channels=64,
        instance_aspp_channels=32,
        instance_channels=32,
        instance_project=(16, 8),
        instance_head_channels=32,
    ),
}
