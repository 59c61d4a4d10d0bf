"""Contract tests for every registered model (segjax.models.registry.MODELS).

Big models (ResNet-18/50/101) are covered by ``jax.eval_shape`` (shapes, dtypes, parameter
counts: tracing only); real forward / backward passes run on the tiny models, so the file
stays fast on 2 CPU cores.
"""

from __future__ import annotations

import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from segjax.models import MODELS, Segmentor, UnknownModelError, build_model
from segjax.models.__main__ import abstract_variables, main, param_count
from segjax.models.layers import resize_bilinear
from tests.models.rng import rbg_key

NUM_CLASSES = 5
ALL = sorted(MODELS)
# Models small enough for real forward / backward passes in the fast suite.
TINY = [
    "deeplabv3plus_tiny",
    "pixel_mlp",
    "deeplabv3plus_mobilenetv2_tiny",
    "deeplabv3plus_xception_tiny",
    "fpn_tiny",
    "linknet_tiny",
    "pspnet_tiny",
    "unet_tiny",
    "unetpp_tiny",
    "mmseg_unet_tiny",  # U-Net with interpolation up stages, an FCN head, aux on a decoder level
    # fcn_resnet_tiny (ResNet + FCNHead: run by deeplabv3plus_tiny's aux head) and
    # deeplabv1_tiny (parsenet_tiny's trunk and neck, a bare 1x1 classifier) stay out to
    # save compile time; segnet_tiny / deconvnet_tiny run their contract in
    # test_zoo_fcn_segnet.py, whose bf16 check allows argmax-pooling flips.
    "fcn8s_tiny",
    "parsenet_tiny",
    "deeplabv2_tiny",
    "lraspp_mobilenet_v3_tiny",
    "deeplabv3_mobilenet_v3_tiny",
    "bisenetv1_tiny",
    "danet_tiny",  # PAM + CAM branches as deep supervision
    "ccnet_tiny",
    "emanet_tiny",
    "encnet_tiny",  # se_logits [B, K] for the SE loss
    "ran_tiny",
    "pan_tiny",
    "scale_attention_tiny",  # one shared network at three scales
    "fcn_hr_tiny",  # HRNetV2 (8-64 channels, one module per stage) + FCN head
    "ocrnet_tiny",  # OCR head on HRNet-tiny (soft regions = aux logits)
    "upernet_tiny",
    "denseaspp_tiny",
    "duc_hdc_tiny",  # pixel-shuffled logits cropped to odd sizes
    "refinenet_tiny",
    "reseg_tiny",  # VGG stages + ReNet (bidirectional GRU sweeps over rows, then columns)
    "fcn_crfrnn_tiny",  # fcn8s_tiny + mean-field CRF iterations (exact dense kernel at 33x47)
    "lstm2d_tiny",  # 2-D LSTM: 4x4 blocks, four-direction wavefront sweeps, 2x2 merges
]
REQUIRED = {
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_resnet18",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus_tiny",
    "pixel_mlp",
    "fcn32s_vgg16",
    "fcn16s_vgg16",
    "fcn8s_vgg16",
    "fcn_resnet50",
    "fcn_resnet101",
    "parsenet_vgg16",
    "deeplabv1_vgg16",
    "deeplabv2_resnet101",
    "segnet_vgg16",
    "deconvnet_vgg16",
}


# Outputs a head may add next to the per-pixel logits (``Segmentor``'s head contract):
# ``deep_supervision`` (a list of logits at input size) and ``se_logits`` ([B, K]).
EXTRA_OUTPUTS = {"deep_supervision", "se_logits", "center", "offset"}  # + Panoptic-DeepLab


def _pixel_outputs(out: dict) -> list:
    """Every per-pixel logits array of a model's outputs, deep supervision included."""
    return [v for k, v in out.items() if k not in EXTRA_OUTPUTS] + list(
        out.get("deep_supervision", [])
    )


# The families added on 2026-12-02 (zoo II, attention, real-time): their contract tests
# beyond one forward pass (bfloat16, gradients, the second odd size, and the bfloat16
# abstract check of the full-size models) compile for minutes in all on 2 CPU cores, so
# they run under `pytest -m slow`; the fast suite keeps a jitted forward of each tiny one
# and the float32 abstract check of every model.
_LATER_FAMILIES = ("attention", "bisenet", "context", "enet", "hrnet", "lraspp", "ocrnet")
_LATER_FAMILIES += ("panoptic_deeplab",)  # its own tests: tests/tasks/test_panoptic.py
_LATER_FAMILIES += ("crfrnn", "reseg", "lstm2d")
LATER = {
    name
    for family in _LATER_FAMILIES
    for name in importlib.import_module(f"segjax.models.{family}").MODELS
}


def _slow_if_later(names):
    """`names` as pytest params, those of the later families marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in LATER else n for n in names]


def _kwargs(name: str, aux: bool) -> dict:
    return {"aux_head": True} if aux and name != "pixel_mlp" else {}


def _init(model: Segmentor, shape, seed: int = 0):
    return jax.jit(lambda x: model.init(rbg_key(seed), x, train=False))(jnp.zeros(shape))


@functools.cache
def _tiny(name: str) -> tuple[Segmentor, dict]:
    """A tiny model (with its aux head when it has one) and its variables, built once.

    Parameter shapes do not depend on the input size, so one init serves every test; a jit
    init costs seconds of compile on CPU, a forward far less.
    """
    model = build_model(name, num_classes=NUM_CLASSES, **_kwargs(name, True))
    return model, _init(model, (2, 33, 47, 3))


def _images(shape, seed: int = 1) -> jax.Array:
    return jax.random.normal(rbg_key(seed), shape)


def test_required_models_are_registered():
    assert set(MODELS) >= REQUIRED


@pytest.mark.parametrize(
    "name, dtype",
    [(n, jnp.float32) for n in ALL]
    + [
        pytest.param(n, jnp.bfloat16, marks=pytest.mark.slow) if n in LATER else (n, jnp.bfloat16)
        for n in ALL
    ],
)
def test_abstract_contract(name, dtype):
    """Every model, abstractly: collections, float32 params, float32 logits at input size."""
    model = build_model(name, num_classes=NUM_CLASSES, dtype=dtype, **_kwargs(name, True))
    shape = (2, 33, 47, 3)
    variables = abstract_variables(model, shape)
    assert set(variables) == {"params", "batch_stats"}
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, jax.ShapeDtypeStruct(shape, dtype)
    )
    expected = {"logits", "aux_logits"} if name != "pixel_mlp" else {"logits"}
    assert set(out) - EXTRA_OUTPUTS == expected
    for v in _pixel_outputs(out):
        assert v.shape == (2, 33, 47, NUM_CLASSES)
        assert v.dtype == jnp.float32


@pytest.mark.parametrize(
    "name, size",
    [(n, (33, 47)) for n in TINY]
    + [
        pytest.param(n, (97, 131), marks=pytest.mark.slow) if n in LATER else (n, (97, 131))
        for n in TINY
    ],
)
def test_forward_odd_sizes(name, size):
    model, variables = _tiny(name)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _images((2, *size, 3)))
    for v in _pixel_outputs(out):
        assert v.shape == (2, *size, NUM_CLASSES)
        assert v.dtype == jnp.float32
        assert np.isfinite(np.asarray(v)).all()


@pytest.mark.parametrize("name", _slow_if_later(TINY))
def test_bfloat16_compute_float32_outputs(name):
    """bf16 compute: params and stats stay float32, logits come out float32, close to fp32."""
    shape = (2, 33, 47, 3)
    model32, variables = _tiny(name)
    model16 = build_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16, **_kwargs(name, True))
    x = _images(shape)
    forward = jax.jit(lambda v, x: model16.apply(v, x, train=False)["logits"])
    out16 = forward(variables, x)
    out32 = jax.jit(lambda v, x: model32.apply(v, x, train=False)["logits"])(variables, x)
    assert out16.dtype == jnp.float32
    # Same parameters, so bf16 and fp32 logits agree to bf16 precision.
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.abs(out32).max()) + 1e-3)


@pytest.mark.parametrize("name", _slow_if_later(TINY))
def test_every_parameter_gets_a_gradient(name):
    """Train mode, random labels, mean cross-entropy (+ aux): no dead parameter."""
    model, variables = _tiny(name)
    # Batch 2: ASPP's image-pooling BN normalises one value per image and needs two.
    shape = (2, 33, 47, 3)
    labels = jax.random.randint(rbg_key(2), shape[:3], 0, NUM_CLASSES)

    def loss_fn(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            _images(shape),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rbg_key(3)},
        )
        loss = sum(
            optax.softmax_cross_entropy_with_integer_labels(v, labels).mean()
            for v in _pixel_outputs(out)
        )
        if "se_logits" in out:  # EncNet's "which classes are present" logits [B, K]
            present = jax.nn.one_hot(labels, NUM_CLASSES).max(axis=(1, 2))
            loss = loss + optax.sigmoid_binary_cross_entropy(out["se_logits"], present).mean()
        return loss

    grads = jax.jit(jax.grad(loss_fn))(variables["params"])
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters with an all-zero gradient: {dead}"


def test_jitted_forward_does_not_recompile():
    model, variables = _tiny("deeplabv3plus_tiny")
    shape = (2, 33, 47, 3)
    traces = []

    @jax.jit
    def forward(v, x):
        traces.append(1)  # Runs once per trace, never on a cached call.
        return model.apply(v, x, train=False)["logits"]

    forward(variables, _images(shape, 1)).block_until_ready()
    forward(variables, _images(shape, 2)).block_until_ready()
    assert len(traces) == 1
    assert forward._cache_size() == 1


def test_train_updates_batch_stats_and_eval_is_deterministic():
    model, variables = _tiny("deeplabv3plus_tiny")
    x = _images((2, 33, 47, 3))

    @jax.jit
    def train_apply(rng):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})

    out_a, updates = train_apply(rbg_key(0))
    out_b, _ = train_apply(rbg_key(1))
    changed = jax.tree.map(
        lambda old, new: bool(np.any(np.asarray(old) != np.asarray(new))),
        variables["batch_stats"],
        updates["batch_stats"],
    )
    assert all(jax.tree.leaves(changed)), "every running statistic moves in train mode"
    # Dropout is on in train mode: a different rng gives different logits.
    assert not np.allclose(out_a["logits"], out_b["logits"])
    # Eval mode: no rng needed, nothing mutable, bit-identical repeats.
    eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    eval_a = eval_apply(variables, x)
    eval_b = eval_apply(variables, x)
    np.testing.assert_array_equal(eval_a, eval_b)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_feature_sizes(output_stride):
    """Nominal keys stay; spatial stride is min(nominal, output_stride), size ceil(n / s)."""
    model = build_model("deeplabv3plus_tiny", num_classes=NUM_CLASSES, output_stride=output_stride)
    backbone = model.backbone
    assert backbone.feature_strides() == {
        "s4": 4,
        "s8": 8,
        "s16": min(16, output_stride),
        "s32": min(32, output_stride),
    }
    h, w = 33, 47
    x = jnp.zeros((1, h, w, 3))
    feats = jax.eval_shape(
        lambda x: backbone.apply(backbone.init(rbg_key(0), x, train=False), x, train=False),
        x,
    )
    channels = backbone.feature_channels()
    for key, stride in backbone.feature_strides().items():
        assert feats[key].shape == (1, math.ceil(h / stride), math.ceil(w / stride), channels[key])
    # The logits are still at input size.
    logits = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), abstract_variables(model, x.shape), x
    )
    assert logits["logits"].shape == (1, h, w, NUM_CLASSES)


def test_output_stride_does_not_change_parameters():
    """Strides become dilation: the same weights run at every output stride."""
    shape = (2, 33, 47, 3)
    m16, variables = _tiny("deeplabv3plus_tiny")
    assert m16.backbone.output_stride == 16
    m8 = build_model("deeplabv3plus_tiny", num_classes=NUM_CLASSES, output_stride=8, aux_head=True)
    shapes8 = jax.tree.map(lambda a: a.shape, abstract_variables(m8, shape))
    assert jax.tree.map(lambda a: a.shape, variables) == shapes8
    out8 = jax.jit(lambda v, x: m8.apply(v, x, train=False))(variables, _images(shape))
    assert out8["logits"].shape == (2, 33, 47, NUM_CLASSES)


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        build_model("deeplabv9", num_classes=3)
    message = str(err.value)
    assert "deeplabv9" in message
    assert ", ".join(sorted(MODELS)) in message
    with pytest.raises(ValueError):  # UnknownModelError is both.
        build_model("deeplabv9", num_classes=3)
    assert issubclass(UnknownModelError, KeyError)


@pytest.mark.parametrize("name", ALL)
def test_unknown_kwarg_is_named(name):
    with pytest.raises(TypeError, match="not_an_option"):
        build_model(name, num_classes=3, not_an_option=1)


def test_pixel_mlp_options():
    # output_stride is accepted (one config switches between models) and changes nothing.
    assert build_model("pixel_mlp", num_classes=3, output_stride=16) == build_model(
        "pixel_mlp", num_classes=3
    )
    with pytest.raises(ValueError, match="auxiliary"):
        build_model("pixel_mlp", num_classes=3, aux_head=True)


def test_pixel_mlp_sees_one_pixel_only():
    """Changing one pixel changes that pixel's logits and no other (eval mode)."""
    model, variables = _tiny("pixel_mlp")
    x = _images((1, 9, 11, 3))
    y = x.at[0, 4, 5].add(3.0)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    diff = np.abs(np.asarray(forward(variables, x)) - np.asarray(forward(variables, y))).sum(-1)[0]
    assert diff[4, 5] > 0
    diff[4, 5] = 0
    assert not diff.any()


@pytest.mark.parametrize(
    ("name", "aux", "expected"),
    [
        # torchvision: deeplabv3_resnet50(num_classes=21, aux_loss=True) "num_params" is
        # 42,004,074 (DeepLabV3_ResNet50_Weights meta). Without the aux head it is that minus
        # FCNHead(1024, 21) = 3*3*1024*256 + 2*256 + 256*21 + 21 = 2,365,205, i.e. 39,638,869:
        # trunk 23,508,032 + ASPP 15,535,104 + 3x3 conv 589,824 + BN 512 + classifier 5,397.
        # (The brief's 39,633,493 is 5,376 = 256 * 21 short: the classifier's weights.)
        ("deeplabv3_resnet50", False, 39_638_869),
        ("deeplabv3_resnet50", True, 42_004_074),
        # torchvision deeplabv3_resnet101(aux_loss=True): 60,996,202.
        ("deeplabv3_resnet101", True, 60_996_202),
        ("deeplabv3_resnet101", False, 60_996_202 - 2_365_205),
    ],
)
def test_parameter_count_matches_torchvision(name, aux, expected):
    model = build_model(name, num_classes=21, aux_head=aux)
    assert param_count(abstract_variables(model, (1, 65, 65, 3))) == expected


def test_resize_bilinear_uses_half_pixel_centres():
    """Independent reference: PyTorch align_corners=False upsamples [0, 1] to these values."""
    x = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    y = resize_bilinear(x, (1, 4))
    np.testing.assert_allclose(y.reshape(-1), [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_sharded_batch_gives_global_batch_statistics():
    """Under jit with the batch sharded on a Mesh, BN statistics equal the unsharded ones."""
    devices = np.array(jax.devices()[:8])
    if devices.size < 2:
        pytest.skip("needs several devices")
    model, variables = _tiny("deeplabv3plus_tiny")
    x = _images((devices.size, 33, 47, 3))

    def stats(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rbg_key(0)})[
            1
        ]

    mesh = Mesh(devices, ("data",))
    x_sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    sharded = jax.jit(stats)(variables, x_sharded)
    reference = jax.jit(stats)(variables, x)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), sharded, reference
    )


def test_cli_lists_every_model(capsys):
    main(["--size", "33", "47", "pixel_mlp", "deeplabv3plus_tiny", "--flops"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["pixel_mlp", "deeplabv3plus_tiny"]
    assert "5,909 params" in lines[0]  # 21 classes: 3*64+64 + 64*64+64 + 2*(64+64) + 64*21+21
    assert "389,341 params" in lines[1]
    assert "GFLOPs" in lines[1]
