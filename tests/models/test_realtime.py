"""The real-time models: MobileNetV3-Large (LR-ASPP, DeepLabv3), ENet, BiSeNet v1.

Parameter counts pinned to their references; the shared contract (forward at odd sizes,
bf16, gradients) runs on the tiny variants in ``test_models.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from segjax.models.backbones.mobilenet_v3 import MobileNetV3Large
from tests.models.rng import rbg_key


def _count(module) -> int:
    x = jnp.zeros((1, 65, 65, 3))
    return param_count(jax.eval_shape(lambda: module.init(rbg_key(0), x, train=False)))


@pytest.mark.parametrize(
    ("name", "aux", "expected"),
    [
        # torchvision 0.29: sum(p.numel()) of lraspp_mobilenet_v3_large(num_classes=21) is
        # 3,221,538, the "num_params" of LRASPP_MobileNet_V3_Large_Weights.
        ("lraspp_mobilenet_v3_large", False, 3_221_538),
        # deeplabv3_mobilenet_v3_large(num_classes=21, aux_loss=True): 11,029,328 (the
        # "num_params" of DeepLabV3_MobileNet_V3_Large_Weights); aux_loss=False: 11,025,477
        # (FCNHead(40, 21) = 3*3*40*10 + 2*10 + 10*21 + 21 = 3,851 less).
        ("deeplabv3_mobilenet_v3_large", True, 11_029_328),
        ("deeplabv3_mobilenet_v3_large", False, 11_025_477),
    ],
)
def test_parameter_count_matches_torchvision(name, aux, expected):
    model = build_model(name, num_classes=21, aux_head=aux)
    assert param_count(abstract_variables(model, (1, 65, 65, 3))) == expected


def test_mobilenet_v3_large_matches_torchvision():
    # torchvision 0.29: sum(p.numel()) of mobilenet_v3_large(dilated=True).features is
    # 2,971,952 (the stem, 15 blocks and the 960-channel conv; no classifier).
    assert _count(MobileNetV3Large(output_stride=16)) == 2_971_952
    # Dilation changes no parameter.
    assert _count(MobileNetV3Large(output_stride=32)) == 2_971_952


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobilenet_v3_feature_sizes(output_stride):
    backbone = MobileNetV3Large(output_stride=output_stride)
    h, w = 33, 47
    x = jnp.zeros((1, h, w, 3))
    feats = jax.eval_shape(
        lambda x: backbone.apply(backbone.init(rbg_key(0), x, train=False), x, train=False),
        x,
    )
    channels = backbone.feature_channels()
    assert channels == {"s4": 24, "c2": 40, "s8": 40, "s16": 112, "s32": 960}
    for key, stride in backbone.feature_strides().items():
        assert stride == min({"s4": 4, "c2": 8, "s8": 8, "s16": 16, "s32": 32}[key], output_stride)
        assert feats[key].shape == (1, math.ceil(h / stride), math.ceil(w / stride), channels[key])


def test_mobilenet_v3_options_are_checked():
    with pytest.raises(ValueError, match="output_stride"):
        build_model("lraspp_mobilenet_v3_large", num_classes=3, output_stride=8)
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3_mobilenet_v3_large", num_classes=3, output_stride=32)
    backbone = MobileNetV3Large(blocks=(0, 1, 2))
    with pytest.raises(ValueError, match="no block at stride 8"):
        backbone.feature_channels()


def test_enet_parameter_count():
    # davidtvs/PyTorch-ENet (models/enet.py, 19 classes): 351,590 parameters (summed with
    # PyTorch over its layers), 23 of them its shared scalar PReLU slopes; segjax's PReLUs
    # have one slope per channel (6,328): 351,590 - 23 + 6,328. Paper: "0.37M parameters".
    model = build_model("enet", num_classes=19)
    assert param_count(abstract_variables(model, (1, 65, 65, 3))) == 351_590 - 23 + 6_328


def test_enet_options_are_checked():
    with pytest.raises(ValueError, match="fixed output stride of 8"):
        build_model("enet", num_classes=3, output_stride=16)


@pytest.mark.slow  # compiles ENet's unpooling forward, bf16 and gradient: minutes on 2 cores
def test_enet_contract():
    """The shared contract with SegNet's bf16 check: max-unpooling moves values on bf16 ties."""
    from tests.models.test_zoo_fcn_segnet import test_unpooling_models_contract

    test_unpooling_models_contract("enet_tiny")


@pytest.mark.parametrize(("aux", "expected"), [(False, 13_275_539), (True, 13_350_630)])
def test_bisenet_parameter_count(aux, expected):
    # mmsegmentation's BiSeNetV1 (bisenetv1_r18-d32: ResNet-18 context path, 128-channel
    # ARMs and heads, 256-channel FFM and decode head, 64-channel auxiliary FCN heads), 19
    # classes, summed with PyTorch over its modules (torchvision's resnet18 without fc as the
    # trunk): 13,275,539 without auxiliary heads, 13,350,630 with the first, 13,425,721 with
    # both (segjax builds one: a Segmentor has one auxiliary output).
    model = build_model("bisenetv1_resnet18", num_classes=19, aux_head=aux)
    assert param_count(abstract_variables(model, (1, 65, 65, 3))) == expected


def test_bisenet_feature_strides():
    model = build_model("bisenetv1_tiny", num_classes=3)
    x = jnp.zeros((1, 65, 47, 3))
    variables = abstract_variables(model, x.shape)
    feats = jax.eval_shape(
        lambda v, x: model.backbone.apply({k: v[k]["backbone"] for k in v}, x, train=False),
        variables,
        x,
    )
    assert {k: v.shape[1:3] for k, v in feats.items()} == {
        "fuse": (9, 6),
        "context8": (9, 6),
        "context16": (5, 3),
    }
