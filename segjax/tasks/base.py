"""What the shared train/eval loop needs from a task, and the pieces both sides use.

A *task* (semantic segmentation, image classification, instances, panoptic, ...) is a
frozen `Task` of plain functions built from a config by its module's `build(config)`.
The loop in `segjax.train_lib` / `segjax.evaluation` owns everything that is the same
for every task: the mesh and shardings, jitting with donation, the non-finite guard
(`make_train_step`), the learning-rate schedule in the step's metrics, Orbax
checkpoints with the data-iterator state, exact resume, preemption, logging and the
report's four measures. A task owns what differs: its model, its loss, its batches,
its metric and its pictures.

Imports go one way: `train_lib`, `evaluation` and `eval_lib` import this module and look
tasks up in `segjax.tasks.TASKS`; tasks import models, losses, metrics, inference and
data, never the loop.

Example (the loop's view of any task)::

    task = segjax.tasks.build_task(config)
    state = init_train_state(task, jax.random.key(0))
    step = make_train_step(task)                 # pure; jitted by the loop
    state, metrics = step(state, batch, rng)     # batch as task.batch_spec says
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax.data import bands

Array = jax.Array
Batch = dict[str, Any]
Variables = dict[str, Any]


@flax.struct.dataclass
class TrainState:
    """Everything a training step updates (one pytree, whatever the task).

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: float32 parameters (master weights, whatever the compute dtype); a task
        with several networks nests them (`{"segmentor": ..., "discriminator": ...}`).
      batch_stats: BatchNorm running statistics, nested like `params`.
      opt_state: the optax state of `Task.tx` (a task with several networks uses one
        `optax.multi_transform`, so its state holds one inner state per network).
      nonfinite_in_a_row: int32 scalar, consecutive steps skipped for a non-finite loss
        or gradient (0 after every good step).
      nonfinite_total: int32 scalar, all steps skipped so far.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array


def variables(state: TrainState) -> Variables:
    """The Linen variables of a state: `{"params": ..., "batch_stats": ...}`."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """`config.model.dtype` as a dtype (the compute dtype; parameters stay float32)."""
    name = config.model.dtype
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.model.dtype={name!r}; expected 'float32' or 'bfloat16'")
    return jnp.dtype(name)


def in_channels(config: ml_collections.ConfigDict) -> int:
    """C of the model's input images [B, H, W, C] (see `bands.input_channels`)."""
    return bands.input_channels(config)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a task scores a split: fixed-shape accumulation on device, scores on the host.

    The loop jits `accumulate` once per mesh (batch sharded, carry replicated and
    donated) and runs it over every eval batch. What it returns goes two ways:

    - the *carry* stays on device from batch to batch (e.g. a confusion matrix); it is
      fetched and folded into the host total by `merge_carry` at the end of a pass and
      every `batches_per_flush(batch)` batches (before a counter could overflow);
    - the per-batch *outputs* (e.g. per-image scores, detections; `{}` for none),
      arrays whose leading axis is the batch (sharded like it), are fetched after each
      batch and folded in by `merge_outputs`; they include padding samples, so pass
      `batch["valid"]` along when it matters.

    Attributes:
      zeros: `() -> carry`: numpy pytree of the carry's initial value (fixed shapes;
        `{}` for none).
      accumulate: `(variables, batch, carry) -> (carry, outputs)`, pure, eval mode.
      new_total: `() -> total`: an empty host total.
      merge_carry: `(total, carry) -> total` with the fetched (numpy) carry.
      merge_outputs: `(total, outputs) -> total` with one batch's fetched outputs.
      finalize: `total -> scores` (a dict; `Task.summary` picks the headline numbers).
      batches_per_flush: `batch -> int`, how many such batches the carry can take
        before it must be flushed to the host; None: never.
    """

    zeros: Callable[[], Any]
    accumulate: Callable[[Variables, Batch, Any], tuple[Any, Any]]
    new_total: Callable[[], Any]
    finalize: Callable[[Any], dict[str, Any]]
    merge_carry: Callable[[Any, Any], Any] = lambda total, carry: total
    merge_outputs: Callable[[Any, Any], Any] = lambda total, outputs: total
    batches_per_flush: Callable[[Batch], int] | None = None


@dataclasses.dataclass(frozen=True)
class ImagePredictor:
    """What `eval.py --images` needs from a task to predict a user's own files.

    The loop reads each file, resizes it (keeping its aspect ratio) to fit the eval
    canvas, pads, normalises and batches; the task predicts and writes.

    Attributes:
      predict: `(variables, images [B, H, W, C]) -> outputs` on device (eval mode).
      write: `(image [h, w, C] as read (uint8 RGB for photos), outputs_i (numpy, this
        image's slice), fitted (rh, rw) the image's size on the canvas, stem (output
        path without suffix)) -> list of written paths`.
    """

    predict: Callable[[Variables, Array], Any]
    write: Callable[[np.ndarray, Any, tuple[int, int], str], list[str]]


@dataclasses.dataclass(frozen=True)
class Task:
    """One kind of training and evaluation, as the shared loop sees it.

    Attributes:
      name: the `config.task` name.
      model: the Linen module that `predict` applies (for reports, benchmarks).
      tx: the optimizer over all of `params`; `schedule` its learning rate by step.
      schedule: `step -> learning rate`, reported in the step's metrics.
      batch_spec: `batch_size -> {key: jax.ShapeDtypeStruct}` of a training batch
        (what the input pipeline must yield; the loop checks the first batch).
      init_variables: `(rng, batch) -> {"params": ..., "batch_stats": ...}` for a batch
        of `batch_spec(1)`'s shapes (zeros); pure and traceable.
      loss: `(params, batch_stats, batch, rng) -> (loss, (new_batch_stats, terms))`:
        the scalar to minimise over the global batch, the updated BatchNorm statistics
        and a dict of scalar terms for the logs. `rng` is this step's key. The loop
        differentiates it, guards against non-finite values and applies `tx`. A task
        with several networks returns one scalar whose gradient is each network's own
        (the other networks' outputs under `stop_gradient`).
      train_batches: `(source, per_process_batch, seed) -> iterable` of host batches
        with a `get_state()` / `set_state()` iterator (grain), infinite and shuffled.
      eval_batches: `(source, per_process_batch) -> iterator` of fixed-shape host
        batches with a `valid` mask and an `index` per sample (-1 for padding).
      evaluation: the metric, see `Evaluation`.
      predict: `(variables, eval batch) -> per-sample predictions` (eval mode), for
        the pictures of the report.
      summary: `scores -> {name: float}`: the headline numbers (console, TensorBoard
        `val/<name>`, `train.py`'s last line).
      best_metric: the `summary` key that ranks checkpoints (higher is better).
      report: `scores -> (text table, JSON-serialisable dict)`.
      panel: `(sample, prediction, title) -> uint8 [h, w, 3]`: one picture of a
        prediction beside its ground truth; `sample` is the decoded record
        (`transforms.decode_record`), `prediction` this sample's slice of `predict`.
      plots: `(total, title) -> {name: uint8 image}`: pictures of the whole pass
        (e.g. `{"confusion_matrix": ...}`), written as `<split>_step<N>_<name>.png`.
      describe: `() -> dict` of how predictions are made (the report's `inference`).
      image_predictor: for `eval.py --images`; None if the task has none.
      example_batch: `(batch_size, seed) -> numpy batch` of `batch_spec`'s shapes with
        valid random values (benchmarks, tests).
      batch_sharding: how the loop places a training batch on the mesh the task was
        built for: `{key: NamedSharding}` (e.g. each volume split along its depth,
        `volume.split_batch_sharding`); such a task runs on one process, which loads
        the whole global batch. None: every key split along the batch axis
        (`sharding.data_sharding`), the batch a multiple of the devices.
    """

    name: str
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    batch_spec: Callable[[int], dict[str, jax.ShapeDtypeStruct]]
    init_variables: Callable[[Array, Batch], Variables]
    loss: Callable[[Any, Any, Batch, Array], tuple[Array, tuple[Any, dict[str, Array]]]]
    train_batches: Callable[[Any, int, int], Iterable[Batch]]
    eval_batches: Callable[[Any, int], Iterator[Batch]]
    evaluation: Evaluation
    predict: Callable[[Variables, Batch], Any]
    summary: Callable[[dict[str, Any]], dict[str, float]]
    best_metric: str
    report: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]
    panel: Callable[[dict[str, np.ndarray], Any, str], np.ndarray]
    plots: Callable[[Any, str], dict[str, np.ndarray]] = lambda total, title: {}
    describe: Callable[[], dict[str, Any]] = dict
    image_predictor: ImagePredictor | None = None
    example_batch: Callable[[int, int], Batch] | None = None
    batch_sharding: dict[str, Any] | None = None


def train_apply(model, params, batch_stats, inputs: Array, rng: Array) -> tuple[Any, Any]:
    """`model` in training mode: (outputs, updated batch_stats); `rng` is the dropout key."""
    outputs, new_state = model.apply(
        {"params": params, "batch_stats": batch_stats},
        inputs,
        train=True,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
    )
    return outputs, new_state.get("batch_stats", batch_stats)


def zeros_batch(task: Task, batch_size: int = 1) -> Batch:
    """A batch of zeros with `task.batch_spec(batch_size)`'s shapes and dtypes."""
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in task.batch_spec(batch_size).items()}


def init_train_state(task: Task, rng: jax.Array) -> TrainState:
    """Fresh parameters, BatchNorm statistics and optimizer state of `task`."""
    variables_ = task.init_variables(rng, zeros_batch(task))
    params = variables_["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables_.get("batch_stats", {}),
        opt_state=task.tx.init(params),
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


def make_train_step(
    loss: Callable[..., tuple[Array, tuple[Any, dict[str, Array]]]],
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, Array]]]:
    """The pure update `train_step(state, batch, rng) -> (state, metrics)` of a loss.

    `loss` is a `Task.loss`. `rng` is the run's base key; the step's key is
    `fold_in(rng, state.step)`, so a resumed run draws the same randomness as an
    uninterrupted one. A step whose loss or gradients are not all finite changes
    nothing but `step` and the non-finite counters: parameters, optimizer state and
    BatchNorm statistics stay as they were (the batch is consumed, the update skipped).

    Metrics: `loss`, `learning_rate` (of this step), `grad_norm`, the two non-finite
    counters, and the task's terms as `loss/<name>` (its `"total"` left out).
    """

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        (value, (new_batch_stats, terms)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, state.batch_stats, batch, step_rng
        )
        finite = jnp.isfinite(value) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )

        def update():
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return params, new_batch_stats, opt_state

        def keep():
            return state.params, state.batch_stats, state.opt_state

        # A branch, not a select: the update is computed in place, and only when it is used.
        params, batch_stats, opt_state = jax.lax.cond(finite, update, keep)
        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            nonfinite_in_a_row=(state.nonfinite_in_a_row + skipped) * skipped,
            nonfinite_total=state.nonfinite_total + skipped,
        )
        step_metrics = {
            "loss": value,
            "nonfinite_in_a_row": new_state.nonfinite_in_a_row,
            "nonfinite_total": new_state.nonfinite_total,
            "learning_rate": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
            **{f"loss/{k}": v for k, v in terms.items() if k != "total"},
        }
        return new_state, step_metrics

    return train_step


def check_batch(task: Task, batch: Batch, per_process_batch: int) -> None:
    """Raises a ValueError naming the keys/shapes where `batch` differs from the spec."""
    spec = task.batch_spec(per_process_batch)
    problems = [f"missing {k!r} {tuple(s.shape)}" for k, s in spec.items() if k not in batch]
    problems += [f"unexpected {k!r}" for k in batch if k not in spec]
    for k, s in spec.items():
        if k in batch:
            x = np.asarray(batch[k]) if not hasattr(batch[k], "shape") else batch[k]
            if tuple(x.shape) != tuple(s.shape) or np.dtype(x.dtype) != np.dtype(s.dtype):
                problems.append(
                    f"{k!r}: got {x.dtype}{list(x.shape)}, expected "
                    f"{np.dtype(s.dtype)}{list(s.shape)}"
                )
    if problems:
        raise ValueError(
            f"the input pipeline's batch does not match task {task.name!r}'s batch spec: "
            + "; ".join(problems)
        )
