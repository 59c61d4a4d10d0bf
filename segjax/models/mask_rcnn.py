"""Mask R-CNN (He et al., 2017) and PANet (Liu et al., 2018) on a ResNet-FPN, under jit.

Layout and defaults follow torchvision's `maskrcnn_resnet50_fpn`: ResNet C2-C5 -> FPN
(256 channels, P2-P6, P6 a stride-2 subsampling of P5) -> RPN (one 3x3 conv, 3 anchors
per location, sizes 32-512 over P2-P6) -> proposals (top-k per level, NMS 0.7 per level)
-> RoIAlign 7x7 over P2-P5 by box size -> two FC layers (1024) -> class scores and
class-specific box deltas; RoIAlign 14x14 -> four 3x3 convs -> 2x2 deconv -> per-class
28x28 mask logits.

Every shape is static. Ground truth is padded to `max_instances` with a validity mask;
training samples 256 anchors per image for the RPN and 512 RoIs for the heads (at most
25% positive), the mask head runs on the first `512 * 0.25` sampled slots (all the
positives); proposals and detections come out of fixed-size NMS with a validity mask.

PANet (`panet=True`) adds the bottom-up path augmentation (N2 = P2, N_{i+1} =
conv3x3(conv3x3_s2(N_i) + P_{i+1}), ReLUs after every conv) and adaptive feature pooling
(every RoI pooled from all four levels; the box head's first FC and the mask head's
first conv applied per level, fused by an element-wise max). PANet's fully-connected
fusion of the mask branch is not included.

The model's `__call__(images, image_hw, targets, train=True)` returns the losses;
with `train=False` the detections (see `MaskRCNN.__call__`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segjax.detection import anchors as anchor_lib
from segjax.detection import boxes as box_ops
from segjax.detection.roi_align import multilevel_roi_align, roi_align_channel
from segjax.models.backbones.resnet import ResNet, ResNet50, ResNet101, ResNetMicro
from segjax.models.layers import Conv2D
from segjax.models.necks.fpn import FPN

Array = jax.Array

LEVEL_KEYS = ("s4", "s8", "s16", "s32")
# Loss terms (Task terms): torchvision's names.
LOSS_TERMS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

_small_normal = nn.initializers.normal

# PyTorch's nn.Linear default (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)).
_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def smooth_l1(x: Array, beta: float) -> Array:
    """Elementwise smooth L1 (`torch.nn.functional.smooth_l1_loss`, no reduction)."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (A) and box deltas (4A), shared over levels."""

    channels: int
    num_anchors: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> tuple[Array, Array]:
        """Levels `[B, H_l, W_l, C]` -> (`[B, sum H_l W_l A]` logits, `[B, ..., 4]` deltas)."""
        init = _small_normal(0.01)
        conv = Conv2D(
            self.channels, 3, use_bias=True, kernel_init=init, dtype=self.dtype, name="conv"
        )
        cls = Conv2D(
            self.num_anchors,
            1,
            use_bias=True,
            kernel_init=init,
            dtype=self.dtype,
            name="cls_logits",
        )
        reg = Conv2D(
            4 * self.num_anchors,
            1,
            use_bias=True,
            kernel_init=init,
            dtype=self.dtype,
            name="bbox_pred",
        )
        logits, deltas = [], []
        for f in features:
            t = nn.relu(conv(f))
            b = t.shape[0]
            logits.append(cls(t).astype(jnp.float32).reshape(b, -1))
            deltas.append(reg(t).astype(jnp.float32).reshape(b, -1, 4))
        return jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)


class BottomUpPath(nn.Module):
    """PANet's bottom-up path augmentation over P2-P5: returns N2-N5."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, p: Sequence[Array]) -> list[Array]:
        out = [p[0]]
        for i in range(1, len(p)):
            down = Conv2D(self.channels, 3, 2, use_bias=True, dtype=self.dtype, name=f"down{i}")
            fuse = Conv2D(self.channels, 3, use_bias=True, dtype=self.dtype, name=f"fuse{i}")
            x = nn.relu(down(out[-1]))
            out.append(nn.relu(fuse(x + p[i])))
        return out


class BoxHead(nn.Module):
    """TwoMLPHead + FastRCNNPredictor; with `levels > 1`, PANet's per-level fc6 + max.

    Input `[N, L, 7, 7, C]` (L pooled levels, 1 without adaptive pooling); output
    (`[N, K]` class logits, `[N, K, 4]` deltas), float32.
    """

    num_classes: int
    representation_size: int = 1024
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        n, levels = x.shape[:2]
        x = x.reshape(n, levels, -1)
        dense = functools.partial(nn.Dense, kernel_init=_linear_init, dtype=self.dtype)
        if levels == 1:
            y = nn.relu(dense(self.representation_size, name="fc6")(x[:, 0]))
        else:
            per_level = [
                dense(self.representation_size, name=f"fc6_{level}")(x[:, level])
                for level in range(levels)
            ]
            y = nn.relu(functools.reduce(jnp.maximum, per_level))
        y = nn.relu(dense(self.representation_size, name="fc7")(y))
        cls = nn.Dense(
            self.num_classes, kernel_init=_small_normal(0.01), dtype=self.dtype, name="cls_score"
        )(y)
        reg = nn.Dense(
            4 * self.num_classes,
            kernel_init=_small_normal(0.001),
            dtype=self.dtype,
            name="bbox_pred",
        )(y)
        return cls.astype(jnp.float32), reg.astype(jnp.float32).reshape(n, self.num_classes, 4)


class MaskHead(nn.Module):
    """MaskRCNNHeads (3x3 convs + ReLU) + MaskRCNNPredictor (2x2 deconv + ReLU, 1x1 conv).

    Input `[N, L, 14, 14, C]`; with `L > 1` (PANet) the first conv runs per level and the
    results are fused by max. Output `[N, 28, 28, K]` float32 logits.
    """

    num_classes: int
    layers: Sequence[int] = (256, 256, 256, 256)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(Conv2D, kernel_size=3, use_bias=True, dtype=self.dtype)
        levels = x.shape[1]
        if levels == 1:
            y = conv(self.layers[0], name="mask_fcn1")(x[:, 0])
        else:
            y = functools.reduce(
                jnp.maximum,
                [conv(self.layers[0], name=f"mask_fcn1_{lv}")(x[:, lv]) for lv in range(levels)],
            )
        y = nn.relu(y)
        for i, c in enumerate(self.layers[1:], start=2):
            y = nn.relu(conv(c, name=f"mask_fcn{i}")(y))
        y = nn.ConvTranspose(
            self.layers[-1],
            (2, 2),
            strides=(2, 2),
            padding="VALID",
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            dtype=self.dtype,
            name="conv5_mask",
        )(y)
        y = nn.relu(y)
        y = Conv2D(self.num_classes, 1, use_bias=True, dtype=self.dtype, name="mask_fcn_logits")(y)
        return y.astype(jnp.float32)


class MaskRCNN(nn.Module):
    """Mask R-CNN / PANet; see the module docstring for the layout.

    Attributes:
      backbone: a ResNet (returns `s4` ... `s32`).
      num_classes: classes including background (index 0); 91 for COCO as torchvision.
      fpn_channels: channels of every pyramid level and of the RPN.
      anchor_sizes: per level P2-P6, the anchor sizes (pixels).
      aspect_ratios: anchor height / width ratios (the same at every level).
      rpn_*: RPN matching (fg/bg IoU), sampling (per image, positive fraction),
        proposals kept per level before NMS and in total after it (train / test), NMS IoU.
      box_*: RoI matching (fg/bg IoU), sampling, and the test-time score threshold, NMS
        IoU and `box_candidates` (class-box pairs kept by score before that NMS: the
        static stand-in for torchvision's unbounded candidate list).
      detections_per_img: D, detections returned per image.
      representation_size: the box head's FC width.
      mask_layers: the mask head's conv widths.
      roi_size, mask_roi_size, mask_size: RoIAlign outputs of the box and mask heads
        and the mask logits' size (2 x mask_roi_size).
      sampling_ratio, aligned: RoIAlign's (fixed) samples per bin and pixel model.
      canonical_scale, canonical_level: FPN level assignment (eq. 1 of the FPN paper).
      panet: PANet's bottom-up path and adaptive feature pooling.
      freeze_backbone_bn: run the backbone's BatchNorm in inference mode also in
        training (torchvision's FrozenBatchNorm2d, for pretrained backbones); its scale
        and bias stay trainable parameters.
      dtype: compute dtype of the convolutions; box arithmetic is float32.
    """

    backbone: nn.Module
    num_classes: int
    fpn_channels: int = 256
    anchor_sizes: Sequence[Sequence[float]] = anchor_lib.FPN_SIZES
    aspect_ratios: Sequence[float] = anchor_lib.ASPECT_RATIOS
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    box_fg_iou: float = 0.5
    box_bg_iou: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_candidates: int = 1000
    detections_per_img: int = 100
    representation_size: int = 1024
    mask_layers: Sequence[int] = (256, 256, 256, 256)
    roi_size: int = 7
    mask_roi_size: int = 14
    sampling_ratio: int = 2
    aligned: bool = True
    canonical_scale: float = 224.0
    canonical_level: int = 4
    panet: bool = False
    freeze_backbone_bn: bool = False
    dtype: jnp.dtype = jnp.float32

    @property
    def mask_size(self) -> int:
        return 2 * self.mask_roi_size

    def setup(self):
        self.neck = FPN(in_keys=LEVEL_KEYS, channels=self.fpn_channels, dtype=self.dtype)
        if self.panet:
            self.bottom_up = BottomUpPath(self.fpn_channels, dtype=self.dtype)
        self.rpn_head = RPNHead(
            self.fpn_channels, len(self.aspect_ratios) * len(self.anchor_sizes[0]), dtype=self.dtype
        )
        self.box_head = BoxHead(self.num_classes, self.representation_size, dtype=self.dtype)
        self.mask_head = MaskHead(self.num_classes, tuple(self.mask_layers), dtype=self.dtype)

    # ------------------------------------------------------------------ features

    def pyramid(self, images: Array, *, train: bool) -> list[Array]:
        """`[B, H, W, 3]` -> the five levels P2-P6 (N2-N6 with PANet), `[B, h_l, w_l, C]`."""
        feats = self.backbone(
            images.astype(self.dtype), train=train and not self.freeze_backbone_bn
        )
        p = self.neck(feats, train=train)
        levels = [p[f"fpn_{k}"] for k in LEVEL_KEYS]
        if self.panet:
            levels = self.bottom_up(levels)
        # torchvision's LastLevelMaxPool: max_pool2d(kernel 1, stride 2) = subsampling.
        return [*levels, levels[-1][:, ::2, ::2]]

    def anchors(self, image_shape: Sequence[int], levels: Sequence[Array]) -> np.ndarray:
        """`[A_total, 4]` anchors of a padded canvas `image_shape` (host constant)."""
        grids = [tuple(f.shape[1:3]) for f in levels]
        return np.concatenate(
            anchor_lib.anchors_per_level(image_shape, grids, self.anchor_sizes, self.aspect_ratios)
        )

    def pool(self, levels: Sequence[Array], boxes: Array, size: int) -> Array:
        """`[B, R, L, size, size, C]`: RoIAlign by box size, or from every level (PANet)."""
        feats, strides = levels[:4], (4, 8, 16, 32)
        common = dict(sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        if not self.panet:
            out = multilevel_roi_align(
                feats,
                strides,
                boxes,
                (size, size),
                canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level,
                **common,
            )
            return out[:, :, None]
        per_level = [
            multilevel_roi_align(
                feats,
                strides,
                boxes,
                (size, size),
                levels=jnp.full(boxes.shape[:2], lv, jnp.int32),
                **common,
            )
            for lv in range(len(feats))
        ]
        return jnp.stack(per_level, axis=2)

    def run_box_head(self, levels, boxes: Array) -> tuple[Array, Array]:
        """Class logits `[B, R, K]` and deltas `[B, R, K, 4]` of `boxes` `[B, R, 4]`."""
        b, r = boxes.shape[:2]
        pooled = self.pool(levels, boxes, self.roi_size)
        logits, deltas = self.box_head(pooled.reshape(b * r, *pooled.shape[2:]))
        return logits.reshape(b, r, -1), deltas.reshape(b, r, -1, 4)

    def run_mask_head(self, levels, boxes: Array) -> Array:
        """Mask logits `[B, R, M, M, K]` of `boxes` `[B, R, 4]`."""
        b, r = boxes.shape[:2]
        pooled = self.pool(levels, boxes, self.mask_roi_size)
        out = self.mask_head(pooled.reshape(b * r, *pooled.shape[2:]))
        return out.reshape(b, r, *out.shape[1:])

    # ------------------------------------------------------------------ proposals

    def proposals(
        self, objectness: Array, deltas: Array, anchors: np.ndarray, level_sizes, image_hw, *, train
    ) -> tuple[Array, Array]:
        """RPN proposals `[B, P, 4]` and their validity `[B, P]` (torchvision's `filter_proposals`).

        Per level: the `pre_nms_top_n` highest objectness logits, decoded, clipped to the
        image, boxes smaller than 1e-3 dropped, NMS; then the `post_nms_top_n` best
        over all levels.
        """
        pre = self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test
        post = self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test
        objectness = jax.lax.stop_gradient(objectness)
        deltas = jax.lax.stop_gradient(deltas)
        anchors = jnp.asarray(anchors)
        k = min(pre, max(level_sizes))
        cand_boxes, cand_scores, cand_valid = [], [], []
        start = 0
        for n in level_sizes:
            kl = min(pre, n)
            score, idx = jax.lax.top_k(objectness[:, start : start + n], kl)
            idx = idx + start
            d = jnp.take_along_axis(deltas, idx[..., None], axis=1)
            bx = box_ops.decode_boxes(d, anchors[idx], box_ops.RPN_WEIGHTS)
            bx = box_ops.clip_boxes(bx, image_hw)
            ok = box_ops.min_size_ok(bx, 1e-3)
            pad = k - kl
            cand_boxes.append(jnp.pad(bx, ((0, 0), (0, pad), (0, 0))))
            cand_scores.append(jnp.pad(score, ((0, 0), (0, pad)), constant_values=-jnp.inf))
            cand_valid.append(jnp.pad(ok, ((0, 0), (0, pad))))
            start += n
        cb = jnp.stack(cand_boxes, 1)  # [B, L, k, 4]
        cs = jnp.stack(cand_scores, 1)
        cv = jnp.stack(cand_valid, 1)
        per_level_out = min(post, k)
        nms = functools.partial(
            box_ops.nms, iou_threshold=self.rpn_nms_thresh, max_output=per_level_out
        )
        idx, kept = jax.vmap(jax.vmap(nms))(cb, cs, cv)  # [B, L, per_level_out]
        boxes = jnp.take_along_axis(cb, idx[..., None], axis=2)
        scores = jnp.where(kept, jnp.take_along_axis(cs, idx, axis=2), -jnp.inf)
        b = cb.shape[0]
        boxes, scores, kept = boxes.reshape(b, -1, 4), scores.reshape(b, -1), kept.reshape(b, -1)
        num = min(post, scores.shape[1])
        _top, order = jax.lax.top_k(scores, num)
        props = jnp.take_along_axis(boxes, order[..., None], axis=1)
        valid = jnp.take_along_axis(kept, order, axis=1)
        return props, valid

    # ------------------------------------------------------------------ losses

    def rpn_losses(self, objectness, deltas, anchors: np.ndarray, targets, rng) -> dict[str, Array]:
        """Objectness BCE and box smooth-L1 (beta 1/9) over the sampled anchors of the batch."""
        anchors = jnp.asarray(anchors)
        gt_boxes, gt_valid = targets["boxes"], targets["valid"]
        iou = box_ops.box_iou(gt_boxes, anchors[None])  # [B, G, A]
        matches = jax.vmap(
            functools.partial(
                box_ops.match,
                high_threshold=self.rpn_fg_iou,
                low_threshold=self.rpn_bg_iou,
                allow_low_quality_matches=True,
            )
        )(iou, gt_valid)
        positive, negative = matches >= 0, matches == box_ops.BELOW_LOW_THRESHOLD
        rngs = jax.random.split(rng, positive.shape[0])
        sample = functools.partial(
            box_ops.sample_mask,
            num_samples=self.rpn_batch_size_per_image,
            fraction=self.rpn_positive_fraction,
        )
        pos, neg = jax.vmap(sample)(rngs, positive, negative)
        sampled = (pos | neg).astype(jnp.float32)
        count = jnp.maximum(jnp.sum(sampled), 1.0)
        bce = optax.sigmoid_binary_cross_entropy(objectness, pos.astype(jnp.float32))
        matched = jnp.take_along_axis(gt_boxes, jnp.maximum(matches, 0)[..., None], axis=1)
        target = box_ops.encode_boxes(matched, anchors[None], box_ops.RPN_WEIGHTS)
        target = jnp.where(pos[..., None], target, 0.0)
        reg = jnp.sum(smooth_l1(deltas - target, 1.0 / 9.0), -1)
        return {
            "loss_objectness": jnp.sum(bce * sampled) / count,
            "loss_rpn_box_reg": jnp.sum(reg * pos) / count,
        }

    def roi_targets(self, proposals, prop_valid, targets, rng):
        """Sampled RoIs `[B, S, 4]` with their labels, matched gt index, regression targets."""
        gt_boxes, gt_valid, gt_classes = targets["boxes"], targets["valid"], targets["classes"]
        # torchvision's add_gt_proposals: the ground-truth boxes are proposals too.
        rois = jnp.concatenate([proposals, gt_boxes], 1)
        rois_valid = jnp.concatenate([prop_valid, gt_valid], 1)
        iou = box_ops.box_iou(gt_boxes, rois)  # [B, G, P + G]
        matches = jax.vmap(
            functools.partial(
                box_ops.match,
                high_threshold=self.box_fg_iou,
                low_threshold=self.box_bg_iou,
                allow_low_quality_matches=False,
            )
        )(iou, gt_valid)
        positive = (matches >= 0) & rois_valid
        negative = (matches == box_ops.BELOW_LOW_THRESHOLD) & rois_valid
        rngs = jax.random.split(rng, positive.shape[0])
        sample = functools.partial(
            box_ops.sample_balanced,
            num_samples=self.box_batch_size_per_image,
            positive_fraction=self.box_positive_fraction,
        )
        idx, is_pos, valid = jax.vmap(sample)(rngs, positive, negative)
        take = lambda x: jnp.take_along_axis(x, idx, axis=1)
        sampled = jnp.take_along_axis(rois, idx[..., None], axis=1)
        matched = jnp.maximum(take(matches), 0)
        labels = jnp.where(is_pos, jnp.take_along_axis(gt_classes, matched, axis=1), 0)
        gt_for = jnp.take_along_axis(gt_boxes, matched[..., None], axis=1)
        reg = box_ops.encode_boxes(gt_for, sampled, box_ops.ROI_WEIGHTS)
        reg = jnp.where(is_pos[..., None], reg, 0.0)
        return jax.lax.stop_gradient(sampled), labels, matched, reg, is_pos, valid

    def box_losses(self, logits, deltas, labels, reg_targets, is_pos, valid) -> dict[str, Array]:
        """Cross-entropy over the sampled RoIs and smooth-L1 of the true class's deltas."""
        count = jnp.maximum(jnp.sum(valid), 1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        own = jnp.take_along_axis(deltas, labels[..., None, None], axis=2)[:, :, 0]
        reg = jnp.sum(smooth_l1(own - reg_targets, 1.0 / 9.0), -1)
        return {
            "loss_classifier": jnp.sum(jnp.where(valid, ce, 0.0)) / count,
            "loss_box_reg": jnp.sum(jnp.where(is_pos, reg, 0.0)) / count,
        }

    def mask_loss(self, mask_logits, rois, labels, matched, is_pos, gt_masks) -> Array:
        """Per-pixel BCE of the true class's mask logits against the RoIAligned gt mask."""
        m = self.mask_size
        # [B, G, H, W] -> [B, H, W, G]: each box reads its matched instance's channel.
        masks = jnp.moveaxis(gt_masks.astype(jnp.float32), 1, -1)
        target = roi_align_channel(
            masks, rois, matched, (m, m), spatial_scale=1.0, sampling_ratio=2, aligned=self.aligned
        )
        own = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
        bce = optax.sigmoid_binary_cross_entropy(own, jax.lax.stop_gradient(target))
        count = jnp.maximum(jnp.sum(is_pos), 1) * m * m
        return jnp.sum(jnp.where(is_pos[..., None, None], bce, 0.0)) / count

    # ------------------------------------------------------------------ inference

    def detections(self, levels, proposals, prop_valid, image_hw) -> dict[str, Array]:
        """Final boxes, scores, classes, mask probabilities (torchvision's postprocess)."""
        logits, deltas = self.run_box_head(levels, proposals)
        b, p, k = logits.shape
        probs = jax.nn.softmax(logits, -1)[:, :, 1:]  # background left out
        boxes = box_ops.decode_boxes(deltas[:, :, 1:], proposals[:, :, None], box_ops.ROI_WEIGHTS)
        boxes = box_ops.clip_boxes(boxes.reshape(b, -1, 4), image_hw)
        scores = probs.reshape(b, -1)
        classes = jnp.broadcast_to(jnp.arange(1, k), (b, p, k - 1)).reshape(b, -1)
        valid = (
            (scores > self.box_score_thresh)
            & box_ops.min_size_ok(boxes, 1e-2)
            & jnp.repeat(prop_valid, k - 1, axis=1)
        )
        num = min(self.box_candidates, scores.shape[1])
        _top, order = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), num)
        take = lambda x: jnp.take_along_axis(x, order, axis=1)
        c_boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
        c_scores, c_classes, c_valid = take(scores), take(classes), take(valid)
        nms = functools.partial(
            box_ops.nms, iou_threshold=self.box_nms_thresh, max_output=self.detections_per_img
        )
        idx, kept = jax.vmap(nms)(c_boxes, c_scores, c_valid, groups=c_classes)
        det_boxes = jnp.take_along_axis(c_boxes, idx[..., None], axis=1)
        det_scores = jnp.where(kept, jnp.take_along_axis(c_scores, idx, axis=1), 0.0)
        det_classes = jnp.where(kept, jnp.take_along_axis(c_classes, idx, axis=1), 0)
        mask_logits = self.run_mask_head(levels, det_boxes)
        own = jnp.take_along_axis(mask_logits, det_classes[:, :, None, None, None], axis=-1)
        return {
            "boxes": det_boxes,
            "scores": det_scores,
            "classes": det_classes.astype(jnp.int32),
            "masks": jax.nn.sigmoid(own[..., 0]),
            "valid": kept,
        }

    # ------------------------------------------------------------------ call

    def create_variables(self, images: Array) -> dict[str, Array]:
        """Runs every layer once on `images` without proposals or NMS (a cheap `init`):
        `model.init(rng, images, method=MaskRCNN.create_variables)`."""
        return self.head_variables(self.pyramid(images, train=False), images.shape[1:3])

    def head_variables(self, levels: Sequence[Array], canvas_hw: Sequence[int]) -> dict[str, Array]:
        """The heads of `create_variables` on given pyramid levels (a canvas `canvas_hw`)."""
        objectness, _deltas = self.rpn_head(levels)
        b, (h, w) = levels[0].shape[0], canvas_hw
        boxes = jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32), (b, 1, 4))
        logits, _box_deltas = self.run_box_head(levels, boxes)
        masks = self.run_mask_head(levels, boxes)
        return {"objectness": objectness, "logits": logits, "masks": masks}

    def __call__(
        self,
        images: Array,
        image_hw: Array | None = None,
        targets: dict[str, Array] | None = None,
        *,
        train: bool,
    ) -> dict[str, Array]:
        """Losses (training) or detections (inference).

        Args:
          images: `[B, H, W, 3]` normalised, padded to a fixed canvas.
          image_hw: `[B, 2]` int, each image's size on the canvas (default: the canvas);
            proposals and detections are clipped to it.
          targets: training only: `boxes` float `[B, G, 4]`, `classes` int `[B, G]`
            (1..K-1), `masks` `[B, G, H, W]` (0/1, canvas size), `valid` bool `[B, G]`.
          train: training mode: needs `targets` and an rng named `"sample"` (anchor and
            RoI sampling).

        Returns:
          train: the five loss terms `LOSS_TERMS` (float32 scalars, each a mean over the
          global batch's samples as torchvision: sampled anchors, sampled RoIs, positive
          RoIs' mask pixels).
          inference: `boxes` `[B, D, 4]`, `scores` `[B, D]`, `classes` `[B, D]` int32,
          `masks` `[B, D, M, M]` mask probabilities inside each box (M = 28), `valid`
          `[B, D]` bool (D = `detections_per_img`).
        """
        levels = self.pyramid(images, train=train)
        return self.from_pyramid(levels, images.shape[1:3], image_hw, targets, train=train)

    def from_pyramid(
        self,
        levels: Sequence[Array],
        canvas_hw: Sequence[int],
        image_hw: Array | None = None,
        targets: dict[str, Array] | None = None,
        *,
        train: bool,
    ) -> dict[str, Array]:
        """`__call__` after `pyramid`: the RPN and the heads on the levels P2-P6 of a
        padded canvas `canvas_hw` (so that another head can share the pyramid)."""
        b, (h, w) = levels[0].shape[0], (int(canvas_hw[0]), int(canvas_hw[1]))
        if image_hw is None:
            image_hw = jnp.broadcast_to(jnp.asarray([h, w], jnp.int32), (b, 2))
        objectness, deltas = self.rpn_head(levels)
        anchors = self.anchors((h, w), levels)
        num_cell = len(self.aspect_ratios) * len(self.anchor_sizes[0])
        level_sizes = [f.shape[1] * f.shape[2] * num_cell for f in levels]
        proposals, prop_valid = self.proposals(
            objectness, deltas, anchors, level_sizes, image_hw, train=train
        )
        if not train:
            return self.detections(levels, proposals, prop_valid, image_hw)
        if targets is None:
            raise ValueError("MaskRCNN(train=True) needs targets (boxes, classes, masks, valid)")
        rng_rpn, rng_roi = jax.random.split(self.make_rng("sample"))
        losses = self.rpn_losses(objectness, deltas, anchors, targets, rng_rpn)
        rois, labels, matched, reg, is_pos, valid = self.roi_targets(
            proposals, prop_valid, targets, rng_roi
        )
        logits, box_deltas = self.run_box_head(levels, rois)
        losses.update(self.box_losses(logits, box_deltas, labels, reg, is_pos, valid))
        # Positives come first in the sample: the mask head sees the first max_pos slots.
        max_pos = int(self.box_batch_size_per_image * self.box_positive_fraction)
        sl = slice(0, max_pos)
        mask_logits = self.run_mask_head(levels, rois[:, sl])
        losses["loss_mask"] = self.mask_loss(
            mask_logits, rois[:, sl], labels[:, sl], matched[:, sl], is_pos[:, sl], targets["masks"]
        )
        return losses


# ----------------------------------------------------------------------------- builders


def mask_rcnn_builder(
    backbone_cls: Callable[..., ResNet], *, panet: bool = False, **defaults: Any
) -> Callable[..., MaskRCNN]:
    """A Mask R-CNN (or PANet) builder on `backbone_cls`; `defaults` are MaskRCNN fields."""

    def builder(*, num_classes: int, dtype: jnp.dtype = jnp.float32, **kwargs: Any) -> MaskRCNN:
        """The model; `num_classes` includes background, `kwargs` are `MaskRCNN` fields."""
        fields = {**defaults, "panet": panet, **kwargs}
        unknown = sorted(set(fields) - set(MaskRCNN.__dataclass_fields__))
        if unknown or "backbone" in fields:
            raise TypeError(f"unknown Mask R-CNN arguments {unknown or ['backbone']}")
        return MaskRCNN(
            backbone=backbone_cls(output_stride=32, dtype=dtype),
            num_classes=num_classes,
            dtype=dtype,
            **fields,
        )

    return builder


# The tiny variant: ResNet-Micro (8-64 channels), 16-channel FPN, small heads and
# sample counts, anchors for 64 x 64 images (8-128 px over P2-P6). RoIs keep the FPN
# paper's canonical 224: on 64 x 64 images every object is pooled from P2 (stride 4),
# as a small COCO object at 800 px.
TINY = dict(
    fpn_channels=16,
    anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
    rpn_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=128,
    rpn_post_nms_top_n_train=64,
    rpn_pre_nms_top_n_test=128,
    rpn_post_nms_top_n_test=64,
    box_batch_size_per_image=32,
    box_candidates=200,
    detections_per_img=16,
    representation_size=64,
    mask_layers=(16, 16),
)

INSTANCE_MODELS: dict[str, Callable[..., MaskRCNN]] = {
    "maskrcnn_resnet50_fpn": mask_rcnn_builder(ResNet50),
    "maskrcnn_resnet101_fpn": mask_rcnn_builder(ResNet101),
    "maskrcnn_tiny": mask_rcnn_builder(ResNetMicro, **TINY),
    "panet_resnet50_fpn": mask_rcnn_builder(ResNet50, panet=True),
    "panet_tiny": mask_rcnn_builder(ResNetMicro, panet=True, **TINY),
}


def build_instance_model(name: str, *, num_classes: int, dtype=jnp.float32, **kwargs) -> MaskRCNN:
    """The instance model `name` of `INSTANCE_MODELS`; an unknown name lists the known ones."""
    if name not in INSTANCE_MODELS:
        raise KeyError(f"unknown instance model {name!r}; known: {sorted(INSTANCE_MODELS)}")
    return INSTANCE_MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
