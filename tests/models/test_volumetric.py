"""3-D U-Net and V-Net (segjax.models.volumetric): the NDHWC contract and the papers' layout."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model
from segjax.models.registry import MODELS, VOLUME_MODELS
from segjax.models.volumetric import TransposedConv2x2x2
from tests.models.rng import rbg_key

TINY = ["unet3d_tiny", "vnet_tiny"]


@functools.cache
def _tiny(name: str):
    """A tiny model and random variables of its shapes (no init program to compile)."""
    model = build_model(name, num_classes=3)
    shape = jax.ShapeDtypeStruct((1, 8, 8, 8, 2), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(rbg_key(0), x, train=False), shape)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            return np.ones(leaf.shape, np.float32)
        if name.endswith("['mean']"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = math.prod(leaf.shape[:-1]) or 1
        return (rng.normal(size=leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(fill, abstract)


def test_volume_models_are_registered_apart_from_image_models():
    assert {"unet3d", "unet3d_tiny", "vnet", "vnet_tiny"} <= set(VOLUME_MODELS)
    assert not set(VOLUME_MODELS) & set(MODELS)
    with pytest.raises(ValueError, match="fixed output stride"):
        build_model("unet3d_tiny", num_classes=2, output_stride=16)
    with pytest.raises(TypeError, match="unknown arguments"):
        build_model("vnet_tiny", num_classes=2, rates=(1, 2))


@pytest.mark.parametrize("name", TINY)
def test_forward_at_odd_sizes(name):
    model, variables = _tiny(name)
    x = jax.random.normal(rbg_key(1), (2, 7, 9, 6, 2))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert set(out) == {"logits"}
    assert out["logits"].shape == (2, 7, 9, 6, 3) and out["logits"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out["logits"])).all()


# The volume task's end-to-end test trains unet3d_tiny; this compiles both backward passes.
@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter(name):
    model, variables = _tiny(name)
    x = jax.random.normal(rbg_key(1), (2, 7, 9, 6, 2))

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jax.nn.log_softmax(logits["logits"])[..., 0] ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_unet3d_has_the_papers_parameter_count():
    # Çiçek et al. 2016: "19069955 parameters" (3 input channels, 3 labels): every conv
    # kernel as here, a bias per conv output channel (BN's shift here) and per label.
    model = build_model("unet3d", num_classes=3)
    x = jax.ShapeDtypeStruct((1, 16, 16, 16, 3), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(rbg_key(0), x, train=False), x)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = sum(
        math.prod(v.shape) for p, v in leaves if jax.tree_util.keystr(p).endswith("['kernel']")
    )
    conv_channels = sum(
        v.shape[-1] for p, v in leaves if jax.tree_util.keystr(p).endswith("['conv']['kernel']")
    )
    assert kernels + conv_channels + 3 == 19_069_955


def test_transposed_conv_matches_a_loop():
    rng = np.random.default_rng(0)
    xn = rng.normal(size=(1, 2, 3, 2, 4)).astype(np.float32)
    k = rng.normal(size=(2, 2, 2, 4, 5)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    y = np.asarray(TransposedConv2x2x2(5).apply({"params": {"kernel": k, "bias": b}}, xn))
    for d, h, w in np.ndindex(2, 3, 2):
        for i, j, m in np.ndindex(2, 2, 2):
            expected = xn[0, d, h, w] @ k[i, j, m] + b
            np.testing.assert_allclose(y[0, 2 * d + i, 2 * h + j, 2 * w + m], expected, atol=1e-5)


def test_flat_sampled_kernels_have_the_fan_out_scale():
    from segjax.models.volumetric import conv3d_kernel_init

    kernel = np.asarray(conv3d_kernel_init(rbg_key(0), (3, 3, 3, 16, 32)))
    assert kernel.shape == (3, 3, 3, 16, 32)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (27 * 32)), rtol=0.03)
    assert abs(kernel.mean()) < 0.01
