"""Export a trained model for serving: ``python -m segjax.export``.

    python -m segjax.export --workdir workdirs/default --format stablehlo
    python -m segjax.export --workdir workdirs/default --format savedmodel --batch 0
    python -m segjax.export --workdir workdirs/default --format onnx --outputs argmax

The exported function is the eval-mode model of a checkpoint (``--step``: ``latest``,
``best`` or a number), whole-image inference at a fixed size (``--size``; default the
config's ``input.eval_pad_size``):

- input ``images``: float32 ``[B, H, W, C]``, pixel values in the dataset's stored units
  (RGB: 0-255; C = the run's ``model.in_channels``, e.g. 12 for a 12-band folder); the
  config's ``input.mean`` / ``input.std`` normalisation is part of the exported program;
- output: ``--outputs probs`` float32 ``[B, H, W, K]`` (softmax over the classes; a
  classification task: ``[B, K]``), or ``argmax`` int32 ``[B, H, W]`` (``[B]``);
- ``--batch N``: a fixed batch of N; ``--batch 0``: any batch size (shape-polymorphic).

Formats, each written under ``--output`` (default ``<workdir>/export/<format>``) with an
``export.json`` that describes the input, output, classes and checkpoint:

- ``stablehlo``: ``jax.export`` (``model.jax_export``: ``jax.export.deserialize`` of its
  bytes, then ``.call(images)``; ``model.mlir``: the StableHLO text), for JAX serving;
- ``savedmodel``: a TensorFlow SavedModel by ``jax2tf`` (signature ``serving_default``, the
  parameters as TF variables), for TF Serving;
- ``onnx``: ``model.onnx`` by ``jax2onnx`` (needs ``jax2onnx``; see docs/weights.md). Its
  bilinear resize does not take a symbolic batch, so the zoo's models with one (DeepLab,
  PSPNet, FPN, U-Net variants with ``interp`` upsampling, ...) export to ONNX with a
  fixed ``--batch`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMATS = ("stablehlo", "savedmodel", "onnx")
OUTPUTS = ("probs", "argmax")


def load_checkpoint(workdir: str, step: str = "latest"):
    """``(config, task, step, variables)`` of a workdir's checkpoint (variables as numpy)."""
    from segjax import eval_lib, sharding
    from segjax.tasks import base

    config = eval_lib.load_config(os.path.join(workdir, "config.json"))
    mesh = sharding.make_mesh(jax.devices()[:1])
    run, step_number, state = eval_lib.restore(
        config, os.path.join(workdir, "checkpoints"), step, mesh
    )
    # run.config: the input bands resolved (a config saved before they were is RGB).
    return run.config, run.task, step_number, jax.device_get(base.variables(state))


def serving_function(
    model: Any, config, outputs: str = "probs"
) -> Callable[[Any, jax.Array], jax.Array]:
    """``f(variables, images [B, H, W, C] (0-255 for RGB)) -> probs or argmax``, eval mode."""
    if outputs not in OUTPUTS:
        raise ValueError(f"--outputs must be one of {OUTPUTS}, got {outputs!r}")
    mean = np.asarray(config.input.mean, np.float32)
    std = np.asarray(config.input.std, np.float32)

    def f(variables, images):
        x = (images.astype(jnp.float32) - mean) / std
        logits = model.apply(variables, x, train=False)["logits"].astype(jnp.float32)
        if outputs == "argmax":
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.nn.softmax(logits, axis=-1)

    return f


def _input_shape(batch: int, size: Sequence[int], channels: int = 3) -> tuple:
    if batch < 0:
        raise ValueError(f"--batch must be >= 0 (0: any batch size), got {batch}")
    if batch == 0:
        (b,) = jax.export.symbolic_shape("b")
        return (b, int(size[0]), int(size[1]), channels)
    return (batch, int(size[0]), int(size[1]), channels)


def export_stablehlo(f, variables, shape, out: str, platforms: Sequence[str] | None) -> list[str]:
    exported = jax.export.export(jax.jit(f), platforms=platforms)(
        jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), variables),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    paths = [os.path.join(out, "model.jax_export"), os.path.join(out, "model.mlir")]
    with open(paths[0], "wb") as fh:
        fh.write(exported.serialize())
    with open(paths[1], "w") as fh:
        fh.write(exported.mlir_module())
    # The parameters are an argument of the exported program: saved beside it.
    from segjax.weights import save_pretrained

    meta = {"source": "segjax", "name": "export", "file": "", "model": "", "scope": "all"}
    paths.append(os.path.join(out, "variables.msgpack"))
    save_pretrained(paths[-1], variables, {**meta, "model_kwargs": "{}"})
    return paths


def export_savedmodel(f, variables, shape, out: str) -> list[str]:
    import tensorflow as tf
    from jax.experimental import jax2tf

    batch = None if not isinstance(shape[0], int) else shape[0]
    polymorphic = None if batch is not None else f"(b, {shape[1]}, {shape[2]}, {shape[3]})"
    tf_fn = jax2tf.convert(f, polymorphic_shapes=[None, polymorphic], with_gradient=False)
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(tf.Variable, variables)

    @tf.function(
        input_signature=[tf.TensorSpec((batch, *shape[1:]), tf.float32, "images")],
        autograph=False,
    )
    def serve(images):
        return {"outputs": tf_fn(module.variables_tree, images)}

    module.serve = serve
    tf.saved_model.save(module, out, signatures={"serving_default": serve})
    return [out]


def export_onnx(f, variables, shape, out: str) -> list[str]:
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise RuntimeError(
            "--format onnx needs jax2onnx (pip install jax2onnx onnx; see docs/weights.md)"
        ) from e
    batch = shape[0] if isinstance(shape[0], int) else "B"
    try:
        proto = to_onnx(
            lambda images: f(variables, images), [(batch, *shape[1:])], return_mode="proto"
        )
    except Exception as e:
        hint = (
            " (try a fixed --batch: jax2onnx's resize takes no symbolic batch)"
            if batch == "B"
            else ""
        )
        raise RuntimeError(
            f"jax2onnx could not export the model: {type(e).__name__}: {e}{hint}"
        ) from e
    path = os.path.join(out, "model.onnx")
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
    return [path]


def export_workdir(
    workdir: str,
    fmt: str,
    output: str | None = None,
    *,
    step: str = "latest",
    outputs: str = "probs",
    batch: int = 1,
    size: Sequence[int] | None = None,
    platforms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Exports a workdir's checkpoint; returns the description written as ``export.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    config, task, step_number, variables = load_checkpoint(workdir, step)
    size = tuple(size or config.input.eval_pad_size)
    from segjax.data import bands

    channels = bands.input_channels(config)
    shape = _input_shape(batch, size, channels)
    f = serving_function(task.model, config, outputs)
    out = output or os.path.join(workdir, "export", fmt)
    os.makedirs(out, exist_ok=True)
    if fmt == "stablehlo":
        files = export_stablehlo(f, variables, shape, out, platforms)
    elif fmt == "savedmodel":
        files = export_savedmodel(f, variables, shape, out)
    else:
        files = export_onnx(f, variables, shape, out)
    description = {
        "format": fmt,
        "workdir": os.path.abspath(workdir),
        "step": step_number,
        "model": config.model.name,
        "task": config.get("task", "semantic"),
        "input": {
            "name": "images",
            "shape": [None if batch == 0 else batch, size[0], size[1], channels],
            "dtype": "float32",
            "range": ("RGB 0-255" if channels == 3 else f"{channels} bands in the dataset's units")
            + " (normalised inside with input.mean / input.std)",
        },
        "outputs": outputs,
        "num_classes": config.dataset.num_classes,
        "files": [os.path.relpath(p, out) for p in files],
    }
    with open(os.path.join(out, "export.json"), "w") as fh:
        json.dump(description, fh, indent=2)
    return description


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m segjax.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training run's directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", default=None, help="default: <workdir>/export/<format>")
    parser.add_argument("--step", default="latest", help="'latest', 'best' or a step number")
    parser.add_argument("--outputs", default="probs", choices=OUTPUTS)
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size; 0: any")
    parser.add_argument("--size", default=None, help="'H,W' (default: input.eval_pad_size)")
    parser.add_argument(
        "--platforms", default=None, help="stablehlo: comma-separated, e.g. 'cpu,cuda,tpu'"
    )
    args = parser.parse_args(argv)
    size = tuple(int(s) for s in args.size.split(",")) if args.size else None
    platforms = args.platforms.split(",") if args.platforms else None
    try:
        description = export_workdir(
            args.workdir,
            args.format,
            args.output,
            step=args.step,
            outputs=args.outputs,
            batch=args.batch,
            size=size,
            platforms=platforms,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(description, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
