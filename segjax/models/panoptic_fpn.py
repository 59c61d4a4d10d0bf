"""Panoptic FPN (Kirillov et al., CVPR 2019): Mask R-CNN and a semantic FPN head on one pyramid.

    backbone -> FPN (P2-P6) -> Mask R-CNN's RPN, box and mask heads   (things, one by one)
                            -> semantic FPN head on P2-P5             (stuff + one "thing")

The instance branch is `segjax.models.mask_rcnn.MaskRCNN` itself (its backbone and FPN
are the shared ones); the semantic branch is Kirillov's head as detectron2's
`SemSegFPNHead`: from each level P2 (stride 4), P3, P4, P5 (stride 32), `max(1,
log2(stride / 4))` times a 3x3 conv (no bias) - GroupNorm (32 groups) - ReLU, each
followed by a 2x bilinear upsample while the level is coarser than stride 4; the four
128-channel maps are summed, a 1x1 conv (with bias) gives the logits of the stuff
classes plus one class for all things (index 0, as detectron2's panoptic FPN targets),
upsampled x4 (bilinear, half-pixel centres) to the input. Convs are c2_msra_fill
(Kaiming normal, fan out), as detectron2.

Training returns Mask R-CNN's five losses and `semantic_logits`; inference returns
Mask R-CNN's detections and `semantic_logits`. The task (`segjax.tasks.panoptic`) adds
`lambda_sem` x the semantic cross-entropy, and merges the two outputs into a panoptic
map (`segjax.panoptic_inference.combine_semantic_and_instances`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet50, ResNetMicro
from segjax.models.layers import Conv2D, resize_bilinear
from segjax.models.mask_rcnn import TINY, MaskRCNN, mask_rcnn_builder

Array = jax.Array

STRIDES = (4, 8, 16, 32)  # P2-P5, the levels the semantic head reads


class SemanticFPNHead(nn.Module):
    """Kirillov's semantic FPN head (detectron2's `SemSegFPNHead`; the module docstring).

    Attributes:
      num_classes: output classes (stuff + 1 for "thing").
      channels: channels of every conv (128 in the paper).
      groups: GroupNorm groups (32).
      dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    channels: int = 128
    groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, levels: Sequence[Array]) -> Array:
        """P2-P5 `[B, h_l, w_l, C]` -> float32 logits `[B, h_2, w_2, num_classes]` (stride 4)."""
        total = None
        for level, (x, stride) in enumerate(zip(levels, STRIDES, strict=True)):
            for k in range(max(1, int(math.log2(stride // STRIDES[0])))):
                name = f"p{level + 2}_{k}"
                x = Conv2D(self.channels, 3, dtype=self.dtype, name=f"{name}_conv")(x)
                x = nn.GroupNorm(
                    num_groups=self.groups, epsilon=1e-5, dtype=self.dtype, name=f"{name}_norm"
                )(x)
                x = nn.relu(x)
                if stride != STRIDES[0]:
                    # 2x up; the next finer level's size, so that odd canvases line up.
                    x = resize_bilinear(x, levels[level - 1 - k].shape[1:3])
            total = x if total is None else total + x
        logits = Conv2D(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="predictor")
        return logits(total).astype(jnp.float32)


class PanopticFPN(nn.Module):
    """Mask R-CNN (`instance`) and the semantic FPN head on `instance`'s backbone and FPN.

    Attributes:
      instance: the Mask R-CNN of the things (its `num_classes` = things + background).
      semantic_head: the semantic FPN head (stuff + 1 classes).
    """

    instance: MaskRCNN
    semantic_head: SemanticFPNHead

    def semantic(self, levels: Sequence[Array], hw: Sequence[int]) -> Array:
        """`[B, H, W, S + 1]` float32 semantic logits at the input size `hw`."""
        return resize_bilinear(self.semantic_head(levels[:4]), hw)

    def create_variables(self, images: Array) -> dict[str, Array]:
        """Every layer once, without proposals or NMS (a cheap `init`):
        `model.init(rng, images, method=PanopticFPN.create_variables)`."""
        levels = self.instance.pyramid(images, train=False)
        out = self.instance.head_variables(levels, images.shape[1:3])
        return {**out, "semantic_logits": self.semantic(levels, images.shape[1:3])}

    def __call__(
        self,
        images: Array,
        image_hw: Array | None = None,
        targets: dict[str, Array] | None = None,
        *,
        train: bool,
    ) -> dict[str, Array]:
        """Mask R-CNN's losses (training) or detections (inference), plus `semantic_logits`.

        Args and the losses / detections: as `MaskRCNN.__call__` (`targets` hold the
        things only, classes 1..T). `semantic_logits`: float32 `[B, H, W, S + 1]` at the
        input size (class 0 = any thing, 1..S the stuff classes).
        """
        levels = self.instance.pyramid(images, train=train)
        out = self.instance.from_pyramid(levels, images.shape[1:3], image_hw, targets, train=train)
        return {**out, "semantic_logits": self.semantic(levels, images.shape[1:3])}


def panoptic_fpn_builder(
    backbone_cls: Callable[..., ResNet],
    *,
    semantic_channels: int = 128,
    semantic_groups: int = 32,
    **defaults: Any,
) -> Callable[..., PanopticFPN]:
    """A Panoptic FPN builder on `backbone_cls`; `defaults` are `MaskRCNN` fields."""
    instance_builder = mask_rcnn_builder(backbone_cls, **defaults)

    def builder(
        *, num_things: int, num_stuff: int, dtype: jnp.dtype = jnp.float32, **kwargs: Any
    ) -> PanopticFPN:
        """The model for `num_things` thing and `num_stuff` stuff classes; `kwargs` are
        `MaskRCNN` fields (an unknown one is an error)."""
        if num_things < 1 or num_stuff < 0:
            raise ValueError(
                f"Panoptic FPN needs >= 1 thing and >= 0 stuff classes, got {num_things} "
                f"things and {num_stuff} stuff"
            )
        return PanopticFPN(
            instance=instance_builder(num_classes=num_things + 1, dtype=dtype, **kwargs),
            semantic_head=SemanticFPNHead(
                num_stuff + 1, channels=semantic_channels, groups=semantic_groups, dtype=dtype
            ),
        )

    return builder


# Kept apart from the segmentors' `MODELS` and from `INSTANCE_MODELS`: their call
# contract is Mask R-CNN's (losses in training, detections in inference) plus semantic
# logits, and they need the thing / stuff split (`config.task = "panoptic"`).
PANOPTIC_FPN_MODELS: dict[str, Callable[..., PanopticFPN]] = {
    "panoptic_fpn_r50": panoptic_fpn_builder(ResNet50),
    # CPU training on segjax_shapes_panoptic: maskrcnn_tiny's instance branch, a
    # 32-channel semantic head (8 groups).
    "panoptic_fpn_tiny": panoptic_fpn_builder(
        ResNetMicro, semantic_channels=32, semantic_groups=8, **TINY
    ),
}


def build_panoptic_fpn(
    name: str, *, num_things: int, num_stuff: int, dtype=jnp.float32, **kwargs
) -> PanopticFPN:
    """The model `name` of `PANOPTIC_FPN_MODELS`; an unknown name lists the known ones."""
    if name not in PANOPTIC_FPN_MODELS:
        raise KeyError(f"unknown Panoptic FPN model {name!r}; known: {sorted(PANOPTIC_FPN_MODELS)}")
    return PANOPTIC_FPN_MODELS[name](
        num_things=num_things, num_stuff=num_stuff, dtype=dtype, **kwargs
    )
