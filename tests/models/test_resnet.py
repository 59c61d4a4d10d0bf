"""ResNet backbone: parameter counts against torchvision, stems, dilation, options."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.__main__ import param_count
from segjax.models.backbones.resnet import (
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNetTiny,
)
from tests.models.rng import rbg_key


def _abstract(model, shape=(1, 65, 65, 3)):
    return jax.eval_shape(lambda x: model.init(rbg_key(0), x, train=False), jnp.zeros(shape))


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        # torchvision resnetXX() parameter counts minus the ImageNet fc layer
        # (512*1000 + 1000 for BasicBlock nets, 2048*1000 + 1000 for Bottleneck nets).
        (ResNet18, 11_689_512 - 513_000),
        (ResNet34, 21_797_672 - 513_000),
        (ResNet50, 25_557_032 - 2_049_000),  # = 23,508,032
        (ResNet101, 44_549_160 - 2_049_000),
        (ResNet152, 60_192_808 - 2_049_000),
    ],
)
def test_trunk_parameter_count_matches_torchvision(backbone, expected):
    assert param_count(_abstract(backbone())) == expected


def test_deep_stem_v1c():
    """Three 3x3 convs 32, 32, 64 (+BN) replace the 7x7 conv: +19,232 parameters."""
    v1b = param_count(_abstract(ResNet50()))
    v1c_vars = _abstract(ResNet50(deep_stem=True))
    stem_7x7 = 7 * 7 * 3 * 64 + 2 * 64
    stem_3x3 = 9 * (3 * 32 + 32 * 32 + 32 * 64) + 2 * (32 + 32 + 64)
    assert param_count(v1c_vars) == v1b - stem_7x7 + stem_3x3
    kernels = [v1c_vars["params"][f"stem_conv{i}"]["conv"]["kernel"].shape for i in (1, 2, 3)]
    assert kernels == [(3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64)]


def test_feature_channels_match_outputs():
    model = ResNet50(output_stride=8)
    feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), _abstract(model), jnp.zeros((1, 65, 65, 3))
    )
    assert {k: v.shape[-1] for k, v in feats.items()} == model.feature_channels()
    assert model.feature_channels() == {"s4": 256, "s8": 512, "s16": 1024, "s32": 2048}
    # 65 -> 33 -> 17 at s4; stride 8 for everything deeper.
    assert {k: v.shape[1] for k, v in feats.items()} == {"s4": 17, "s8": 9, "s16": 9, "s32": 9}


def _conv_dilations(model, shape=(1, 33, 47, 3)):
    """Maps each 3x3 conv's module path to the rhs_dilation it is lowered with."""
    x = jnp.zeros(shape)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(_abstract(model, shape), x)

    def walk(jaxpr):  # into the jaxprs of custom_vjp calls (`layers.conv2d` on the CPU)
        for eqn in jaxpr.eqns:
            dilation = eqn.params.get("rhs_dilation", (1, 1))
            if eqn.primitive.name == "conv_general_dilated" and dilation != (1, 1):
                yield dilation
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)

    return list(walk(jaxpr.jaxpr))


def test_dilation_schedule_and_multi_grid():
    """torchvision schedule: the first block of a dilated stage keeps the previous rate."""
    base = ResNet34  # (3, 4, 6, 3) BasicBlocks: only conv1 of each block is dilated.
    # Output stride 16: stage 4 dilated; its block 0 keeps rate 1, blocks 1-2 use rate 2.
    assert _conv_dilations(base(output_stride=16)) == [(2, 2)] * 2
    # Output stride 8: stage 3 blocks 1-5 at 2; stage 4 block 0 at 2, blocks 1-2 at 4.
    assert _conv_dilations(base(output_stride=8)) == [(2, 2)] * 6 + [(4, 4)] * 2
    # Multi-Grid (1, 2, 4) at output stride 16: stage-4 rates 2, 4, 8 (DeepLabv3 paper).
    rates = _conv_dilations(base(output_stride=16, multi_grid=(1, 2, 4)))
    assert rates == [(2, 2), (4, 4), (8, 8)]


def test_bad_options_raise():
    x = jnp.zeros((1, 33, 33, 3))
    with pytest.raises(ValueError, match="output_stride"):
        ResNetTiny(output_stride=4).init(rbg_key(0), x, train=False)
    with pytest.raises(ValueError, match="multi_grid"):
        ResNetTiny(multi_grid=(1, 2, 4)).init(rbg_key(0), x, train=False)


def test_zero_init_residual_starts_blocks_as_identity():
    model = ResNetTiny(zero_init_residual=True)
    x = jax.random.normal(rbg_key(1), (1, 17, 19, 3))
    variables = jax.jit(lambda x: model.init(rbg_key(0), x, train=False))(x)
    assert not np.any(np.asarray(variables["params"]["layer1_block0"]["conv2"]["bn"]["scale"]))
    feats, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(
        variables, x
    )
    # Stage 1 has no projection shortcut, so with a zero residual branch its block returns
    # relu(input) = input: the max-pooled (non-negative) stem output.
    stem = state["intermediates"]["stem_conv1"]["__call__"][0]
    pooled = nn.max_pool(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_allclose(feats["s4"], pooled, rtol=1e-6)
    assert np.any(np.asarray(pooled) > 0)
