"""Instance segmentation: Mask R-CNN / PANet, padded targets, COCO AP on the host.

The task behind `config.task = "instance"`:

- model: `config.model.name` from `segjax.models.mask_rcnn.INSTANCE_MODELS`
  (`maskrcnn_resnet50_fpn`, `panet_resnet50_fpn`, `maskrcnn_tiny`, ...), with
  `config.dataset.num_classes` classes including background (index 0).
- batch: `image` float32 [B, H, W, 3] (normalised, padded to `config.input.crop_size`),
  `image_hw` int32 [B, 2], and the ground truth padded to `config.instance.max_instances`
  G: `boxes` [B, G, 4], `classes` [B, G], `masks` uint8 [B, G, H, W], `instance_valid`
  [B, G] (`segjax.data.instances.InstanceTrainAugment`: shorter-side resize, flip, pad).
- loss: the sum of Mask R-CNN's five terms (RPN objectness + box, RoI class + box, mask),
  each a mean over the global batch's samples; the step's rng draws the anchor and RoI
  samples.
- evaluation: detections (fixed size, with a validity mask) on device, boxes mapped back
  to each image's original size; on the host the masks are pasted into the image,
  thresholded at `config.instance.mask_threshold`, RLE-encoded, and pycocotools'
  COCOeval gives box and mask AP, AP50, AP75, AP small / medium / large.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from segjax import optim, visualize
from segjax.data import datasets, instances
from segjax.detection import coco
from segjax.models.mask_rcnn import MaskRCNN, build_instance_model
from segjax.tasks import base

Array = jax.Array


def config_block() -> ml_collections.ConfigDict:
    """The `config.instance` keys and their defaults (64 x 64 segjax_shapes_instances)."""
    c = ml_collections.ConfigDict()
    c.max_instances = 8  # ground truth padded (or cut, keeping the largest) to this
    # Training resize: the shorter side drawn from min_sizes, the longer at most max_size
    # (torchvision: (800,), 1333), then fitted into input.crop_size.
    c.min_sizes = (48, 56, 64)
    c.max_size = 64
    c.test_size = 64  # evaluation: shorter side (longer at most max_size), fitted
    c.mask_threshold = 0.5  # pasted mask probability -> binary mask
    c.vis_score_threshold = 0.5  # detections drawn in panels and --images overlays
    return c


# config.model keys that are not Mask R-CNN arguments (the loop's, or segmentors' only).
NOT_BUILDER_KEYS = (
    "name", "dtype", "pretrained", "pretrained_scope", "output_stride", "aux_head", "in_channels"
)  # fmt: skip


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.model`'s `MaskRCNN` fields (all keys but the loop's and segmentors' own)."""
    return {  # a config read back from JSON holds lists where the file had tuples
        k: tuple(v) if isinstance(v, list) else v
        for k, v in config.model.items()
        if k not in NOT_BUILDER_KEYS
    }


def build_model(config: ml_collections.ConfigDict) -> MaskRCNN:
    """The instance model named by `config.model.name`; `config.model`'s other keys are
    `MaskRCNN` fields (e.g. `freeze_backbone_bn`, `rpn_post_nms_top_n_train`)."""
    return build_instance_model(
        config.model.name,
        num_classes=config.dataset.num_classes,
        dtype=base.compute_dtype(config),
        **model_kwargs(config),
    )


def example_targets(
    batch_size: int,
    seed: int,
    *,
    hw: tuple[int, int],
    max_instances: int,
    num_classes: int,
    channels: int = 3,
) -> dict[str, np.ndarray]:
    """A random training batch of `InstanceTrainAugment`'s shapes: box-shaped masks of
    classes 1..num_classes-1, 1..G valid per image (benchmarks, tests)."""
    h, w = hw
    g = max_instances
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.6, (batch_size, g, 2)) * [w, h]
    wh = rng.uniform(0.15, 0.4, (batch_size, g, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    masks = np.zeros((batch_size, g, h, w), np.uint8)
    for b in range(batch_size):
        for i in range(g):
            x1, y1, x2, y2 = boxes[b, i].astype(int)
            masks[b, i, y1:y2, x1:x2] = 1
    valid = np.arange(g)[None] < rng.integers(1, g + 1, (batch_size, 1))
    return {
        "image": rng.standard_normal((batch_size, h, w, channels), dtype=np.float32),
        "image_hw": np.full((batch_size, 2), [h, w], np.int32),
        "boxes": boxes * valid[..., None],
        "classes": np.where(valid, rng.integers(1, num_classes, (batch_size, g)), 0).astype(
            np.int32
        ),
        "masks": masks * valid[..., None, None],
        "instance_valid": valid,
    }


def target_spec(
    batch_size: int, hw: tuple[int, int], max_instances: int, channels: int = 3
) -> dict[str, Any]:
    """`jax.ShapeDtypeStruct`s of `example_targets`' (and the training pipeline's) batch."""
    s, (h, w), g = jax.ShapeDtypeStruct, hw, max_instances
    return {
        "image": s((batch_size, h, w, channels), jnp.float32),
        "image_hw": s((batch_size, 2), jnp.int32),
        "boxes": s((batch_size, g, 4), jnp.float32),
        "classes": s((batch_size, g), jnp.int32),
        "masks": s((batch_size, g, h, w), jnp.uint8),
        "instance_valid": s((batch_size, g), jnp.bool_),
    }


def mask_rcnn_targets(batch: dict[str, Array]) -> dict[str, Array]:
    """The `targets` argument of `MaskRCNN.__call__` from a training batch."""
    return {
        "boxes": batch["boxes"],
        "classes": batch["classes"],
        "masks": batch["masks"],
        "valid": batch["instance_valid"],
    }


def _to_original(boxes: Array, resized_hw: Array, original_hw: Array) -> Array:
    # Boxes on the (resized) canvas -> the original image's pixels.
    ratio = original_hw.astype(jnp.float32) / jnp.maximum(resized_hw, 1).astype(jnp.float32)
    factor = jnp.stack([ratio[:, 1], ratio[:, 0], ratio[:, 1], ratio[:, 0]], -1)
    return boxes * factor[:, None, :]


def detections_to_coco(
    outputs: dict[str, np.ndarray], i: int, image_id: int, mask_threshold: float
) -> list[dict[str, Any]]:
    """COCO results of image `i` of a fetched batch of detections (original size)."""
    h, w = (int(v) for v in outputs["original_hw"][i])
    valid = np.asarray(outputs["valid"][i], bool)
    boxes = np.asarray(outputs["boxes"][i])[valid]
    pasted = coco.paste_masks(np.asarray(outputs["masks"][i])[valid], boxes, h, w)
    rles = coco.encode(pasted >= mask_threshold)
    scores = np.asarray(outputs["scores"][i])[valid]
    classes = np.asarray(outputs["classes"][i])[valid]
    return [
        {
            "image_id": image_id,
            "category_id": int(c),
            "bbox": [float(v) for v in b],
            "score": float(s),
            "segmentation": r,
        }
        for b, s, c, r in zip(coco.xywh(boxes), scores, classes, rles, strict=True)
    ]


def ground_truth_to_coco(outputs: dict[str, np.ndarray], i: int, image_id: int) -> list[dict]:
    """COCO annotations of image `i`'s padded ground truth (crowd flagged)."""
    from pycocotools import mask as mask_utils

    h, w = (int(v) for v in outputs["original_hw"][i])
    valid = np.asarray(outputs["gt_valid"][i], bool)
    masks = np.asarray(outputs["gt_masks"][i])[valid][:, :h, :w]
    rles = coco.encode(masks)
    boxes = coco.xywh(np.asarray(outputs["gt_boxes"][i])[valid])
    classes = np.asarray(outputs["gt_classes"][i])[valid]
    crowd = np.asarray(outputs["gt_crowd"][i])[valid]
    return [
        {
            "image_id": image_id,
            "category_id": int(c),
            "bbox": [float(v) for v in b],
            "segmentation": r,
            "area": float(mask_utils.area(r)),
            "iscrowd": int(k),
        }
        for b, c, r, k in zip(boxes, classes, rles, crowd, strict=True)
    ]


def format_report(scores: dict[str, Any]) -> str:
    """A text table: box and mask AP, AP50, AP75, small / medium / large (in %)."""
    lines = [f"{'':<6}" + "".join(f"{n:>11}" for n in coco.STAT_NAMES), "-" * 72]
    for key in ("box", "mask"):
        values = "".join(
            f"{'-' if math.isnan(v) else f'{100 * v:.2f}':>11}" for v in scores[key].values()
        )
        lines.append(f"{key:<6}{values}")
    lines.append(
        f"images {scores['num_images']}, ground-truth instances {scores['num_gt']}, "
        f"detections {scores['num_detections']}"
    )
    return "\n".join(lines)


def _json(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _train_loader(config, source, per_process_batch: int, seed: int) -> grain.DataLoader:
    # As `pipeline.train_loader` (process shards, infinite shuffled epochs, per-record
    # seeds: exact resume), with the instance decoding and augmentation.
    ic, inst = config.input, config.instance
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=True),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    operations = [
        instances.DecodeInstances(),
        instances.InstanceTrainAugment(
            canvas=ic.crop_size,
            min_sizes=inst.min_sizes,
            max_size=inst.max_size,
            flip=ic.flip,
            mean=ic.mean,
            std=ic.std,
            max_instances=inst.max_instances,
        ),
        grain.Batch(per_process_batch, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, worker_count=ic.worker_count
    )


def _eval_batches(config, source, per_process_batch: int) -> Iterator[dict[str, np.ndarray]]:
    # One ordered pass in fixed-shape batches; padding samples `valid == False`, index -1.
    from segjax.data import eval_pipeline

    ic, inst = config.input, config.instance
    canvas = tuple(int(s) for s in ic.eval_pad_size)
    op = instances.InstanceEvalSample(
        canvas=canvas,
        label_canvas=eval_pipeline.label_canvas(config),
        test_size=inst.test_size,
        max_size=inst.max_size,
        mean=ic.mean,
        std=ic.std,
        max_instances=inst.max_instances,
    )
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.ShardByJaxProcess(drop_remainder=False),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    loader = grain.DataLoader(
        data_source=eval_pipeline._IndexedSource(source),
        sampler=sampler,
        operations=[op, grain.Batch(per_process_batch, drop_remainder=False)],
        worker_count=0,
    )
    steps = eval_pipeline.num_eval_steps(len(source), per_process_batch)
    template = None
    emitted = 0
    for batch in loader:
        template = template or {k: v[:0] for k, v in batch.items()}
        yield _pad_samples(batch, per_process_batch)
        emitted += 1
    if template is None and emitted < steps:
        # A process without any record: shapes from one sample of the split.
        one = op.map({"record": source[0], "index": 0})
        template = {k: np.asarray(v)[None][:0] for k, v in one.items()}
    for _ in range(emitted, steps):
        yield _pad_samples(template, per_process_batch)


def _pad_samples(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = batch["index"].shape[0]
    fill = {"index": -1, "original_hw": 1, "resized_hw": 1}
    out = {
        k: np.pad(v, ((0, size - n),) + ((0, 0),) * (v.ndim - 1), constant_values=fill.get(k, 0))
        for k, v in batch.items()
    }
    out["index"] = out["index"].astype(np.int32)
    out["valid"] = np.arange(size) < n
    return out


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The instance segmentation task of `config`."""
    del mesh  # whole images: nothing to shard but the batch
    inst = config.get("instance") or config_block()
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    h, w = config.input.crop_size
    c = base.in_channels(config)
    g = inst.max_instances
    num_classes = config.dataset.num_classes
    class_names = functools.cache(lambda: datasets.class_names(config.dataset))
    palette = functools.cache(lambda: datasets.palette(config.dataset))

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return target_spec(batch_size, (h, w), g, c)

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        return example_targets(
            batch_size, seed, hw=(h, w), max_instances=g, num_classes=num_classes, channels=c
        )

    def init_variables(rng, batch):
        return model.init({"params": rng}, batch["image"], method=MaskRCNN.create_variables)

    def loss(params, batch_stats, batch, rng):
        terms, new_state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            batch["image_hw"],
            mask_rcnn_targets(batch),
            train=True,
            rngs={"sample": rng},
            mutable=["batch_stats"],
        )
        total = sum(terms.values())
        return total, (new_state.get("batch_stats", batch_stats), terms)

    def predict(variables, batch):
        out = model.apply(variables, batch["image"], batch["resized_hw"], train=False)
        out["boxes"] = _to_original(out["boxes"], batch["resized_hw"], batch["original_hw"])
        return out

    # The sample's `valid` travels as `sample_valid` (`valid` is each detection's).
    pass_through = (
        "original_hw",
        "index",
        "gt_boxes",
        "gt_classes",
        "gt_masks",
        "gt_crowd",
        "gt_valid",
    )

    def accumulate(variables, batch, carry):
        outputs = {**predict(variables, batch), **{k: batch[k] for k in pass_through}}
        return carry, {**outputs, "sample_valid": batch["valid"]}

    def merge_outputs(total, outputs):
        for i in np.flatnonzero(np.asarray(outputs["sample_valid"])):
            image_id = int(outputs["index"][i])
            hh, ww = (int(v) for v in outputs["original_hw"][i])
            total["images"].append({"id": image_id, "height": hh, "width": ww})
            total["ground_truth"] += ground_truth_to_coco(outputs, i, image_id)
            total["detections"] += detections_to_coco(outputs, i, image_id, inst.mask_threshold)
        return total

    def finalize(total):
        scores = coco.coco_scores(
            total["images"], total["ground_truth"], total["detections"], range(1, num_classes)
        )
        return {
            **scores,
            "num_images": len(total["images"]),
            "num_gt": sum(1 for a in total["ground_truth"] if not a["iscrowd"]),
            "num_detections": len(total["detections"]),
        }

    def summary(scores):
        return {
            "mask_ap": scores["mask"]["ap"],
            "mask_ap50": scores["mask"]["ap50"],
            "box_ap": scores["box"]["ap"],
            "box_ap50": scores["box"]["ap50"],
        }

    def report(scores):
        body = {
            "summary": {k: _json(v) for k, v in summary(scores).items()},
            "box": {k: _json(v) for k, v in scores["box"].items()},
            "mask": {k: _json(v) for k, v in scores["mask"].items()},
            "num_images": scores["num_images"],
            "num_gt": scores["num_gt"],
            "num_detections": scores["num_detections"],
        }
        return format_report(scores), body

    def panel(sample, prediction, title):
        truth = instances.decode_instances(sample)
        return instance_panel(
            sample["image"],
            truth,
            prediction,
            class_names(),
            palette(),
            title,
            inst.mask_threshold,
            inst.vis_score_threshold,
        )

    def predict_images(variables, images):
        return model.apply(variables, images, train=False)

    def write(image, outputs, fitted, stem):
        ih, iw = image.shape[:2]
        rh, rw = fitted
        factor = np.array([iw / rw, ih / rh, iw / rw, ih / rh], np.float32)
        outputs = {**outputs, "boxes": np.asarray(outputs["boxes"]) * factor}
        drawn = instance_overlay(
            image,
            outputs,
            class_names(),
            palette(),
            inst.mask_threshold,
            inst.vis_score_threshold,
        )
        overlay_path = stem + "_instances.png"
        visualize.save_png(drawn, overlay_path)
        batch = {k: np.asarray(v)[None] for k, v in outputs.items()}
        batch["original_hw"] = np.array([[ih, iw]])
        names = class_names()
        dets = detections_to_coco(batch, 0, 0, inst.mask_threshold)
        for d in dets:
            d.pop("image_id")
            d["class"] = names[d["category_id"]] if d["category_id"] < len(names) else ""
        path = stem + ".json"
        with open(path, "w") as f:
            json.dump({"detections": dets, "height": ih, "width": iw}, f)
        return [path, overlay_path]

    return base.Task(
        name="instance",
        model=model,
        tx=tx,
        schedule=schedule,
        batch_spec=batch_spec,
        init_variables=init_variables,
        loss=loss,
        train_batches=lambda source, per_process_batch, seed: _train_loader(
            config, source, per_process_batch, seed
        ),
        eval_batches=lambda source, per_process_batch: _eval_batches(
            config, source, per_process_batch
        ),
        evaluation=base.Evaluation(
            zeros=dict,
            accumulate=accumulate,
            new_total=lambda: {"images": [], "ground_truth": [], "detections": []},
            merge_outputs=merge_outputs,
            finalize=finalize,
        ),
        predict=predict,
        summary=summary,
        best_metric="mask_ap",
        report=report,
        panel=panel,
        describe=lambda: {
            "mode": "whole image",
            "test_size": int(inst.test_size),
            "max_size": int(inst.max_size),
            "eval_pad_size": list(config.input.eval_pad_size),
            "detections_per_image": int(model.detections_per_img),
            "mask_threshold": float(inst.mask_threshold),
            "global_batch_size": int(config.input.eval_batch_size),
        },
        image_predictor=base.ImagePredictor(predict=predict_images, write=write),
        example_batch=example_batch,
    )


# --------------------------------------------------------------------------- pictures


def _draw_instances(image, masks, boxes, labels, colours, factor: int = 1) -> np.ndarray:
    # Masks blended over the image (upscaled by `factor`), box outlines and labels on top.
    up = lambda x: np.repeat(np.repeat(x, factor, 0), factor, 1)
    out = up(np.asarray(image, np.float32))
    for m, c in zip(masks, colours, strict=True):
        m = up(m)
        out[m] = 0.5 * out[m] + 0.5 * np.asarray(c, np.float32)
    canvas = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for b, text, c in zip(boxes, labels, colours, strict=True):
        b = [float(v) * factor for v in b]
        draw.rectangle(b, outline=tuple(int(v) for v in c), width=2)
        draw.text((b[0] + 2, b[1] + 1), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def instance_overlay(
    image, outputs, class_names, palette, mask_threshold, score_threshold, factor: int = 1
):
    """The detections above `score_threshold` (boxes in `image`'s pixels) drawn on it,
    upscaled by `factor`."""
    h, w = image.shape[:2]
    keep = np.asarray(outputs["valid"], bool) & (np.asarray(outputs["scores"]) >= score_threshold)
    boxes = np.asarray(outputs["boxes"])[keep]
    masks = coco.paste_masks(np.asarray(outputs["masks"])[keep], boxes, h, w) >= mask_threshold
    classes = np.asarray(outputs["classes"])[keep]
    scores = np.asarray(outputs["scores"])[keep]
    table = visualize.palette_array(palette)
    labels = [
        f"{class_names[c] if c < len(class_names) else c} {s:.2f}"
        for c, s in zip(classes, scores, strict=True)
    ]
    return _draw_instances(image, masks, boxes, labels, [table[c] for c in classes], factor)


def instance_panel(
    image, truth, prediction, class_names, palette, title, mask_threshold, score_threshold
) -> np.ndarray:
    """Image | ground-truth instances | detections above `score_threshold`, with a title."""
    table = visualize.palette_array(palette)
    factor = max(1, int(np.ceil(192 / image.shape[0])))
    gt = _draw_instances(
        image,
        truth["masks"].astype(bool),
        truth["boxes"],
        [class_names[c] for c in truth["classes"]],
        [table[c] for c in truth["classes"]],
        factor,
    )
    pred = instance_overlay(
        image, prediction, class_names, palette, mask_threshold, score_threshold, factor
    )
    plain = np.repeat(np.repeat(np.asarray(image, np.uint8), factor, 0), factor, 1)
    th, tw = plain.shape[:2]
    canvas = Image.new("RGB", (3 * tw + 16, th + 40), visualize.BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=visualize.TEXT_COLOR)
    names = ("image", "ground truth", f"prediction (score >= {score_threshold:g})")
    for k, (tile, name) in enumerate(zip((plain, gt, pred), names, strict=True)):
        canvas.paste(Image.fromarray(tile), (4 + k * (tw + 4), 20))
        draw.text((8 + k * (tw + 4), th + 24), name, fill=visualize.TEXT_COLOR)
    return np.asarray(canvas)
