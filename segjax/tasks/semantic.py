"""Semantic segmentation: a `Segmentor`'s per-pixel logits, pixel losses, a confusion matrix.

The task behind `config.task = "semantic"` (the default):

- model: `config.model.name` from `segjax.models.MODELS`, with `config.model`'s other
  keys as builder arguments; outputs `logits` [B, H, W, K] (+ `aux_logits`, ...).
- batch: `image` float32 [B, H, W, C] (normalised; C = `config.model.in_channels`),
  `label` int32 [B, H, W] with `config.dataset.ignore_index` for void pixels
  (`segjax.data.pipeline.train_loader`).
- loss: `config.loss` (`losses.build_loss`) on the main and auxiliary heads.
- evaluation: the inference mode of `config.eval` (whole / sliding window / TTA), class
  scores resized back to each image's original size, a confusion matrix [K, K]
  accumulated on device, every score derived from it on the host
  (`metrics.segmentation_scores`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import inference, losses, metrics, optim, sharding, visualize
from segjax.data import datasets, eval_pipeline, pipeline, transforms
from segjax.models import build_model as build_registered_model
from segjax.tasks import base

# The confusion matrix is summed in int32 on device: flush it before it could overflow.
_INT32_MAX = 2**31 - 1


# config.model keys that are not the builder's arguments (pretrained: the loop applies it).
NOT_BUILDER_KEYS = ("name", "dtype", "pretrained", "pretrained_scope", "in_channels")


def build_model(config: ml_collections.ConfigDict):
    """The segmentor named by `config.model.name`, its other keys passed as arguments."""
    kwargs = {k: v for k, v in config.model.items() if k not in NOT_BUILDER_KEYS}
    return build_registered_model(
        config.model.name,
        num_classes=config.dataset.num_classes,
        dtype=base.compute_dtype(config),
        **kwargs,
    )


def make_loss(
    model,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    aux_weight: float,
    se_weight: float = 0.2,
) -> Callable:
    """The `Task.loss` of a segmentor: `loss_fn` on its main and auxiliary outputs, plus
    the semantic encoding loss (weight `se_weight`) when the model outputs `se_logits`.

    `batch["image"]` float [B, H, W, C], `batch["label"]` int32 [B, H, W]; averaged over
    the valid pixels of the global batch (see `losses.segmentation_loss`). The step's
    `rng` is the dropout key.
    """

    def loss(params, batch_stats, batch, rng):
        outputs, new_batch_stats = base.train_apply(model, params, batch_stats, batch["image"], rng)
        total, terms = losses.segmentation_loss(
            outputs, batch["label"], loss_fn, aux_weight=aux_weight, se_weight=se_weight
        )
        return total, (new_batch_stats, terms)

    return loss


def init_variables(model, rng: jax.Array, image_shape: tuple[int, ...]) -> base.Variables:
    """A segmentor's fresh variables for images of `image_shape` [B, H, W, C]."""
    return model.init(
        {"params": rng, "dropout": rng}, jnp.zeros(image_shape, jnp.float32), train=False
    )


def init_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...]
) -> base.TrainState:
    """Fresh parameters and optimizer state of a segmentor for images of `image_shape`."""
    variables = init_variables(model, rng, image_shape)
    params = variables["params"]
    return base.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: optax.Schedule,
    *,
    aux_weight: float,
) -> Callable[[base.TrainState, dict, jax.Array], tuple[base.TrainState, dict]]:
    """The shared guarded step (`base.make_train_step`) of a segmentor and a pixel loss."""
    return base.make_train_step(make_loss(model, loss_fn, aux_weight=aux_weight), tx, schedule)


def _crf_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    # The dense CRF of `config.eval.crf` (or none) and the colours it needs.
    return dict(
        crf_params=inference.crf_params(config),
        image_mean=tuple(config.input.mean),
        image_std=tuple(config.input.std),
    )


def make_score_fn(model, config: ml_collections.ConfigDict, mesh=None) -> Callable:
    """`score_fn(variables, batch) -> scores` float32 [B, Hl, Wl, K] at original size.

    `batch` has `image` [B, Hp, Wp, C], `label` [B, Hl, Wl], `original_hw` and
    `resized_hw` [B, 2]. Scores are computed by `inference.predict` in the mode of
    `config.eval` and resized back to each image's original size (top-left of the
    label canvas) when images were resized; otherwise cut (or padded) to the canvas.
    """
    mode = inference.InferenceMode.from_config(config.eval)
    window_sharding = sharding.data_sharding(mesh) if mesh is not None else None
    predict_fn = inference.make_predict_fn(
        model, mode, window_sharding=window_sharding, **_crf_options(config)
    )
    resized = eval_pipeline.resize_setting(config) is not None

    def score_fn(variables, batch: dict) -> jax.Array:
        scores = predict_fn(variables, batch["image"])
        hl, wl = batch["label"].shape[1:]
        if resized:
            return inference.resize_to_original(
                scores, batch["resized_hw"], batch["original_hw"], (hl, wl)
            )
        hc, wc = scores.shape[1:3]
        scores = jnp.pad(scores, ((0, 0), (0, max(hl - hc, 0)), (0, max(wl - wc, 0)), (0, 0)))
        return scores[:, :hl, :wl]

    return score_fn


def make_evaluation(model, config: ml_collections.ConfigDict, mesh=None) -> base.Evaluation:
    """The confusion matrix [K, K] of a pass, accumulated on device in int32.

    Samples with `valid == False` and pixels labelled `ignore_index` count for nothing;
    the host total is int64 and gives `metrics.segmentation_scores`.
    """
    score_fn = make_score_fn(model, config, mesh)
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index

    def accumulate(variables, batch: dict, cm: jax.Array):
        pred = jnp.argmax(score_fn(variables, batch), axis=-1)
        cm = cm + metrics.confusion_matrix(
            pred, batch["label"], num_classes, ignore_index=ignore_index, valid=batch["valid"]
        )
        return cm, {}

    def merge_carry(total: np.ndarray, cm: np.ndarray) -> np.ndarray:
        return total + np.asarray(cm, np.int64)

    def batches_per_flush(batch: dict) -> int:
        # A pixel adds at most 1 to one cell: the sum stays below 2^31 for this many batches.
        return max((_INT32_MAX - 1) // int(np.prod(batch["label"].shape)), 1)

    return base.Evaluation(
        zeros=lambda: np.zeros((num_classes, num_classes), np.int32),
        accumulate=accumulate,
        new_total=lambda: np.zeros((num_classes, num_classes), np.int64),
        merge_carry=merge_carry,
        finalize=metrics.segmentation_scores,
        batches_per_flush=batches_per_flush,
    )


def summary(scores: dict[str, Any]) -> dict[str, float]:
    """mIoU, pixel accuracy and mean accuracy: the console's and TensorBoard's numbers."""
    return {k: float(scores[k]) for k in ("miou", "pixel_accuracy", "mean_accuracy")}


def make_image_predictor(model, config: ml_collections.ConfigDict, mesh) -> base.ImagePredictor:
    """Class probabilities on the canvas; per file a palette label PNG and an overlay.

    The probabilities of the image's region are resized (bilinear) back to its original
    size on the host and the argmax is taken. Writes `<stem>.png` (palette PNG: pixel
    value = class index) and `<stem>_overlay.png`.
    """
    mode = inference.InferenceMode.from_config(config.eval)
    predict_fn = inference.make_predict_fn(
        model, mode, window_sharding=sharding.data_sharding(mesh), **_crf_options(config)
    )

    def predict(variables, images):
        scores = predict_fn(variables, images)
        # One view gives logits; several give the mean of their probabilities already.
        return jax.nn.softmax(scores, -1) if mode.num_views == 1 else scores

    def write(image: np.ndarray, probs: np.ndarray, fitted: tuple[int, int], stem: str):
        h, w = image.shape[:2]
        rh, rw = fitted
        pred = transforms.resize_image(probs[:rh, :rw], h, w).argmax(-1).astype(np.uint8)
        palette = datasets.palette(config.dataset)
        label_path = stem + ".png"
        visualize.label_image(pred, palette).save(label_path)
        visualize.save_png(visualize.overlay(image, pred, palette), stem + "_overlay.png")
        return [label_path]

    return base.ImagePredictor(predict=predict, write=write)


def build(
    config: ml_collections.ConfigDict,
    mesh=None,
    *,
    model=None,
    class_names: tuple[str, ...] | None = None,
    palette: tuple[tuple[int, int, int], ...] | None = None,
) -> base.Task:
    """The semantic segmentation task of `config` (evaluation sharded over `mesh`).

    `model`: the module to train and apply instead of `build_model(config)` (a task that
    wraps a segmentor, e.g. the adversarial pair, reuses this one's evaluation with it);
    `class_names` / `palette`: instead of the dataset's (a task that maps its labels).
    """
    model = model if model is not None else build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=losses.loss_options(config),
    )
    h, w = config.input.crop_size
    c = base.in_channels(config)
    score_fn = make_score_fn(model, config, mesh)
    given_names, given_palette = class_names, palette
    class_names = functools.cache(lambda: given_names or datasets.class_names(config.dataset))
    palette = functools.cache(lambda: given_palette or datasets.palette(config.dataset))
    ignore_index = config.dataset.ignore_index
    num_classes = config.dataset.num_classes

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {
            "image": jax.ShapeDtypeStruct((batch_size, h, w, c), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size, h, w), jnp.int32),
        }

    def example_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "image": rng.standard_normal((batch_size, h, w, c), dtype=np.float32),
            "label": rng.integers(0, num_classes, (batch_size, h, w), dtype=np.int32),
        }

    def predict(variables, batch):
        return jnp.argmax(score_fn(variables, batch), axis=-1).astype(jnp.int32)

    def report(scores):
        names = class_names()
        return metrics.format_report(scores, names), metrics.report_dict(scores, names)

    def panel(sample, pred, title):
        label = sample["label"]
        return visualize.comparison_panel(
            sample["image"],
            label,
            pred[: label.shape[0], : label.shape[1]],
            class_names(),
            palette(),
            ignore_index=ignore_index,
            title=title,
        )

    def plots(cm, title):
        return {
            "confusion_matrix": visualize.confusion_matrix_image(cm, class_names(), title=title)
        }

    def describe():
        return {
            "mode": inference.InferenceMode.from_config(config.eval).describe()
            + (f" + {p.describe()}" if (p := inference.crf_params(config)) else ""),
            "eval_pad_size": list(config.input.eval_pad_size),
            "resize": list(config.eval.resize),
            "global_batch_size": int(config.input.eval_batch_size),
        }

    return base.Task(
        name="semantic",
        model=model,
        tx=tx,
        schedule=schedule,
        batch_spec=batch_spec,
        init_variables=lambda rng, batch: init_variables(model, rng, batch["image"].shape),
        loss=make_loss(
            model, loss_fn, aux_weight=config.loss.aux_weight, se_weight=config.loss.se_weight
        ),
        train_batches=lambda source, per_process_batch, seed: pipeline.train_loader(
            config, source, per_process_batch=per_process_batch, seed=seed
        ),
        eval_batches=lambda source, per_process_batch: eval_pipeline.eval_batches(
            config, source, per_process_batch=per_process_batch
        ),
        evaluation=make_evaluation(model, config, mesh),
        predict=predict,
        summary=summary,
        best_metric="miou",
        report=report,
        panel=panel,
        plots=plots,
        describe=describe,
        image_predictor=make_image_predictor(model, config, mesh) if mesh is not None else None,
        example_batch=example_batch,
    )
