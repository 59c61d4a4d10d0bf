"""Volumetric segmentation: the semantic task on NDHWC volumes, scored per volume.

The task behind `config.task = "volume"`:

- model: `config.model.name` from the registry's `VOLUME_MODELS` (3-D U-Net, V-Net),
  `config.model`'s other keys as its arguments; `logits` [B, D, H, W, K].
- batch: `image` float32 [B, d, h, w, C] (`config.volume.crop_size`,
  `config.volume.in_channels`), `label` int32 [B, d, h, w] (`segjax.data.volumes`).
- loss: `config.loss` (any of `segjax.losses`, e.g. `"cross_entropy+dice"`: the soft
  Dice is V-Net's formulation) over the voxels of the global batch.
- evaluation: each volume, padded to `config.volume.eval_pad_size`, is predicted by
  sliding windows (`segjax.volume_inference`, MONAI's rules: `roi_size`, `overlap`,
  Gaussian blending) in the one jitted eval program, which also accumulates a
  confusion matrix [K, K] and returns per-volume Dice sums; the host adds each
  volume's HD95 (scipy, in mm of the volume's spacing). Scores: per class, hard and
  soft Dice and HD95 averaged over volumes (`segjax.volume_metrics`'s conventions),
  IoU and accuracy from the confusion matrix; headline `mean_dice` over the classes
  of `config.volume.include_background`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import (
    losses,
    metrics,
    optim,
    sharding,
    visualize,
    volume_inference,
    volume_metrics,
)
from segjax.data import datasets, volumes
from segjax.tasks import base, semantic

_INT32_MAX = 2**31 - 1
# config.volume.spatial_split: what its values split (0: the batch, as the other tasks).
SPATIAL_SPLITS = {0: "batch", 1: "depth", 2: "height"}


def config_block() -> ml_collections.ConfigDict:
    """The `config.volume` keys and their defaults."""
    c = ml_collections.ConfigDict()
    c.in_channels = 1  # C of image [D, H, W, C]
    c.crop_size = (32, 32, 32)  # training crop (D, H, W)
    c.flip_axes = (0, 1, 2)  # random flips (probability 1/2 each) of these axes
    c.rotate90 = True  # random multiples of 90 degrees in the H-W plane (needs H == W)
    c.normalization = "zscore"  # "zscore" per volume and channel, "ct" (window), "none"
    c.ct_window = (-1000.0, 1000.0)  # HU clipped and scaled to [0, 1] by "ct"
    c.target_spacing = (0.0, 0.0, 0.0)  # mm (D, H, W) to resample to; zeros: as stored
    c.eval_pad_size = (48, 48, 48)  # eval volumes are padded to this canvas
    c.roi_size = (32, 32, 32)  # sliding window
    c.overlap = 0.5
    c.blend = "gaussian"  # or "constant"
    c.sigma_scale = 0.125
    c.window_batch = 4  # window positions per model call
    c.include_background = False  # in the mean Dice / HD95
    c.hd95 = True  # compute the 95% Hausdorff distance (host, per volume and class)
    # Training batches split over the devices along: 0 the batch (data parallel), 1 each
    # volume's depth, 2 its height (one volume too large for a device; see spatially_sharded).
    c.spatial_split = 0
    return c


def build_model(config: ml_collections.ConfigDict):
    """The volume model named by `config.model.name`."""
    from segjax.models.registry import VOLUME_MODELS

    if config.model.name not in VOLUME_MODELS:
        raise ValueError(
            f"config.model.name={config.model.name!r} is not a volume model; the volume "
            f"task needs one of {sorted(VOLUME_MODELS)}"
        )
    return semantic.build_model(config)


def summary(scores: dict[str, Any]) -> dict[str, float]:
    """Mean Dice, mean soft Dice, mean HD95 (distance, not a fraction), mIoU, accuracy."""
    keys = ("mean_dice", "mean_soft_dice", "miou", "voxel_accuracy", "mean_hd95")
    return {k: float(scores[k]) for k in keys}


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100 * x:.2f}"


def _dist(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.2f}"


def format_report(scores: dict[str, Any], class_names) -> str:
    """Per class: Dice, soft Dice, HD95 (+ volumes where it was infinite), IoU, volumes."""
    width = max([len("voxel accuracy"), *map(len, class_names)])
    header = (
        f"{'class':<{width}} {'Dice':>7} {'sDice':>7} {'HD95':>8} {'HD=inf':>6} "
        f"{'IoU':>7} {'volumes':>7}"
    )
    lines = [header, "-" * len(header)]
    for k, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}} {_pct(scores['dice'][k]):>7} {_pct(scores['soft_dice'][k]):>7} "
            f"{_dist(scores['hd95'][k]):>8} {int(scores['hd95_infinite'][k]):>6d} "
            f"{_pct(scores['iou'][k]):>7} {int(scores['volumes'][k]):>7d}"
        )
    lines.append("-" * len(header))
    lines.append(f"{'mean Dice':<{width}} {_pct(scores['mean_dice']):>7}")
    lines.append(f"{'mean soft Dice':<{width}} {_pct(scores['mean_soft_dice']):>7}")
    lines.append(f"{'mean HD95':<{width}} {_dist(scores['mean_hd95']):>7}")
    lines.append(f"{'mIoU':<{width}} {_pct(scores['miou']):>7}")
    lines.append(f"{'voxel accuracy':<{width}} {_pct(scores['voxel_accuracy']):>7}")
    lines.append(f"{'volumes':<{width}} {scores['num_volumes']:>7d}")
    lines.append(
        "Dice, HD95: mean over the volumes whose ground truth has the class (HD95 in the "
        "voxel spacing's unit, over finite values; HD=inf counts volumes where only one of "
        f"prediction and ground truth has it); means over {scores['headline_classes']}."
    )
    return "\n".join(lines)


def _json(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def report_dict(scores: dict[str, Any], class_names) -> dict[str, Any]:
    """The scores as JSON: `summary` and one entry per class (fractions; HD95 distances)."""
    return {
        "summary": {k: _json(v) for k, v in summary(scores).items()}
        | {"num_volumes": scores["num_volumes"]},
        "classes": [
            {
                "name": name,
                "index": k,
                "dice": _json(scores["dice"][k]),
                "soft_dice": _json(scores["soft_dice"][k]),
                "hd95": _json(scores["hd95"][k]),
                "hd95_infinite": int(scores["hd95_infinite"][k]),
                "iou": _json(scores["iou"][k]),
                "volumes": int(scores["volumes"][k]),
            }
            for k, name in enumerate(class_names)
        ],
    }


def _slice_panel(sample, pred, class_names, palette, ignore_index, title) -> np.ndarray:
    # The axial slice with the most labelled foreground: image | ground truth | prediction.
    label = sample["label"]
    fg = ((label > 0) & (label != ignore_index)).sum(axis=(1, 2))
    z = int(np.argmax(fg)) if fg.any() else label.shape[0] // 2
    channel = sample["image"][z, ..., 0]
    lo, hi = np.percentile(channel, (1, 99))
    grey = np.clip((channel - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    h, w = label.shape[1:]
    return visualize.comparison_panel(
        np.repeat(grey[..., None], 3, -1),
        label[z],
        np.asarray(pred)[z, :h, :w],
        class_names,
        palette,
        ignore_index=ignore_index,
        title=f"{title}  slice {z}/{label.shape[0]}",
    )


def spatially_sharded(loss, mesh: jax.sharding.Mesh, axis: int = 1):
    """`loss` (a `Task.loss`) with its volumes split along `axis` (1: depth, 2: height)
    over `mesh` instead of along the batch.

    The batch's `image` [B, D, H, W, C] and `label` [B, D, H, W] are constrained to
    `sharding.spatial_sharding`; XLA propagates the split through the model, so every
    activation is sharded along the same axis (convolutions exchange halos between
    neighbouring devices, BatchNorm and the loss reduce across them). The value and the
    gradients are those of the unsplit computation, up to float summation order.
    """

    split = split_batch_sharding(mesh, axis)

    def split_loss(params, batch_stats, batch, rng):
        batch = dict(batch)
        for key, s in split.items():
            batch[key] = jax.lax.with_sharding_constraint(batch[key], s)
        return loss(params, batch_stats, batch, rng)

    return split_loss


def split_batch_sharding(mesh: jax.sharding.Mesh, axis: int) -> dict[str, Any]:
    """The shardings of a training batch split along volume axis `axis` (1: depth, 2:
    height) over `mesh`: `image` [B, D, H, W, C] and `label` [B, D, H, W]."""
    return {
        "image": sharding.spatial_sharding(mesh, 5, axis),
        "label": sharding.spatial_sharding(mesh, 4, axis),
    }


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The volumetric segmentation task of `config`.

    With `config.volume.spatial_split` (1: depth, 2: height) its loss splits each training
    volume over `mesh` (default: all devices) along that axis (`spatially_sharded`) and
    `Task.batch_sharding` tells the loop to place batches so; evaluation windows still run
    inside each volume's program, the eval batch split over the devices.
    """
    vc = config.volume
    split_axis = int(vc.get("spatial_split", 0))
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=losses.loss_options(config),
    )
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index
    crop = tuple(int(s) for s in vc.crop_size)
    channels = int(vc.in_channels)
    class_names = functools.cache(lambda: datasets.class_names(config.dataset))
    palette = functools.cache(lambda: datasets.palette(config.dataset))
    include = np.ones(num_classes, bool)
    if not vc.include_background:
        include[0] = False
    options = volumes.VolumeOptions.from_config(config)
    loss = semantic.make_loss(model, loss_fn, aux_weight=config.loss.aux_weight)
    batch_sharding = None
    if split_axis:
        # One process only (train_lib refuses more): each host reads its own volumes, and
        # every device of a split volume would need slices of all of them.
        mesh = sharding.make_mesh() if mesh is None else mesh
        loss = spatially_sharded(loss, mesh, split_axis)
        batch_sharding = split_batch_sharding(mesh, split_axis)

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            "image": jax.ShapeDtypeStruct((batch_size, *crop, channels), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size, *crop), jnp.int32),
        }

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "image": rng.standard_normal((batch_size, *crop, channels), dtype=np.float32),
            "label": rng.integers(0, num_classes, (batch_size, *crop), dtype=np.int32),
        }

    def logits_of(variables, images):
        def apply_fn(x):
            return model.apply(variables, x, train=False)["logits"]

        return volume_inference.sliding_window_inference(
            apply_fn,
            images,
            roi_size=tuple(int(s) for s in vc.roi_size),
            overlap=float(vc.overlap),
            mode=vc.blend,
            sigma_scale=float(vc.sigma_scale),
            window_batch=int(vc.window_batch),
        )

    def accumulate(variables, batch, cm):
        logits = logits_of(variables, batch["image"])
        probs = jax.nn.softmax(logits, axis=-1)
        pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        cm = cm + metrics.confusion_matrix(
            pred, batch["label"], num_classes, ignore_index=ignore_index, valid=batch["valid"]
        )
        terms = volume_metrics.dice_terms(probs, pred, batch["label"], ignore_index=ignore_index)
        outputs = {"terms": terms, "valid": batch["valid"], "spacing": batch["spacing"]}
        if vc.hd95:
            outputs |= {"pred": pred.astype(jnp.uint8), "label": batch["label"]}
        return cm, outputs

    def merge_outputs(total, outputs):
        valid = np.asarray(outputs["valid"], bool)
        hard, soft = volume_metrics.dice_from_terms(np.asarray(outputs["terms"])[valid])
        total["hard"].append(hard)
        total["soft"].append(soft)
        for i in np.flatnonzero(valid):
            if vc.hd95:
                hd = volume_metrics.volume_hd95(
                    np.asarray(outputs["pred"][i]),
                    np.asarray(outputs["label"][i]),
                    num_classes,
                    ignore_index=ignore_index,
                    spacing=tuple(float(s) for s in outputs["spacing"][i]),
                )
            else:
                hd = np.full(num_classes, np.nan)
            total["hd95"].append(hd[None])
        return total

    def merge_carry(total, cm):
        total["cm"] = total["cm"] + np.asarray(cm, np.int64)
        return total

    def new_total():
        return {"cm": np.zeros((num_classes, num_classes), np.int64), "hard": [], "soft": [],
                "hd95": []}  # fmt: skip

    def finalize(total):
        empty = np.zeros((0, num_classes))
        stack = lambda key: np.concatenate(total[key]) if total[key] else empty
        scores = volume_metrics.volume_scores(
            stack("hard"), stack("soft"), stack("hd95"), include=include
        )
        cm_scores = metrics.segmentation_scores(total["cm"])
        names = class_names()
        return scores | {
            "iou": cm_scores["iou"],
            "accuracy": cm_scores["accuracy"],
            "miou": cm_scores["miou"],
            "voxel_accuracy": cm_scores["pixel_accuracy"],
            "confusion_matrix": total["cm"],
            "headline_classes": ", ".join(
                n for n, keep in zip(names, include, strict=True) if keep
            ),
        }

    def batches_per_flush(batch):
        return max((_INT32_MAX - 1) // int(np.prod(batch["label"].shape)), 1)

    def report(scores):
        names = class_names()
        return format_report(scores, names), report_dict(scores, names)

    def predict(variables, batch):
        return jnp.argmax(logits_of(variables, batch["image"]), axis=-1).astype(jnp.int32)

    def panel(sample, pred, title):
        # `sample` is `transforms.decode_record`'s: the record's label [D, H, W, 1].
        prepared = volumes.prepare_volume(sample, options)
        return _slice_panel(prepared, pred, class_names(), palette(), ignore_index, title)

    def plots(total, title):
        return {
            "confusion_matrix": visualize.confusion_matrix_image(
                total["cm"], class_names(), title=title
            )
        }

    def describe():
        return {
            "mode": (
                f"sliding window {'x'.join(map(str, vc.roi_size))} overlap {vc.overlap:g} "
                f"{vc.blend}"
            ),
            "eval_pad_size": list(vc.eval_pad_size),
            "target_spacing": list(vc.target_spacing),
            "normalization": vc.normalization,
            "global_batch_size": int(config.input.eval_batch_size),
        }

    return base.Task(
        name="volume",
        model=model,
        tx=tx,
        schedule=schedule,
        batch_spec=batch_spec,
        init_variables=lambda rng, batch: semantic.init_variables(model, rng, batch["image"].shape),
        loss=loss,
        train_batches=lambda source, per_process_batch, seed: volumes.train_loader(
            config, source, per_process_batch=per_process_batch, seed=seed
        ),
        eval_batches=lambda source, per_process_batch: volumes.eval_batches(
            config, source, per_process_batch=per_process_batch
        ),
        evaluation=base.Evaluation(
            zeros=lambda: np.zeros((num_classes, num_classes), np.int32),
            accumulate=accumulate,
            new_total=new_total,
            merge_carry=merge_carry,
            merge_outputs=merge_outputs,
            finalize=finalize,
            batches_per_flush=batches_per_flush,
        ),
        predict=predict,
        summary=summary,
        best_metric="mean_dice",
        report=report,
        panel=panel,
        plots=plots,
        describe=describe,
        image_predictor=None,
        example_batch=example_batch,
        batch_sharding=batch_sharding,
    )
