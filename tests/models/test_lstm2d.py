"""2-D LSTM (Byeon et al.): the wavefront scan against a plain double loop, and the models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from segjax import config_check
from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from segjax.models.lstm2d import LSTM2DLayer, skew, unskew
from segjax.tasks import semantic
from tests.models.rng import rbg_key


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _loop_reference(x, w_in, w_rec, bias):
    """The four-direction 2-D LSTM, one cell at a time (float64), directions summed.

    Direction k of (top-left, top-right, bottom-left, bottom-right) starts at that corner;
    a cell's predecessors are its neighbours one row and one column back towards it.
    """
    _, h, w, _ = x.shape
    hidden = w_rec.shape[1] // 2
    total = np.zeros((x.shape[0], h, w, hidden))
    for k, (from_bottom, from_right) in enumerate(
        [(False, False), (False, True), (True, False), (True, True)]
    ):
        di, dj = (-1 if from_bottom else 1), (-1 if from_right else 1)
        row_order = range(h - 1, -1, -1) if from_bottom else range(h)
        col_order = range(w - 1, -1, -1) if from_right else range(w)
        hs, cs = {}, {}
        zero = np.zeros((x.shape[0], hidden))
        for i in row_order:
            for j in col_order:
                h_r, c_r = hs.get((i - di, j), zero), cs.get((i - di, j), zero)
                h_c, c_c = hs.get((i, j - dj), zero), cs.get((i, j - dj), zero)
                a = x[:, i, j] @ w_in[k] + h_r @ w_rec[k, :hidden] + h_c @ w_rec[k, hidden:]
                a = a + bias[k]
                ig, fr, fc, og, g = np.split(a, 5, axis=-1)
                c = _sigmoid(fr) * c_r + _sigmoid(fc) * c_c + _sigmoid(ig) * np.tanh(g)
                hs[(i, j)], cs[(i, j)] = _sigmoid(og) * np.tanh(c), c
                total[:, i, j] += hs[(i, j)]
    return total


def _layer_and_random_params(hidden, x, seed=0):
    layer = LSTM2DLayer(hidden)
    variables = jax.eval_shape(layer.init, rbg_key(seed), x)  # shapes only
    keys = jax.random.split(rbg_key(seed + 1), 3)
    params = {  # random biases too, so that every term of the cell is exercised
        name: 0.7 * jax.random.normal(key, v.shape)
        for key, (name, v) in zip(keys, sorted(variables["params"].items()), strict=True)
    }
    return layer, {"params": params}


def test_wavefront_scan_equals_the_double_loop_in_all_four_directions():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 5, 3)), jnp.float32)
    layer, variables = _layer_and_random_params(3, x)
    out = jax.jit(layer.apply)(variables, x)
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    expected = _loop_reference(
        np.asarray(x, np.float64), p["input_kernel"], p["recurrent_kernel"], p["bias"]
    )
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_skew_puts_each_anti_diagonal_in_one_column():
    z = np.random.default_rng(2).normal(size=(2, 4, 6, 3)).astype(np.float32)
    skewed = np.asarray(skew(jnp.asarray(z)))
    assert skewed.shape == (2, 4, 9, 3)
    for i in range(4):
        for d in range(9):
            expected = z[:, i, d - i] if 0 <= d - i < 6 else 0.0
            np.testing.assert_array_equal(skewed[:, i, d], expected)
    np.testing.assert_array_equal(unskew(jnp.asarray(skewed), 6), z)


def test_one_scan_of_h_plus_w_minus_1_steps_compiled_once():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 9, 2)), jnp.float32)
    layer, variables = _layer_and_random_params(2, x, seed=3)
    jaxpr = jax.make_jaxpr(layer.apply)(variables, x).jaxpr
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    # All four directions in one scan, one step per anti-diagonal: 6 + 9 - 1, not 6 * 9.
    assert [e.params["length"] for e in scans] == [14]
    f = jax.jit(layer.apply)
    y = f(variables, x)
    # Four corners between them: a change at one pixel reaches every output.
    y2 = f(variables, x.at[0, 2, 7].add(3.0))
    assert np.all(np.abs(np.asarray(y2 - y)).sum(-1) > 0)
    f(variables, x + 1.0)
    assert f._cache_size() == 1


def _lstm_params(n_in, hidden):
    # One direction: input, two recurrent (row and column predecessor) weights and a bias
    # for each of 5 pre-activations (input, output, two forget gates, cell input).
    return 5 * (n_in * hidden + 2 * hidden * hidden + hidden)


@pytest.mark.parametrize("num_classes", [8, 33])  # Stanford Background, SIFT Flow
def test_lstm2d_parameter_count_by_layer_arithmetic(num_classes):
    # Byeon et al. (CVPR 2015), Sec. 4 / Table 1: 3x3 RGB input blocks (27 inputs); LSTM
    # layers of 8, 50, 50 units; tanh feed-forward layers of 20 and 50 units on 2x2 hidden
    # blocks of the summed four-direction outputs; then the classifier (here 1x1 + bias).
    # The paper's printed weight total is not reproduced here: counted layer by layer.
    expected = (
        4 * _lstm_params(27, 8)
        + (4 * 8 * 20 + 20)
        + 4 * _lstm_params(20, 50)
        + (4 * 50 * 50 + 50)
        + 4 * _lstm_params(50, 50)
        + (50 * num_classes + num_classes)
    )
    model = build_model("lstm2d", num_classes=num_classes)
    count = param_count(abstract_variables(model, (1, 36, 36, 3)))
    assert count == expected
    assert count == {8: 290_158, 33: 291_433}[num_classes]


def test_features_and_strides():
    model = build_model("lstm2d", num_classes=8)
    assert model.backbone.feature_strides() == {"s3": 3, "s6": 6, "s12": 12}
    x = jax.ShapeDtypeStruct((1, 37, 50, 3), jnp.float32)
    variables = abstract_variables(model, x.shape)
    feats = jax.eval_shape(
        lambda v, x: model.backbone.apply({"params": v["params"]["backbone"]}, x, train=False),
        variables,
        x,
    )
    # ceil at every level: 37 x 50 -> 13 x 17 blocks -> 7 x 9 -> 4 x 5.
    assert {k: v.shape for k, v in feats.items()} == {
        "s3": (1, 13, 17, 8),
        "s6": (1, 7, 9, 50),
        "s12": (1, 4, 5, 50),
    }


def test_builder_rejects_a_wrong_stride():
    with pytest.raises(ValueError, match="fixed output stride of 12"):
        build_model("lstm2d", num_classes=8, output_stride=16)
    with pytest.raises(ValueError, match="fixed output stride of 16"):
        build_model("lstm2d_tiny", num_classes=8, output_stride=8)


def test_default_config_trains_lstm2d_tiny_and_lstm2d_at_stride_12():
    c = default.get_config()
    with c.unlocked():
        c.model.name = "lstm2d_tiny"  # the default output stride 16 is the tiny model's
    config_check.check_config(c, num_devices=1)
    model = semantic.build_model(c)
    assert model.backbone.patch == (4, 4)
    with c.unlocked():
        c.model.name = "lstm2d"
        c.model.output_stride = 12
    config_check.check_config(c, num_devices=1)
    assert semantic.build_model(c).backbone.feature_strides()["s12"] == 12
