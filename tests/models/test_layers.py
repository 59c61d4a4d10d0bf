"""`segjax.models.layers`: `conv2d` against one plain XLA convolution, `BatchNorm` against
`nn.BatchNorm` (values, statistics, gradients)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segjax.models import layers
from tests.models.rng import rbg_key


def _reference(x, kernel, strides, dilation, groups):
    k = kernel.shape[0]
    return lax.conv_general_dilated(
        x,
        kernel,
        (strides, strides),
        layers.conv_padding(k, dilation),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def _value_and_grads(conv, x, kernel, g):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(g))


# (size, channels in, out, kernel, stride, dilation, groups): plain, strided, odd sizes, 1x1
# (strided), dilations whose taps partly or wholly read padding (ASPP at a small map), the
# 7x7 stem, depthwise.
CASES = [
    ((9, 9), 5, 6, 3, 1, 1, 1),
    ((10, 7), 4, 3, 3, 2, 1, 1),
    ((11, 11), 3, 8, 1, 1, 1, 1),
    ((11, 9), 6, 4, 1, 2, 1, 1),
    ((12, 12), 4, 5, 3, 1, 2, 1),
    ((9, 10), 3, 4, 3, 1, 4, 1),
    ((8, 8), 4, 4, 3, 1, 6, 1),
    ((8, 8), 3, 2, 3, 1, 9, 1),
    ((13, 13), 3, 4, 7, 2, 1, 1),
    ((10, 10), 6, 6, 3, 1, 3, 6),
    ((9, 9), 4, 4, 3, 2, 1, 4),
]


@pytest.mark.parametrize("method", ["auto", "taps", "xla"])
@pytest.mark.parametrize("size,cin,cout,k,strides,dilation,groups", CASES)
def test_conv2d_matches_one_xla_convolution(
    method, size, cin, cout, k, strides, dilation, groups, monkeypatch
):
    # Every kxk conv here takes the matrix-product kernel gradient, whatever its channels.
    monkeypatch.setattr(layers, "WGRAD_MIN_CHANNELS", 0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)), jnp.float32)
    out_hw = [-(-s // strides) for s in size]
    g = jnp.asarray(rng.normal(size=(2, *out_hw, cout)), jnp.float32)

    def conv(x, kernel):
        return layers.conv2d(
            x, kernel, strides=strides, dilation=dilation, groups=groups, method=method
        )

    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda *a: _value_and_grads(conv, *a))(x, kernel, g)
    want = _value_and_grads(
        lambda x, kernel: _reference(x, kernel, strides, dilation, groups), x, kernel, g
    )
    for name, a, b in zip(("output", "input gradient", "kernel gradient"), got, want, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_few_channels_or_large_inputs_keep_autodiff_kernel_gradient(monkeypatch):
    # Under WGRAD_MIN_CHANNELS, or over WGRAD_MAX_INPUT_BYTES with under
    # WGRAD_ANY_SIZE_CHANNELS, a kxk conv is plain autodiff: no custom VJP in its jaxpr.
    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))

    def jaxpr():
        return str(jax.make_jaxpr(lambda x, k: layers.conv2d(x, k, method="taps"))(x, kernel))

    assert "custom_vjp" not in jaxpr()  # 4 channels: under WGRAD_MIN_CHANNELS
    monkeypatch.setattr(layers, "WGRAD_MIN_CHANNELS", 4)
    assert "custom_vjp" in jaxpr()
    monkeypatch.setattr(layers, "WGRAD_MAX_INPUT_BYTES", x.size * 4 - 1)
    assert "custom_vjp" not in jaxpr()
    monkeypatch.setattr(layers, "WGRAD_ANY_SIZE_CHANNELS", 4)  # as many channels as x
    assert "custom_vjp" in jaxpr()


def test_weight_grad_sparse_taps_match_autodiff():
    # Dilations at which the outer taps cover under half of the output (a product over only
    # the window each reads) and the corner taps read nothing.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 12, 12, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    for dilation in (1, 8, 12):
        g = jnp.asarray(rng.normal(size=(2, 12, 12, 4)), jnp.float32)
        with jax.default_matmul_precision("highest"):
            got = layers._weight_grad(x, g, 3, 1, dilation)
        _, vjp = jax.vjp(lambda k, d=dilation: _reference(x, k, 1, d, 1), kernel)
        np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-4, atol=1e-4, err_msg=str(dilation))


def test_conv2d_bfloat16_keeps_dtypes():
    x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
    kernel = jnp.ones((3, 3, 4, 2), jnp.bfloat16)
    y, vjp = jax.vjp(lambda x, k: layers.conv2d(x, k, dilation=2), x, kernel)
    dx, dk = vjp(jnp.ones_like(y))
    assert (y.dtype, dx.dtype, dk.dtype) == (jnp.bfloat16,) * 3
    # Centre pixel, every tap inside: 9 taps x 4 channels of ones.
    assert float(y[0, 4, 4, 0]) == 36.0


def test_conv2d_module_has_nn_conv_parameters():
    x = jnp.ones((1, 8, 8, 3))
    for kwargs in ({}, {"use_bias": True}, {"groups": 3}):
        ours = layers.Conv2D(3, 3, **kwargs).init(rbg_key(0), x)
        theirs = nn.Conv(
            3,
            (3, 3),
            use_bias=kwargs.get("use_bias", False),
            feature_group_count=kwargs.get("groups", 1),
        ).init(rbg_key(0), x)
        assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)


def test_conv2d_rejects_unknown_method():
    with pytest.raises(ValueError, match="'fast'"):
        layers.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), method="fast")


class _ReferenceBN(nn.Module):
    # nn.BatchNorm (autodiff through its statistics), then the residual sum and the ReLU.
    train: bool
    relu: bool

    @nn.compact
    def __call__(self, x, residual):
        y = nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5)(x)
        y = y if residual is None else y + residual
        return nn.relu(y) if self.relu else y


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_residual,relu", [(False, False), (False, True), (True, True)])
def test_batch_norm_matches_flax_batch_norm(train, with_residual, relu):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)) * 2 + 1, jnp.float32)
    residual = jnp.asarray(rng.normal(size=x.shape), jnp.float32) if with_residual else None
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ours = layers.BatchNorm(use_running_average=not train, relu=relu)
    ref = _ReferenceBN(train, relu)
    # The same variables as nn.BatchNorm (checkpoints and ported weights stay valid).
    shapes = jax.tree.map(jnp.shape, ours.init(rbg_key(0), x, residual))
    ref_shapes = jax.tree.map(jnp.shape, ref.init(rbg_key(0), x, residual))
    assert shapes == jax.tree.map(
        lambda c: c["BatchNorm_0"], ref_shapes, is_leaf=lambda c: "BatchNorm_0" in c
    )
    # Non-trivial scale, bias and running statistics.
    scale, bias, mean, var = rng.normal(size=(4, 6))
    params = {"scale": jnp.float32(1 + scale), "bias": jnp.float32(bias)}
    stats = {"mean": jnp.float32(mean), "var": jnp.float32(1 + var**2)}

    def value_and_grads(module, wrap):
        def f(params, x, residual):
            variables = {"params": wrap(params), "batch_stats": wrap(stats)}
            return module.apply(variables, x, residual, mutable=["batch_stats"])

        y, vjp, updates = jax.vjp(f, params, x, residual, has_aux=True)
        return y, updates["batch_stats"], vjp(g)

    y, updates, grads = value_and_grads(ours, lambda t: t)
    ref_y, ref_updates, ref_grads = value_and_grads(ref, lambda t: {"BatchNorm_0": t})
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
    jax.tree.map(close, updates, ref_updates["BatchNorm_0"])
    jax.tree.map(close, grads, ref_grads)
    if train:  # the running statistics moved towards the batch's (biased) variance
        np.testing.assert_allclose(
            updates["var"], 0.9 * stats["var"] + 0.1 * np.var(np.asarray(x), (0, 1, 2)), rtol=1e-5
        )


def test_batch_norm_statistics_outputs_have_gradients():
    # `_bn_train`'s mean and variance outputs are differentiable too (E[x], biased Var[x]).
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32)
    scale, bias = jnp.ones(5), jnp.zeros(5)
    w = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)

    def ours(x):
        _, mean, var = layers._bn_train(x, scale, bias, None, 1e-5, False)
        return jnp.sum(w[0] * mean + w[1] * jnp.sqrt(var))

    def reference(x):
        return jnp.sum(w[0] * jnp.mean(x, (0, 1)) + w[1] * jnp.std(x, (0, 1)))

    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(reference)(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "shape,window,strides,padding",
    [
        ((2, 9, 8, 3), 3, 2, ((1, 1), (1, 1))),  # ResNet's stem pool, odd sizes
        ((2, 7, 6, 3), 2, 2, ((0, 1), (0, 0))),  # VGG's ceil-mode pool
        ((2, 6, 6, 3), 3, 1, ((1, 1), (1, 1))),  # DeepLab v1's stride-1 pool
        ((1, 8, 8, 2), 2, 2, ((0, 0), (0, 0))),  # U-Net's
    ],
)
def test_max_pool_matches_flax_max_pool(shape, window, strides, padding):
    rng = np.random.default_rng(2)
    # Rounded and rectified: ties within windows (zeros, repeated values) are common.
    x = jnp.asarray(np.maximum(np.round(rng.normal(size=shape), 1), 0), jnp.float32)

    def reference(x):
        return nn.max_pool(x, (window, window), (strides, strides), padding)

    y, vjp = jax.vjp(lambda x: layers.max_pool(x, window, strides, padding), x)
    ref_y, ref_vjp = jax.vjp(reference, x)
    np.testing.assert_array_equal(y, ref_y)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    np.testing.assert_allclose(vjp(g)[0], ref_vjp(g)[0], rtol=1e-6, atol=1e-6)
    assert jnp.isnan(layers.max_pool(x.at[0, 0, 0, 0].set(jnp.nan), window, strides, padding)).any()
