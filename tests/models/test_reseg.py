"""ReNet layers: each output sees the whole input; odd sizes; the scans compile once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.reseg import ReNetLayer
from tests.models.rng import rbg_key


def test_renet_output_sees_every_input_and_compiles_once():
    layer = ReNetLayer(4, (2, 2), "gru")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 7, 3)), jnp.float32)
    variables = layer.init(rbg_key(0), x)
    f = jax.jit(lambda v, x: layer.apply(v, x))
    y = f(variables, x)
    assert y.shape == (1, 3, 4, 8)
    # A change at one corner reaches every output position: rows, then columns.
    y2 = f(variables, x.at[0, 0, 0].add(5.0))
    assert np.all(np.abs(np.asarray(y2 - y)).sum(-1) > 0)
    f(variables, x + 1.0)
    assert f._cache_size() == 1


@pytest.mark.slow  # a second ReNet compile (~50 s wall on the loaded CPU)
def test_lstm_cell_and_padding_to_whole_patches():
    # 7 x 5 with 2 x 3 patches: zero-padded to 8 x 6, then 4 x 2 patches.
    layer = ReNetLayer(3, (2, 3), "lstm")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 5, 2)), jnp.float32)
    variables = layer.init(rbg_key(1), x)
    y = layer.apply(variables, x)
    assert y.shape == (2, 4, 2, 6) and np.all(np.isfinite(y))
    # The two images of the batch do not mix.
    alone = layer.apply(variables, x[1:])
    np.testing.assert_allclose(y[1:], alone, rtol=1e-5, atol=1e-6)


def test_reseg_vgg16_parameter_count():
    from segjax.models import build_model
    from segjax.models.__main__ import abstract_variables, param_count

    # torchvision vgg16.features up to conv3_3: 1,735,488. A flax GRU direction with
    # input n, hidden 100: 3 (n 100 + 100) + 3 (100 100) + 100 (the hidden `n` bias).
    def gru(n):
        return 3 * (n * 100 + 100) + 3 * 100 * 100 + 100

    renet1 = 2 * (gru(2 * 2 * 256) + gru(200))  # 2x2 patches of 256 channels
    renet2 = 2 * (gru(200) + gru(200))
    expected = 1_735_488 + renet1 + renet2 + 200 * 21 + 21
    model = build_model("reseg_vgg16", num_classes=21)
    assert param_count(abstract_variables(model, (1, 64, 64, 3))) == expected == 2_957_309
