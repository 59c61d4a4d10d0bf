"""Scoring a task's model on a dataset split: the eval programs and the loop around them.

`Evaluator` compiles a task's `Evaluation.accumulate` once per mesh, ahead of time (fixed
shapes: the task's eval batches are padded to `config.input.eval_batch_size` with a
`valid` mask), runs it over a split with the running carry on device, folds the carry
and the per-batch outputs into the task's host total and finalises it into scores. It
also records what the survey's speed and memory measures need: compile time, the
compiled program's memory analysis, and timed runs after warm-up. What is scored (a
confusion matrix, per-image scores, detections) is the task's business.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from segjax import sharding
from segjax.data import pipeline, transforms
from segjax.files import atomic_write
from segjax.tasks import base


def memory_analysis(compiled) -> dict[str, int] | None:
    """Per-device byte sizes of a compiled program (None where the backend has none).

    `peak_estimate_bytes` = arguments + outputs + temporaries - aliased (donated) bytes:
    what the program needs on one device while it runs, parameters included.
    """
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # backends without the analysis raise various errors
        return None
    if analysis is None:
        return None
    fields = {
        "argument_bytes": "argument_size_in_bytes",
        "output_bytes": "output_size_in_bytes",
        "temp_bytes": "temp_size_in_bytes",
        "alias_bytes": "alias_size_in_bytes",
        "generated_code_bytes": "generated_code_size_in_bytes",
    }
    out = {k: int(getattr(analysis, a, 0) or 0) for k, a in fields.items()}
    out["peak_estimate_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def device_memory_stats() -> dict[str, int] | None:
    """`memory_stats()` of the first local device (bytes in use, peak), or None (CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # not implemented on some backends
        return None
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


class _Subset:
    """The first `n` records of a data source."""

    def __init__(self, source, n: int):
        self._source, self._n = source, min(n, len(source))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]


def _to_host(x: jax.Array) -> np.ndarray:
    # A data-sharded global array to host; on several hosts every process gets all of it.
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


class Evaluator:
    """Scores train states of one task on one mesh; compiles each program once.

    Attributes:
      task: the `tasks.base.Task` scored.
      compile_seconds: {"eval_step": s, "predict_step": s} for the programs compiled.
      memory: {"eval_step": memory_analysis(...)} for the programs compiled.
      last_pass: {"images", "batches", "seconds"} of the latest `evaluate_split`.
    """

    def __init__(
        self,
        task: base.Task,
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        state_sharding: Any,
    ):
        self.task = task
        self.config = config
        self.mesh = mesh
        evaluation = task.evaluation
        self._evaluation = evaluation
        repl = sharding.replicated(mesh)
        data = sharding.data_sharding(mesh)
        self._zeros = functools.partial(sharding.replicate, evaluation.zeros(), mesh)
        self.eval_step = jax.jit(
            lambda state, batch, carry: evaluation.accumulate(base.variables(state), batch, carry),
            in_shardings=(state_sharding, data, repl),
            out_shardings=(repl, data),
            donate_argnums=(2,),
        )
        self.predict_step = jax.jit(
            lambda state, batch: task.predict(base.variables(state), batch),
            in_shardings=(state_sharding, data),
            out_shardings=data,
        )
        self._compiled: dict[str, Any] = {}
        self.compile_seconds: dict[str, float] = {}
        self.memory: dict[str, dict[str, int] | None] = {}
        self.last_pass: dict[str, float] = {}

    def _program(self, name: str, *args):
        # Compiles `name` ahead of time on first use (timed; memory analysed), then reuses
        # the executable: one compilation per Evaluator, whatever is evaluated.
        if name not in self._compiled:
            start = time.perf_counter()
            compiled = getattr(self, name).lower(*args).compile()
            self.compile_seconds[name] = time.perf_counter() - start
            self.memory[name] = memory_analysis(compiled)
            self._compiled[name] = compiled
        return self._compiled[name]

    def accumulate(self, state, batches: Iterable[dict[str, np.ndarray]]) -> Any:
        """The task's host total of `state` over `batches` (all processes).

        The carry stays on device and is flushed into the host total every
        `batches_per_flush` batches and at the end; per-batch outputs are fetched one
        batch behind, so the next batch is dispatched before the host waits. Sets
        `last_pass`.
        """
        evaluation = self._evaluation
        total = evaluation.new_total()
        carry, in_carry, capacity = self._zeros(), 0, None
        waiting = None  # the previous batch's outputs, fetched after the next dispatch
        prefetch = self.config.input.prefetch
        start, num_images, num_batches = time.perf_counter(), 0, 0
        for batch in sharding.prefetch_to_mesh(batches, self.mesh, prefetch):
            if capacity is None and evaluation.batches_per_flush is not None:
                capacity = evaluation.batches_per_flush(batch)
            if capacity is not None and in_carry >= capacity:
                total = evaluation.merge_carry(total, jax.device_get(carry))
                carry, in_carry = self._zeros(), 0
            step = self._program("eval_step", state, batch, carry)
            carry, outputs = step(state, batch, carry)
            in_carry += 1
            if waiting is not None:
                total = evaluation.merge_outputs(total, jax.tree.map(_to_host, waiting))
            waiting = outputs if jax.tree.leaves(outputs) else None
            num_images += int(np.sum(_to_host(batch["valid"])))
            num_batches += 1
        if waiting is not None:
            total = evaluation.merge_outputs(total, jax.tree.map(_to_host, waiting))
        total = evaluation.merge_carry(total, jax.device_get(carry))
        seconds = time.perf_counter() - start
        self.last_pass = {"images": num_images, "batches": num_batches, "seconds": seconds}
        return total

    def batches(self, split: str, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """This process's eval batches of `split` (the first `limit` images if given)."""
        source = pipeline.load_split(self.config, split)
        if limit is not None:
            source = _Subset(source, limit)
        per_process = sharding.local_batch_size(self.config.input.eval_batch_size, self.mesh)
        return self.task.eval_batches(source, per_process)

    def evaluate_split(self, state, split: str) -> tuple[dict[str, Any], Any]:
        """Scores `state` on `split` of the configured dataset: (scores, host total)."""
        total = self.accumulate(state, self.batches(split))
        return self._evaluation.finalize(total), total

    def predictions(self, state, split: str, limit: int) -> Iterator[tuple[int, dict, Any]]:
        """`(index, sample, prediction)` of the first `limit` images of `split`.

        `sample` is the decoded record (`transforms.decode_record`: image and label at
        original size), `prediction` this sample's slice of `task.predict` (numpy);
        every process gets all of them.
        """
        source = pipeline.load_split(self.config, split)
        for batch in sharding.prefetch_to_mesh(self.batches(split, limit), self.mesh, 1):
            step = self._program("predict_step", state, batch)
            pred = jax.tree.map(_to_host, step(state, batch))
            index = _to_host(batch["index"])
            for i in np.flatnonzero(index >= 0):
                sample = transforms.decode_record(source[int(index[i])])
                yield int(index[i]), sample, jax.tree.map(lambda x, i=i: x[i], pred)

    def benchmark(self, state, split: str, iters: int) -> dict[str, float]:
        """Speed of the eval program on one batch already on device, after a warm-up.

        Returns images/s and ms/image (global batch, all devices) over `iters` timed
        runs, and the compile time of the eval program (measured when it was built).
        """
        batch = next(sharding.prefetch_to_mesh(self.batches(split), self.mesh, 1))
        carry = self._zeros()
        step = self._program("eval_step", state, batch, carry)
        carry, outputs = jax.block_until_ready(step(state, batch, carry))  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            carry, outputs = step(state, batch, carry)
        jax.block_until_ready((carry, outputs))
        seconds = time.perf_counter() - start
        images = iters * int(batch["valid"].shape[0])
        return {
            "images_per_second": images / seconds,
            "ms_per_image": 1000 * seconds / images,
            "timed_batches": iters,
            "batch_size": int(batch["valid"].shape[0]),
            "compile_seconds": self.compile_seconds["eval_step"],
        }


def parameter_footprint(state) -> dict[str, int]:
    """Parameter count and bytes (params + BatchNorm statistics) of a train state."""
    params = jax.tree.leaves(state.params)
    stats = jax.tree.leaves(state.batch_stats)
    return {
        "parameters": int(sum(x.size for x in params)),
        "parameter_bytes": int(sum(x.size * x.dtype.itemsize for x in params)),
        "batch_stats_bytes": int(sum(x.size * x.dtype.itemsize for x in stats)),
    }


def write_report(
    output_dir: str,
    task: base.Task,
    split: str,
    step: int,
    scores: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes `<output_dir>/eval/<split>_step<N>.{json,txt}`; returns the text table.

    The table and the JSON body are the task's (`task.report`); `extra` (e.g.
    `{"inference": ..., "speed": ..., "memory": ...}`) is added to the JSON as is and to
    the text as `key: value` lines after the table.
    """
    table, body = task.report(scores)
    if extra:
        table += "\n" + "\n".join(format_extra(extra))
    if jax.process_index() == 0:
        out_dir = os.path.join(output_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{split}_step{step}")
        report = {"split": split, "step": step, "task": task.name, **body}
        report.update(extra or {})
        atomic_write(stem + ".json", json.dumps(report, indent=2))
        atomic_write(stem + ".txt", table + "\n")
    return table


def format_extra(extra: dict[str, Any]) -> list[str]:
    """`section: k=v, ...` lines for the text report."""
    lines = []
    for section, value in extra.items():
        if isinstance(value, dict):
            items = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
            lines.append(f"{section}: {items}")
        else:
            lines.append(f"{section}: {_fmt(value)}")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)
