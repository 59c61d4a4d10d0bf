"""Panoptic segmentation with Panoptic-DeepLab or Panoptic FPN: stuff and things in one map.

The task behind `config.task = "panoptic"`, on a panoptic dataset (one whose records hold
an `instance` map next to the semantic `label`, and whose metadata says which classes
are things: `segjax_shapes_panoptic`, `coco_panoptic`, `cityscapes_panoptic`):

- model: `config.model.name`, a Panoptic-DeepLab (`panoptic_deeplab_r50`,
  `panoptic_deeplab_tiny`: semantic `logits`, `center` heatmap, `offset`s) or a Panoptic
  FPN (`segjax.models.panoptic_fpn.PANOPTIC_FPN_MODELS`: `panoptic_fpn_r50`,
  `panoptic_fpn_tiny`: Mask R-CNN's detections and `semantic_logits` of the stuff classes
  + one "thing" class). The two families differ in the few pieces of `_Family`; the
  data, evaluation, reports and pictures below are the same.
- batch: the shared augmentation on the packed (class, instance) label
  (`segjax.data.panoptic_targets`), then the targets, all of the crop's fixed shape:
  Panoptic-DeepLab's `image`, `semantic`, `center`, `offset` and the three loss weights;
  Panoptic FPN's Mask R-CNN targets (`boxes`, `classes`, `masks`, `instance_valid`,
  padded to `max_instances`, `image_hw`) and `semantic` (things collapsed to class 0).
- loss: `semantic_loss_weight` x bootstrapped cross-entropy (the hardest `top_k_ratio`
  of the pixels, each weighted by its `semantic_weight`; small objects count
  `small_instance_weight` times), + `center_loss_weight` x weighted MSE of the heatmap,
  + `offset_loss_weight` x weighted L1 of the offsets, as the paper (1, 200, 0.01); plus
  `config.loss.aux_weight` x the semantic term on `aux_logits` when the model has them.
  Panoptic FPN: Mask R-CNN's five terms + `lambda_sem` x the semantic cross-entropy
  (mean over non-void pixels), as the paper.
- evaluation: one program per padded eval size: the forward pass, the post-processing
  (`segjax.panoptic_inference`: Panoptic-DeepLab's grouping, or Panoptic FPN's
  heuristic merge) and the panoptic-quality counts
  (`segjax.panoptic_metrics`) accumulated on device; PQ / SQ / RQ on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import losses, optim, panoptic_metrics, visualize
from segjax.data import datasets, eval_pipeline, pipeline
from segjax.data import panoptic_targets as targets
from segjax.models.mask_rcnn import LOSS_TERMS
from segjax.models.panoptic_fpn import PANOPTIC_FPN_MODELS, PanopticFPN, build_panoptic_fpn
from segjax.panoptic_inference import combine_semantic_and_instances, panoptic_postprocess
from segjax.tasks import base, instance, semantic

Array = jax.Array
# The float32 IoU sums of the carry are flushed to the host (float64) this often.
_BATCHES_PER_FLUSH = 64


def config_block() -> ml_collections.ConfigDict:
    """The `config.panoptic` keys and their defaults (the paper's Cityscapes settings)."""
    c = ml_collections.ConfigDict()
    # Targets: Gaussian of the center heatmap (pixels); objects smaller than
    # small_instance_area pixels weigh small_instance_weight in the semantic loss.
    c.center_sigma = 8.0
    c.small_instance_area = 4096
    c.small_instance_weight = 3.0
    # Loss: bootstrapped cross-entropy over the hardest top_k_ratio of the pixels (1.0:
    # the mean over all pixels), MSE on the heatmap, L1 on the offsets.
    c.top_k_ratio = 0.2
    c.semantic_loss_weight = 1.0
    c.center_loss_weight = 200.0
    c.offset_loss_weight = 0.01
    # Post-processing: center NMS window, threshold and count; the fewest pixels a stuff
    # class needs in an image.
    c.nms_kernel = 7
    c.center_threshold = 0.1
    c.max_instances = 200
    c.stuff_area = 2048
    # The most segments one image may hold (prediction or ground truth) for the metric.
    c.max_segments = 256
    # Panoptic FPN (detectron2's COCO settings; max_instances there: the ground-truth
    # objects of a training crop, and the best detections entering the merge; stuff_area:
    # the fewest still-free pixels a stuff segment needs, detectron2's 4096): the weight
    # of the semantic loss, and the merge's thresholds on a detection's score, on the
    # share of its mask already taken, and on its pasted mask probabilities.
    c.lambda_sem = 0.5
    c.instance_score_threshold = 0.5
    c.overlap_threshold = 0.5
    c.mask_threshold = 0.5
    return c


def bootstrapped_cross_entropy(
    logits: Array, labels: Array, weights: Array, *, ignore_index: int, top_k_ratio: float
) -> Array:
    """Mean of the hardest `top_k_ratio` of the weighted per-pixel cross-entropies.

    As Panoptic-DeepLab's `DeepLabCE`: every pixel's loss is `weight * CE` (0 on
    `ignore_index`); the `int(top_k_ratio * B * H * W)` largest are averaged (with
    `top_k_ratio = 1` the mean over all pixels, void ones included as zeros).

    Args:
      logits: float [B, H, W, K]; labels: int [B, H, W]; weights: float [B, H, W].
    """
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    pixel = jnp.where(valid, nll * weights, 0.0).reshape(-1)
    if top_k_ratio >= 1.0:
        return jnp.mean(pixel)
    k = max(int(top_k_ratio * pixel.size), 1)
    return jnp.mean(jax.lax.top_k(pixel, k)[0])


def weighted_mse(pred: Array, target: Array, weights: Array) -> Array:
    """sum(w * (pred - target)^2) / sum(w) over [B, H, W] (0 when no weight)."""
    total = jnp.sum(weights * (pred - target) ** 2)
    return jnp.where(jnp.sum(weights) > 0, total / jnp.maximum(jnp.sum(weights), 1e-12), 0.0)


def weighted_l1(pred: Array, target: Array, weights: Array) -> Array:
    """sum(w * |pred - target|) / sum(w); pred, target [B, H, W, 2], w [B, H, W].

    Both channels of a pixel count against its one weight, as the reference.
    """
    total = jnp.sum(weights[..., None] * jnp.abs(pred - target))
    return jnp.where(jnp.sum(weights) > 0, total / jnp.maximum(jnp.sum(weights), 1e-12), 0.0)


def panoptic_loss(
    outputs: dict[str, Array],
    batch: dict[str, Array],
    pc: ml_collections.ConfigDict,
    *,
    ignore_index: int,
    aux_weight: float,
) -> tuple[Array, dict[str, Array]]:
    """The weighted sum of the semantic, center and offset losses (module docstring)."""

    def semantic_term(logits):
        return bootstrapped_cross_entropy(
            logits,
            batch["semantic"],
            batch["semantic_weight"],
            ignore_index=ignore_index,
            top_k_ratio=pc.top_k_ratio,
        )

    terms = {
        "semantic": semantic_term(outputs["logits"]),
        "center": weighted_mse(outputs["center"], batch["center"], batch["center_weight"]),
        "offset": weighted_l1(outputs["offset"], batch["offset"], batch["offset_weight"]),
    }
    total = (
        pc.semantic_loss_weight * terms["semantic"]
        + pc.center_loss_weight * terms["center"]
        + pc.offset_loss_weight * terms["offset"]
    )
    if outputs.get("aux_logits") is not None:
        terms["aux"] = semantic_term(outputs["aux_logits"])
        total = total + aux_weight * pc.semantic_loss_weight * terms["aux"]
    terms["total"] = total
    return total, terms


def _check_config(config: ml_collections.ConfigDict) -> None:
    # What the panoptic task does not do (rather than silently doing something else).
    problems = []
    if config.loss.name != "cross_entropy":
        problems.append(
            f"config.loss.name={config.loss.name!r}: the panoptic task's semantic loss is the "
            "bootstrapped cross-entropy of config.panoptic.top_k_ratio; leave "
            "'cross_entropy'"
        )
    if eval_pipeline.resize_setting(config) is not None:
        problems.append(
            f"config.eval.resize={tuple(config.eval.resize)}: the panoptic task scores "
            "images at their size on the canvas; use (0, 0)"
        )
    if config.eval.mode != "whole" or tuple(config.eval.scales) != (1.0,) or config.eval.flip:
        problems.append(
            "config.eval.mode/scales/flip: the panoptic task predicts whole images, one "
            "scale, no flip ('whole', (1.0,), False)"
        )
    if problems:
        raise ValueError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class _Family:
    """What differs between the panoptic model families; the rest of the task is shared.

    `panoptic_maps(variables, images, image_hw)` is the forward pass and the
    post-processing: `{"class", "instance"}` int32 [B, H, W] maps of the canvas.
    """

    model: object
    batch_spec: Callable[[int], dict[str, jax.ShapeDtypeStruct]]
    example_batch: Callable[..., dict[str, np.ndarray]]
    init_variables: Callable
    loss: Callable
    train_targets: object  # the grain op after the shared augmentation
    panoptic_maps: Callable[..., dict[str, Array]]
    describe: dict


def _panoptic_deeplab(config, pc, thing_classes) -> _Family:
    # Panoptic-DeepLab: a segmentor of `MODELS` with `center` and `offset` outputs.
    model = semantic.build_model(config)
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index
    h, w = config.input.crop_size

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        f32 = jnp.float32
        return {
            "image": jax.ShapeDtypeStruct((batch_size, h, w, base.in_channels(config)), f32),
            "semantic": jax.ShapeDtypeStruct((batch_size, h, w), jnp.int32),
            "center": jax.ShapeDtypeStruct((batch_size, h, w), f32),
            "offset": jax.ShapeDtypeStruct((batch_size, h, w, 2), f32),
            "semantic_weight": jax.ShapeDtypeStruct((batch_size, h, w), f32),
            "center_weight": jax.ShapeDtypeStruct((batch_size, h, w), f32),
            "offset_weight": jax.ShapeDtypeStruct((batch_size, h, w), f32),
        }

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        shape = (batch_size, h, w)
        return {
            "image": rng.standard_normal((*shape, base.in_channels(config)), dtype=np.float32),
            "semantic": rng.integers(0, num_classes, shape, dtype=np.int32),
            "center": rng.random(shape, dtype=np.float32),
            "offset": rng.normal(scale=5.0, size=(*shape, 2)).astype(np.float32),
            "semantic_weight": np.ones(shape, np.float32),
            "center_weight": np.ones(shape, np.float32),
            "offset_weight": (rng.random(shape) < 0.5).astype(np.float32),
        }

    def loss(params, batch_stats, batch, rng):
        outputs, new_batch_stats = base.train_apply(model, params, batch_stats, batch["image"], rng)
        total, terms = panoptic_loss(
            outputs, batch, pc, ignore_index=ignore_index, aux_weight=config.loss.aux_weight
        )
        return total, (new_batch_stats, terms)

    def panoptic_maps(variables, images, image_hw):
        outputs = model.apply(variables, images, train=False)
        return panoptic_postprocess(
            outputs["logits"],
            outputs["center"],
            outputs["offset"],
            thing_classes=thing_classes(),
            center_threshold=pc.center_threshold,
            nms_kernel=pc.nms_kernel,
            top_k=pc.max_instances,
            stuff_area=pc.stuff_area,
            image_hw=image_hw,
        )

    keys = ("nms_kernel", "center_threshold", "max_instances", "stuff_area")
    return _Family(
        model=model,
        batch_spec=batch_spec,
        example_batch=example_batch,
        init_variables=lambda rng, batch: semantic.init_variables(model, rng, batch["image"].shape),
        loss=loss,
        train_targets=lambda: targets.PanopticTargets(
            thing_classes(),
            ignore_index=ignore_index,
            sigma=pc.center_sigma,
            small_instance_area=pc.small_instance_area,
            small_instance_weight=pc.small_instance_weight,
        ),
        panoptic_maps=panoptic_maps,
        describe={
            "mode": "whole image, Panoptic-DeepLab post-processing",
            **{k: pc[k] for k in keys},
        },
    )


def _panoptic_fpn(config, pc, thing_classes) -> _Family:
    # Panoptic FPN: Mask R-CNN + the semantic FPN head, the heuristic merge.
    things = np.asarray(thing_classes(), bool)
    model = build_panoptic_fpn(
        config.model.name,
        num_things=int(things.sum()),
        num_stuff=int((~things).sum()),
        dtype=base.compute_dtype(config),
        **instance.model_kwargs(config),
    )
    ignore_index = config.dataset.ignore_index
    hw, g = tuple(config.input.crop_size), pc.max_instances

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        spec = instance.target_spec(batch_size, hw, g, base.in_channels(config))
        return {**spec, "semantic": jax.ShapeDtypeStruct((batch_size, *hw), jnp.int32)}

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        batch = instance.example_targets(
            batch_size,
            seed,
            hw=hw,
            max_instances=g,
            num_classes=int(things.sum()) + 1,
            channels=base.in_channels(config),
        )
        rng = np.random.default_rng(seed + 1)
        sem = rng.integers(0, int((~things).sum()) + 1, (batch_size, *hw), dtype=np.int32)
        return {**batch, "semantic": sem}

    def loss(params, batch_stats, batch, rng):
        outputs, new_state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            batch["image"],
            batch["image_hw"],
            instance.mask_rcnn_targets(batch),
            train=True,
            rngs={"sample": rng},
            mutable=["batch_stats"],
        )
        terms = {k: outputs[k] for k in LOSS_TERMS}
        terms["loss_sem_seg"] = losses.cross_entropy(
            outputs["semantic_logits"], batch["semantic"], ignore_index=ignore_index
        )
        total = sum(terms[k] for k in LOSS_TERMS) + pc.lambda_sem * terms["loss_sem_seg"]
        terms["total"] = total
        return total, (new_state.get("batch_stats", batch_stats), terms)

    def panoptic_maps(variables, images, image_hw):
        outputs = model.apply(variables, images, image_hw, train=False)
        return combine_semantic_and_instances(
            outputs.pop("semantic_logits"),
            outputs,
            thing_classes=things,
            score_threshold=pc.instance_score_threshold,
            overlap_threshold=pc.overlap_threshold,
            stuff_area=pc.stuff_area,
            mask_threshold=pc.mask_threshold,
            max_instances=pc.max_instances,
            image_hw=image_hw,
        )

    keys = ("instance_score_threshold", "overlap_threshold", "stuff_area", "mask_threshold")
    return _Family(
        model=model,
        batch_spec=batch_spec,
        example_batch=example_batch,
        init_variables=lambda rng, batch: model.init(
            {"params": rng}, batch["image"], method=PanopticFPN.create_variables
        ),
        loss=loss,
        train_targets=lambda: targets.PanopticFPNTargets(
            things, ignore_index=ignore_index, max_instances=g
        ),
        panoptic_maps=panoptic_maps,
        describe={
            "mode": "whole image, Panoptic FPN merge of instances and semantics",
            "max_instances": min(int(pc.max_instances), int(model.instance.detections_per_img)),
            **{k: pc[k] for k in keys},
        },
    )


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The panoptic segmentation task of `config`: Panoptic-DeepLab or Panoptic FPN,
    picked by `config.model.name`."""
    del mesh  # whole images: nothing to shard but the batch
    _check_config(config)
    pc = config.get("panoptic") or config_block()
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index
    class_names = functools.cache(lambda: datasets.class_names(config.dataset))
    palette = functools.cache(lambda: datasets.palette(config.dataset))

    @functools.cache
    def thing_classes() -> tuple[bool, ...]:
        things = datasets.thing_classes(config.dataset)
        if len(things) != num_classes:
            raise ValueError(
                f"dataset {config.dataset.name!r} has {len(things)} classes, "
                f"config.dataset.num_classes={num_classes}"
            )
        return things

    make = _panoptic_fpn if config.model.name in PANOPTIC_FPN_MODELS else _panoptic_deeplab
    family = make(config, pc, thing_classes)
    model = family.model

    def train_batches(source, per_process_batch, seed):
        return pipeline.train_loader(
            config,
            targets.PanopticSource(source, ignore_index=ignore_index),
            per_process_batch=per_process_batch,
            seed=seed,
            extra_operations=[family.train_targets()],
        )

    def predict(variables, batch):
        """Predicted and true (class, instance) maps on the label canvas (-1: void)."""
        pred = family.panoptic_maps(variables, batch["image"], batch["resized_hw"])
        hl, wl = batch["label"].shape[1:]
        hc, wc = pred["class"].shape[1:]
        pad = ((0, 0), (0, max(hl - hc, 0)), (0, max(wl - wc, 0)))
        gt_class, gt_instance = targets.unpack(batch["label"])
        return {
            "class": jnp.pad(pred["class"], pad, constant_values=-1)[:, :hl, :wl],
            "instance": jnp.pad(pred["instance"], pad)[:, :hl, :wl],
            # The panel's decoded sample holds only the semantic label: the ground truth
            # rides along with the prediction.
            "gt_class": gt_class,
            "gt_instance": gt_instance,
        }

    def accumulate(variables, batch, carry):
        p = predict(variables, batch)
        stats = panoptic_metrics.panoptic_stats(
            p["class"],
            p["instance"],
            p["gt_class"],
            p["gt_instance"],
            thing_classes=thing_classes(),
            max_segments=pc.max_segments,
            valid=batch["valid"],
        )
        return jax.tree.map(jnp.add, carry, stats), {}

    def summary(scores):
        keys = ("pq", "sq", "rq", "pq_things", "pq_stuff")
        return {k: float(scores[k]) for k in keys}

    def report(scores):
        names, things = class_names(), thing_classes()
        return (
            panoptic_metrics.format_pq_report(scores, names, things),
            panoptic_metrics.pq_report_dict(scores, names, things),
        )

    def panel(sample, pred, title):
        hl, wl = sample["label"].shape
        crop = (slice(0, hl), slice(0, wl))
        return visualize.panoptic_panel(
            sample["image"],
            (pred["gt_class"][crop], pred["gt_instance"][crop]),
            (pred["class"][crop], pred["instance"][crop]),
            class_names(),
            palette(),
            title=title,
        )

    def predict_images(variables, images):
        return family.panoptic_maps(variables, images, None)

    def write(image, pred, fitted, stem):
        return write_panoptic_files(
            image, pred["class"], pred["instance"], fitted, stem, class_names(), palette(),
            thing_classes(),
        )  # fmt: skip

    return base.Task(
        name="panoptic",
        model=model,
        tx=tx,
        schedule=schedule,
        batch_spec=family.batch_spec,
        init_variables=family.init_variables,
        loss=family.loss,
        train_batches=train_batches,
        eval_batches=lambda source, per_process_batch: eval_pipeline.eval_batches(
            config,
            targets.PanopticSource(source, ignore_index=ignore_index),
            per_process_batch=per_process_batch,
        ),
        evaluation=base.Evaluation(
            zeros=lambda: panoptic_metrics.zero_stats(num_classes),
            accumulate=accumulate,
            new_total=lambda: _HostTotal(num_classes),
            merge_carry=lambda total, carry: total.add(carry),
            finalize=lambda total: panoptic_metrics.pq_scores(
                total.accumulator.total, thing_classes=thing_classes()
            ),
            batches_per_flush=lambda batch: _BATCHES_PER_FLUSH,
        ),
        predict=predict,
        summary=summary,
        best_metric="pq",
        report=report,
        panel=panel,
        describe=lambda: {
            **family.describe,
            "eval_pad_size": list(config.input.eval_pad_size),
            "global_batch_size": int(config.input.eval_batch_size),
        },
        image_predictor=base.ImagePredictor(predict=predict_images, write=write),
        example_batch=family.example_batch,
    )


class _HostTotal:
    """The host total of a pass: a `PanopticAccumulator` fed with fetched carries."""

    def __init__(self, num_classes: int):
        self.accumulator = panoptic_metrics.PanopticAccumulator(num_classes)

    def add(self, carry) -> _HostTotal:
        self.accumulator.update(carry)
        return self


def write_panoptic_files(
    image: np.ndarray,
    cls: np.ndarray,
    instance: np.ndarray,
    fitted: tuple[int, int],
    stem: str,
    class_names,
    palette,
    thing_classes,
) -> list[str]:
    """A prediction of a user's image in the COCO panoptic format, plus a picture.

    The (class, instance) maps of the image's region on the canvas are resized (nearest)
    back to its original size and written as `<stem>.png` (segment id per pixel, RGB =
    id % 256, id // 256 % 256, id // 65536; 0 = void) with `<stem>.json` (`segments_info`:
    id, category_id (the class index), category name, isthing, area) and
    `<stem>_panoptic.png` (the image | the map with instance outlines).
    """
    h, w = image.shape[:2]
    rh, rw = fitted
    cls = cv2.resize(np.asarray(cls[:rh, :rw], np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    instance = cv2.resize(
        np.asarray(instance[:rh, :rw], np.int32), (w, h), interpolation=cv2.INTER_NEAREST
    )
    ids = np.zeros((h, w), np.int64)
    segments = []
    pairs = np.unique(np.stack([cls[cls >= 0], instance[cls >= 0]], -1), axis=0)
    for n, (c, i) in enumerate(pairs, start=1):
        mask = (cls == c) & (instance == i)
        ids[mask] = n
        segments.append(
            {
                "id": n,
                "category_id": int(c),
                "category": class_names[int(c)],
                "isthing": bool(thing_classes[int(c)]),
                "area": int(mask.sum()),
            }
        )
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    png, info = stem + ".png", stem + ".json"
    visualize.save_png(rgb, png)
    with open(info, "w") as f:
        json.dump({"file_name": os.path.basename(png), "segments_info": segments}, f, indent=1)
    panel = visualize.panoptic_panel(image, None, (cls, instance), class_names, palette)
    visualize.save_png(panel, stem + "_panoptic.png")
    return [png, info]
