"""The panoptic task: its losses against numpy, its model's outputs, its config rules, and
(slow) training, exact resume and eval.py's PQ report, panels and file predictions with
one compiled evaluation program, for Panoptic-DeepLab and Panoptic FPN."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax import tasks, train_lib
from segjax.data import datasets
from segjax.models import build_model
from segjax.models.__main__ import abstract_variables
from segjax.tasks import panoptic


@pytest.fixture(params=["panoptic_shapes", "panoptic_fpn_shapes"])
def pan_config(request, panoptic_data_dir):
    # Both families through the one task: Panoptic-DeepLab and Panoptic FPN.
    import importlib

    config = importlib.import_module(f"configs.{request.param}").get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = panoptic_data_dir
    return config


def test_bootstrapped_cross_entropy_is_the_mean_of_the_hardest_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    weights = rng.choice([1.0, 3.0], (2, 5, 6)).astype(np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_pixel = []
    for b in range(2):
        for y in range(5):
            for x in range(6):
                c = labels[b, y, x]
                per_pixel.append(0.0 if c == 255 else -log_p[b, y, x, c] * weights[b, y, x])
    per_pixel = sorted(per_pixel, reverse=True)
    fn = jax.jit(
        panoptic.bootstrapped_cross_entropy, static_argnames=("ignore_index", "top_k_ratio")
    )
    for ratio, k in ((0.2, 12), (0.5, 30), (1.0, 60)):
        got = fn(logits, labels, weights, ignore_index=255, top_k_ratio=ratio)
        np.testing.assert_allclose(got, np.mean(per_pixel[:k]), rtol=1e-5)


def test_center_and_offset_losses_are_weighted_means():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 2, 3, 4, 2))
    w = (rng.random((2, 3, 4)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        panoptic.weighted_mse(pred[..., 0], target[..., 0], w),
        (w * (pred[..., 0] - target[..., 0]) ** 2).sum() / w.sum(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        panoptic.weighted_l1(pred, target, w),
        (w[..., None] * np.abs(pred - target)).sum() / w.sum(),
        rtol=1e-5,
    )
    zero = np.zeros_like(w)
    assert float(panoptic.weighted_mse(pred[..., 0], target[..., 0], zero)) == 0.0
    assert float(panoptic.weighted_l1(pred, target, zero)) == 0.0


def test_model_outputs():
    # panoptic_deeplab_r50: tests/models/test_models.py's abstract contract.
    model = build_model("panoptic_deeplab_tiny", num_classes=7, aux_head=True)
    shape = (2, 33, 47, 3)
    variables = abstract_variables(model, shape)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False),
        variables,
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    assert {k: v.shape for k, v in out.items()} == {
        "logits": (2, 33, 47, 7),
        "aux_logits": (2, 33, 47, 7),
        "center": (2, 33, 47),
        "offset": (2, 33, 47, 2),
    }
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_what_the_task_does_not_do_is_an_error(pan_config):
    for key, value, message in (
        ("loss.name", "dice", "bootstrapped cross-entropy"),
        ("eval.resize", (32, 32), "config.eval.resize"),
        ("eval.flip", True, "whole images, one scale, no flip"),
    ):
        config = pan_config.copy_and_resolve_references()
        *parents, leaf = key.split(".")
        setattr(config[parents[0]], leaf, value)
        with pytest.raises(ValueError, match=message):
            tasks.build_task(config)


def test_a_semantic_dataset_has_no_things(tiny_config):
    with pytest.raises(ValueError, match=r"'segjax_shapes'.*not a panoptic dataset"):
        datasets.thing_classes(tiny_config.dataset)


@pytest.mark.slow
def test_every_parameter_gets_a_gradient(pan_config):
    task = tasks.build_task(pan_config)
    state = tasks.base.init_train_state(task, jax.random.key(0))
    batch = task.example_batch(2, 0)
    grads = jax.jit(
        jax.grad(lambda p: task.loss(p, state.batch_stats, batch, jax.random.key(1))[0])
    )(state.params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, dead


class _Compiles:
    """Counts XLA compilations while entered."""

    def __enter__(self):
        self.count = 0
        self._listener = lambda event, duration, **kw: self._on(event)
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def _on(self, event):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.mark.slow
def test_train_resume_evaluate_and_predict_files(pan_config, eval_cli, tmp_path):
    from segjax import eval_lib, sharding
    from segjax.checkpoint import Checkpointer
    from tests.test_eval_cli import run_eval_cli

    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:2])
    final = train_lib.train_and_evaluate(pan_config, workdir, mesh=mesh)
    assert final["step"] == 6 and set(final["summary"]) == {
        "pq",
        "sq",
        "rq",
        "pq_things",
        "pq_stuff",
    }
    assert final["n"] > 0 and 0.0 <= final["pq"] <= 1.0
    with open(os.path.join(workdir, "eval", "validation_step6.json")) as f:
        report = json.load(f)
    assert report["task"] == "panoptic"
    assert [c["isthing"] for c in report["classes"]] == [False] * 3 + [True] * 5
    np.testing.assert_allclose(report["summary"]["pq"], final["pq"])

    # Lose step 6; the same command resumes from 3 and ends bitwise where it did.
    run = train_lib.setup(pan_config, mesh)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="pq")
    before = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    shutil.rmtree(os.path.join(ckpt_dir, "6"))
    train_lib.train_and_evaluate(pan_config, workdir, mesh=mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="pq")
    after = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before, after)

    # Evaluating images of one padded size is one program: a second pass compiles nothing.
    state = after
    state = jax.device_put(state, run.state_sharding)
    run.evaluator.evaluate_split(state, "validation")
    with _Compiles() as compiles:
        scores, _ = run.evaluator.evaluate_split(state, "validation")
    assert compiles.count == 0
    np.testing.assert_allclose(scores["pq"], final["pq"])

    # eval.py: the PQ table, panels with instance outlines, file predictions.
    out = str(tmp_path / "out")
    run_eval_cli(eval_cli, ["--workdir", workdir, "--output", out, "--num_visualizations", "2"])
    with open(os.path.join(out, "eval", "validation_step6.json")) as f:
        evaluated = json.load(f)
    np.testing.assert_allclose(evaluated["summary"]["pq"], final["pq"])
    assert evaluated["speed"]["images_per_second"] > 0
    with open(os.path.join(out, "eval", "validation_step6.txt")) as f:
        table = f.read()
    assert "Things" in table and "Stuff" in table and "disk" in table
    panels = os.listdir(os.path.join(out, "eval", evaluated["files"]["visualizations"]))
    assert len(panels) == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)).save(
        photos / "a.png"
    )
    run_eval_cli(
        eval_cli, ["--workdir", workdir, "--images", str(photos / "*.png"), "--output", out]
    )
    with open(os.path.join(out, "a.json")) as f:
        info = json.load(f)
    ids = np.asarray(Image.open(os.path.join(out, "a.png")), np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    assert ids.shape == (30, 50)
    assert sorted(set(np.unique(ids).tolist()) - {0}) == [s["id"] for s in info["segments_info"]]
    assert all(s["area"] == int((ids == s["id"]).sum()) for s in info["segments_info"])
    assert eval_lib.load_config(os.path.join(workdir, "config.json")).task == "panoptic"
