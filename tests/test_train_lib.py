"""The training loop end to end, resume, evaluation and data-parallel equivalence."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from segjax import eval_lib, losses, sharding, train_lib
from segjax.checkpoint import Checkpointer


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, (h, w) = config.input.batch_size, config.input.crop_size
    label = rng.integers(0, config.dataset.num_classes, (b, h, w)).astype(np.int32)
    label[:, :3] = config.dataset.ignore_index
    return {"image": rng.normal(size=(b, h, w, 3)).astype(np.float32), "label": label}


@pytest.mark.parametrize("num_devices", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_one_step_on_several_devices_equals_one_device(tiny_config, num_devices):
    # BatchNorm statistics and the loss are over the global batch in both runs, so the
    # updated parameters and running statistics agree to float tolerance.
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:num_devices]):
        mesh = sharding.make_mesh(devices)
        run = train_lib.setup(tiny_config, mesh)
        state = run.new_state(jax.random.key(0))
        batch = sharding.shard_batch(_batch(tiny_config), mesh)
        rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
        state, metrics = run.train_step(state, batch, rng)
        assert len(batch["image"].sharding.device_set) == len(devices)
        results.append((jax.device_get(state), jax.device_get(metrics)))
    (state1, metrics1), (state_n, metrics_n) = results
    np.testing.assert_allclose(metrics1["loss"], metrics_n["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        (state1.params, state1.batch_stats),
        (state_n.params, state_n.batch_stats),
    )
    assert int(state_n.step) == 1


def test_train_step_compiles_once(tiny_config):
    mesh = sharding.make_mesh(jax.devices()[:2])
    run = train_lib.setup(tiny_config, mesh)
    state = run.new_state(jax.random.key(0))
    rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
    for seed in range(3):
        state, _ = run.train_step(state, sharding.shard_batch(_batch(tiny_config, seed), mesh), rng)
    assert run.train_step._cache_size() == 1


def test_train_checkpoint_resume_eval(tiny_config, tmp_path):
    # configs/default.py:tiny: 6 steps, eval + checkpoint at 3 and 6.
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:2])
    final = train_lib.train_and_evaluate(tiny_config, workdir, mesh=mesh)
    assert final["step"] == 6
    assert 0.0 <= final["miou"] <= 1.0
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [3, 6]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["name"] == tiny_config.model.name
    with open(os.path.join(workdir, "eval", "validation_step6.json")) as f:
        report = json.load(f)
    np.testing.assert_allclose(report["summary"]["miou"], final["miou"])

    # Evaluating the saved checkpoint reproduces what training reported for it.
    step, scores = eval_lib.evaluate_checkpoint(
        eval_lib.load_config(os.path.join(workdir, "config.json")), ckpt_dir, mesh=mesh
    )
    assert step == 6
    np.testing.assert_allclose(scores["miou"], final["miou"], rtol=1e-6)

    # Lose step 6 as if the run had died after step 3; the same command resumes from 3
    # (model, optimizer, rng and data position) and ends bitwise where it ended before.
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    run = train_lib.setup(tiny_config, mesh)
    before = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    shutil.rmtree(os.path.join(ckpt_dir, "6"))
    resumed = train_lib.train_and_evaluate(tiny_config, workdir, mesh=mesh)
    assert resumed["step"] == 6
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    after = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_allclose(resumed["miou"], final["miou"])


def test_workdir_of_another_config_is_refused(tiny_config, tmp_path):
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(tiny_config.to_json())
    train_lib.check_workdir_config(workdir, tiny_config)  # same config: fine
    changed = tiny_config.copy_and_resolve_references()
    changed.train.steps = 99  # allowed: extends the run
    train_lib.check_workdir_config(workdir, changed)
    changed.optimizer.learning_rate = 1.0
    with pytest.raises(ValueError, match=r"optimizer\.learning_rate"):
        train_lib.check_workdir_config(workdir, changed)
    train_lib.check_workdir_config(workdir, changed, allow_change=True)


def test_loss_options_from_config(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.loss.name = "cross_entropy+dice:0.5"
    config.loss.options = '{"dice": {"smooth": 0.0}, "cross_entropy": {"label_smoothing": 0.1}}'
    assert losses.loss_options(config)["dice"] == {"smooth": 0.0}
    config.loss.options = '{"dice": {"no_such_kwarg": 1}}'
    with pytest.raises((ValueError, TypeError), match="no_such_kwarg"):
        train_lib.setup(config, sharding.make_mesh(jax.devices()[:1]))
    config.loss.options = "{not json"
    with pytest.raises(ValueError, match=r"config\.loss\.options"):
        losses.loss_options(config)
