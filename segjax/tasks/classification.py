"""Multi-label image classification: which classes are present in an image.

The task behind `config.task = "classification"`, on any segmentation dataset: an
image's target is the set of classes that cover at least
`config.classification.min_pixels` of its (cropped) pixels, except
`config.classification.background_class`. The model is the backbone of the registered
model `config.model.name` with a global-average-pooled linear head; the loss is sigmoid
binary cross-entropy averaged over images and classes; the metric is mean average
precision over classes (`average_precision`), computed on the host from every image's
scores.

It is small on purpose: a second task with its own outputs, batch, loss and metric that
runs through the same loop as the semantic one (checkpoints, exact resume, several
devices and hosts, `eval.py`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import flax.linen as nn
import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image, ImageDraw

from segjax import optim, visualize
from segjax.data import datasets, eval_pipeline, pipeline
from segjax.models import Segmentor
from segjax.tasks import base, semantic

Array = jax.Array


def config_block() -> ml_collections.ConfigDict:
    """The `config.classification` keys and their defaults."""
    c = ml_collections.ConfigDict()
    # A class is present in an image (its target is 1) when it covers this many pixels.
    c.min_pixels = 1
    # Left out of the targets, the loss and the metric (-1: none); 0 is "background" in
    # segjax_shapes and the VOC-style datasets.
    c.background_class = 0
    c.dropout = 0.0  # before the linear classifier
    return c


class Classifier(nn.Module):
    """A backbone's deepest feature map, averaged over space, then one linear layer.

    Attributes:
        backbone: `__call__(x, *, train) -> {"s4": ..., "s32": ...}` (any segjax backbone).
        num_classes: K outputs.
        dropout: dropout rate before the classifier.
        dtype: compute dtype; params float32.
    """

    backbone: nn.Module
    num_classes: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """`image` [B, H, W, 3] -> `{"logits": float32 [B, K]}`."""
        features = self.backbone(image, train=train)
        deepest = max((k for k in features if k[1:].isdigit()), key=lambda k: int(k[1:]))
        pooled = jnp.mean(features[deepest].astype(jnp.float32), axis=(1, 2))
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        return {"logits": nn.Dense(self.num_classes, name="classifier")(pooled)}


def build_model(config: ml_collections.ConfigDict) -> Classifier:
    """A `Classifier` on the backbone of the registered model `config.model.name`."""
    segmentor = semantic.build_model(config)
    if not isinstance(segmentor, Segmentor):
        raise ValueError(
            f"config.model.name={config.model.name!r} has no separate backbone; the "
            "classification task needs a backbone -> neck -> head model, e.g. "
            "'deeplabv3plus_tiny', 'fcn_resnet50' or 'pspnet_resnet50'"
        )
    return Classifier(
        backbone=segmentor.backbone,
        num_classes=config.dataset.num_classes,
        dropout=config.classification.dropout,
        dtype=base.compute_dtype(config),
    )


def presence(label: Array, num_classes: int, *, ignore_index: int, min_pixels: int) -> Array:
    """float32 [B, K]: 1 where class k covers at least `min_pixels` of image b's pixels.

    `label` int [B, H, W]; `ignore_index` and out-of-range values count for no class.
    Works on numpy and jax arrays alike.
    """
    xp = jnp if isinstance(label, jax.Array) else np
    counts = xp.stack([(label == k).sum(axis=(-2, -1)) for k in range(num_classes)], axis=-1)
    del ignore_index  # any value outside [0, K) matches no k: nothing to mask
    return (counts >= min_pixels).astype(xp.float32)


class ClassTargets(grain.MapTransform):
    """grain op: `{"image", "label" [H, W]}` -> `{"image", "classes" float32 [K]}`."""

    def __init__(self, num_classes: int, *, ignore_index: int, min_pixels: int):
        self.num_classes, self.ignore_index, self.min_pixels = (
            num_classes,
            ignore_index,
            min_pixels,
        )

    def map(self, element):
        classes = presence(
            element["label"][None],
            self.num_classes,
            ignore_index=self.ignore_index,
            min_pixels=self.min_pixels,
        )[0]
        return {"image": element["image"], "classes": classes}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision [K] of `scores` [N, K] against binary `targets` [N, K].

    AP = sum over distinct score thresholds t (descending) of
    (recall(t) - recall(previous t)) * precision(t), the step-wise area under the
    precision-recall curve (scikit-learn's `average_precision_score`; tied scores form
    one threshold). NaN for a class without positives.
    """
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        positives = int(targets[:, k].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, k], kind="stable")
        s, t = scores[order, k], targets[order, k]
        tp, fp = np.cumsum(t), np.cumsum(~t)
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each threshold
        precision = tp[last] / (tp[last] + fp[last])
        recall = tp[last] / positives
        out[k] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def scores_from_total(total: dict[str, list[np.ndarray]], keep: np.ndarray) -> dict[str, Any]:
    """mAP over the kept classes with positives, per-class AP and counts."""
    scores = np.concatenate(total["scores"]) if total["scores"] else np.zeros((0, len(keep)))
    targets = np.concatenate(total["targets"]) if total["targets"] else np.zeros_like(scores)
    ap = average_precision(scores, targets)
    ap[~keep] = np.nan
    predicted = scores > 0.0  # logit > 0: probability > 0.5
    truth = targets > 0.5
    correct = (predicted == truth)[:, keep]
    return {
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "ap": ap,
        "label_accuracy": float(correct.mean()) if correct.size else float("nan"),
        "exact_match": float(correct.all(axis=1).mean()) if correct.size else float("nan"),
        "positives": truth.sum(axis=0).astype(np.int64),
        "num_images": int(scores.shape[0]),
    }


def format_report(scores: dict[str, Any], class_names) -> str:
    """A text table: AP and positives per class, then mAP and the label accuracies."""
    width = max([len("label accuracy"), *map(len, class_names)])
    lines = [f"{'class':<{width}} {'AP':>7} {'images':>8}", "-" * (width + 17)]
    for k, name in enumerate(class_names):
        ap = scores["ap"][k]
        text = "-" if np.isnan(ap) else f"{100 * ap:.2f}"
        lines.append(f"{name:<{width}} {text:>7} {int(scores['positives'][k]):>8d}")
    lines.append("-" * (width + 17))
    lines.append(f"{'mAP':<{width}} {100 * scores['map']:>7.2f}")
    lines.append(f"{'label accuracy':<{width}} {100 * scores['label_accuracy']:>7.2f}")
    lines.append(f"{'exact match':<{width}} {100 * scores['exact_match']:>7.2f}")
    lines.append(f"{'images':<{width}} {scores['num_images']:>7d}")
    return "\n".join(lines)


def _json(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The multi-label classification task of `config`."""
    del mesh  # whole images only: nothing to shard but the batch
    cc = config.get("classification") or config_block()
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index
    keep = np.ones(num_classes, bool)
    if 0 <= cc.background_class < num_classes:
        keep[cc.background_class] = False
    keep_j = jnp.asarray(keep, jnp.float32)
    h, w = config.input.crop_size
    c = base.in_channels(config)
    class_names = functools.cache(lambda: datasets.class_names(config.dataset))

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            "image": jax.ShapeDtypeStruct((batch_size, h, w, c), jnp.float32),
            "classes": jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32),
        }

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "image": rng.standard_normal((batch_size, h, w, c), dtype=np.float32),
            "classes": (rng.random((batch_size, num_classes)) < 0.5).astype(np.float32),
        }

    def loss(params, batch_stats, batch, rng):
        outputs, new_batch_stats = base.train_apply(model, params, batch_stats, batch["image"], rng)
        per_class = optax.sigmoid_binary_cross_entropy(outputs["logits"], batch["classes"])
        value = jnp.sum(per_class * keep_j) / (per_class.shape[0] * jnp.sum(keep_j))
        return value, (new_batch_stats, {"bce": value})

    def logits_of(variables, batch):
        return model.apply(variables, batch["image"], train=False)["logits"]

    def accumulate(variables, batch, carry):
        targets = presence(
            batch["label"],
            num_classes,
            ignore_index=ignore_index,
            min_pixels=cc.min_pixels,
        )
        outputs = {"scores": logits_of(variables, batch), "targets": targets}
        return carry, {**outputs, "valid": batch["valid"]}

    def merge_outputs(total, outputs):
        valid = np.asarray(outputs["valid"], bool)
        total["scores"].append(np.asarray(outputs["scores"])[valid])
        total["targets"].append(np.asarray(outputs["targets"])[valid])
        return total

    def summary(scores):
        return {k: float(scores[k]) for k in ("map", "label_accuracy", "exact_match")}

    def report(scores):
        names = class_names()
        as_dict = {
            "summary": {k: _json(v) for k, v in summary(scores).items()}
            | {"num_images": scores["num_images"]},
            "classes": [
                {
                    "name": name,
                    "index": k,
                    "ap": _json(scores["ap"][k]),
                    "positives": int(scores["positives"][k]),
                }
                for k, name in enumerate(names)
            ],
        }
        return format_report(scores, names), as_dict

    def panel(sample, logits, title):
        probs = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
        present = presence(
            sample["label"][None], num_classes, ignore_index=ignore_index, min_pixels=1
        )[0]
        return _panel(sample["image"], probs, present, class_names(), keep, title)

    def predict_images(variables, images):
        return jax.nn.sigmoid(model.apply(variables, images, train=False)["logits"])

    def write(image, probs, fitted, stem):
        del image, fitted
        names = class_names()
        result = {names[k]: round(float(probs[k]), 4) for k in range(num_classes) if keep[k]}
        path = stem + ".json"
        with open(path, "w") as f:
            json.dump(
                {"probabilities": result, "present": [n for n, p in result.items() if p > 0.5]}, f
            )
        return [path]

    return base.Task(
        name="classification",
        model=model,
        tx=tx,
        schedule=schedule,
        batch_spec=batch_spec,
        init_variables=lambda rng, batch: model.init(
            {"params": rng, "dropout": rng}, batch["image"], train=False
        ),
        loss=loss,
        train_batches=lambda source, per_process_batch, seed: pipeline.train_loader(
            config,
            source,
            per_process_batch=per_process_batch,
            seed=seed,
            extra_operations=[
                ClassTargets(num_classes, ignore_index=ignore_index, min_pixels=cc.min_pixels)
            ],
        ),
        eval_batches=lambda source, per_process_batch: eval_pipeline.eval_batches(
            config, source, per_process_batch=per_process_batch
        ),
        evaluation=base.Evaluation(
            zeros=dict,
            accumulate=accumulate,
            new_total=lambda: {"scores": [], "targets": []},
            merge_outputs=merge_outputs,
            finalize=lambda total: scores_from_total(total, keep),
        ),
        predict=logits_of,
        summary=summary,
        best_metric="map",
        report=report,
        panel=panel,
        describe=lambda: {
            "mode": "whole image",
            "eval_pad_size": list(config.input.eval_pad_size),
            "global_batch_size": int(config.input.eval_batch_size),
        },
        image_predictor=base.ImagePredictor(predict=predict_images, write=write),
        example_batch=example_batch,
    )


def _panel(image, probs, present, class_names, keep, title) -> np.ndarray:
    # The image beside a bar per class: predicted probability, ground truth marked.
    factor = max(1, int(np.ceil(160 / image.shape[0])))
    tile = np.repeat(np.repeat(np.asarray(image, np.uint8), factor, 0), factor, 1)
    rows = [k for k in range(len(class_names)) if keep[k]]
    width = 260
    size = (tile.shape[1] + width + 12, max(tile.shape[0], 20 * len(rows)) + 30)
    canvas = Image.new("RGB", size, visualize.BACKGROUND)
    canvas.paste(Image.fromarray(tile), (4, 26))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=visualize.TEXT_COLOR)
    x0 = tile.shape[1] + 10
    for i, k in enumerate(rows):
        y = 26 + 20 * i
        bar = int(120 * probs[k])
        colour = (60, 160, 60) if (probs[k] > 0.5) == (present[k] > 0.5) else (200, 60, 60)
        draw.rectangle([x0 + 90, y + 2, x0 + 90 + bar, y + 14], fill=colour)
        mark = "*" if present[k] > 0.5 else " "
        draw.text((x0, y), f"{mark}{class_names[k]}", fill=visualize.TEXT_COLOR)
        draw.text((x0 + 215, y), f"{probs[k]:.2f}", fill=visualize.TEXT_COLOR)
    return np.asarray(canvas)
