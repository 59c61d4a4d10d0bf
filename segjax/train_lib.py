"""Training and evaluation: pure step functions, and the loop that runs them.

The state is a plain pytree (`TrainState`); `train_step(state, batch, rng)` and
`eval_step(state, batch)` are pure and jitted once with explicit shardings over the
run's mesh. The loop around them (`train_and_evaluate`) does the host work: input,
logging, evaluation, checkpoints, resume.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from segjax import losses, metrics, optim, sharding
from segjax.checkpoint import BEST_METRIC, Checkpointer
from segjax.data import datasets, pipeline
from segjax.metric_writer import MetricWriter
from segjax.models import build_model as build_registered_model

# Keys a resumed run may change without being refused (they do not change the result).
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_best",
    "train.async_checkpointing",
    "input.worker_count",
    "input.prefetch",
    "dataset.data_dir",
)


@flax.struct.dataclass
class TrainState:
    """Everything a training step updates.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: float32 parameters (master weights, whatever the compute dtype).
      batch_stats: BatchNorm running statistics.
      opt_state: the optax state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ----------------------------------------------------------------------------- model


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    name = config.model.dtype
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"config.model.dtype={name!r}; expected 'float32' or 'bfloat16'")
    return jnp.dtype(name)


def build_model(config: ml_collections.ConfigDict):
    """The segmentor named by `config.model.name`, its other keys passed as arguments."""
    kwargs = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
    return build_registered_model(
        config.model.name,
        num_classes=config.dataset.num_classes,
        dtype=compute_dtype(config),
        **kwargs,
    )


def init_state(
    model, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
    """Fresh parameters and optimizer state for images of `image_shape` [B, H, W, 3]."""
    variables = model.init(
        {"params": rng, "dropout": rng}, jnp.zeros(image_shape, jnp.float32), train=False
    )
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


# ----------------------------------------------------------------------------- steps


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: optax.Schedule,
    *,
    aux_weight: float,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure update `train_step(state, batch, rng) -> (state, metrics)`.

    `batch["image"]` float [B, H, W, 3], `batch["label"]` int32 [B, H, W]; the loss is
    averaged over the valid pixels of the global batch. `rng` is the run's base key;
    the step's dropout key is `fold_in(rng, state.step)`, so a resumed run draws the
    same randomness as an uninterrupted one.
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        dropout_rng = jax.random.fold_in(rng, state.step)

        def compute_loss(params):
            outputs, new_model_state = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                rngs={"dropout": dropout_rng},
                mutable=["batch_stats"],
            )
            total, terms = losses.segmentation_loss(
                outputs, batch["label"], loss_fn, aux_weight=aux_weight
            )
            return total, (terms, new_model_state)

        (loss, (terms, new_model_state)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_model_state.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        step_metrics = {
            "loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
            **{f"loss/{k}": v for k, v in terms.items() if k != "total"},
        }
        return new_state, step_metrics

    return train_step


def make_eval_step(
    model, *, num_classes: int, ignore_index: int
) -> Callable[[TrainState, dict, jax.Array], jax.Array]:
    """`eval_step(state, batch, cm) -> cm + this batch's confusion matrix` [K, K] int32.

    Samples with `batch["valid"] == False` and pixels labelled `ignore_index` count
    for nothing.
    """

    def eval_step(state: TrainState, batch: dict, cm: jax.Array) -> jax.Array:
        outputs = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            batch["image"],
            train=False,
        )
        pred = jnp.argmax(outputs["logits"], axis=-1)
        return cm + metrics.confusion_matrix(
            pred, batch["label"], num_classes, ignore_index=ignore_index, valid=batch["valid"]
        )

    return eval_step


# ----------------------------------------------------------------------------- runner


@dataclasses.dataclass
class Run:
    """The compiled pieces of a run over one mesh (built by `setup`)."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_sharding: Any
    abstract_state: Any
    init_fn: Callable[[jax.Array], TrainState]
    train_step: Callable
    eval_step: Callable

    def new_state(self, rng: jax.Array) -> TrainState:
        return self.init_fn(rng)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Run:
    """Builds the model and optimizer and jits init, train and eval steps for `mesh`."""
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    loss_fn = losses.build_loss(config.loss.name, ignore_index=config.dataset.ignore_index)
    h, w = config.input.crop_size
    image_shape = (1, h, w, 3)

    init = functools.partial(init_state, model, tx, image_shape=image_shape)
    abstract = jax.eval_shape(init, jax.random.key(0))
    repl = sharding.replicated(mesh)
    state_sharding = jax.tree.map(lambda _: repl, abstract)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    data = sharding.data_sharding(mesh)
    train_step = make_train_step(model, tx, loss_fn, schedule, aux_weight=config.loss.aux_weight)
    eval_step = make_eval_step(
        model,
        num_classes=config.dataset.num_classes,
        ignore_index=config.dataset.ignore_index,
    )
    return Run(
        config=config,
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        state_sharding=state_sharding,
        abstract_state=abstract_state,
        init_fn=jax.jit(init, out_shardings=state_sharding),
        train_step=jax.jit(
            train_step,
            in_shardings=(state_sharding, data, repl),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(
            eval_step,
            in_shardings=(state_sharding, data, repl),
            out_shardings=repl,
            donate_argnums=(2,),
        ),
    )


def evaluate(run: Run, state: TrainState, batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
    """The int64 confusion matrix [K, K] of `state` over all `batches` (all processes).

    The per-batch sum stays on device in int32 and is flushed to a host int64 total
    before it could overflow, so no host sync happens per batch.
    """
    k = run.config.dataset.num_classes
    repl = sharding.replicated(run.mesh)
    accumulator = metrics.ConfusionMatrixAccumulator(k)
    zeros = functools.partial(jax.device_put, np.zeros((k, k), np.int32), repl)
    cm = zeros()
    pixels_in_cm = 0
    for batch in sharding.prefetch_to_mesh(batches, run.mesh, run.config.input.prefetch):
        batch_pixels = math.prod(batch["label"].shape)
        if pixels_in_cm + batch_pixels >= 2**31 - 1:
            accumulator.update(jax.device_get(cm))
            cm, pixels_in_cm = zeros(), 0
        cm = run.eval_step(state, batch, cm)
        pixels_in_cm += batch_pixels
    accumulator.update(jax.device_get(cm))
    return accumulator.matrix


def evaluate_split(run: Run, state: TrainState, split: str) -> tuple[dict[str, Any], np.ndarray]:
    """Scores `state` on `split` of the configured dataset: (scores, confusion matrix)."""
    config = run.config
    source = pipeline.load_split(config, split)
    per_process = sharding.local_batch_size(config.input.eval_batch_size, run.mesh)
    cm = evaluate(run, state, pipeline.eval_batches(config, source, per_process_batch=per_process))
    return metrics.segmentation_scores(cm), cm


def write_eval_report(
    workdir: str,
    config: ml_collections.ConfigDict,
    split: str,
    step: int,
    scores: dict[str, Any],
) -> str:
    """Writes `<workdir>/eval/<split>_step<N>.{json,txt}`; returns the text table."""
    class_names = datasets.get_spec(config.dataset.name).class_names
    table = metrics.format_report(scores, class_names)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{split}_step{step}")
        report = {"split": split, "step": step, **metrics.report_dict(scores, class_names)}
        _atomic_write(stem + ".json", json.dumps(report, indent=2))
        _atomic_write(stem + ".txt", table + "\n")
    return table


def _atomic_write(path: str, text: str) -> None:
    # Write-then-rename so a reader never sees half a file and a crash loses nothing.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict | dict):
            out.update(_flat_items(ml_collections.ConfigDict(value), name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


def check_workdir_config(
    workdir: str, config: ml_collections.ConfigDict, *, allow_change: bool = False
) -> None:
    """Refuses to resume a workdir written with a different config (unless allowed).

    Differences in `RESUMABLE_CHANGES` (step counts, intervals, workers) are fine.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = _flat_items(ml_collections.ConfigDict(json.load(f)))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable segjax config: {e}") from e
    current = _flat_items(config)
    changed = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUMABLE_CHANGES and saved.get(k, "<absent>") != current.get(k, "<absent>")
    )
    if changed and not allow_change:
        details = "; ".join(
            f"{k}: {saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}" for k in changed
        )
        raise ValueError(
            f"workdir {workdir} was written by a different config ({details}). Use another "
            "--workdir, or pass --allow_config_change to resume it anyway."
        )


def _with_states(data_iter: Iterator) -> Iterator[tuple[dict, bytes]]:
    # Pairs each batch with the iterator state right after it (for exact resume).
    while True:
        batch = next(data_iter)
        yield batch, data_iter.get_state()


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh | None = None,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns the final validation scores (see `metrics.segmentation_scores`) and the
    step they belong to under `"step"`.
    """
    mesh = mesh or sharding.make_mesh()
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(workdir, config, allow_change=allow_config_change)
    if jax.process_index() == 0:
        _atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    total_steps = config.train.steps
    run = setup(config, mesh)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.train.keep_checkpoints,
        keep_best=config.train.keep_best,
        async_save=config.train.async_checkpointing,
    )

    train_source = pipeline.load_split(config, config.dataset.train_split)
    per_process = sharding.local_batch_size(config.input.batch_size, mesh)
    data_iter = iter(
        pipeline.train_loader(config, train_source, per_process_batch=per_process, seed=config.seed)
    )

    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    train_rng = jax.device_put(train_rng, sharding.replicated(mesh))
    latest = ckpt.latest_step()
    if latest is None:
        state = run.new_state(init_rng)
        logging.info("Starting a new run in %s", workdir)
    else:
        state = ckpt.restore(latest, run.abstract_state, data_iterator=data_iter)
        logging.info("Resumed %s from step %d", workdir, latest)
    step = int(jax.device_get(state.step))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "Model %s: %s parameters; %d devices, global batch %d",
        config.model.name,
        f"{n_params:,}",
        mesh.devices.size,
        config.input.batch_size,
    )

    scores: dict[str, Any] | None = None
    pending: list[dict[str, jax.Array]] = []
    last_log_time, last_log_step = time.perf_counter(), step
    data_state: bytes | None = None
    batches = sharding.prefetch(
        _with_states(data_iter),
        lambda pair: (sharding.shard_batch(pair[0], mesh), pair[1]),
        config.input.prefetch,
    )
    while step < total_steps:
        batch, data_state = next(batches)
        state, step_metrics = run.train_step(state, batch, train_rng)
        step += 1
        pending.append(step_metrics)
        if step % config.train.log_every == 0 or step == total_steps:
            summary = {
                k: float(np.mean(v))
                for k, v in jax.device_get(
                    jax.tree.map(lambda *xs: jnp.stack(xs), *pending)
                ).items()
            }
            pending.clear()
            now = time.perf_counter()
            steps_done = step - last_log_step
            secs_per_step = (now - last_log_time) / max(steps_done, 1)
            summary["images_per_sec"] = config.input.batch_size / max(secs_per_step, 1e-9)
            writer.write_scalars(step, summary)
            logging.info(
                "step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s",
                step,
                total_steps,
                summary["loss"],
                summary["learning_rate"],
                summary["images_per_sec"],
                _format_eta(secs_per_step * (total_steps - step)),
            )
            last_log_time, last_log_step = now, step
        is_eval = step % config.train.eval_every == 0 or step == total_steps
        if is_eval:
            scores, _ = evaluate_split(run, state, config.dataset.eval_split)
            writer.write_scalars(
                step,
                {
                    "val/miou": scores["miou"],
                    "val/pixel_accuracy": scores["pixel_accuracy"],
                    "val/mean_accuracy": scores["mean_accuracy"],
                },
            )
            logging.info(
                "step %d  val mIoU %.2f%%  pixel acc %.2f%%",
                step,
                100 * scores["miou"],
                100 * scores["pixel_accuracy"],
            )
            write_eval_report(workdir, config, config.dataset.eval_split, step, scores)
            last_log_time = time.perf_counter()
        if is_eval or step % config.train.checkpoint_every == 0:
            ckpt_metrics = {BEST_METRIC: float(np.nan_to_num(scores["miou"]))} if is_eval else None
            ckpt.save(step, state, data_state=data_state, metrics=ckpt_metrics)
    if scores is None:
        # Nothing left to train (a finished run started again): score the final state.
        scores, _ = evaluate_split(run, state, config.dataset.eval_split)
    ckpt.wait()
    ckpt.close()
    writer.flush()
    writer.close()
    return {"step": step, **scores}


def load_config(path: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved as JSON (`<workdir>/config.json`), locked."""
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path} not found: is this the --workdir of a segjax run? Otherwise pass --config."
        ) from e
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    config.lock()
    return config


def resolve_step(ckpt: Checkpointer, which: str) -> int:
    """`"latest"`, `"best"` (highest val mIoU) or a step number -> a saved step."""
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {ckpt.directory}")
    if which == "latest":
        return ckpt.latest_step()
    if which == "best":
        return ckpt.best_step()
    try:
        step = int(which)
    except ValueError:
        raise ValueError(f"--step={which!r}; expected 'latest', 'best' or a number") from None
    if step not in steps:
        raise ValueError(f"No checkpoint for step {step} in {ckpt.directory}; saved: {steps}")
    return step


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    *,
    which: str = "latest",
    split: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restores a checkpoint of `config`'s model and scores it; returns (step, scores)."""
    mesh = mesh or sharding.make_mesh()
    run = setup(config, mesh)
    ckpt = Checkpointer(checkpoint_dir, async_save=False)
    step = resolve_step(ckpt, which)
    state = ckpt.restore(step, run.abstract_state)
    ckpt.close()
    scores, _ = evaluate_split(run, state, split or config.dataset.eval_split)
    return step, scores
