"""DANet, CCNet, EMANet, EncNet: parameter counts, and their modules against NumPy references.

Parameter counts of the full-size models are pinned with ``jax.eval_shape`` (tracing only).
mmsegmentation publishes no parameter counts in its model zoo, so each is derived layer by
layer from its config (``danet_r50-d8``, ``ccnet_r50-d8``) and head code (``DAHead``,
``CCHead``, mmcv's ``CrissCrossAttention``); the arithmetic is in the comments. The
forward / backward contract of the tiny variants runs in ``test_models.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.losses import se_loss, segmentation_loss
from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, param_count
from segjax.models.heads.attention import (
    ChannelAttention,
    CrissCrossAttention,
    PositionAttention,
)
from segjax.models.heads.context import EMAttention, Encoding
from segjax.models.layers import resize_bilinear
from tests.models.rng import rbg_key

# ResNet-50 / -101 v1c (mmseg's deep stem 32-32-64 instead of the 7x7 conv): torchvision
# resnet50 25,557,032 (resnet101 44,549,160) - fc 2,049,000 - 7x7 stem (9,408 + 128) +
# three 3x3 convs (28,512 + 256).
RESNET50_V1C = 25_557_032 - 2_049_000 - 9_536 + 28_768
RESNET101_V1C = 44_549_160 - 2_049_000 - 9_536 + 28_768


def _conv_bn(cin: int, cout: int, k: int = 1) -> int:
    return k * k * cin * cout + 2 * cout


def _count(name: str, **kwargs) -> int:
    return param_count(abstract_variables(build_model(name, **kwargs), (1, 65, 65, 3)))


K = 19  # Cityscapes, as mmseg's configs
CLS = 512 * K + K  # a classifier 512 -> K with bias
# q, k: 1x1 512 -> 64 with bias; v: 1x1 512 -> 512 with bias; gamma (a Scale(0)).
ATTENTION_512 = 2 * (512 * 64 + 64) + 512 * 512 + 512 + 1
# mmseg's auxiliary FCNHead(1024, 256, num_convs=1) on stage 3.
AUX = _conv_bn(1024, 256, 3) + 256 * K + K
# DAHead(2048, 512, pam_channels=64): per branch a 3x3 in-conv 2048 -> 512 + BN, the
# attention (PAM: q/k/v + gamma; CAM: gamma only), a 3x3 out-conv 512 -> 512 + BN and a
# branch classifier; plus the classifier of the sum.
DAHEAD = 2 * (_conv_bn(2048, 512, 3) + _conv_bn(512, 512, 3) + CLS) + ATTENTION_512 + 1 + CLS
# CCHead(2048, 512): conv0 3x3 2048 -> 512, one criss-cross attention (mmcv: q/k 512 -> 64,
# v 512 -> 512, all with bias, gamma), conv1 3x3 512 -> 512, conv_cat 3x3 (2048 + 512) ->
# 512, all with BN, the classifier.
CCHEAD = (
    _conv_bn(2048, 512, 3) + ATTENTION_512 + _conv_bn(512, 512, 3) + _conv_bn(2560, 512, 3) + CLS
)


@pytest.mark.parametrize(
    ("name", "aux", "expected"),
    [
        # mmseg danet_r50-d8 (19 classes, with its aux head): 49,846,574.
        ("danet_resnet50", True, RESNET50_V1C + DAHEAD + AUX),
        ("danet_resnet50", False, RESNET50_V1C + DAHEAD),
        # danet_r101-d8: 68,838,702.
        ("danet_resnet101", True, RESNET101_V1C + DAHEAD + AUX),
        # mmseg ccnet_r50-d8 (19 classes, with its aux head): 49,826,055.
        ("ccnet_resnet50", True, RESNET50_V1C + CCHEAD + AUX),
        ("ccnet_resnet50", False, RESNET50_V1C + CCHEAD),
        # ccnet_r101-d8: 68,818,183.
        ("ccnet_resnet101", True, RESNET101_V1C + CCHEAD + AUX),
    ],
)
def test_parameter_counts_match_mmseg_layout(name, aux, expected):
    assert _count(name, num_classes=K, aux_head=aux) == expected


def test_parameter_counts_pinned():
    assert _count("danet_resnet50", num_classes=K, aux_head=True) == 49_846_574
    assert _count("ccnet_resnet50", num_classes=K, aux_head=True) == 49_826_055
    # The tiny variants (5 classes, as the contract tests), pinned against silent changes.
    assert _count("danet_tiny", num_classes=5, aux_head=True) == 106_250
    assert _count("ccnet_tiny", num_classes=5, aux_head=True) == 105_979


def _init_apply(module, x):
    variables = module.init(rbg_key(0), x)
    return variables, module.apply(variables, x)


def _dense_projections(variables, x):
    p = variables["params"]
    proj = [
        np.einsum("bhwc,cd->bhwd", x, p[n]["kernel"][0, 0]) + p[n]["bias"]
        for n in ("query", "key", "value")
    ]
    return [np.asarray(a, np.float64) for a in proj], float(p["gamma"])


def test_criss_cross_equals_masked_dense_attention():
    """Criss-cross attention = dense attention over all h*w positions, masked to each
    position's row and column (itself once), computed here in float64 with NumPy."""
    b, h, w, c = 2, 5, 7, 16
    x = np.asarray(jax.random.normal(rbg_key(1), (b, h, w, c)))
    module = CrissCrossAttention(reduction=4, gamma_init=0.7)
    variables, out = _init_apply(module, jnp.asarray(x))
    (q, k, v), gamma = _dense_projections(variables, x.astype(np.float64))
    qf, kf, vf = (a.reshape(b, h * w, -1) for a in (q, k, v))
    energy = np.einsum("bnc,bmc->bnm", qf, kf)
    ys, xs = np.divmod(np.arange(h * w), w)
    mask = (ys[:, None] == ys[None, :]) | (xs[:, None] == xs[None, :])
    energy = np.where(mask, energy, -np.inf)
    attention = np.exp(energy - energy.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    expected = gamma * np.einsum("bnm,bmc->bnc", attention, vf).reshape(b, h, w, c) + x
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


def test_criss_cross_never_forms_the_full_affinity():
    """No intermediate of the criss-cross forward or backward has (h*w)^2 elements."""
    b, h, w, c = 1, 24, 40, 16
    x = jnp.zeros((b, h, w, c))
    module = CrissCrossAttention(gamma_init=1.0)
    variables = module.init(rbg_key(0), x)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v, x: module.apply(v, x).sum(), argnums=(0, 1)))(
        variables, x
    )
    largest = max(
        int(np.prod(var.aval.shape))
        for eqn in jaxpr.eqns
        for var in eqn.outvars
        if hasattr(var.aval, "shape")
    )
    assert largest < (h * w) ** 2 // 8
    assert largest <= b * h * w * (h + w)


def test_position_attention_equals_numpy_non_local_block():
    b, h, w, c = 2, 3, 4, 8
    x = np.asarray(jax.random.normal(rbg_key(2), (b, h, w, c)))
    variables, out = _init_apply(PositionAttention(4, gamma_init=0.5), jnp.asarray(x))
    (q, k, v), gamma = _dense_projections(variables, x.astype(np.float64))
    energy = np.einsum("bnc,bmc->bnm", q.reshape(b, h * w, -1), k.reshape(b, h * w, -1))
    attention = np.exp(energy - energy.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    context = np.einsum("bnm,bmc->bnc", attention, v.reshape(b, h * w, c)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(out), gamma * context + x, rtol=1e-4, atol=1e-4)


def test_channel_attention_equals_numpy_reference():
    """DANet's CAM: softmax(rowmax(E) - E) with E = X^T X over positions."""
    b, h, w, c = 2, 3, 4, 6
    x = np.asarray(jax.random.normal(rbg_key(3), (b, h, w, c))) * 0.3
    _, out = _init_apply(ChannelAttention(gamma_init=0.5), jnp.asarray(x))
    flat = x.reshape(b, h * w, c).astype(np.float64)
    energy = np.einsum("bnc,bnd->bcd", flat, flat)
    energy = energy.max(-1, keepdims=True) - energy
    attention = np.exp(energy - energy.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    expected = 0.5 * np.einsum("bcd,bnd->bnc", attention, flat).reshape(x.shape) + x
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


def test_full_size_attention_starts_as_identity():
    """gamma = 0 at init (the papers, mmseg): the attention modules pass their input."""
    x = jax.random.normal(rbg_key(4), (1, 4, 5, 16))
    for module in (PositionAttention(4), ChannelAttention(), CrissCrossAttention()):
        _, out = _init_apply(module, x)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_ccnet_recurrence_shares_one_attention():
    """R = 2 reuses one criss-cross module: the same parameters whatever the recurrence."""
    shapes = {
        r: jax.tree.map(
            lambda a: a.shape,
            abstract_variables(
                build_model("ccnet_tiny", num_classes=3, recurrence=r), (1, 33, 33, 3)
            ),
        )
        for r in (1, 2)
    }
    assert shapes[1] == shapes[2]
    with pytest.raises(ValueError, match="recurrence"):
        abstract_variables(build_model("ccnet_tiny", num_classes=3, recurrence=0), (1, 9, 9, 3))


def test_danet_outputs_and_options():
    model = build_model("danet_tiny", num_classes=3, output_stride=16)
    x = jax.ShapeDtypeStruct((2, 33, 47, 3), jnp.float32)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), abstract_variables(model, x.shape), x
    )
    assert set(out) == {"logits", "deep_supervision"}
    assert [v.shape for v in out["deep_supervision"]] == [(2, 33, 47, 3)] * 2
    plain = build_model("danet_tiny", num_classes=3, branch_logits=False)
    out = jax.eval_shape(
        lambda v, x: plain.apply(v, x, train=False), abstract_variables(plain, x.shape), x
    )
    assert set(out) == {"logits"}
    with pytest.raises(ValueError, match="output_stride"):
        build_model("danet_resnet50", num_classes=3, output_stride=32)


# EMAHead(2048, 256, ema_channels=512): ema_in_conv 3x3 2048 -> 512 + BN, ema_mid_conv 1x1
# 512 -> 512 with bias, ema_out_conv 1x1 512 -> 512 + BN, bottleneck 3x3 512 -> 256 + BN,
# conv_cat 3x3 (2048 + 256) -> 256 + BN, classifier 256 -> K. The 64 bases are a buffer
# (batch_stats), not parameters, in mmseg and here.
EMAHEAD = (
    _conv_bn(2048, 512, 3)
    + 512 * 512
    + 512
    + _conv_bn(512, 512)
    + _conv_bn(512, 256, 3)
    + _conv_bn(2304, 256, 3)
    + 256 * K
    + K
)
# EncHead(2048, 512, num_codes=32, use_se_loss=True): bottleneck 3x3 2048 -> 512 + BN,
# encoding_project 1x1 512 -> 512 + BN, Encoding (codewords 32 x 512, scale 32), BN1d(32),
# fc 512 -> 512 with bias, se_layer 512 -> K with bias, classifier 512 -> K.
ENCHEAD = (
    _conv_bn(2048, 512, 3)
    + _conv_bn(512, 512)
    + 32 * 512
    + 32
    + 2 * 32
    + 512 * 512
    + 512
    + CLS
    + CLS
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # mmseg emanet_r50-d8 (19 classes, with its aux head): 42,349,958.
        ("emanet_resnet50", RESNET50_V1C + EMAHEAD + AUX),
        # mmseg encnet_r50-d8 (19 classes, with its aux head): 35,891,961.
        ("encnet_resnet50", RESNET50_V1C + ENCHEAD + AUX),
    ],
)
def test_context_parameter_counts_match_mmseg_layout(name, expected):
    assert _count(name, num_classes=K, aux_head=True) == expected


def test_context_parameter_counts_pinned():
    assert _count("emanet_resnet50", num_classes=K, aux_head=True) == 42_349_958
    assert _count("encnet_resnet50", num_classes=K, aux_head=True) == 35_891_961
    assert _count("emanet_tiny", num_classes=5, aux_head=True) == 106_198
    assert _count("encnet_tiny", num_classes=5, aux_head=True) == 93_003


def test_encoding_equals_direct_residual_encoder():
    """The expanded distances equal mmseg's [N, K, C] formulation, in float64 NumPy."""
    b, n, c, k = 2, 13, 6, 4
    x = np.asarray(jax.random.normal(rbg_key(5), (b, n, c)))
    variables, out = _init_apply(Encoding(k), jnp.asarray(x))
    codewords = np.asarray(variables["params"]["codewords"], np.float64)
    scale = np.asarray(variables["params"]["scale"], np.float64)
    residual = x[:, :, None, :] - codewords[None, None]  # [B, N, K, C]
    logits = scale * np.sum(residual**2, -1)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(out), np.einsum("bnk,bnkc->bkc", a, residual), rtol=1e-4, atol=1e-5
    )


def _l2n(x, axis):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def test_em_attention_equals_numpy_em_and_updates_bases():
    """mmseg's EMAModule in float64 NumPy: T E/M steps from the running bases, the
    reconstruction, and in training the momentum update of the bases."""
    b, h, w, c, k, t = 2, 3, 5, 8, 4, 3
    x = np.asarray(jax.random.normal(rbg_key(6), (b, h, w, c)))
    module = EMAttention(num_bases=k, num_stages=t, momentum=0.1)
    variables = module.init(rbg_key(0), jnp.asarray(x), train=False)
    bases = np.asarray(variables["batch_stats"]["bases"], np.float64)
    np.testing.assert_allclose(np.linalg.norm(bases, axis=0), 1.0, rtol=1e-6)
    out, updates = module.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    feats = x.reshape(b, h * w, c)
    mu = np.broadcast_to(bases, (b, c, k))
    for _ in range(t):
        z = np.einsum("bnc,bck->bnk", feats, mu)
        z = np.exp(z - z.max(-1, keepdims=True))
        z /= z.sum(-1, keepdims=True)
        mu = _l2n(np.einsum("bnc,bnk->bck", feats, z / z.sum(1, keepdims=True)), 1)
    expected = np.einsum("bck,bnk->bnc", mu, z).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)
    new_bases = 0.9 * bases + 0.1 * _l2n(mu.mean(0), 0)
    np.testing.assert_allclose(updates["batch_stats"]["bases"], new_bases, rtol=1e-4, atol=1e-6)
    # Eval: the same output from the same bases, and nothing to update.
    np.testing.assert_allclose(
        np.asarray(module.apply(variables, jnp.asarray(x), train=False)), expected, atol=1e-5
    )


def test_se_loss_equals_numpy_and_enters_the_total():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 6, 7)).astype(np.int32)  # classes 0-2 of K = 5
    labels[1] = 255
    labels[1, 0, 0] = 4
    se_logits = rng.standard_normal((2, 5)).astype(np.float32)
    present = np.zeros((2, 5))
    present[0, np.unique(labels[0])] = 1
    present[1, 4] = 1  # 255 (void) marks no class
    p = 1 / (1 + np.exp(-se_logits.astype(np.float64)))
    expected = -np.mean(present * np.log(p) + (1 - present) * np.log(1 - p))
    np.testing.assert_allclose(float(se_loss(se_logits, labels)), expected, rtol=1e-5)
    logits = jnp.asarray(rng.standard_normal((2, 6, 7, 5)), jnp.float32)
    ce = lambda lg, lb: jnp.float32(1.0)  # a constant pixel loss
    total, terms = segmentation_loss(
        {"logits": logits, "se_logits": se_logits}, labels, ce, se_weight=0.2
    )
    np.testing.assert_allclose(float(terms["se"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(total), 1.0 + 0.2 * expected, rtol=1e-5)
    # A model without se_logits: no SE term, the total unchanged.
    total, terms = segmentation_loss({"logits": logits}, labels, ce)
    assert "se" not in terms and float(total) == 1.0


def test_encnet_outputs_se_logits_and_option():
    x = jax.ShapeDtypeStruct((2, 33, 47, 3), jnp.float32)
    for se, keys in ((True, {"logits", "se_logits"}), (False, {"logits"})):
        model = build_model("encnet_tiny", num_classes=3, se_loss=se)
        out = jax.eval_shape(
            lambda v, x, m=model: m.apply(v, x, train=False),
            abstract_variables(model, x.shape),
            x,
        )
        assert set(out) == keys
    assert out["logits"].shape == (2, 33, 47, 3)


def test_pan_ran_scale_attention_parameter_counts():
    # RAN on ResNet-101 v1c d8 (19 classes): 3x3 conv 2048 -> 512 + BN, two 1x1 classifiers
    # (original, reverse); no reference implementation publishes a count.
    assert (
        _count("ran_resnet101", num_classes=K) == RESNET101_V1C + _conv_bn(2048, 512, 3) + 2 * CLS
    )
    # PAN (smp layout, 32 decoder channels) on torchvision's ResNet-50 trunk (23,508,032):
    # FPA (global 1x1 2048 -> 32 + BN, mid 1x1 2048 -> 32 + BN, 7x7 2048 -> 1, 5x5, 3x3,
    # 3x3, 5x5, 7x7 one-channel convs, each + BN), GAUs on 1024/512/256 channels (3x3 conv
    # to 32 + BN, 1x1 gate 32 -> 32 + BN), 3x3 classifier 32 -> K with bias. smp's convs
    # carry a bias before BN (segjax's do not): smp counts 2 * 32 + 6 + 3 * 2 * 32 more.
    fpa = 2 * _conv_bn(2048, 32) + _conv_bn(2048, 1, 7) + 2 * _conv_bn(1, 1, 5)
    fpa += 2 * _conv_bn(1, 1, 3) + _conv_bn(1, 1, 7)
    gaus = sum(_conv_bn(c, 32, 3) + _conv_bn(32, 32) for c in (1024, 512, 256))
    expected = 23_508_032 + fpa + gaus + 9 * 32 * K + K
    assert _count("pan_resnet50", num_classes=K) == expected
    # Attention to scale on DeepLab-LargeFOV VGG-16 (21 classes): deeplabv1_vgg16
    # (20,505,429) + attention model 3x3 (3 x 1024) -> 512 with bias + 1x1 512 -> 3.
    attention = 9 * 3072 * 512 + 512 + 512 * 3 + 3
    assert _count("scale_attention_vgg16", num_classes=21) == 20_505_429 + attention
    assert _count("ran_tiny", num_classes=5, aux_head=True) == 91_835
    assert _count("pan_tiny", num_classes=5, aux_head=True) == 92_043
    # The tiny one: deeplabv1_tiny (5 classes, aux head: 120,922) + 3x3 (3 x 64) -> 16
    # with bias + 1x1 16 -> 3.
    tiny_attention = 9 * 192 * 16 + 16 + 16 * 3 + 3
    assert _count("deeplabv1_tiny", num_classes=5, aux_head=True) == 120_922
    assert _count("scale_attention_tiny", num_classes=5, aux_head=True) == 120_922 + tiny_attention


def test_reverse_attention_combines_the_branches():
    """logits = O - sigmoid(-O) * R, O (the original branch) also as deep supervision."""
    model = build_model("ran_tiny", num_classes=3)
    x = jax.random.normal(rbg_key(7), (2, 17, 19, 3))
    variables = model.init(rbg_key(0), x, train=False)
    out, state = model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda mdl, _: mdl.name in ("original", "reverse"),
        mutable=["intermediates"],
    )
    head = state["intermediates"]["head"]
    o, r = head["original"]["__call__"][0], head["reverse"]["__call__"][0]
    expected = o - jax.nn.sigmoid(-o) * r
    size = x.shape[1:3]
    np.testing.assert_allclose(out["logits"], resize_bilinear(expected, size), atol=1e-5)
    np.testing.assert_allclose(out["deep_supervision"][0], resize_bilinear(o, size), atol=1e-5)


def test_scale_attention_weights_sum_to_one_and_single_scale_is_the_base():
    """One scale: the softmax weight is 1 and the fused map is that scale's score map."""
    model = build_model("scale_attention_tiny", num_classes=3, scales=(1.0,))
    x = jax.random.normal(rbg_key(8), (2, 21, 27, 3))
    variables = model.init(rbg_key(0), x, train=False)
    out = model.apply(variables, x, train=False)
    np.testing.assert_allclose(out["logits"], out["deep_supervision"][0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        build_model("scale_attention_tiny", num_classes=3, scales=(1.0, 0.0)).init(
            rbg_key(0), x, train=False
        )
