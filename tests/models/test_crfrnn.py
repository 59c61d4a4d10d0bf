"""CRF-as-RNN: gradients against finite differences, parameters, eval = dense CRF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import crf
from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from tests.models.rng import rbg_key


def _fd_check(f, args, directions, eps=1e-2, rtol=3e-2):
    # Central differences along random directions against the reverse-mode gradient.
    grads = jax.grad(f, argnums=tuple(range(len(args))))(*args)
    for v in directions:
        plus = f(*[a + eps * d for a, d in zip(args, v, strict=True)])
        minus = f(*[a - eps * d for a, d in zip(args, v, strict=True)])
        fd = (plus - minus) / (2 * eps)
        ad = sum(jnp.vdot(g, d) for g, d in zip(grads, v, strict=True))
        np.testing.assert_allclose(float(ad), float(fd), rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("method", ["dense", pytest.param("grid", marks=pytest.mark.slow)])
def test_mean_field_gradients_match_finite_differences(method):
    rng = np.random.default_rng(0)
    h, w, k = 6, 5, 3
    image = jnp.asarray(rng.uniform(0, 255, (h, w, 3)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(h, w, k)), jnp.float32)
    p = crf.CRFParams(
        iterations=3, theta_alpha=3.0, theta_beta=60.0, theta_gamma=1.5, method=method
    )

    def loss(unary, wa, ws, mu):
        logits = crf.mean_field(
            unary, image, p, mu, bilateral_weight=wa, spatial_weight=ws, return_logits=True
        )
        return jnp.sum(jax.nn.log_softmax(logits) * target)

    args = (
        jnp.asarray(rng.normal(size=(h, w, k)), jnp.float32),
        jnp.float32(0.7),
        jnp.float32(0.4),
        jnp.asarray(crf.potts(k)),
    )
    dirs = [
        [jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32) for a in args] for _ in range(3)
    ]
    _fd_check(jax.jit(loss), args, dirs)


@pytest.mark.slow  # ~50 s on the loaded 2-core CPU: FCN-8s-tiny compiled twice
def test_crfrnn_layer_gradient_and_parameters():
    model = build_model("fcn_crfrnn_tiny", num_classes=3)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 16, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(rbg_key(0), x, train=False))(x)
    crf_vars = {k: variables["params"][k] for k in ("bilateral_weight", "spatial_weight")}
    np.testing.assert_allclose(variables["params"]["compatibility"], crf.potts(3))
    labels = np.random.default_rng(2).integers(0, 3, (1, 16, 16))
    onehot = jax.nn.one_hot(labels, 3)

    def loss(wa, ws, mu):
        params = {**variables["params"], "bilateral_weight": wa, "spatial_weight": ws}
        params["compatibility"] = mu
        logits = model.apply({**variables, "params": params}, x, train=False)["logits"]
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1))

    args = (crf_vars["bilateral_weight"], crf_vars["spatial_weight"], jnp.asarray(crf.potts(3)))
    rng = np.random.default_rng(3)
    dirs = [
        [jnp.asarray(rng.normal(size=np.shape(a)), jnp.float32) for a in args] for _ in range(2)
    ]
    _fd_check(jax.jit(loss), args, dirs, eps=5e-2)


def test_crfrnn_parameter_count_is_fcn_plus_crf():
    # Two kernel weights and a K x K compatibility on top of FCN-8s.
    base = param_count(
        abstract_variables(build_model("fcn8s_vgg16", num_classes=21), (1, 64, 64, 3))
    )
    model = build_model("fcn8s_crfrnn_vgg16", num_classes=21)
    assert param_count(abstract_variables(model, (1, 64, 64, 3))) == base + 2 + 21 * 21
