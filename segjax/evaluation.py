"""Scoring a model on a dataset split: jitted eval programs and the loop around them.

`Evaluator` compiles one eval program per mesh, ahead of time (fixed shapes: images
padded to `config.input.eval_pad_size`, labels at original size padded to the label
canvas, batches padded to `config.input.eval_batch_size` with a `valid` mask), runs the
configured inference mode (`config.eval`, see `segjax.inference`), resizes the class
scores back to each image's original size and accumulates the confusion matrix on
device. It also records what the survey's speed and memory measures need: compile
time, the compiled program's memory analysis, and timed runs after warm-up.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import inference, metrics, sharding
from segjax.data import datasets, eval_pipeline, pipeline, transforms
from segjax.files import atomic_write


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def make_score_fn(model, config: ml_collections.ConfigDict, mesh=None) -> Callable:
    """`score_fn(state, batch) -> scores` float32 [B, Hl, Wl, K] at original size.

    `batch` has `image` [B, Hp, Wp, 3], `label` [B, Hl, Wl], `original_hw` and
    `resized_hw` [B, 2]. Scores are computed by `inference.predict` in the mode of
    `config.eval` and resized back to each image's original size (top-left of the
    label canvas) when images were resized; otherwise cut (or padded) to the canvas.
    """
    mode = inference.InferenceMode.from_config(config.eval)
    window_sharding = sharding.data_sharding(mesh) if mesh is not None else None
    predict_fn = inference.make_predict_fn(model, mode, window_sharding=window_sharding)
    resized = eval_pipeline.resize_setting(config) is not None

    def score_fn(state, batch: dict) -> jax.Array:
        scores = predict_fn(_variables(state), batch["image"])
        hl, wl = batch["label"].shape[1:]
        if resized:
            return inference.resize_to_original(
                scores, batch["resized_hw"], batch["original_hw"], (hl, wl)
            )
        hc, wc = scores.shape[1:3]
        scores = jnp.pad(scores, ((0, 0), (0, max(hl - hc, 0)), (0, max(wl - wc, 0)), (0, 0)))
        return scores[:, :hl, :wl]

    return score_fn


def make_eval_step(model, config: ml_collections.ConfigDict, mesh=None) -> Callable:
    """`eval_step(state, batch, cm) -> cm + this batch's confusion matrix` [K, K] int32.

    `state` has `params` and `batch_stats`; `batch` is an `eval_pipeline` batch. Samples
    with `valid == False` and pixels labelled `ignore_index` count for nothing.
    """
    score_fn = make_score_fn(model, config, mesh)
    num_classes, ignore_index = config.dataset.num_classes, config.dataset.ignore_index

    def eval_step(state, batch: dict, cm: jax.Array) -> jax.Array:
        pred = jnp.argmax(score_fn(state, batch), axis=-1)
        return cm + metrics.confusion_matrix(
            pred, batch["label"], num_classes, ignore_index=ignore_index, valid=batch["valid"]
        )

    return eval_step


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
    """Scores train states of one model on one mesh; compiles each program once.

    Attributes:
      mode: the `inference.InferenceMode` of `config.eval`.
      compile_seconds: {"eval_step": s, "predict_step": s} for the programs compiled.
      memory: {"eval_step": memory_analysis(...)} for the programs compiled.
      last_pass: {"images", "batches", "seconds"} of the latest `evaluate_split`.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model,
        mesh: jax.sharding.Mesh,
        state_sharding: Any,
    ):
        self.config = config
        self.mesh = mesh
        self.num_classes = config.dataset.num_classes
        self.mode = inference.InferenceMode.from_config(config.eval)
        repl = sharding.replicated(mesh)
        data = sharding.data_sharding(mesh)
        self._zeros = functools.partial(
            sharding.replicate, np.zeros((self.num_classes,) * 2, np.int32), mesh
        )
        self.eval_step = jax.jit(
            make_eval_step(model, config, mesh),
            in_shardings=(state_sharding, data, repl),
            out_shardings=repl,
            donate_argnums=(2,),
        )
        score_fn = make_score_fn(model, config, mesh)
        self.predict_step = jax.jit(
            lambda state, batch: jnp.argmax(score_fn(state, batch), axis=-1).astype(jnp.int32),
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

    def confusion_matrix(self, state, batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
        """The int64 confusion matrix [K, K] of `state` over `batches` (all processes).

        The running sum stays on device in int32 and is flushed to a host int64 total
        before it could overflow, so no host sync happens per batch. Sets `last_pass`.
        """
        accumulator = metrics.ConfusionMatrixAccumulator(self.num_classes)
        cm, pixels_in_cm = self._zeros(), 0
        prefetch = self.config.input.prefetch
        start, num_images, num_batches = time.perf_counter(), 0, 0
        for batch in sharding.prefetch_to_mesh(batches, self.mesh, prefetch):
            batch_pixels = math.prod(batch["label"].shape)
            if pixels_in_cm + batch_pixels >= 2**31 - 1:
                accumulator.update(jax.device_get(cm))
                cm, pixels_in_cm = self._zeros(), 0
            step = self._program("eval_step", state, batch, cm)
            cm = step(state, batch, cm)
            pixels_in_cm += batch_pixels
            num_images += int(np.sum(_to_host(batch["valid"])))
            num_batches += 1
        accumulator.update(jax.device_get(cm))
        seconds = time.perf_counter() - start
        self.last_pass = {"images": num_images, "batches": num_batches, "seconds": seconds}
        return accumulator.matrix

    def batches(self, split: str, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """This process's eval batches of `split` (the first `limit` images if given)."""
        source = pipeline.load_split(self.config, split)
        if limit is not None:
            source = _Subset(source, limit)
        per_process = sharding.local_batch_size(self.config.input.eval_batch_size, self.mesh)
        return eval_pipeline.eval_batches(self.config, source, per_process_batch=per_process)

    def evaluate_split(self, state, split: str) -> tuple[dict[str, Any], np.ndarray]:
        """Scores `state` on `split` of the configured dataset: (scores, confusion matrix)."""
        cm = self.confusion_matrix(state, self.batches(split))
        return metrics.segmentation_scores(cm), cm

    def predictions(
        self, state, split: str, limit: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """`(index, image uint8 [h, w, 3], label [h, w], prediction [h, w])` of the first
        `limit` images of `split`, at original size (every process gets all of them)."""
        source = pipeline.load_split(self.config, split)
        for batch in sharding.prefetch_to_mesh(self.batches(split, limit), self.mesh, 1):
            step = self._program("predict_step", state, batch)
            pred = _to_host(step(state, batch))
            index = _to_host(batch["index"])
            hw = _to_host(batch["original_hw"])
            for i in np.flatnonzero(index >= 0):
                sample = transforms.decode_record(source[int(index[i])])
                h, w = hw[i]
                yield int(index[i]), sample["image"], sample["label"], pred[i, :h, :w]

    def benchmark(self, state, split: str, iters: int) -> dict[str, float]:
        """Speed of the eval program on one batch already on device, after a warm-up.

        Returns images/s and ms/image (global batch, all devices) over `iters` timed
        runs, and the compile time of the eval program (measured when it was built).
        """
        batch = next(sharding.prefetch_to_mesh(self.batches(split), self.mesh, 1))
        cm = self._zeros()
        step = self._program("eval_step", state, batch, cm)
        cm = jax.block_until_ready(step(state, batch, cm))  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            cm = step(state, batch, cm)
        jax.block_until_ready(cm)
        seconds = time.perf_counter() - start
        images = iters * int(batch["image"].shape[0])
        return {
            "images_per_second": images / seconds,
            "ms_per_image": 1000 * seconds / images,
            "timed_batches": iters,
            "batch_size": int(batch["image"].shape[0]),
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
    config: ml_collections.ConfigDict,
    split: str,
    step: int,
    scores: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> str:
    """Writes `<output_dir>/eval/<split>_step<N>.{json,txt}`; returns the text table.

    `extra` (e.g. `{"inference": ..., "speed": ..., "memory": ...}`) is added to the
    JSON as is and to the text as `key: value` lines after the table.
    """
    class_names = datasets.class_names(config.dataset)
    table = metrics.format_report(scores, class_names)
    if extra:
        table += "\n" + "\n".join(format_extra(extra))
    if jax.process_index() == 0:
        out_dir = os.path.join(output_dir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{split}_step{step}")
        report = {"split": split, "step": step, **metrics.report_dict(scores, class_names)}
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
