"""What `eval.py` does: pick a checkpoint of a run, restore it, score it and report the
survey's four measures (accuracy, visual quality, speed, memory); or predict files.

Written once for every task: the task (`config.task`) decides what is scored, how its
report and pictures look and what a prediction of a file is.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from segjax import config_check, evaluation, inference, sharding, train_lib, visualize
from segjax.checkpoint import Checkpointer
from segjax.data import transforms
from segjax.tasks import base


def load_config(path: str) -> ml_collections.ConfigDict:
    """The resolved config a run saved as JSON (`<workdir>/config.json`), locked.

    A config saved before the `eval` block or the `task` key existed gets the defaults
    that reproduce it.
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
    for key, value in train_lib.ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part, None)
            if node is None:
                break
        if node is not None and leaf not in node:
            node[leaf] = value
    config.lock()
    return config


def resolve_step(ckpt: Checkpointer, which: str) -> int:
    """`"latest"`, `"best"` (highest validation score) or a step number -> a saved step."""
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
    """(run, step, state) of the chosen checkpoint, the state placed on `mesh`.

    `config` is checked first (`config_check.ConfigError` lists the values not allowed).
    """
    config_check.check_config(config, num_devices=mesh.devices.size)
    run = train_lib.setup(config, mesh)
    ckpt = Checkpointer(checkpoint_dir, async_save=False, best_metric=run.task.best_metric)
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

    1. accuracy: `<split>_step<N>.{json,txt}` (the task's table and summary scores);
    2. visual quality: `<split>_step<N>_vis/<index>.png` (the task's panel: image,
       ground truth, prediction; `config.eval.num_visualizations` of them) and the
       task's plots of the whole pass, `<split>_step<N>_<name>.png` (semantic: the
       row-normalised confusion matrix);
    3. speed: images/s and ms/image of the eval program after warm-up, its compile time,
       and the end-to-end rate of the evaluation pass (input pipeline included);
    4. memory: parameter count and bytes, the compiled eval program's memory analysis
       (per device) and the device's peak memory where the backend reports it.

    Returns:
      {"step", "scores", "total" (the task's host total, e.g. the confusion matrix),
      "extra", "table", "files"}.
    """
    mesh = mesh or sharding.make_mesh()
    split = split or config.dataset.eval_split
    run, step, state = restore(config, checkpoint_dir, which, mesh)
    task, evaluator = run.task, run.evaluator
    scores, total = evaluator.evaluate_split(state, split)
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
        "inference": task.describe(),
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
    files: dict[str, Any] = {"visualizations": []}
    limit = int(config.eval.num_visualizations)
    if limit > 0:
        for index, sample, pred in evaluator.predictions(state, split, limit):
            path = os.path.join(stem + "_vis", f"{index:05d}.png")
            if jax.process_index() == 0:
                title = f"{split} #{index}  {config.model.name} step {step}"
                visualize.save_png(task.panel(sample, pred, title), path)
            files["visualizations"].append(path)
    plots = task.plots(total, f"{config.model.name} step {step}, {split}")
    for name, image in plots.items():
        files[name] = f"{stem}_{name}.png"
        if jax.process_index() == 0:
            visualize.save_png(image, files[name])
    extra["files"] = {
        "visualizations": os.path.relpath(stem + "_vis", out_dir) if limit > 0 else None,
        **{name: os.path.relpath(files[name], out_dir) for name in plots},
    }
    table = evaluation.write_report(output_dir, task, split, step, scores, extra)
    files["report"] = stem + ".json"
    return {
        "step": step,
        "scores": scores,
        "total": total,
        "extra": extra,
        "table": table,
        "files": files,
    }


# ----------------------------------------------------------------------------- files


def read_image(path: str, channels: int = 3) -> np.ndarray:
    """The pixels [H, W, C] of an image file for a model of `channels` input bands.

    3 bands: uint8 RGB of any format Pillow reads, rotated as its EXIF orientation says
    (a 3-band TIFF of other than 8 bits: as stored). Other band counts: a multi-band TIFF
    with all its bands as stored (`from_files.read_bands`, as the folder builder reads
    it); a file of another band count is an error.
    """
    if channels == 3 and not path.lower().endswith((".tif", ".tiff")):
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    from segjax.data.builders import from_files

    with open(path, "rb") as f:
        image = from_files.read_bands(f.read(), path)
    if image.shape[-1] == channels and not (channels == 3 and image.dtype == np.uint8):
        return image  # the bands as a multi-band folder stores them
    if channels == 3:  # an ordinary RGB(A) or grey TIFF
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    raise ValueError(f"{image.shape[-1]} bands; the model takes {channels}")


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


class UnreadableFilesError(RuntimeError):
    """Some files could not be decoded; the others were predicted.

    Attributes:
      skipped: `[(path, reason), ...]` of the files that were skipped.
      written: the prediction files that were written for the others.
    """

    def __init__(self, skipped: list[tuple[str, str]], written: list[str]):
        self.skipped, self.written = skipped, written
        lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        super().__init__(
            f"{len(skipped)} of the files could not be read as images and were skipped "
            f"({len(written)} predictions written):\n{lines}"
        )


def _try_read(path: str, channels: int) -> tuple[np.ndarray | None, str]:
    # (image, "") or (None, why): one bad file must not stop the others.
    try:
        return read_image(path, channels), ""
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
        return None, f"{type(e).__name__}: {e}"


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
    """Predicts image files and writes the task's prediction files for each.

    Images of any size share one compiled program: each is resized, keeping its aspect
    ratio, to fit the canvas `config.input.eval_pad_size` (up or down), padded to it,
    normalised and predicted by the task's `ImagePredictor` in the mode of
    `config.eval`; the task writes `<output>/<name>...` (semantic: the class
    probabilities of the image's region resized back to its original size, a palette
    label PNG `<name>.png` and `<name>_overlay.png`). Returns the paths written.

    Raises:
      FileNotFoundError: no file matches `patterns`.
      ValueError: the task cannot predict files.
      UnreadableFilesError: after every readable file was predicted, if some files could
        not be decoded (each named with the reason).
    """
    mesh = mesh or sharding.make_mesh()
    paths = expand_patterns(patterns)
    if not paths:
        raise FileNotFoundError(f"No image file matches {list(patterns)}")
    run, step, state = restore(config, checkpoint_dir, which, mesh)
    predictor = run.task.image_predictor
    if predictor is None:
        raise ValueError(f"task {run.task.name!r} cannot predict image files (--images)")
    config = run.config  # the input bands resolved
    channels = base.in_channels(config)
    canvas = tuple(int(s) for s in config.input.eval_pad_size)
    global_batch = int(config.input.eval_batch_size)
    local_batch = sharding.local_batch_size(global_batch, mesh)
    data = sharding.data_sharding(mesh)
    predict = jax.jit(
        lambda state, images: predictor.predict(base.variables(state), images),
        in_shardings=(run.state_sharding, data),
        out_shardings=data,
    )
    mean = np.asarray(config.input.mean, np.float32)
    std = np.asarray(config.input.std, np.float32)
    os.makedirs(output_dir, exist_ok=True)
    written: list[str] = []
    skipped: list[tuple[str, str]] = []
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img")
    start = time.perf_counter()
    me = jax.process_index()
    for first in range(0, len(paths), global_batch):
        chunk = paths[first : first + global_batch]
        mine = range(me * local_batch, min((me + 1) * local_batch, len(chunk)))
        # Process 0 writes every prediction, so it reads every image of the chunk.
        wanted = range(len(chunk)) if me == 0 else mine
        read = {i: _try_read(chunk[i], channels) for i in wanted}
        images = np.zeros((local_batch, *canvas, channels), np.float32)
        for j, i in enumerate(mine):
            image = read[i][0]
            if image is None:
                continue
            rh, rw = inference.fit_size(*image.shape[:2], canvas)
            resized = transforms.resize_image(image, rh, rw)
            images[j, :rh, :rw] = (resized.astype(np.float32) - mean) / std
        batch = jax.make_array_from_process_local_data(data, images)
        outputs = jax.tree.map(evaluation._to_host, predict(state, batch))
        if me == 0:
            for i, path in enumerate(chunk):
                image, reason = read[i]
                if image is None:
                    logging.warning("Skipping %s: %s", path, reason)
                    skipped.append((path, reason))
                    continue
                fitted = inference.fit_size(*image.shape[:2], canvas)
                name = os.path.splitext(os.path.basename(path))[0]
                stem = os.path.join(output_dir, name)
                written += predictor.write(
                    image, jax.tree.map(lambda x, i=i: x[i], outputs), fitted, stem
                )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    logging.info(
        "Predicted %d files with %s (step %d, %s) in %.1f s; one program compiled",
        len(paths) - len(skipped),
        config.model.name,
        step,
        run.task.describe().get("mode", run.task.name),
        time.perf_counter() - start,
    )
    if skipped:
        raise UnreadableFilesError(skipped, written)
    return written
