"""A volume split over 8 devices along its depth: the same loss and update as unsplit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from segjax import sharding, tasks
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
