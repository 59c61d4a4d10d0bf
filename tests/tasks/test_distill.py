"""Distillation: the two losses against numpy, and a student trained against a teacher
restored from a real workdir (the teacher never changes; exact resume)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import sharding, train_lib
from segjax.tasks import distill
from tests.tasks.resume import check_exact_resume


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_pixel_kd_and_channel_wise_distillation_equal_their_definitions():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 4, 5)), 2 * rng.normal(size=(2, 3, 4, 5))
    valid = rng.random((2, 3, 4)) > 0.3
    temperature = 3.0
    kl, count = 0.0, 0
    for idx in np.ndindex(valid.shape):
        if valid[idx]:
            lt, ls = _log_softmax(t[idx] / temperature, 0), _log_softmax(s[idx] / temperature, 0)
            kl += np.sum(np.exp(lt) * (lt - ls))
            count += 1
    got = jax.jit(distill.pixel_kd, static_argnums=3)(s, t, valid, temperature)
    np.testing.assert_allclose(got, temperature**2 * kl / count, rtol=1e-5)
    assert float(jax.jit(distill.pixel_kd, static_argnums=3)(t, t, valid, 1.0)) < 1e-6

    tau, total = 4.0, 0.0
    for b in range(2):
        for c in range(5):
            lt = _log_softmax(t[b, :, :, c].ravel() / tau, 0)
            ls = _log_softmax(s[b, :, :, c].ravel() / tau, 0)
            total += np.sum(np.exp(lt) * (lt - ls))
    got = jax.jit(distill.channel_wise_distillation, static_argnums=2)(
        jnp.asarray(s), jnp.asarray(t), tau
    )
    np.testing.assert_allclose(got, tau**2 * total / 10, rtol=1e-5)


@pytest.mark.slow  # trains a teacher, then a student twice; `pytest -m slow`
@pytest.mark.parametrize("features", ["", "s16"])
def test_student_learns_from_a_frozen_teacher_and_resumes_exactly(
    shapes_data_dir, tmp_path, features
):
    from configs import default, distill_shapes

    mesh = sharding.make_mesh(jax.devices()[:2])
    teacher_config = default.get_config("tiny")
    with teacher_config.unlocked():
        teacher_config.dataset.data_dir = shapes_data_dir
        teacher_config.model.name = "fcn_resnet_tiny"  # another model than the student's
    teacher_dir = str(tmp_path / "teacher")
    train_lib.train_and_evaluate(teacher_config, teacher_dir, mesh=mesh)

    arg = f"tiny,teacher_dir={teacher_dir}" + (f",features={features}" if features else "")
    config = distill_shapes.get_config(arg)
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    final, state = check_exact_resume(config, str(tmp_path / "student"), mesh)
    teacher = distill.load_teacher(config)[1]
    # The teacher in the final state is the checkpoint's, untouched by 6 steps.
    jax.tree.map(np.testing.assert_array_equal, teacher["params"], state.params["teacher"])
    jax.tree.map(
        np.testing.assert_array_equal, teacher["batch_stats"], state.batch_stats["teacher"]
    )
    assert ("adapter" in state.params) == bool(features)
    assert 0.0 <= final["miou"] <= 1.0
