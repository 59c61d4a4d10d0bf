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
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from segjax import evaluation, losses, optim, sharding
from segjax.checkpoint import BEST_METRIC, Checkpointer
from segjax.data import pipeline
from segjax.files import atomic_write
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
    "train.max_nonfinite_in_a_row",
    "train.compilation_cache_dir",
    "input.worker_count",
    "input.prefetch",
    "dataset.data_dir",
    "eval.",  # a prefix: how evaluation runs does not change what training computes
)


@flax.struct.dataclass
class TrainState:
    """Everything a training step updates.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: float32 parameters (master weights, whatever the compute dtype).
      batch_stats: BatchNorm running statistics.
      opt_state: the optax state.
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


def loss_options(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """`config.loss.options` (a JSON object of per-loss keyword arguments) as a dict."""
    text = config.loss.options
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config.loss.options is not valid JSON ({e}): {text!r}") from e
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ValueError(
            'config.loss.options must be a JSON object {"loss_name": {"kwarg": value}}; '
            f"got {text!r}"
        )
    return options


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
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
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

    A step whose loss or gradients are not all finite changes nothing but `step` and
    the non-finite counters: parameters, optimizer state and BatchNorm statistics stay
    as they were (the batch is consumed, the update is skipped).
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
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )

        def update():
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return params, new_model_state.get("batch_stats", state.batch_stats), opt_state

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
            "loss": loss,
            "nonfinite_in_a_row": new_state.nonfinite_in_a_row,
            "nonfinite_total": new_state.nonfinite_total,
            "learning_rate": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
            **{f"loss/{k}": v for k, v in terms.items() if k != "total"},
        }
        return new_state, step_metrics

    return train_step


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
    evaluator: evaluation.Evaluator

    def new_state(self, rng: jax.Array) -> TrainState:
        return self.init_fn(rng)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Run:
    """Builds the model and optimizer and jits init, train and eval steps for `mesh`."""
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config, config.train.steps)
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=loss_options(config),
    )
    h, w = config.input.crop_size
    image_shape = (1, h, w, 3)

    init = functools.partial(init_state, model, tx, image_shape=image_shape)
    abstract = jax.eval_shape(init, jax.random.key(0))
    repl = sharding.replicated(mesh)
    state_sharding = sharding.state_shardings(
        abstract, mesh, config.train.param_sharding, min_size=config.train.fsdp_min_size
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    data = sharding.data_sharding(mesh)
    train_step = make_train_step(model, tx, loss_fn, schedule, aux_weight=config.loss.aux_weight)
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
        evaluator=evaluation.Evaluator(config, model, mesh, state_sharding),
    )


def _flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict | dict):
            out.update(_flat_items(ml_collections.ConfigDict(value), name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


def _resumable_change(key: str) -> bool:
    return any(key.startswith(r) if r.endswith(".") else key == r for r in RESUMABLE_CHANGES)


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
        if not _resumable_change(k) and saved.get(k, "<absent>") != current.get(k, "<absent>")
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


class _CompileTimer:
    """Adds up XLA compile time (or persistent-cache loads) while it is entered."""

    def __init__(self):
        self.total = 0.0
        self.cache_hits = 0

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.total += duration

    def _on_event(self, event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def __enter__(self) -> _CompileTimer:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)


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
    cache_dir = config.train.get("compilation_cache_dir", "")
    if cache_dir:
        # Compiled programs are stored there and reused by later runs of the same shapes.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    mesh = mesh or sharding.make_mesh()
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(workdir, config, allow_change=allow_config_change)
    if jax.process_index() == 0:
        atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

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
    train_rng = sharding.replicate(train_rng, mesh)
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
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    last_log_time, last_log_step = time.perf_counter(), step
    data_state: bytes | None = None
    batches = sharding.prefetch(
        _with_states(data_iter),
        lambda pair: (sharding.shard_batch(pair[0], mesh), pair[1]),
        config.input.prefetch,
    )
    first_step = step
    compile_seconds = _CompileTimer()
    with PreemptionWatcher() as preemption:
        while step < total_steps:
            batch, data_state = next(batches)
            if step == first_step:
                with compile_seconds:
                    state, step_metrics = run.train_step(state, batch, train_rng)
            else:
                state, step_metrics = run.train_step(state, batch, train_rng)
            step += 1
            pending.append((step, step_metrics))
            if step == first_step + 1:
                jax.block_until_ready(step_metrics)
                now = time.perf_counter()
                logging.info(
                    "First step (compile + run) took %.1f s; compiling the train step: %.1f s%s",
                    now - last_log_time,
                    compile_seconds.total,
                    " (persistent compilation cache hit)" if compile_seconds.cache_hits else "",
                )
                # Throughput and ETA count from here, without the compilation.
                last_log_time, last_log_step = now, step
            if preemption.reached(step):
                _check_nonfinite(pending, config.train.max_nonfinite_in_a_row)
                ckpt.save(step, state, data_state=data_state, force=True)
                ckpt.wait()
                logging.warning(
                    "Stopped by a signal after step %d; checkpoint saved. Run the same "
                    "command to resume.",
                    step,
                )
                _close(ckpt, writer)
                return {"step": step, "preempted": True}
            if step % config.train.log_every == 0 or step == total_steps:
                _check_nonfinite(pending, config.train.max_nonfinite_in_a_row)
                summary = _summarise([m for _, m in pending])
                pending.clear()
                now = time.perf_counter()
                secs_per_step = (now - last_log_time) / max(step - last_log_step, 1)
                summary["images_per_sec"] = config.input.batch_size / max(secs_per_step, 1e-9)
                writer.write_scalars(step, summary)
                logging.info(
                    "step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s%s",
                    step,
                    total_steps,
                    summary["loss"],
                    summary["learning_rate"],
                    summary["images_per_sec"],
                    _format_eta(secs_per_step * (total_steps - step)),
                    f"  skipped {summary['nonfinite_total']:.0f} non-finite steps"
                    if summary["nonfinite_total"]
                    else "",
                )
                last_log_time, last_log_step = now, step
            is_eval = step % config.train.eval_every == 0 or step == total_steps
            if is_eval:
                eval_start = time.perf_counter()
                scores = _evaluate_and_log(run, state, step, workdir, writer)
                # Throughput counts training only: move the interval's start past the eval.
                last_log_time += time.perf_counter() - eval_start
            if is_eval or step % config.train.checkpoint_every == 0:
                _check_nonfinite(pending, config.train.max_nonfinite_in_a_row)
                ckpt_metrics = (
                    {BEST_METRIC: float(np.nan_to_num(scores["miou"]))} if is_eval else None
                )
                ckpt.save(step, state, data_state=data_state, metrics=ckpt_metrics)
    if scores is None:
        # Nothing left to train (a finished run started again): score the final state.
        scores, _ = run.evaluator.evaluate_split(state, config.dataset.eval_split)
    _close(ckpt, writer)
    return {"step": step, **scores}


class NonFiniteError(FloatingPointError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


def _check_nonfinite(pending: list[tuple[int, dict]], limit: int) -> None:
    # Fetches only the per-step counters; called at log and checkpoint time, so a
    # checkpoint is never written after the limit was reached.
    if not pending or limit <= 0:
        return
    counts = jax.device_get([m["nonfinite_in_a_row"] for _, m in pending])
    for (step, metrics_), count in zip(pending, counts, strict=True):
        if int(count) >= limit:
            raise NonFiniteError(
                f"step {step}: {int(count)} steps in a row had a non-finite loss or gradient "
                f"(loss {float(jax.device_get(metrics_['loss'])):.4g}); stopping. Their updates "
                "were skipped and the last checkpoint holds the last good state "
                f"(limit: config.train.max_nonfinite_in_a_row={limit})."
            )


def _summarise(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
    # Means over the interval; the non-finite counters report their latest value.
    fetched = jax.device_get(pending)
    summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    for key in ("nonfinite_in_a_row", "nonfinite_total"):
        summary[key] = float(fetched[-1][key])
    return summary


def _evaluate_and_log(run: Run, state: TrainState, step: int, workdir: str, writer) -> dict:
    split = run.config.dataset.eval_split
    scores, _ = run.evaluator.evaluate_split(state, split)
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
    evaluation.write_report(workdir, run.config, split, step, scores)
    return scores


def _close(ckpt: Checkpointer, writer: MetricWriter) -> None:
    ckpt.wait()
    ckpt.close()
    writer.flush()
    writer.close()


class PreemptionWatcher:
    """Turns SIGTERM / SIGINT into a request to checkpoint and stop after this step.

    On one process the signals are caught here. On several processes JAX's own
    preemption notice (which `jax.distributed.initialize` installs for SIGTERM) is
    used through `multihost_utils.reached_preemption_sync_point`, so that every
    process stops at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        logging.warning(
            "Received %s: will checkpoint and stop after this step.", signal.Signals(signum).name
        )

    def __enter__(self) -> PreemptionWatcher:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """True when the run must checkpoint and stop after `step` (agreed by all hosts)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption service in this distributed runtime
            return False
