"""The level-set task end to end: binary labels, the evolution in the model, resume."""

import jax
import numpy as np
import pytest

from segjax import sharding, tasks
from tests.tasks.resume import check_exact_resume


def _config(shapes_data_dir, arg="tiny"):
    from configs import levelset_shapes

    config = levelset_shapes.get_config(arg)
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    return config


@pytest.mark.slow  # runs the training loop twice; `pytest -m slow`
def test_train_resume_exactly_on_binary_labels(shapes_data_dir, tmp_path):
    config = _config(shapes_data_dir, "tiny,window=5,acwe=0.1")
    final, state = check_exact_resume(
        config, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:2])
    )
    assert final["pixel_count"].shape == (2,)  # background / object
    assert final["pixel_count"][1] > 0
    task = tasks.build_task(config)
    batch = task.example_batch(2, 0)
    outputs = task.model.apply(tasks.base.variables(state), batch["image"], train=False)
    assert outputs["logits"].shape == (2, 64, 64, 2)
    assert not np.allclose(outputs["logits"], outputs["aux_logits"])  # the evolution moved
