"""A volume split over 8 devices along its depth: the same loss and update as unsplit."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from segjax import sharding, tasks, train_lib
from segjax.tasks import base, volume


@pytest.fixture
def config(tmp_path):
    from configs import volume_shapes

    config = volume_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = str(tmp_path)  # nothing is read
        config.volume.crop_size = (32, 16, 16)
        config.input.batch_size = 1
    return config


@pytest.mark.slow
@pytest.mark.parametrize("axis", [1, 2])
def test_a_spatially_split_step_equals_the_unsplit_step(config, axis):
    assert len(jax.devices()) >= 8, "conftest simulates 8 CPU devices"
    task = tasks.build_task(config)
    batch = task.example_batch(1, 0)
    state = jax.jit(lambda k: base.init_train_state(task, k))(jax.random.key(0))
    rng = jax.random.key(1)

    one = Mesh(np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,))
    step1 = jax.jit(base.make_train_step(task.loss, task.tx, task.schedule))
    state1, metrics1 = step1(state, jax.device_put(batch, sharding.replicated(one)), rng)

    mesh = Mesh(np.asarray(jax.devices()[:8]), (sharding.DATA_AXIS,))
    split = sharding.spatial_sharding(mesh, 5, axis)
    repl = sharding.replicated(mesh)
    batch_sharding = {"image": split, "label": sharding.spatial_sharding(mesh, 4, axis)}
    step8 = jax.jit(
        base.make_train_step(
            volume.spatially_sharded(task.loss, mesh, axis), task.tx, task.schedule
        ),
        in_shardings=(repl, batch_sharding, repl),
        out_shardings=(repl, repl),
    )
    placed = {k: jax.device_put(v, batch_sharding[k]) for k, v in batch.items()}
    # Each device holds 1/8 of the volume.
    assert placed["image"].addressable_shards[0].data.shape[axis] == batch["image"].shape[axis] // 8
    compiled = step8.lower(jax.device_put(state, repl), placed, rng).compile()
    state8, metrics8 = compiled(jax.device_put(state, repl), placed, rng)

    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics8["grad_norm"], metrics1["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.device_get(state8.params),
        jax.device_get(state1.params),
    )
    # The activations are split too: per device, far less scratch memory than unsplit.
    unsplit = step1.lower(state, jax.device_put(batch, sharding.replicated(one)), rng).compile()
    temp8 = compiled.memory_analysis().temp_size_in_bytes
    temp1 = unsplit.memory_analysis().temp_size_in_bytes
    assert temp8 < 0.4 * temp1, (temp8, temp1)


@pytest.fixture(scope="module")
def volume_data_dir(tmp_path_factory):
    from segjax.data.builders import volume_shapes

    data_dir = str(tmp_path_factory.mktemp("volume_data"))
    volume_shapes.prepare(data_dir, "tiny")
    return data_dir


def _logged_losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["loss"] for r in records if "loss" in r]


def test_spatial_split_places_each_volume_split_over_the_mesh(config):
    # config.volume.spatial_split: the task's batch sharding, as the loop places batches.
    mesh = Mesh(np.asarray(jax.devices()[:8]), (sharding.DATA_AXIS,))
    assert tasks.build_task(config, mesh).batch_sharding is None  # 0: split the batch
    for axis in (1, 2):
        with config.unlocked():
            config.volume.spatial_split = axis
        task = tasks.build_task(config, mesh)
        batch = task.example_batch(1, 0)
        placed = sharding.shard_batch(batch, mesh, task.batch_sharding)
        for key, x in batch.items():
            shards = placed[key].addressable_shards
            assert len(shards) == 8
            expected = list(x.shape)
            expected[axis] //= 8
            assert {s.data.shape for s in shards} == {tuple(expected)}, key
            np.testing.assert_array_equal(np.asarray(placed[key]), x)


@pytest.mark.slow
def test_train_splits_each_volume_over_the_devices_with_the_unsplit_losses(
    volume_data_dir, tmp_path, monkeypatch
):
    # train.py's path (train_lib.train_and_evaluate) with config.volume.spatial_split=1:
    # one 16^3 volume a batch, its depth split over 8 devices (2 slices each); the logged
    # losses are those of the same run on one device with the batch split (as today).
    from configs import volume_shapes

    assert len(jax.devices()) >= 8, "conftest simulates 8 CPU devices"
    config = volume_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = volume_data_dir
        config.input.batch_size = 1
        config.train.steps = 3
        config.train.log_every = 1
        config.train.eval_every = 3
        config.train.checkpoint_every = 3
        config.volume.hd95 = False
    placed = []
    shard_batch = sharding.shard_batch

    def recording_shard_batch(batch, mesh, batch_sharding=None):
        out = shard_batch(batch, mesh, batch_sharding)
        if "valid" not in batch:  # a training batch (eval batches carry `valid`)
            placed.append(out)
        return out

    monkeypatch.setattr(sharding, "shard_batch", recording_shard_batch)
    one = Mesh(np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,))
    train_lib.train_and_evaluate(config, str(tmp_path / "one"), mesh=one)
    assert placed and placed[0]["image"].sharding.spec == sharding.data_sharding(one).spec
    placed.clear()

    with config.unlocked():
        config.volume.spatial_split = 1
    eight = Mesh(np.asarray(jax.devices()[:8]), (sharding.DATA_AXIS,))
    train_lib.train_and_evaluate(config, str(tmp_path / "split"), mesh=eight)
    image, label = placed[0]["image"], placed[0]["label"]
    assert image.sharding.spec == P(None, sharding.DATA_AXIS, None, None, None)
    assert label.sharding.spec == P(None, sharding.DATA_AXIS, None, None)
    assert len(image.addressable_shards) == 8
    assert {s.data.shape for s in image.addressable_shards} == {(1, 2, 16, 16, 1)}

    losses1 = _logged_losses(str(tmp_path / "one"))
    losses8 = _logged_losses(str(tmp_path / "split"))
    assert len(losses1) == len(losses8) == 3
    np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
    assert len(set(losses1)) == 3  # three different batches and updates, not one repeated


def test_a_spatially_split_run_of_several_processes_is_refused(config, tmp_path, monkeypatch):
    # Each process reads its own volumes; a split volume needs all of them on every device.
    with config.unlocked():
        config.volume.spatial_split = 1
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    mesh = Mesh(np.asarray(jax.devices()[:8]), (sharding.DATA_AXIS,))
    with pytest.raises(ValueError, match=r"config.volume.spatial_split.*this job has 2"):
        train_lib.train_and_evaluate(config, str(tmp_path / "run"), mesh=mesh)
    assert not (tmp_path / "run").exists()
