"""Panoptic-DeepLab's post-processing as one fixed-shape program (jittable, vmapped).

From a model's semantic logits [B, H, W, K], center heatmap [B, H, W] and center offsets
[B, H, W, 2] to a panoptic map, as the reference implementation
(bowenc0221/panoptic-deeplab `get_panoptic_segmentation`; detectron2's
`projects/Panoptic-DeepLab`), per image:

1. semantic class = argmax of the logits;
2. center NMS: a heatmap pixel is a center candidate when it is the maximum of its
   `nms_kernel` x `nms_kernel` window (max-pooling) and above `center_threshold`; the
   `top_k` highest candidates are kept (fewer when fewer pass: a validity mask);
3. grouping: each pixel of a thing class votes for the kept center nearest to
   `pixel + offset` (its regressed center); instance ids are 1 + the center's rank;
4. majority vote: an instance's class is the most frequent thing class among its pixels;
5. stuff: pixels of a stuff class form that class's segment if the class covers at least
   `stuff_area` pixels of the image, else they are void; thing pixels with no center
   (no center kept) are void.

Every shape is fixed by the inputs' shapes and `top_k`, so the program compiles once per
padded image size: evaluating any number of images of that size never recompiles.
`image_hw` limits an image to its top-left region on a padded canvas (the rest is void
and holds no center). The grouping compares every pixel with every kept center
([H * W, top_k] distances per image).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def center_candidates(
    heatmap: Array, *, threshold: float, nms_kernel: int, top_k: int
) -> tuple[Array, Array, Array]:
    """The `top_k` center candidates of one heatmap [H, W] after max-pooling NMS.

    Returns:
      `(ys, xs, valid)`: int32 [top_k] coordinates, highest score first, and bool [top_k]
      (False for the slots that no candidate above `threshold` filled).
    """
    h, w = heatmap.shape
    pad = nms_kernel // 2
    pooled = jax.lax.reduce_window(
        heatmap,
        -jnp.inf,
        jax.lax.max,
        (nms_kernel, nms_kernel),
        (1, 1),
        ((pad, nms_kernel - 1 - pad), (pad, nms_kernel - 1 - pad)),
    )
    keep = (heatmap == pooled) & (heatmap > threshold)
    scores = jnp.where(keep, heatmap, -jnp.inf).reshape(-1)
    k = min(int(top_k), h * w)
    values, index = jax.lax.top_k(scores, k)
    if k < top_k:  # an image smaller than top_k pixels: pad the slots
        values = jnp.pad(values, (0, top_k - k), constant_values=-jnp.inf)
        index = jnp.pad(index, (0, top_k - k))
    return (index // w).astype(jnp.int32), (index % w).astype(jnp.int32), values > -jnp.inf


def _region(image_hw: Array | None, b: int, h: int, w: int) -> Array:
    # bool [B, H, W]: each image's top-left (h, w) region of the canvas (all without hw).
    if image_hw is None:
        return jnp.ones((b, h, w), bool)
    hw = jnp.asarray(image_hw, jnp.int32)
    return (jnp.arange(h)[None, :, None] < hw[:, 0, None, None]) & (
        jnp.arange(w)[None, None, :] < hw[:, 1, None, None]
    )


def _image_panoptic(logits, heatmap, offset, region, is_thing, options):
    # One image: (class [H, W] with -1 for void, instance [H, W]).
    h, w, num_classes = logits.shape
    top_k = options["top_k"]
    semantic = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    heatmap = jnp.where(region, heatmap, -jnp.inf)
    cy, cx, valid = center_candidates(
        heatmap,
        threshold=options["center_threshold"],
        nms_kernel=options["nms_kernel"],
        top_k=top_k,
    )
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    ty = (yy + offset[..., 0]).reshape(-1, 1)
    tx = (xx + offset[..., 1]).reshape(-1, 1)
    distance = (ty - cy[None].astype(jnp.float32)) ** 2 + (tx - cx[None].astype(jnp.float32)) ** 2
    nearest = jnp.argmin(jnp.where(valid[None], distance, jnp.inf), axis=1).reshape(h, w)
    thing = is_thing[semantic] & region
    instance = jnp.where(thing & valid.any(), nearest + 1, 0).astype(jnp.int32)
    # Majority vote over thing classes: votes[instance, class].
    votes = jnp.zeros(((top_k + 1) * num_classes,), jnp.int32)
    votes = votes.at[(instance * num_classes + semantic).reshape(-1)].add(
        (instance > 0).reshape(-1).astype(jnp.int32)
    )
    votes = jnp.where(is_thing[None], votes.reshape(top_k + 1, num_classes), -1)
    instance_class = jnp.argmax(votes, axis=1).astype(jnp.int32)
    stuff = ~is_thing[semantic] & region
    area = (
        jnp.zeros((num_classes,), jnp.int32)
        .at[semantic.reshape(-1)]
        .add(stuff.reshape(-1).astype(jnp.int32))
    )
    stuff = stuff & (area[semantic] >= options["stuff_area"])
    cls = jnp.where(instance > 0, instance_class[instance], jnp.where(stuff, semantic, -1))
    return cls, jnp.where(cls >= 0, instance, 0)


def panoptic_postprocess(
    logits: Array,
    center: Array,
    offset: Array,
    *,
    thing_classes: Sequence[bool] | np.ndarray,
    center_threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
    stuff_area: int = 2048,
    image_hw: Array | None = None,
) -> dict[str, Array]:
    """Panoptic maps of a batch from Panoptic-DeepLab's outputs (the module docstring).

    Args:
      logits: float [B, H, W, K] semantic logits (or scores).
      center: float [B, H, W] center heatmap.
      offset: float [B, H, W, 2] (y, x) offsets from each pixel to its center, in pixels.
      thing_classes: bool [K], True for thing classes (static).
      center_threshold: a center candidate's heatmap value must exceed this.
      nms_kernel: side of the max-pooling window of the center NMS (odd).
      top_k: the most centers (instances) kept per image (static).
      stuff_area: the fewest pixels a stuff class needs to be kept in an image.
      image_hw: optional int [B, 2]: each image's (h, w) in the top-left of the canvas.

    Returns:
      `{"class": int32 [B, H, W] (-1 for void), "instance": int32 [B, H, W]}` (0 for
      stuff and void; 1..top_k for objects, unique within an image).
    """
    b, h, w, num_classes = logits.shape
    is_thing = jnp.asarray(np.asarray(thing_classes, bool))
    if is_thing.shape != (num_classes,):
        raise ValueError(f"{is_thing.shape[0]} thing_classes flags for {num_classes} classes")
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be odd and >= 1, got {nms_kernel}")
    options = dict(
        center_threshold=center_threshold, nms_kernel=int(nms_kernel), top_k=int(top_k),
        stuff_area=stuff_area,
    )  # fmt: skip
    region = _region(image_hw, b, h, w)
    cls, instance = jax.vmap(lambda lg, c, o, r: _image_panoptic(lg, c, o, r, is_thing, options))(
        logits, center, offset, region
    )
    return {"class": cls, "instance": instance}


# ----------------------------------------------------------------------------- Panoptic FPN


def paste_masks(masks: Array, boxes: Array, height: int, width: int) -> Array:
    """`[D, height, width]` float32 canvas masks of `[D, M, M]` box masks, under jit.

    The same numbers as `segjax.detection.coco.paste_masks` (torchvision's
    `paste_masks_in_image`, padding 1): each mask padded by one pixel, its box grown by
    `(M + 2) / M` and truncated to integers, resized bilinearly (half-pixel centres, edge
    clamped) to the box's `x2 - x1 + 1` by `y2 - y1 + 1` pixels; written here as one
    separable interpolation (`[D, height, M + 2] @ mask @ [D, M + 2, width]`).
    """
    m = masks.shape[1]
    p = m + 2
    padded = jnp.pad(masks.astype(jnp.float32), ((0, 0), (1, 1), (1, 1)))
    boxes = boxes.astype(jnp.float32)
    scale = p / m
    center = (boxes[:, :2] + boxes[:, 2:]) / 2  # (x, y)
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    lo = jnp.trunc(center - half).astype(jnp.int32)  # Python's int(): toward zero
    hi = jnp.trunc(center + half).astype(jnp.int32)
    size = jnp.maximum(hi - lo + 1, 1)

    def weights(n: int, start: Array, length: Array) -> Array:
        # [D, n, p]: bilinear weights of canvas pixels 0..n-1 over the padded mask.
        local = jnp.arange(n)[None, :] - start[:, None]
        inside = (local >= 0) & (local < length[:, None])
        src = (local.astype(jnp.float32) + 0.5) * (p / length[:, None].astype(jnp.float32)) - 0.5
        src = jnp.maximum(src, 0.0)
        i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), p - 1)
        i1 = jnp.minimum(i0 + 1, p - 1)
        frac = src - i0
        w = (
            jax.nn.one_hot(i0, p) * (1.0 - frac)[..., None]
            + jax.nn.one_hot(i1, p) * frac[..., None]
        )
        return jnp.where(inside[..., None], w, 0.0)

    wy = weights(height, lo[:, 1], size[:, 1])
    wx = weights(width, lo[:, 0], size[:, 0])
    return jnp.einsum("dhp,dpq,dwq->dhw", wy, padded, wx)


def _image_combine(semantic, scores, classes, masks, valid, region, tables, options):
    # One image: detectron2's combine_semantic_and_instance_outputs as a scan over the
    # detections by score; (class [H, W] with -1 for void, instance [H, W]).
    thing_to_class, stuff_to_class = tables
    order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf))[: options["max_instances"]]
    masks = masks[order] & region[None]
    ok = valid[order] & (scores[order] >= options["score_threshold"])
    classes = classes[order]

    def add(carry, x):
        seg, thing_class, count = carry
        mask, keep, cls = x
        area = jnp.sum(mask)
        overlap = jnp.sum(mask & (seg > 0))
        ratio = overlap.astype(jnp.float32) / jnp.maximum(area, 1).astype(jnp.float32)
        keep = keep & (area > 0) & (ratio <= options["overlap_threshold"])
        new = mask & (seg == 0) & keep
        count = count + keep.astype(jnp.int32)
        seg = jnp.where(new, count, seg)
        thing_class = jnp.where(new, cls, thing_class)
        return (seg, thing_class, count), None

    zeros = jnp.zeros(semantic.shape, jnp.int32)
    (seg, thing_class, _count), _ = jax.lax.scan(
        add, (zeros, zeros, jnp.int32(0)), (masks, ok, classes)
    )
    free = (seg == 0) & region
    num_semantic = stuff_to_class.shape[0]
    area = (
        jnp.zeros((num_semantic,), jnp.int32)
        .at[semantic.reshape(-1)]
        .add(free.reshape(-1).astype(jnp.int32))
    )
    stuff = free & (semantic > 0) & (area[semantic] >= options["stuff_area"])
    cls = jnp.where(
        seg > 0, thing_to_class[thing_class], jnp.where(stuff, stuff_to_class[semantic], -1)
    )
    return cls, seg


def combine_semantic_and_instances(
    semantic_logits: Array,
    detections: dict[str, Array],
    *,
    thing_classes: Sequence[bool] | np.ndarray,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area: int = 4096,
    mask_threshold: float = 0.5,
    max_instances: int | None = None,
    image_hw: Array | None = None,
) -> dict[str, Array]:
    """Panoptic maps of a batch from Panoptic FPN's outputs: the heuristic merge.

    detectron2's `combine_semantic_and_instance_outputs`, as one fixed-shape program: per
    image, the detections by decreasing score (the best `max_instances`), each pasted into
    the canvas and thresholded at `mask_threshold`; one scoring under `score_threshold`,
    or empty, or whose mask has more than `overlap_threshold` of its pixels already taken
    is dropped, otherwise it takes its still-free pixels (ids 1, 2, ... in that order).
    Then each stuff class of the semantic argmax takes its still-free pixels if they are
    at least `stuff_area`; the rest is void (the semantic "thing" class included).

    Args:
      semantic_logits: float [B, H, W, S + 1]: class 0 = any thing, 1..S = the stuff
        classes in dataset order.
      detections: Mask R-CNN's (`MaskRCNN.__call__(train=False)`): `boxes` [B, D, 4]
        (canvas pixels), `scores` [B, D], `classes` [B, D] (1..T: the thing classes in
        dataset order), `masks` [B, D, M, M] probabilities, `valid` [B, D].
      thing_classes: bool [K] per dataset class, True for a thing (static).
      image_hw: optional int [B, 2]: each image's (h, w) in the top-left of the canvas;
        pixels outside are void.

    Returns:
      `{"class": int32 [B, H, W] (dataset class, -1 for void), "instance": int32
      [B, H, W]}` (0 for stuff and void, 1.. for objects), as `panoptic_postprocess`.
    """
    b, h, w, num_semantic = semantic_logits.shape
    is_thing = np.asarray(thing_classes, bool)
    things, stuff = np.flatnonzero(is_thing), np.flatnonzero(~is_thing)
    if num_semantic != len(stuff) + 1:
        raise ValueError(
            f"{num_semantic} semantic classes for {len(stuff)} stuff classes (+1 for things)"
        )
    # Class tables: instance class c (1..T) -> things[c - 1]; semantic j (1..S) -> stuff[j - 1].
    tables = (
        jnp.asarray(np.concatenate([[-1], things]), jnp.int32),
        jnp.asarray(np.concatenate([[-1], stuff]), jnp.int32),
    )
    d = detections["scores"].shape[1]
    options = dict(
        score_threshold=score_threshold, overlap_threshold=overlap_threshold,
        stuff_area=stuff_area, max_instances=min(int(max_instances or d), d),
    )  # fmt: skip
    region = _region(image_hw, b, h, w)
    masks = jax.vmap(lambda m, bx: paste_masks(m, bx, h, w) >= mask_threshold)(
        detections["masks"], detections["boxes"]
    )
    semantic = jnp.argmax(semantic_logits, axis=-1).astype(jnp.int32)
    cls, instance = jax.vmap(
        lambda s, sc, c, m, v, r: _image_combine(s, sc, c, m, v, r, tables, options)
    )(semantic, detections["scores"], detections["classes"], masks, detections["valid"], region)
    return {"class": cls, "instance": instance}
