"""The training loop, written once for every task.

A task (`segjax.tasks`, chosen by `config.task`) supplies its model, loss, batches and
metric; this module turns them into a run over one mesh: the state is a plain pytree
(`TrainState`), `train_step(state, batch, rng)` is the task's loss under the shared
non-finite guard (`tasks.base.make_train_step`), jitted once with explicit shardings and
the state donated. The loop around it (`train_and_evaluate`) does the host work: input,
logging, evaluation, checkpoints, resume, preemption.
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

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from segjax import config_check, evaluation, sharding, tasks, weights
from segjax.checkpoint import Checkpointer
from segjax.data import datasets, pipeline
from segjax.files import atomic_write
from segjax.metric_writer import MetricWriter
from segjax.tasks import base
from segjax.tasks.base import TrainState

__all__ = ["Run", "TrainState", "check_workdir_config", "setup", "train_and_evaluate"]

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
    # Applied to a new run's fresh state only; a resumed run has its weights in the checkpoint.
    "model.pretrained",
    "model.pretrained_scope",
)

# Keys added after runs were first saved, with the value that reproduces those runs: a
# saved config without the key resumes as if it had held this value.
ADDED_KEYS = {
    "task": "semantic",
    "model.in_channels": 3,
    "input.norm_stats": "config",
    "volume.spatial_split": 0,
}


# ----------------------------------------------------------------------------- runner


@dataclasses.dataclass
class Run:
    """The compiled pieces of a run over one mesh (built by `setup`)."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    task: base.Task
    state_sharding: Any
    abstract_state: Any
    init_fn: Callable[[jax.Array], TrainState]
    train_step: Callable
    evaluator: evaluation.Evaluator

    @property
    def model(self) -> Any:
        return self.task.model

    @property
    def tx(self) -> optax.GradientTransformation:
        return self.task.tx

    @property
    def schedule(self) -> optax.Schedule:
        return self.task.schedule

    def new_state(self, rng: jax.Array) -> TrainState:
        return self.init_fn(rng)


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Run:
    """Builds `config`'s task and jits its init, train and eval programs for `mesh`.

    `Run.config` is `config` with its input bands resolved from the dataset
    (`datasets.resolve_inputs`: `model.in_channels`, `input.mean/std`).
    """
    config = datasets.resolve_inputs(config)
    task = tasks.build_task(config, mesh)
    init = functools.partial(base.init_train_state, task)
    abstract = jax.eval_shape(init, jax.random.key(0))
    repl = sharding.replicated(mesh)
    state_sharding = sharding.state_shardings(
        abstract, mesh, config.train.param_sharding, min_size=config.train.fsdp_min_size
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    data = task.batch_sharding or sharding.data_sharding(mesh)
    train_step = base.make_train_step(task.loss, task.tx, task.schedule)
    return Run(
        config=config,
        mesh=mesh,
        task=task,
        state_sharding=state_sharding,
        abstract_state=abstract_state,
        init_fn=jax.jit(init, out_shardings=state_sharding),
        train_step=jax.jit(
            train_step,
            in_shardings=(state_sharding, data, repl),
            out_shardings=(state_sharding, repl),
            donate_argnums=(0,),
        ),
        evaluator=evaluation.Evaluator(task, config, mesh, state_sharding),
    )


def _match_pretrained(config: ml_collections.ConfigDict, run: Run) -> dict | None:
    """The tensors `config.model.pretrained` replaces (checked), or None without a file."""
    path = config.model.get("pretrained", "")
    if not path:
        return None
    scope = config.model.get("pretrained_scope", "backbone")
    replacements = weights.match_pretrained(
        os.path.expanduser(path),
        base.variables(run.abstract_state),
        scope=scope,
        in_channels=base.in_channels(config),
    )
    count = sum(len(r) for r in replacements.values())
    logging.info("Pretrained %s (scope %s): %d tensors from the file", path, scope, count)
    return replacements


def _apply_pretrained(run: Run, state: TrainState, replacements: dict) -> TrainState:
    """`state` with the pretrained tensors in, and the optimizer state of the new params."""

    def apply(state: TrainState, replacements: dict) -> TrainState:
        merged = weights.merge_pretrained(base.variables(state), replacements)
        return state.replace(
            params=merged["params"],
            batch_stats=merged["batch_stats"],
            opt_state=run.task.tx.init(merged["params"]),
        )

    return jax.jit(apply, out_shardings=run.state_sharding, donate_argnums=(0,))(
        state, replacements
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
    for key, value in ADDED_KEYS.items():
        saved.setdefault(key, value)
        current.setdefault(key, value)
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


def _with_states(
    data_iter: Iterator, task: base.Task, per_process_batch: int
) -> Iterator[tuple[dict, bytes]]:
    # Pairs each batch with the iterator state right after it (for exact resume); the
    # first batch is checked against the task's batch spec.
    batch = next(data_iter)
    base.check_batch(task, batch, per_process_batch)
    while True:
        yield batch, data_iter.get_state()
        batch = next(data_iter)


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

    Returns the final validation scores (the task's `Evaluation.finalize`, e.g.
    `metrics.segmentation_scores`), their headline numbers (`task.summary`) under
    `"summary"` and the step they belong to under `"step"`.

    Raises:
      config_check.ConfigError: before anything is read or built, listing every value of
        `config` that is not allowed.
    """
    mesh = mesh or sharding.make_mesh()
    config_check.check_config(config, num_devices=mesh.devices.size)
    cache_dir = config.train.get("compilation_cache_dir", "")
    if cache_dir:
        # Compiled programs are stored there and reused by later runs of the same shapes.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    run = setup(config, mesh)
    config = run.config  # the input bands resolved: what config.json records
    if run.task.batch_sharding is None:
        per_process = sharding.local_batch_size(config.input.batch_size, mesh)
    elif jax.process_count() > 1:
        raise ValueError(
            f"config.task={run.task.name!r} places its training batches itself (e.g. "
            "config.volume.spatial_split, each volume split over the devices), which needs "
            f"one process; this job has {jax.process_count()} (each reads its own samples)"
        )
    else:  # one process loads the whole global batch; shard_batch splits it over the mesh
        per_process = config.input.batch_size
        logging.info(
            "Training batches placed by the task: %s",
            {k: str(s.spec) for k, s in run.task.batch_sharding.items()},
        )
    # A pretrained file is read and checked against the model before the workdir is touched.
    pretrained = _match_pretrained(config, run)
    os.makedirs(workdir, exist_ok=True)
    check_workdir_config(workdir, config, allow_change=allow_config_change)
    if jax.process_index() == 0:
        atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    total_steps = config.train.steps
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.train.keep_checkpoints,
        keep_best=config.train.keep_best,
        async_save=config.train.async_checkpointing,
        best_metric=run.task.best_metric,
    )

    train_source = pipeline.load_split(config, config.dataset.train_split)
    data_iter = iter(run.task.train_batches(train_source, per_process, config.seed))

    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    train_rng = sharding.replicate(train_rng, mesh)
    latest = ckpt.latest_step()
    if latest is None:
        state = run.new_state(init_rng)
        if pretrained is not None:
            state = _apply_pretrained(run, state, pretrained)
        logging.info("Starting a new run in %s", workdir)
    else:
        state = ckpt.restore(latest, run.abstract_state, data_iterator=data_iter)
        logging.info("Resumed %s from step %d", workdir, latest)
        if pretrained is not None:
            logging.info("model.pretrained is not applied: the checkpoint has the weights")
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
        _with_states(data_iter, run.task, per_process),
        lambda pair: (sharding.shard_batch(pair[0], mesh, run.task.batch_sharding), pair[1]),
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
                ckpt_metrics = None
                if is_eval:
                    best = run.task.best_metric
                    ckpt_metrics = {best: float(np.nan_to_num(run.task.summary(scores)[best]))}
                ckpt.save(step, state, data_state=data_state, metrics=ckpt_metrics)
    if scores is None:
        # Nothing left to train (a finished run started again): score the final state.
        scores, _ = run.evaluator.evaluate_split(state, config.dataset.eval_split)
    _close(ckpt, writer)
    return {"step": step, **scores, "summary": run.task.summary(scores)}


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
    summary = run.task.summary(scores)
    writer.write_scalars(step, {f"val/{k}": v for k, v in summary.items()})
    logging.info("step %d  val %s", step, format_summary(summary))
    evaluation.write_report(workdir, run.task, split, step, scores)
    return scores


def format_summary(summary: dict[str, float]) -> str:
    """`"miou 23.80%  pixel_accuracy 82.33%"`: a task's headline scores (fractions) in %;
    distances (keys ending in `hd95`) as they are."""
    return "  ".join(
        f"{k} {v:.2f}" if k.endswith("hd95") else f"{k} {100 * v:.2f}%" for k, v in summary.items()
    )


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
