"""What `eval.py` does: pick a checkpoint of a run, restore it, score it and report the
survey's four measures (accuracy, visual quality, speed, memory); or predict files."""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import cv2
import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from segjax import evaluation, inference, sharding, train_lib, visualize
from segjax.checkpoint import Checkpointer
from segjax.data import datasets


def load_config(path: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved as JSON (`<workdir>/config.json`), locked.

    A config saved before the `eval` block existed gets the default one.
    """
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path} not found: is this the --workdir of a segjax run? Otherwise pass --config."
        ) from e
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if "eval" not in config:
        from configs import common

        config.eval = common.base_config().eval
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


def restore(
    config: ml_collections.ConfigDict, checkpoint_dir: str, which: str, mesh: jax.sharding.Mesh
) -> tuple[train_lib.Run, int, Any]:
    """(run, step, state) of the chosen checkpoint, the state placed on `mesh`."""
    run = train_lib.setup(config, mesh)
    ckpt = Checkpointer(checkpoint_dir, async_save=False)
    step = resolve_step(ckpt, which)
    state = ckpt.restore(step, run.abstract_state)
    ckpt.close()
    return run, step, state


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    *,
    which: str = "latest",
    split: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[int, dict[str, Any]]:
    """Restores a checkpoint of `config`'s model and scores it; returns (step, scores)."""
    run, step, state = restore(config, checkpoint_dir, which, mesh or sharding.make_mesh())
    scores, _ = run.evaluator.evaluate_split(state, split or config.dataset.eval_split)
    return step, scores


def run_evaluation(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    output_dir: str,
    *,
    which: str = "latest",
    split: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Scores a checkpoint and writes the four parts of the report under `<output>/eval/`.

    1. accuracy: `<split>_step<N>.{json,txt}` (per-class table, summary scores);
    2. visual quality: `<split>_step<N>_vis/<index>.png` (image | ground truth |
       prediction, `config.eval.num_visualizations` of them) and
       `<split>_step<N>_confusion.png` (row-normalised confusion matrix);
    3. speed: images/s and ms/image of the eval program after warm-up, its compile time,
       and the end-to-end rate of the evaluation pass (input pipeline included);
    4. memory: parameter count and bytes, the compiled eval program's memory analysis
       (per device) and the device's peak memory where the backend reports it.

    Returns:
      {"step", "scores", "cm", "extra", "table", "files"}.
    """
    mesh = mesh or sharding.make_mesh()
    split = split or config.dataset.eval_split
    run, step, state = restore(config, checkpoint_dir, which, mesh)
    evaluator = run.evaluator
    scores, cm = evaluator.evaluate_split(state, split)
    first_pass = dict(evaluator.last_pass)
    # A second pass with the program compiled: the end-to-end rate without compilation.
    evaluator.evaluate_split(state, split)
    second_pass = evaluator.last_pass
    speed = evaluator.benchmark(state, split, int(config.eval.speed_iters))
    speed["end_to_end_images_per_second"] = second_pass["images"] / max(
        second_pass["seconds"], 1e-9
    )
    speed["first_pass_seconds"] = first_pass["seconds"]
    memory: dict[str, Any] = evaluation.parameter_footprint(state)
    memory["eval_program_per_device"] = evaluator.memory.get("eval_step")
    memory["device_memory_stats"] = evaluation.device_memory_stats()
    extra = {
        "checkpoint": {"directory": os.path.abspath(checkpoint_dir), "step": step, "which": which},
        "inference": {
            "mode": evaluator.mode.describe(),
            "eval_pad_size": list(config.input.eval_pad_size),
            "resize": list(config.eval.resize),
            "global_batch_size": int(config.input.eval_batch_size),
        },
        "speed": speed,
        "memory": memory,
        "device": {
            "platform": jax.devices()[0].platform,
            "kind": jax.devices()[0].device_kind,
            "num_devices": int(mesh.devices.size),
        },
    }

    out_dir = os.path.join(output_dir, "eval")
    stem = os.path.join(out_dir, f"{split}_step{step}")
    files: dict[str, Any] = {"visualizations": [], "confusion_matrix": stem + "_confusion.png"}
    limit = int(config.eval.num_visualizations)
    if limit > 0:
        for index, image, label, pred in evaluator.predictions(state, split, limit):
            path = os.path.join(stem + "_vis", f"{index:05d}.png")
            if jax.process_index() == 0:
                panel = visualize.comparison_panel(
                    image,
                    label,
                    pred,
                    datasets.class_names(config.dataset),
                    datasets.palette(config.dataset),
                    ignore_index=config.dataset.ignore_index,
                    title=f"{split} #{index}  {config.model.name} step {step}",
                )
                visualize.save_png(panel, path)
            files["visualizations"].append(path)
    if jax.process_index() == 0:
        plot = visualize.confusion_matrix_image(
            cm,
            datasets.class_names(config.dataset),
            title=f"{config.model.name} step {step}, {split}",
        )
        visualize.save_png(plot, files["confusion_matrix"])
    extra["files"] = {
        "visualizations": os.path.relpath(stem + "_vis", out_dir) if limit > 0 else None,
        "confusion_matrix": os.path.relpath(files["confusion_matrix"], out_dir),
    }
    table = evaluation.write_report(output_dir, config, split, step, scores, extra)
    files["report"] = stem + ".json"
    return {
        "step": step,
        "scores": scores,
        "cm": cm,
        "extra": extra,
        "table": table,
        "files": files,
    }


# ----------------------------------------------------------------------------- files


def read_image(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file, rotated as its EXIF orientation says."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Sorted files matching any of the glob `patterns` (comma-separated in one string)."""
    paths = set()
    for pattern in patterns:
        for part in pattern.split(","):
            if part.strip():
                paths.update(
                    p for p in glob.glob(os.path.expanduser(part.strip())) if os.path.isfile(p)
                )
    return sorted(paths)


def predict_files(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    patterns: Sequence[str],
    output_dir: str,
    *,
    which: str = "latest",
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> list[str]:
    """Predicts image files and writes, per image, a label PNG and a colour overlay.

    Images of any size share one compiled program: each is resized, keeping its aspect
    ratio, to fit the canvas `config.input.eval_pad_size` (up or down), padded to it,
    predicted in the mode of `config.eval`; the class probabilities of its region are
    resized (bilinear) back to the original size on the host and the argmax is taken.

    Writes `<output>/<name>.png` (palette PNG: pixel value = class index) and
    `<output>/<name>_overlay.png`. Returns the label PNG paths.
    """
    mesh = mesh or sharding.make_mesh()
    paths = expand_patterns(patterns)
    if not paths:
        raise FileNotFoundError(f"No image file matches {list(patterns)}")
    run, step, state = restore(config, checkpoint_dir, which, mesh)
    canvas = tuple(int(s) for s in config.input.eval_pad_size)
    global_batch = int(config.input.eval_batch_size)
    local_batch = sharding.local_batch_size(global_batch, mesh)
    mode = inference.InferenceMode.from_config(config.eval)
    predict_fn = inference.make_predict_fn(
        run.model, mode, window_sharding=sharding.data_sharding(mesh)
    )
    data = sharding.data_sharding(mesh)
    probs_fn = jax.jit(
        lambda state, images: (
            jax.nn.softmax(
                predict_fn({"params": state.params, "batch_stats": state.batch_stats}, images), -1
            )
            if mode.num_views == 1
            else predict_fn({"params": state.params, "batch_stats": state.batch_stats}, images)
        ),
        in_shardings=(run.state_sharding, data),
        out_shardings=data,
    )
    mean = np.asarray(config.input.mean, np.float32)
    std = np.asarray(config.input.std, np.float32)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img")
    start = time.perf_counter()
    for first in range(0, len(paths), global_batch):
        chunk = paths[first : first + global_batch]
        mine = chunk[jax.process_index() * local_batch : (jax.process_index() + 1) * local_batch]
        images = np.zeros((local_batch, *canvas, 3), np.float32)
        for i, path in enumerate(mine):
            image = read_image(path)
            rh, rw = inference.fit_size(*image.shape[:2], canvas)
            resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
            images[i, :rh, :rw] = (resized.astype(np.float32) - mean) / std
        batch = jax.make_array_from_process_local_data(data, images)
        probs = evaluation._to_host(probs_fn(state, batch))
        if jax.process_index() == 0:
            for i, path in enumerate(chunk):
                image = read_image(path)
                h, w = image.shape[:2]
                rh, rw = inference.fit_size(h, w, canvas)
                region = probs[i, :rh, :rw]
                pred = _resize_channels(region, h, w).argmax(-1).astype(np.uint8)
                name = os.path.splitext(os.path.basename(path))[0]
                label_path = os.path.join(output_dir, f"{name}.png")
                visualize.label_image(pred, datasets.palette(config.dataset)).save(label_path)
                visualize.save_png(
                    visualize.overlay(image, pred, datasets.palette(config.dataset)),
                    os.path.join(output_dir, f"{name}_overlay.png"),
                )
                written.append(label_path)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    logging.info(
        "Predicted %d files with %s (step %d, %s) in %.1f s; one program compiled",
        len(paths),
        config.model.name,
        step,
        mode.describe(),
        time.perf_counter() - start,
    )
    return written


def _resize_channels(x: np.ndarray, height: int, width: int) -> np.ndarray:
    # Bilinear resize of [h, w, K] scores; cv2 takes at most 512 channels per call.
    if x.shape[:2] == (height, width):
        return x
    parts = [
        cv2.resize(
            np.ascontiguousarray(x[..., k : k + 512]),
            (width, height),
            interpolation=cv2.INTER_LINEAR,
        )
        for k in range(0, x.shape[-1], 512)
    ]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]
    return np.concatenate(parts, axis=-1)
