"""HRNetV2 (FCN head) and OCRNet: parameter counts, branch shapes, the OCR head's maths.

Full-size counts are pinned with ``jax.eval_shape`` (tracing only) against timm's HRNet
trunks and the papers' figures, with the layer arithmetic of mmsegmentation's heads. The
forward / backward contract of the tiny variants runs in ``test_models.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from segjax.models.backbones.hrnet import (
    HRNetTiny,
    HRNetW18,
    HRNetW18Small,
    HRNetW32,
    HRNetW48,
    upsample_fused,
)
from segjax.models.heads.ocr import OCRHead
from segjax.models.necks.resize_concat import ResizeConcat
from tests.models.rng import rbg_key


def _count(model, shape=(1, 64, 64, 3)) -> int:
    return param_count(abstract_variables(model, shape))


def _conv_bn(cin: int, cout: int, k: int = 1) -> int:
    return k * k * cin * cout + 2 * cout


# timm 1.x `timm.create_model(name, features_only=True, feature_location="")` (stem + stages
# 1-4, no classification incre/final layers), sum of p.numel(): hrnet_w18_small_v2 3,860,720,
# hrnet_w18 9,562,260, hrnet_w32 29,305,536, hrnet_w48 65,325,120. timm's trunk is the
# official HRNet's, hence mmseg's (the same modules and widths; counted with the torch venv).
HRNET_TRUNKS = {"hr18s": 3_860_720, "hr18": 9_562_260, "hr32": 29_305_536, "hr48": 65_325_120}
WIDTHS = {"hr18s": 18, "hr18": 18, "hr32": 32, "hr48": 48}


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        # Tracing a full-size HRNet takes 5-10 s on 2 cores: the W48 trunk is also in
        # fcn_hr48's count below, the others run under -m slow.
        pytest.param(HRNetW18Small(), HRNET_TRUNKS["hr18s"], marks=pytest.mark.slow),
        pytest.param(HRNetW18(), HRNET_TRUNKS["hr18"], marks=pytest.mark.slow),
        pytest.param(HRNetW32(), HRNET_TRUNKS["hr32"], marks=pytest.mark.slow),
        pytest.param(HRNetW48(), HRNET_TRUNKS["hr48"], marks=pytest.mark.slow),
    ],
)
def test_hrnet_trunk_parameter_counts_match_timm(backbone, expected):
    assert _count(backbone) == expected


def _fcn_hr_head(w: int, k: int) -> int:
    # mmseg fcn_hr*: FCNHead(15W, 15W, kernel_size=1, num_convs=1): 1x1 conv-BN + conv_seg.
    c = 15 * w
    return _conv_bn(c, c) + c * k + k


def _ocr_head(cin: int, k: int, channels: int = 512, ocr: int = 256) -> int:
    # mmseg OCRHead: 3x3 bottleneck; query / key: two 1x1 conv-BNs; value, out_project;
    # fuse 1x1 over the concatenation (2 * channels); conv_seg.
    return (
        _conv_bn(cin, channels, 3)
        + 2 * (_conv_bn(channels, ocr) + _conv_bn(ocr, ocr))
        + _conv_bn(channels, ocr)
        + _conv_bn(ocr, channels)
        + _conv_bn(2 * channels, channels)
        + channels * k
        + k
    )


# ResNet-101 v1c: torchvision resnet101 44,549,160 - fc 2,049,000 - 7x7 stem (9,408 + 128)
# + mmseg's three 3x3 stem convs 32-32-64 (28,512 + 256).
RESNET101_V1C = 44_549_160 - 2_049_000 - 9_536 + 28_768


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # HRNet-Semantic-Segmentation README (Cityscapes table) and Wang et al. (TPAMI 2020,
        # Table 4): HRNetV2-W18-Small-v2 3.9M, HRNetV2-W48 65.9M (the "about 65.8M").
        # 19 classes: 3,939,309 and 65,858,659 round to those.
        ("fcn_hr18s", HRNET_TRUNKS["hr18s"] + _fcn_hr_head(18, 19)),
        # The same trunks and head at other widths (tracing: ~10 s each).
        pytest.param(
            "fcn_hr18", HRNET_TRUNKS["hr18"] + _fcn_hr_head(18, 19), marks=pytest.mark.slow
        ),
        pytest.param(
            "fcn_hr32", HRNET_TRUNKS["hr32"] + _fcn_hr_head(32, 19), marks=pytest.mark.slow
        ),
        ("fcn_hr48", HRNET_TRUNKS["hr48"] + _fcn_hr_head(48, 19)),
        # Yuan et al. (ECCV 2020), Table 6: HRNetV2-W48 + OCR 70.3M; 70,371,446 here.
        ("ocrnet_hr48", HRNET_TRUNKS["hr48"] + _fcn_hr_head(48, 19) + _ocr_head(720, 19)),
        pytest.param(
            "ocrnet_hr18",
            HRNET_TRUNKS["hr18"] + _fcn_hr_head(18, 19) + _ocr_head(270, 19),
            marks=pytest.mark.slow,
        ),
        # mmseg ocrnet_r101-d8: FCNHead(1024, 256) on stage 3 + OCRHead(2048, 512, 256).
        (
            "ocrnet_r101_d8",
            RESNET101_V1C + _conv_bn(1024, 256, 3) + 256 * 19 + 19 + _ocr_head(2048, 19),
        ),
    ],
)
def test_model_parameter_counts(name, expected):
    assert _count(build_model(name, num_classes=19)) == expected


def test_pinned_counts_are_the_published_figures():
    """The counts pinned above (arithmetic only) round to the papers' 3.9M, 65.9M, 70.3M."""
    assert round((HRNET_TRUNKS["hr18s"] + _fcn_hr_head(18, 19)) / 1e5) == 39
    assert round((HRNET_TRUNKS["hr48"] + _fcn_hr_head(48, 19)) / 1e5) == 659
    ocr48 = HRNET_TRUNKS["hr48"] + _fcn_hr_head(48, 19) + _ocr_head(720, 19)
    assert math.floor(ocr48 / 1e5) == 703


@pytest.mark.parametrize("hw", [(33, 47), (64, 64)])
def test_hrnet_branch_shapes(hw):
    """Branch k is ceil-halved from stride 4; the HRNetV2 representation is 15W at stride 4."""
    backbone = HRNetTiny()
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: backbone.init(rbg_key(0), x, train=False), x)
    feats = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), variables, x)
    for key, stride in backbone.feature_strides().items():
        h, w = hw
        for _ in range(int(math.log2(stride))):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert feats[key].shape == (1, h, w, backbone.feature_channels()[key])
    rep = jax.eval_shape(lambda f: ResizeConcat().apply({}, f, train=False), feats)["hrnetv2"]
    assert rep.shape == (*feats["s4"].shape[:3], 8 + 16 + 32 + 64)


def _bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's bilinear resize, align_corners=False, in loops."""
    w = np.zeros((n_out, n_in))
    for d in range(n_out):
        src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w[d, i0] += 1 - (src - i0)
        w[d, i1] += src - i0
    return w


def test_fusion_upsampling_modes():
    """mmseg's bilinear x4 then resize to the branch; timm's pixel repeat (cropped)."""
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
    size = (10, 7)  # an odd-size branch: 10 x 7 under a 3 x 2 one, factor 4
    nearest = np.asarray(upsample_fused(jnp.asarray(x), 4, size, "nearest"))
    for i in range(10):
        for j in range(7):
            np.testing.assert_array_equal(nearest[0, i, j], x[0, i // 4, j // 4])
    # Two separable bilinear resizes: 3 x 2 -> 12 x 8 -> 10 x 7.
    rows = _bilinear_1d(12, 10) @ _bilinear_1d(3, 12)
    cols = _bilinear_1d(8, 7) @ _bilinear_1d(2, 8)
    expected = np.einsum("ai,bj,ijc->abc", rows, cols, x[0].astype(np.float64))
    bilinear = np.asarray(upsample_fused(jnp.asarray(x), 4, size, "bilinear"))
    np.testing.assert_allclose(bilinear[0], expected, rtol=1e-5, atol=1e-6)
    direct = np.einsum("ai,bj,ijc->abc", _bilinear_1d(3, 10), _bilinear_1d(2, 7), x[0])
    assert np.abs(direct - expected).max() > 1e-2  # one resize is not mmseg's
    with pytest.raises(ValueError, match="fuse_upsample must be one of"):
        jax.eval_shape(
            lambda v: HRNetTiny(fuse_upsample="bicubic").init(rbg_key(0), v, train=False),
            jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32),
        )


def test_hrnet_stride_is_fixed():
    with pytest.raises(ValueError, match="output_stride"):
        build_model("fcn_hr_tiny", num_classes=3, output_stride=16)
    with pytest.raises(ValueError, match="output_stride"):
        build_model("ocrnet_tiny", num_classes=3, output_stride=8)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_ocr_head_matches_numpy_reference():
    """Eval-mode OCR head against the paper's equations in NumPy (BN is identity at init)."""
    k, c, ocr = 3, 6, 4
    head = OCRHead(k, channels=c, ocr_channels=ocr, dropout=0.0, in_key="x")
    rng = np.random.default_rng(0)
    feats = {
        "x": jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32),
        "object_regions": jnp.asarray(rng.normal(size=(2, 5, 7, k)), jnp.float32),
    }
    variables = jax.jit(lambda f: head.init(rbg_key(0), f, train=False))(feats)
    params = variables["params"]
    out = np.asarray(jax.jit(lambda v, f: head.apply(v, f, train=False))(variables, feats))

    def kernel(name):
        return np.asarray(params[name]["conv"]["kernel"], np.float64)

    def cbr(x, name):  # 1x1 conv, BN at init (mean 0, var 1, eps 1e-5), ReLU
        return np.maximum(x @ kernel(name)[0, 0] / np.sqrt(1 + 1e-5), 0)

    x = np.asarray(feats["x"], np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    w3 = kernel("bottleneck")
    f = sum(xp[:, i : i + 5, j : j + 7] @ w3[i, j] for i in range(3) for j in range(3))
    f = np.maximum(f / np.sqrt(1 + 1e-5), 0).reshape(2, 35, c)
    m = _softmax(np.asarray(feats["object_regions"], np.float64).reshape(2, 35, k), axis=1)
    regions = np.einsum("bnk,bnc->bkc", m, f)  # f_k = sum_i m_ki x_i
    q = cbr(cbr(f, "query_project0"), "query_project1")
    kk = cbr(cbr(regions, "key_project0"), "key_project1")
    v = cbr(regions, "value_project")
    w = _softmax(np.einsum("bnc,bkc->bnk", q, kk) / np.sqrt(ocr), axis=-1)
    y = cbr(np.einsum("bnk,bkc->bnc", w, v), "out_project")
    z = cbr(np.concatenate([y, f], -1), "fuse")
    cls = params["classifier"]["conv"]
    logits = z @ np.asarray(cls["kernel"])[0, 0] + np.asarray(cls["bias"])
    np.testing.assert_allclose(out.reshape(2, 35, k), logits, rtol=1e-4, atol=1e-5)


def test_ocrnet_aux_is_the_object_regions():
    """aux_head only exposes the first head's logits: same parameters either way."""
    with_aux = build_model("ocrnet_tiny", num_classes=3, aux_head=True)
    without = build_model("ocrnet_tiny", num_classes=3)
    assert _count(with_aux) == _count(without)
