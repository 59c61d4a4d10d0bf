"""U-Net, UNet++, LinkNet, PSPNet, FPN, DeepLabv3+ on MobileNetV2 / Xception-65.

Parameter counts of full-size models are pinned with ``jax.eval_shape`` (tracing only), each
against its published or reference figure; layer arithmetic in the comments shows where the
number comes from. Numeric tests compare the custom ops (adaptive pooling, 2x2 transposed
conv, nearest resize) with independent NumPy definitions of PyTorch's semantics.
The forward / backward contract of the tiny variants runs in ``test_models.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.losses import segmentation_loss
from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from segjax.models.backbones.mobilenet import MobileNetV2, MobileNetV2Tiny
from segjax.models.backbones.xception import Xception65, XceptionTiny
from segjax.models.necks.fpn import resize_nearest
from segjax.models.necks.ppm import adaptive_avg_pool
from segjax.models.unet import TransposedConv2x2
from tests.models.rng import rbg_key


def _count(model, shape=(1, 64, 64, 3)) -> int:
    return param_count(abstract_variables(model, shape))


def _sep(cin: int, cout: int) -> int:
    """Depthwise 3x3 + BN + pointwise 1x1 + BN, no biases."""
    return 9 * cin + 2 * cin + cin * cout + 2 * cout


def _conv_bn(cin: int, cout: int, k: int = 1) -> int:
    return k * k * cin * cout + 2 * cout


# ResNet-50 v1c (mmseg's deep stem 32-32-64 instead of the 7x7 conv): torchvision resnet50
# 25,557,032 - fc 2,049,000 - 7x7 stem (9,408 + 128) + three 3x3 convs (28,512 + 256).
RESNET50_V1C = 25_557_032 - 2_049_000 - 9_536 + 28_768


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        # torchvision mobilenet_v2(): 3,504,872 params, minus the classifier 1280*1000 + 1000.
        (MobileNetV2(last_conv=True), 3_504_872 - 1_281_000),
        # Without the final 1x1 conv 320 -> 1280 + BN (mmseg's MobileNetV2 stops at 320).
        (MobileNetV2(), 3_504_872 - 1_281_000 - (320 * 1280 + 2 * 1280)),
        # timm xception65 (XceptionAligned, the DeepLabv3+ layout): 39.92M with its
        # 2048 -> 1000 classifier (2,049,000); the trunk is 37,867,312. 37,867,312 + 2,049,000
        # = 39,916,312 rounds to timm's published 39.92M.
        (Xception65(), 37_867_312),
    ],
)
def test_backbone_parameter_counts(backbone, expected):
    assert _count(backbone) == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # milesial/Pytorch-UNet UNet(n_channels=3, n_classes=2, bilinear=False): 31,037,698.
        # Same layers (DoubleConv with bias-free convs + BN, ConvTranspose2d(2, 2), 1x1 out).
        ("unet", {"num_classes": 2}, 31_037_698),
        # 4uiiurz1/pytorch-nested-unet NestedUNet(num_classes=1, input_channels=3): 9,163,329
        # (sum of its 15 VGGBlocks and the final 1x1 conv). segjax drops the conv biases
        # that BN makes redundant: 3,648 = the sum over blocks of (middle + out) channels.
        ("unetpp", {"num_classes": 1}, 9_163_329 - 3_648),
        # LinkNet paper: 11.5M. torchvision ResNet-18 trunk 11,176,512 + decoder blocks
        # (512->256: 246,784; 256->128: 61,952; 128->64: 15,616; 64->64: 4,544) + final full
        # conv 64->32 (18,496) + 3x3 conv 32->32 (9,280) + 1x1 classifier 32*K + K.
        (
            "linknet_resnet18",
            {"num_classes": 19},
            11_176_512 + 246_784 + 61_952 + 15_616 + 4_544 + 18_496 + 9_280 + 32 * 19 + 19,
        ),
        # mmsegmentation pspnet_r50-d8 (Cityscapes, 19 classes, aux FCN head): ResNet-50 v1c
        # + PPM 4 x (2048*512 + BN) + bottleneck 3x3 (2048 + 4*512) -> 512 + BN + conv_seg
        # 512*19 + 19 + aux FCNHead 3x3 1024 -> 256 + BN + 256*19 + 19 = 48,975,494
        # (mmseg's get_flops reports 48.98M for this config; no count is published in its zoo).
        (
            "pspnet_resnet50",
            {"num_classes": 19, "aux_head": True},
            RESNET50_V1C
            + 4 * _conv_bn(2048, 512)
            + _conv_bn(4096, 512, 3)
            + 512 * 19
            + 19
            + _conv_bn(1024, 256, 3)
            + 256 * 19
            + 19,
        ),
        # mmsegmentation fpn_r50 (Semantic FPN, 19 classes): ResNet-50 v1c + FPN laterals
        # (256+512+1024+2048)*256 + 4*256 + 4 output 3x3 convs (589,824 + 256) + FPNHead
        # 3x3 conv-BN levels (1, 1, 2, 3 convs; first 256->128, then 128->128) + 128*19 + 19.
        (
            "fpn_resnet50",
            {"num_classes": 19},
            RESNET50_V1C
            + 3840 * 256
            + 4 * 256
            + 4 * (9 * 256 * 256 + 256)
            + 4 * _conv_bn(256, 128, 3)
            + 3 * _conv_bn(128, 128, 3)
            + 128 * 19
            + 19,
        ),
        # DeepLabv3+ on MobileNetV2 / Xception-65 (21 classes, separable ASPP and decoder, as
        # mmseg's DepthwiseSeparableASPPHead): trunk + ASPP (1x1, 3 separable, pooling 1x1,
        # projection 1280 -> 256) + decoder (48-channel low-level 1x1, two separable convs,
        # classifier). No published count for these exact heads; derived layer by layer.
        (
            "deeplabv3plus_mobilenetv2",
            {"num_classes": 21},
            1_811_712
            + 2 * _conv_bn(320, 256)
            + 3 * _sep(320, 256)
            + _conv_bn(1280, 256)
            + _conv_bn(24, 48)
            + _sep(304, 256)
            + _sep(256, 256)
            + 256 * 21
            + 21,
        ),
        (
            "deeplabv3plus_xception65",
            {"num_classes": 21},
            37_867_312
            + 2 * _conv_bn(2048, 256)
            + 3 * _sep(2048, 256)
            + _conv_bn(1280, 256)
            + _conv_bn(256, 48)
            + _sep(304, 256)
            + _sep(256, 256)
            + 256 * 21
            + 21,
        ),
    ],
)
def test_model_parameter_counts(name, kwargs, expected):
    assert _count(build_model(name, **kwargs)) == expected


def _feature_shapes(backbone, hw=(33, 47)):
    x = jnp.zeros((1, *hw, 3))
    variables = jax.eval_shape(lambda x: backbone.init(rbg_key(0), x, train=False), x)
    return jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), variables, x)


@pytest.mark.parametrize("backbone_cls", [MobileNetV2Tiny, XceptionTiny])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_output_stride(backbone_cls, output_stride):
    backbone = backbone_cls(output_stride=output_stride)
    feats = _feature_shapes(backbone)
    strides, channels = backbone.feature_strides(), backbone.feature_channels()
    assert strides == {
        k: min(s, output_stride) for k, s in [("s4", 4), ("s8", 8), ("s16", 16), ("s32", 32)]
    }
    for key, stride in strides.items():
        assert feats[key].shape == (
            1,
            math.ceil(33 / stride),
            math.ceil(47 / stride),
            channels[key],
        )


def _dilations(backbone):
    x = jnp.zeros((1, 33, 47, 3))
    variables = jax.eval_shape(lambda x: backbone.init(rbg_key(0), x, train=False), x)
    jaxpr = jax.make_jaxpr(lambda v, x: backbone.apply(v, x, train=False))(variables, x)
    return [
        e.params["rhs_dilation"][0]
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name == "conv_general_dilated" and e.params["rhs_dilation"] != (1, 1)
    ]


def test_mobilenet_dilation_schedule_is_mmseg():
    """mmseg at output stride 8: stage dilations (1, 1, 1, 2, 2, 4, 4), whole stages."""
    # Tiny: one block per stage, so one depthwise conv per stage 4..7.
    assert _dilations(MobileNetV2Tiny(output_stride=8)) == [2, 2, 4, 4]
    assert _dilations(MobileNetV2Tiny(output_stride=16)) == [2, 2]


def test_xception_dilation_schedule_is_timm():
    """A block whose stride is removed keeps the previous rate; later blocks use the new one."""
    # Output stride 16: exit1 (3 depthwise convs) stays at 1, exit2 (3 convs) at 2.
    assert _dilations(XceptionTiny(output_stride=16)) == [2] * 3
    # Output stride 8: entry3 at 1; middle (3) and exit1 (3) at 2; exit2 (3) at 4.
    assert _dilations(XceptionTiny(output_stride=8)) == [2] * 6 + [4] * 3


def _torch_adaptive_pool(x: np.ndarray, b: int) -> np.ndarray:
    """PyTorch AdaptiveAvgPool2d, written out: bins [floor(i*n/b), ceil((i+1)*n/b))."""
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], b, b, x.shape[3]))
    for i in range(b):
        for j in range(b):
            r0, r1 = (i * h) // b, -((-(i + 1) * h) // b)
            c0, c1 = (j * w) // b, -((-(j + 1) * w) // b)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw", [(7, 5), (2, 13), (6, 6)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_torch_semantics(hw, bins):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    np.testing.assert_allclose(
        adaptive_avg_pool(jnp.asarray(x), bins), _torch_adaptive_pool(x, bins), rtol=1e-5, atol=1e-6
    )


def test_transposed_conv_2x2_is_pytorch_conv_transpose():
    """out[2i + a, 2j + b] = x[i, j] @ kernel[a, b] + bias, PyTorch's ConvTranspose2d(2, 2)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    module = TransposedConv2x2(6)
    variables = module.init(rbg_key(0), jnp.asarray(x))
    bias = rng.normal(size=(6,)).astype(np.float32)
    variables = {"params": {**variables["params"], "bias": jnp.asarray(bias)}}
    kernel = np.asarray(variables["params"]["kernel"])
    expected = np.zeros((2, 6, 10, 6), np.float32)
    for a in range(2):
        for b in range(2):
            expected[:, a::2, b::2] = x @ kernel[a, b] + bias
    np.testing.assert_allclose(
        module.apply(variables, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5
    )


def test_resize_nearest_is_pytorch_nearest():
    x = jnp.arange(3.0).reshape(1, 3, 1, 1)
    # PyTorch F.interpolate(size=7, mode="nearest") reads floor(i * 3 / 7).
    np.testing.assert_array_equal(resize_nearest(x, (7, 1)).reshape(-1), [0, 0, 0, 1, 1, 2, 2])


def test_unetpp_deep_supervision_feeds_the_loss():
    model = build_model("unetpp_tiny", num_classes=4, deep_supervision=True)
    shape = (2, 33, 47, 3)
    variables = abstract_variables(model, shape)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros(shape))
    # depth 3: logits from X[0][3], deep supervision from X[0][1] and X[0][2].
    assert [o.shape for o in out["deep_supervision"]] == [(2, 33, 47, 4)] * 2
    assert out["logits"].shape == (2, 33, 47, 4)
    labels = jnp.zeros(shape[:3], jnp.int32)

    def loss(v, x):
        outputs = model.apply(v, x, train=False)
        return segmentation_loss(
            outputs, labels, loss_fn=lambda lo, la: jnp.mean(lo[..., 0] * 0 + la), aux_weight=0.4
        )[1]

    terms = jax.eval_shape(loss, variables, jnp.zeros(shape))
    assert {"deep_supervision_0", "deep_supervision_1"} <= set(terms)
    # The extra classifiers exist only with deep supervision.
    plain = abstract_variables(build_model("unetpp_tiny", num_classes=4), shape)
    assert param_count(variables) - param_count(plain) == 2 * (4 * 4 + 4)


@pytest.mark.parametrize("name", ["unet", "unetpp", "linknet_resnet18", "fpn_resnet50"])
def test_fixed_stride_models_reject_output_stride(name):
    with pytest.raises(ValueError, match="output_stride"):
        build_model(name, num_classes=3, output_stride=16)


def test_pspnet_reads_stride8_features_and_stage3_aux():
    model = build_model("pspnet_resnet50", num_classes=19, aux_head=True)
    assert model.backbone.output_stride == 8 and model.backbone.deep_stem
    assert model.neck.bins == (1, 2, 3, 6) and model.neck.in_key == "s32"
    assert model.aux_head.in_key == "s16"


def test_unet_stride2_stem_runs_every_level_at_half_resolution():
    shape = (2, 33, 47, 3)
    plain = build_model("unet_tiny", num_classes=4)
    stem = build_model("unet_tiny", num_classes=4, stem_stride=2)
    variables = abstract_variables(stem, shape)
    # The stem is one 3x3 conv 3 -> 4 + BN; every other layer keeps its shape, but the
    # first level now reads the stem's 4 channels instead of the image's 3.
    assert (
        param_count(variables) - param_count(abstract_variables(plain, shape))
        == (9 * 3 * 4 + 2 * 4) + 9 * (4 - 3) * 4
    )
    x = jax.random.normal(rbg_key(0), shape)
    out, inner = stem.apply(
        stem.init(rbg_key(1), x, train=False),
        x,
        train=False,
        capture_intermediates=lambda m, _: m.name == "inc",
    )
    assert out["logits"].shape == (2, 33, 47, 4)
    # The first level runs on the stem's stride-2 map of the padded (48 x 48) image.
    (first_level,) = inner["intermediates"]["inc"]["__call__"]
    assert first_level.shape == (2, 24, 24, 4)
    with pytest.raises(ValueError, match="stem_stride"):
        build_model("unet_tiny", num_classes=4, stem_stride=4).init(rbg_key(0), x, train=False)
