"""Issue 7: non-finite steps, preemption, mismatched checkpoints, other device counts,
FSDP, and two processes training together through jax.distributed."""

import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from segjax import sharding, train_lib
from segjax.checkpoint import Checkpointer, CheckpointMismatchError
from segjax.data import transforms
from tests.multihost.common import global_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _restore(workdir, step, config, mesh):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        return ckpt.restore(step, train_lib.setup(config, mesh).abstract_state)
    finally:
        ckpt.close()


def test_nonfinite_step_changes_nothing_but_counters(tiny_config):
    mesh = sharding.make_mesh(jax.devices()[:1])
    run = train_lib.setup(tiny_config, mesh)
    rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
    state = run.new_state(jax.random.key(0))
    good = global_batch(tiny_config)
    state, _ = run.train_step(state, sharding.shard_batch(good, mesh), rng)
    before = jax.device_get(state)
    bad = dict(good, image=np.full_like(good["image"], np.nan))
    state, metrics = run.train_step(state, sharding.shard_batch(bad, mesh), rng)
    after = jax.device_get(state)
    assert not np.isfinite(metrics["loss"])
    assert int(after.step) == 2 and int(after.nonfinite_in_a_row) == 1
    assert int(after.nonfinite_total) == 1
    jax.tree.map(
        np.testing.assert_array_equal,
        (before.params, before.batch_stats, before.opt_state),
        (after.params, after.batch_stats, after.opt_state),
    )
    # A good step resets the consecutive count, not the total.
    state, _ = run.train_step(state, sharding.shard_batch(good, mesh), rng)
    assert int(state.nonfinite_in_a_row) == 0 and int(state.nonfinite_total) == 1


@pytest.mark.slow  # runs the training loop; `pytest -m slow`
def test_too_many_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:1])
    train_lib.train_and_evaluate(tiny_config, workdir, mesh=mesh)  # steps 1-6, ckpt 3 and 6
    good = _restore(workdir, 6, tiny_config, mesh)

    original = transforms.normalize

    def poisoned(sample, mean, std):
        out = original(sample, mean, std)
        return {**out, "image": np.full_like(out["image"], np.nan)}

    monkeypatch.setattr(transforms, "normalize", poisoned)
    config = tiny_config.copy_and_resolve_references()
    config.train.steps = 12
    config.train.max_nonfinite_in_a_row = 2
    with pytest.raises(train_lib.NonFiniteError, match="step 8"):
        train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [3, 6]
    jax.tree.map(np.testing.assert_array_equal, good, _restore(workdir, 6, tiny_config, mesh))


@pytest.mark.slow  # runs the training loop; `pytest -m slow`
def test_sigterm_checkpoints_and_stops_then_resumes(tiny_config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:1])
    calls = {"n": 0}
    original = transforms.TrainAugment.random_map

    def signalling(self, element, rng):
        calls["n"] += 1
        if calls["n"] == 3 * tiny_config.input.batch_size:  # while batch 3 is being read
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, element, rng)

    monkeypatch.setattr(transforms.TrainAugment, "random_map", signalling)
    config = tiny_config.copy_and_resolve_references()
    config.train.checkpoint_every = config.train.eval_every = 100  # only the signal saves
    result = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert result["preempted"]
    stopped = result["step"]
    assert 1 <= stopped < config.train.steps
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [stopped]
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored
    monkeypatch.setattr(transforms.TrainAugment, "random_map", original)
    resumed = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert resumed["step"] == config.train.steps and not resumed.get("preempted")


def test_half_written_checkpoint_is_ignored_on_restart(tmp_path):
    # What a kill -9 during a save leaves: Orbax's temporary directory for the step (it
    # renames it to `<step>` only once complete). A restart must not see it as a step.
    directory = str(tmp_path / "ckpt")
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(2, {"w": np.arange(4.0)})
    ckpt.wait()
    ckpt.close()
    partial = tmp_path / "ckpt" / "5.orbax-checkpoint-tmp-1795000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"half a file")
    ckpt = Checkpointer(directory, async_save=False)
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [2]
    restored = ckpt.restore(2, {"w": jax.ShapeDtypeStruct((4,), np.float64)})
    np.testing.assert_array_equal(restored["w"], np.arange(4.0))
    ckpt.close()


def test_checkpoint_tree_mismatch_names_paths_and_shapes(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(1, {"conv": {"kernel": np.zeros((3, 3, 4, 8), np.float32)}, "bias": np.zeros(8)})
    ckpt.wait()
    expected = {
        "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 4, 16), np.float32)},
        "head": jax.ShapeDtypeStruct((8,), np.float32),
    }
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore(1, expected)
    message = str(err.value)
    assert "conv/kernel: checkpoint (3, 3, 4, 8), model (3, 3, 4, 16)" in message
    assert "in the model, not the checkpoint: head (8,)" in message
    assert "in the checkpoint, not the model: bias (8,)" in message
    ckpt.close()


@pytest.mark.slow  # runs the training loop; `pytest -m slow`
def test_fsdp_step_equals_replicated_and_restores_on_other_device_counts(tiny_config, tmp_path):
    fsdp = tiny_config.copy_and_resolve_references()
    fsdp.train.param_sharding = "fsdp"
    fsdp.train.fsdp_min_size = 256
    batch = global_batch(tiny_config)
    states = {}
    for name, config in (("replicated", tiny_config), ("fsdp", fsdp)):
        mesh = sharding.make_mesh(jax.devices()[:8])
        run = train_lib.setup(config, mesh)
        state = run.new_state(jax.random.key(0))
        rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
        state, _ = run.train_step(state, sharding.shard_batch(batch, mesh), rng)
        states[name] = state
    sharded = [
        x for x in jax.tree.leaves(states["fsdp"].params) if not x.sharding.is_fully_replicated
    ]
    assert sharded, "fsdp should split some parameters over the devices"
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        jax.device_get(states["replicated"]),
        jax.device_get(states["fsdp"]),
    )
    # Saved from 8 devices (fsdp), restored on 1 (replicated) and 4 (fsdp); training goes on.
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(1, states["fsdp"])
    ckpt.wait()
    saved = jax.device_get(states["fsdp"])
    for config, n in ((tiny_config, 1), (fsdp, 4)):
        mesh = sharding.make_mesh(jax.devices()[:n])
        run = train_lib.setup(config, mesh)
        restored = ckpt.restore(1, run.abstract_state)
        jax.tree.map(np.testing.assert_array_equal, saved, jax.device_get(restored))
        rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
        restored, metrics = run.train_step(restored, sharding.shard_batch(batch, mesh), rng)
        assert int(restored.step) == 2 and np.isfinite(metrics["loss"])
    ckpt.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_together_like_one(tiny_config, shapes_data_dir, tmp_path):
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT
    worker = os.path.join(ROOT, "tests", "multihost", "worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(i), port, shapes_data_dir, str(tmp_path)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    # The same two steps in this single process on 4 devices, same global batch.
    mesh = sharding.make_mesh(jax.devices()[:4])
    run = train_lib.setup(tiny_config, mesh)
    state = run.new_state(jax.random.key(0))
    rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
    for _ in range(2):
        state, _ = run.train_step(state, sharding.shard_batch(global_batch(tiny_config), mesh), rng)
    expected = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    }
    got = np.load(tmp_path / "params.npz")
    assert set(got.files) == set(expected)
    # Collectives sum in another order than one process does; Adam's normalised update
    # can turn that rounding into ~1e-5 on a parameter after two steps of lr 2e-3.
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4, err_msg=key)

    # Both processes finished the loop at the same step with the same score, and wrote
    # one checkpoint with each process's data-iterator position.
    done = [(tmp_path / f"done_{i}.txt").read_text() for i in range(2)]
    assert done[0] == done[1] and done[0].startswith("3 ")
    step_dir = tmp_path / "run" / "checkpoints" / "3"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(step_dir / "data"))
