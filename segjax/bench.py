"""Benchmarks a model's train step and inference: ``python -m segjax.bench``.

Prints one JSON line with the median train step time and images/s, inference images/s,
compile time, peak memory (the compiled program's memory analysis, and the device's own
peak where the backend reports it), parameter count, FLOPs per image from XLA's cost
analysis of the compiled programs, achieved TFLOP/s and, where the device's peak is known
(``PEAK_TFLOPS``), the model FLOPs utilisation (MFU).

The train step is the one ``train.py`` runs (``train_lib.setup``: same jit, shardings and
donation), with plain SGD (momentum 0.9, constant learning rate 0.01, no weight decay) and
cross-entropy ignoring 255, like ``shared/bench/torch_reference.py``, so that the two can be
timed side by side (``benchmarks/run_cpu.py``).

Examples::

    python -m segjax.bench --model deeplabv3_resnet50 --batch 4 --size 256 256
    python -m segjax.bench --model deeplabv3plus_resnet50 --batch 16 --size 512 512 \\
        --dtype bfloat16 --steps 20
    python -m segjax.bench --model deeplabv3plus_tiny --batch 16 --size 128 128 \\
        --data dataset          # also times the grain input pipeline alone
    python -m segjax.bench --model maskrcnn_resnet50_fpn --batch 2 --size 512 512
        # instance models: the instance task's step, random boxes and masks, 91 classes
    python -m segjax.bench --model unet3d --batch 2 --size 96 96 96 --num_classes 3
                                # a volume model: --size D H W, the volume task's step

``--data synthetic`` (default) feeds one random batch already on device, so the figures
are the model's alone; ``--data dataset`` reads a prepared dataset (``--dataset``, default
``segjax_shapes``) through ``segjax.data.pipeline.train_loader`` and reports the pipeline's
images/s alone next to the train step fed by it; ``--pipeline_only`` times the pipeline
alone (``--steps`` batches), e.g. Cityscapes-sized images at a 512x512 crop::

    python -m segjax.bench --pipeline_only --dataset folder --data_dir DIR \
        --batch 8 --size 512 512 --workers 2 --steps 20
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segjax import evaluation, sharding, train_lib
from segjax.data import bands, pipeline
from segjax.data.datasets import get_spec

# Dense peak TFLOP/s per chip, by `device_kind` substring (first match wins), for the
# compute dtype. float32 entries are what XLA's default matmul precision gives: TF32 on
# NVIDIA Ampere and later, one bfloat16 pass on TPU. Sources: NVIDIA's H100/H200/A100
# datasheets (SXM, without sparsity), Google Cloud's TPU v4/v5e/v5p pages.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.0}),
    ("H200", {"bfloat16": 989.0, "float32": 494.0}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of one chip of `device_kind` in `dtype`; None if unknown (CPU)."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def bench_config(
    model: str,
    *,
    batch: int,
    size: Sequence[int],
    dtype: str = "float32",
    num_classes: int = 21,
    output_stride: int | None = None,
    data_dir: str | None = None,
    dataset: str = "segjax_shapes",
    dataset_config: str = "default",
    worker_count: int | None = None,
) -> ml_collections.ConfigDict:
    """A training config for the benchmark: `base_config()` with SGD like the torch reference.

    SGD momentum 0.9 at a constant learning rate 0.01, no weight decay, no warmup, no
    auxiliary head, cross-entropy with ignore index 255; `output_stride=None` keeps the
    model's default (8 for `deeplabv3_resnet50`).
    """
    from configs import common  # the repository's configs/ (run from the repository root)
    from segjax.models.registry import VOLUME_MODELS

    c = common.base_config()
    c.model.name = model
    c.model.dtype = dtype
    c.model.output_stride = output_stride
    c.model.aux_head = False
    c.dataset.num_classes = num_classes
    c.dataset.name = dataset
    c.dataset.config = dataset_config
    if data_dir:
        c.dataset.data_dir = data_dir
    c.input.batch_size = batch
    if model in VOLUME_MODELS:  # the volume task: `size` is (D, H, W), one input channel
        from segjax.tasks import volume

        if len(size) != 3:
            raise ValueError(f"volume model {model!r} needs --size D H W, got {list(size)}")
        c.task = "volume"
        c.volume = volume.config_block()
        c.volume.crop_size = tuple(size)
        if dataset == "segjax_shapes":
            c.dataset.name = "volume_shapes"
    elif len(size) != 2:
        raise ValueError(f"image model {model!r} needs --size H W, got {list(size)}")
    else:
        c.input.crop_size = tuple(size)
    if worker_count is not None:
        c.input.worker_count = worker_count
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.loss.name = "cross_entropy"
    from segjax.models.mask_rcnn import INSTANCE_MODELS

    if model in INSTANCE_MODELS:
        # Mask R-CNN / PANet: the instance task, images at their size, 16 instances each.
        from segjax.tasks import instance

        c.task = "instance"
        c.instance = instance.config_block()
        c.instance.max_instances = 16
        c.instance.min_sizes = (min(size),)
        c.instance.max_size = max(size)
        c.instance.test_size = min(size)
        c.input.eval_pad_size = tuple(size)
    c.lock()
    return c


def _flops(compiled) -> float | None:
    # XLA's cost analysis of the compiled (per-device) program; a list on older jax.
    try:
        cost = compiled.cost_analysis()
    except Exception:  # backends without cost analysis raise various errors
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _median_seconds(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    # Each call blocks on its result, so a sample is one step's wall time.
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_batch(
    batch: int, size: Sequence[int], num_classes: int, seed: int = 0, channels: int = 3
) -> dict:
    """A random batch: `image` float32 [B, H, W, C] ~ N(0, 1), `label` int32 [B, H, W]."""
    rng = np.random.default_rng(seed)
    h, w = size
    return {
        "image": rng.standard_normal((batch, h, w, channels), dtype=np.float32),
        "label": rng.integers(0, num_classes, (batch, h, w), dtype=np.int32),
    }


def _pipeline_images_per_second(loader_iter, batches: int, batch: int) -> float:
    next(loader_iter)  # starts the workers and fills their buffers: not timed
    start = time.perf_counter()
    for _ in range(batches):
        next(loader_iter)
    return batches * batch / (time.perf_counter() - start)


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (\S+) ([\w-]+)\((.*)$", re.M)


def _describe_instructions(hlo_text: str) -> dict[str, str]:
    # Instruction name -> "opcode[fusion kind] shape window dim_labels", from the compiled HLO.
    out = {}
    for name, shape, opcode, rest in _INSTRUCTION.findall(hlo_text):
        kind = re.search(r'"kind":"([^"]*)"', rest)
        window = re.search(r"window=\{([^}]*)\}", rest)
        labels = re.search(r"dim_labels=([^,\s]+)", rest)
        parts = [opcode + (f"[{kind.group(1)}]" if kind else ""), shape]
        parts += [m.group(1) for m in (window, labels) if m]
        out[name] = " ".join(parts)
    return out


def profile_ops(compiled, run_step: Callable[[], Any], steps: int = 2, top: int = 20) -> dict:
    """Traces `steps` runs of `run_step` and sums the time of each compiled HLO op.

    Returns `{"by_op": [[ms per step, name, description], ...], "by_kind": {...}}`: the `top`
    instructions and the total per opcode (fusions split by kind, e.g. `fusion[__ynn_fusion]`),
    summed over the backend's worker threads (on the CPU, one line per Eigen thread).
    """
    described = _describe_instructions(compiled.as_text())
    with tempfile.TemporaryDirectory() as log_dir:
        jax.block_until_ready(run_step())
        with jax.profiler.trace(log_dir):
            for _ in range(steps):
                jax.block_until_ready(run_step())
        (path,) = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
        per_op: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in described:
                        per_op[event.name] += event.duration_ns / 1e6 / steps
    by_kind: collections.Counter = collections.Counter()
    for name, ms in per_op.items():
        by_kind[described[name].split()[0]] += ms
    return {
        "by_op": [[round(ms, 3), n, described[n]] for n, ms in per_op.most_common(top)],
        "by_kind": {k: round(v, 3) for k, v in by_kind.most_common()},
    }


def _train_loader(config: ml_collections.ConfigDict, mesh):
    # train.py's loader of the config's prepared train split: (source, loader, batch/process).
    source = pipeline.load_split(config, config.dataset.train_split)
    per_process = sharding.local_batch_size(config.input.batch_size, mesh)
    loader = pipeline.train_loader(config, source, per_process_batch=per_process, seed=config.seed)
    return source, loader, per_process


def pipeline_benchmark(config: ml_collections.ConfigDict, batches: int = 20) -> dict[str, Any]:
    """Images/s of the grain train pipeline alone (`train.py`'s), on the config's dataset.

    Reads the prepared dataset `config.dataset` and times `batches` batches of this
    process's share of `config.input.batch_size` at `config.input.crop_size`, with
    `config.input.worker_count` workers, after one untimed batch (worker start-up).
    """
    source, loader, per_process = _train_loader(config, sharding.make_mesh(jax.devices()))
    images_per_s = _pipeline_images_per_second(iter(loader), batches, per_process)
    return {
        "dataset": f"{config.dataset.name}/{config.dataset.config}",
        "records": len(source),
        "batch": config.input.batch_size,
        "size": list(config.input.crop_size),
        "worker_count": config.input.worker_count,
        "batches": batches,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "load_average": list(os.getloadavg()),
        "pipeline_img_per_s": images_per_s * jax.process_count(),
    }


def run_benchmark(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 5,
    warmup: int = 2,
    data: str = "synthetic",
    devices: int | None = None,
    inference: bool = True,
    profile_top: int = 0,
    compile_only: bool = False,
) -> dict[str, Any]:
    """Compiles and times the train step (and inference) of `config`; returns the figures.

    Args:
      config: a training config (see `bench_config`); `input.batch_size` is the global
        batch, `input.crop_size` the image size.
      steps: timed repetitions; times are medians over them.
      warmup: untimed runs before timing.
      data: "synthetic" (one random batch on device) or "dataset" (the config's dataset
        through the grain train pipeline; also times the pipeline alone).
      devices: use the first `devices` local devices (default: all); the batch is split
        over them as in training.
      inference: also time the forward pass + argmax in eval mode.
      profile_top: when > 0, also profile two train steps and report the `profile_top`
        most expensive HLO ops under `"train_profile"` (see `profile_ops`).
      compile_only: compile, and report compile times, memory analyses and FLOPs, but run
        nothing (times are NaN): the memory a program needs, on a host that could not run it.

    Returns:
      A JSON-serialisable dict; `*_s` are seconds, `*_bytes` bytes, FLOPs from XLA's
      cost analysis of the compiled programs (None where the backend has none).
    """
    if data not in ("synthetic", "dataset"):
        raise ValueError(f"data={data!r}; expected 'synthetic' or 'dataset'")
    if compile_only and data == "dataset":
        raise ValueError("compile_only runs nothing, so it cannot time the input pipeline")
    all_devices = jax.devices()
    mesh = sharding.make_mesh(all_devices[: devices or len(all_devices)])
    num_devices = mesh.devices.size
    batch_size = config.input.batch_size
    dtype = config.model.dtype
    run = train_lib.setup(config, mesh)
    rng = sharding.replicate(jax.random.key(config.seed), mesh)
    state = run.new_state(jax.random.key(config.seed))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))

    if run.task.name == "volume" and data == "dataset":
        raise ValueError("--data dataset times the image pipeline; volume models: synthetic")
    instance = run.task.name == "instance"
    size = list(config.input.crop_size)
    if run.task.name == "volume":  # [B, D, H, W, C] volumes: the task's own random batch
        host_batch = run.task.example_batch(batch_size, config.seed)
        size = list(config.volume.crop_size)
    elif instance:  # boxes, classes, masks and validity of instances
        host_batch = run.task.example_batch(batch_size, config.seed)
    else:
        host_batch = synthetic_batch(
            batch_size,
            size,
            config.dataset.num_classes,
            config.seed,
            channels=bands.input_channels(run.config),
        )
    device_batch = sharding.shard_batch(host_batch, mesh)

    start = time.perf_counter()
    compiled_train = run.train_step.lower(state, device_batch, rng).compile()
    train_compile_s = time.perf_counter() - start
    train_flops = _flops(compiled_train)

    def train_once():
        nonlocal state
        state, step_metrics = compiled_train(state, device_batch, rng)
        return step_metrics["loss"]

    if compile_only:
        train_step_s, loss = math.nan, 0.0
    else:
        train_step_s = _median_seconds(train_once, steps, warmup)
        loss = float(jax.device_get(train_once()))
    run_profile = profile_top and not compile_only
    profile = profile_ops(compiled_train, train_once, top=profile_top) if run_profile else None
    strides = getattr(getattr(run.model, "backbone", None), "feature_strides", None)

    result: dict[str, Any] = {
        "framework": "segjax",
        "model": config.model.name,
        "output_stride": max(strides().values()) if strides else config.model.output_stride,
        "num_classes": config.dataset.num_classes,
        "batch": batch_size,
        "size": size,
        "dtype": dtype,
        "data": data,
        "steps": steps,
        "device": all_devices[0].device_kind,
        "platform": all_devices[0].platform,
        "num_devices": num_devices,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host": platform.node(),
        "load_average": list(os.getloadavg()),
        "params": n_params,
        "train_compile_s": train_compile_s,
        "train_step_s": train_step_s,
        "train_img_per_s": batch_size / train_step_s,
        "compile_only": compile_only,
        "train_loss_finite": math.isfinite(loss),
        "train_memory": evaluation.memory_analysis(compiled_train),
    }
    # The cost analysis is of the per-device program: scale by the devices for the batch.
    result["train_flops_per_image"] = (
        train_flops * num_devices / batch_size if train_flops is not None else None
    )

    if inference:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        repl = sharding.replicated(mesh)
        data_sharding = sharding.data_sharding(mesh)

        def infer(v, x):
            if instance:  # detections: boxes, scores, classes, 28 x 28 masks
                return run.model.apply(v, x, train=False)
            return jnp.argmax(run.model.apply(v, x, train=False)["logits"], axis=-1)

        predict = jax.jit(
            infer,
            in_shardings=(jax.tree.map(lambda _: repl, variables), data_sharding),
            out_shardings=data_sharding,
        )
        start = time.perf_counter()
        compiled_predict = predict.lower(variables, device_batch["image"]).compile()
        result["infer_compile_s"] = time.perf_counter() - start
        infer_flops = _flops(compiled_predict)
        infer_s = (
            math.nan
            if compile_only
            else _median_seconds(
                lambda: compiled_predict(variables, device_batch["image"]), steps, warmup
            )
        )
        result["infer_batch_s"] = infer_s
        result["infer_img_per_s"] = batch_size / infer_s
        result["infer_memory"] = evaluation.memory_analysis(compiled_predict)
        result["infer_flops_per_image"] = (
            infer_flops * num_devices / batch_size if infer_flops is not None else None
        )

    if data == "dataset":
        _, loader, per_process = _train_loader(config, mesh)
        result["dataset"] = f"{config.dataset.name}/{config.dataset.config}"
        result["worker_count"] = config.input.worker_count
        result["pipeline_img_per_s"] = (
            _pipeline_images_per_second(iter(loader), steps + warmup, per_process)
            * jax.process_count()
        )
        # The train step fed by the pipeline, as train.py feeds it (prefetched to device).
        batches = sharding.prefetch_to_mesh(iter(loader), mesh, config.input.prefetch)

        def fed_once():
            nonlocal state
            state, step_metrics = compiled_train(state, next(batches), rng)
            return step_metrics["loss"]

        fed_s = _median_seconds(fed_once, steps, warmup)
        result["fed_train_step_s"] = fed_s
        result["fed_train_img_per_s"] = batch_size / fed_s
        result["pipeline_keeps_up"] = result["pipeline_img_per_s"] >= result["train_img_per_s"]

    peak = peak_tflops(all_devices[0].device_kind, dtype)
    result["peak_tflops_per_device"] = peak
    if result["train_flops_per_image"] is not None:
        achieved = result["train_flops_per_image"] * batch_size / train_step_s / 1e12
        result["train_tflops"] = achieved
        result["train_mfu"] = achieved / (peak * num_devices) if peak else None
    else:
        result["train_tflops"] = result["train_mfu"] = None
    result["device_memory_stats"] = evaluation.device_memory_stats()
    if profile is not None:
        result["train_profile"] = profile
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses the command line, runs the benchmark and prints its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m segjax.bench", description=__doc__)
    parser.add_argument("--model", default="deeplabv3plus_tiny", help="a registered model")
    parser.add_argument("--batch", type=int, default=4, help="global batch size")
    parser.add_argument(
        "--size", type=int, nargs="+", default=(256, 256), help="H W (images) or D H W (volumes)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "dataset"))
    parser.add_argument("--data_dir", default=None, help="data dir of the prepared dataset")
    parser.add_argument("--workers", type=int, default=None, help="grain workers (dataset)")
    parser.add_argument("--output_stride", type=int, default=None, help="default: model's")
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: 21, or the dataset's classes"
    )
    parser.add_argument(
        "--dataset", default="segjax_shapes", help="prepared dataset for --data dataset"
    )
    parser.add_argument("--dataset_config", default="default", help="its builder config")
    parser.add_argument(
        "--pipeline_only",
        action="store_true",
        help="time only the input pipeline on --dataset (no model, nothing compiled)",
    )
    parser.add_argument("--devices", type=int, default=None, help="default: all local")
    parser.add_argument("--no_inference", action="store_true", help="time training only")
    parser.add_argument(
        "--profile_top", type=int, default=0, help="report the N most expensive train-step ops"
    )
    parser.add_argument(
        "--compile_only",
        action="store_true",
        help="compile and report memory and FLOPs, run nothing (times are NaN)",
    )
    args = parser.parse_args(argv)
    num_classes = args.num_classes
    if num_classes is None:
        uses_data = args.data == "dataset" or args.pipeline_only
        # `folder` datasets name their classes in the prepared data: give --num_classes.
        num_classes = (len(get_spec(args.dataset).class_names) if uses_data else 0) or 21
        from segjax.models.mask_rcnn import INSTANCE_MODELS

        if args.model in INSTANCE_MODELS and not uses_data:
            num_classes = 91  # COCO with background, as torchvision's detection models
    config = bench_config(
        args.model,
        batch=args.batch,
        size=args.size,
        dtype=args.dtype,
        num_classes=num_classes,
        output_stride=args.output_stride,
        data_dir=args.data_dir,
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        worker_count=args.workers,
    )
    if args.pipeline_only:
        result = pipeline_benchmark(config, batches=args.steps)
        print(json.dumps(result), flush=True)
        return result
    result = run_benchmark(
        config,
        steps=args.steps,
        warmup=args.warmup,
        data=args.data,
        devices=args.devices,
        inference=not args.no_inference,
        profile_top=args.profile_top,
        compile_only=args.compile_only,
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
