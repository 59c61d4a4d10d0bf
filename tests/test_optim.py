"""Learning-rate schedules and optimizers built from config."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from segjax import optim


def _config(**optimizer):
    config = common.base_config()
    config.optimizer.update(optimizer)
    return config


def test_poly_schedule_with_warmup_matches_formula():
    config = _config(learning_rate=0.01, warmup_steps=10, schedule="poly", poly_power=0.9)
    schedule = optim.learning_rate_schedule(config, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.005, rtol=1e-6)
    for step in (10, 40, 109):
        expected = 0.01 * (1 - (step - 10) / 100) ** 0.9
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


def test_sgd_applies_momentum_and_skips_decay_on_vectors():
    config = _config(
        name="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.5,
        warmup_steps=0,
        schedule="constant",
    )
    tx, _ = optim.make_optimizer(config, total_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Kernel: -lr * wd * w; bias: no decay, zero gradient, no update.
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="lion"):
        optim.make_optimizer(_config(name="lion"), total_steps=10)
