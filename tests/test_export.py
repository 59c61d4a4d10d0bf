"""Exports reloaded and compared with the JAX model: StableHLO, SavedModel, ONNX."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from segjax import export, sharding, train_lib
from segjax.checkpoint import Checkpointer
from segjax.weights import read_pretrained


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shapes_data_dir):
    """A workdir with config.json and a step-0 checkpoint of the tiny default model."""
    from configs import default

    config = default.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    path = str(tmp_path_factory.mktemp("export_run"))
    run = train_lib.setup(config, sharding.make_mesh(jax.devices()[:1]))
    ckpt = Checkpointer(os.path.join(path, "checkpoints"), async_save=False)
    ckpt.save(0, run.new_state(jax.random.key(0)))
    ckpt.close()
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    return path


def _reference(workdir: str, images: np.ndarray) -> np.ndarray:
    config, task, _, variables = export.load_checkpoint(workdir)
    return np.asarray(
        jax.jit(export.serving_function(task.model, config, "probs"))(variables, images)
    )


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, 64, 64, 3)).astype(np.float32)


def _check_argmax(found: np.ndarray, probs: np.ndarray) -> None:
    # Equal to the probabilities' argmax except where the two best are within rounding.
    top2 = np.sort(probs, axis=-1)[..., -2:]
    tied = top2[..., 1] - top2[..., 0] < 1e-5
    assert found.shape == probs.shape[:-1]
    assert np.all((found == probs.argmax(-1)) | tied)


def test_stablehlo_polymorphic_batch(workdir, tmp_path):
    out = str(tmp_path / "hlo")
    description = export.export_workdir(workdir, "stablehlo", out, batch=0)
    assert description["input"]["shape"] == [None, 64, 64, 3]
    with open(os.path.join(out, "model.jax_export"), "rb") as f:
        exported = jax.export.deserialize(f.read())
    variables, _ = read_pretrained(os.path.join(out, "variables.msgpack"))
    for batch in (1, 3):
        images = _images(batch)
        probs = np.asarray(exported.call(variables, images))
        np.testing.assert_allclose(probs, _reference(workdir, images), atol=1e-5)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    argmax = export.export_workdir(workdir, "stablehlo", out + "_argmax", outputs="argmax", batch=2)
    assert argmax["outputs"] == "argmax"
    with open(os.path.join(out + "_argmax", "model.jax_export"), "rb") as f:
        exported = jax.export.deserialize(f.read())
    images = _images(2, seed=1)
    _check_argmax(np.asarray(exported.call(variables, images)), _reference(workdir, images))
    with open(os.path.join(out, "model.mlir")) as f:
        assert "stablehlo" in f.read()
    with open(os.path.join(out, "export.json")) as f:
        assert json.load(f)["step"] == 0


def test_bad_requests(workdir, tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path), "--format", "stablehlo"]) == 2
    assert "config.json not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch must be >= 0"):
        export.export_workdir(workdir, "stablehlo", str(tmp_path / "x"), batch=-1)


@pytest.mark.slow
def test_savedmodel_polymorphic_batch(workdir, tmp_path):
    import tensorflow as tf

    out = str(tmp_path / "saved")
    export.export_workdir(workdir, "savedmodel", out, batch=0)
    serve = tf.saved_model.load(out).signatures["serving_default"]
    for batch in (1, 2):
        images = _images(batch, seed=batch)
        probs = serve(images=tf.constant(images))["outputs"].numpy()
        np.testing.assert_allclose(probs, _reference(workdir, images), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("jax2onnx") is None and not os.environ.get("CI"),
    reason="jax2onnx and onnxruntime are not installed (docs/weights.md)",
)
@pytest.mark.parametrize("outputs", ["probs", "argmax"])
def test_onnx_fixed_batch(workdir, tmp_path, outputs):
    import onnxruntime

    out = str(tmp_path / outputs)
    export.export_workdir(workdir, "onnx", out, outputs=outputs, batch=2)
    session = onnxruntime.InferenceSession(os.path.join(out, "model.onnx"))
    images = _images(2, seed=3)
    found = session.run(None, {session.get_inputs()[0].name: images})[0]
    reference = _reference(workdir, images)
    if outputs == "probs":
        np.testing.assert_allclose(found, reference, atol=1e-5)
    else:
        _check_argmax(found, reference)
