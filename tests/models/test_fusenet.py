"""FuseNet (segjax.models.fusenet): parameter count, contract, and fusion by summation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model
from segjax.models.__main__ import abstract_variables, main, param_count
from segjax.models.registry import MODELS, RGBD_MODELS
from tests.models.gradients import dead_parameters, train_gradients
from tests.models.rng import rbg_key


def _conv_bn(cin: int, cout: int) -> int:
    # 3x3 conv with bias + BatchNorm's scale and bias (running statistics are not params).
    return 9 * cin * cout + cout + 2 * cout


def test_parameter_count_matches_the_reference_layer_list():
    """FuseNet-SF5 on NYUDv2's 40 classes, counted from the PyTorch port's layers.

    github.com/MehmetAygun/fusenet-pytorch, models/networks.py (FusenetGenerator): two
    VGG-16-BN encoders (the depth one's conv1_1 takes 1 channel), the decoder
    CBR5 [512->512 x3], CBR4 [512->512, 512->512, 512->256], CBR3 [256->256 x2,
    256->128], CBR2 [128->128, 128->64], CBR1 [64->64 + BN, then 3x3 64->K, no BN].
    """
    k = 40
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    vgg += [(256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    rgb_encoder = sum(_conv_bn(a, b) for a, b in vgg)
    depth_encoder = sum(_conv_bn(a, b) for a, b in [(1, 64), *vgg[1:]])
    decoder = [(512, 512)] * 3 + [(512, 512), (512, 512), (512, 256)]
    decoder += [(256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64)]
    total = rgb_encoder + depth_encoder + sum(_conv_bn(a, b) for a, b in decoder)
    total += 9 * 64 * k + k  # the classifier
    assert total == 44_188_072
    model = build_model("fusenet", num_classes=k)
    assert param_count(abstract_variables(model, (1, 65, 65, 4))) == total
    # Against SegNet (tests/models/test_zoo_fcn_segnet.py pins it to the paper): FuseNet
    # adds exactly a depth encoder.
    segnet = build_model("segnet_vgg16", num_classes=k)
    assert total - param_count(abstract_variables(segnet, (1, 65, 65, 3))) == depth_encoder


def test_registered_apart_from_rgb_models(capsys):
    assert {"fusenet", "fusenet_tiny"} <= set(RGBD_MODELS)
    assert not set(RGBD_MODELS) & set(MODELS)
    with pytest.raises(ValueError, match="RGB-D images"):
        abstract_variables(build_model("fusenet_tiny", num_classes=3), (1, 32, 32, 3))
    with pytest.raises(ValueError, match="output_stride"):
        build_model("fusenet_tiny", num_classes=3, output_stride=8)
    main(["--num-classes", "40", "fusenet"])  # `python -m segjax.models`: a 4-band input
    assert capsys.readouterr().out.split() == ["fusenet", "44,188,072", "params"]


def test_tiny_contract_odd_sizes_and_gradients():
    k = 5
    model = build_model("fusenet_tiny", num_classes=k, aux_head=True)
    x = jax.random.normal(rbg_key(1), (2, 17, 23, 4))  # odd: ceil pools, crops
    variables = jax.jit(lambda x: model.init(rbg_key(0), x, train=False))(x)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = forward(variables, x)
    assert set(out) == {"logits", "aux_logits"}
    for v in out.values():
        assert v.shape == (2, 17, 23, k) and v.dtype == jnp.float32
        assert np.isfinite(np.asarray(v)).all()
    # Depth is an input: another depth band changes the logits.
    moved = x.at[..., 3].add(1.0)
    assert not np.allclose(forward(variables, x)["logits"], forward(variables, moved)["logits"])

    labels = jax.random.randint(rbg_key(3), (2, 17, 23), 0, k)

    grads, _ = train_gradients(model, variables, x, labels)
    dead = dead_parameters(grads)
    assert not dead, f"parameters with an all-zero gradient: {dead}"


@pytest.mark.slow
def test_zero_depth_stream_is_segnet_on_rgb():
    """Fusion is a sum: with a depth encoder that outputs zeros, FuseNet is SegNet on RGB.

    The depth encoder's kernels, biases and BN offsets are zeroed, so each depth stage
    gives relu(0) = 0 in eval mode; the RGB encoder and decoder parameters are copied into
    a SegNet of the same widths, which must give the same logits.
    """
    k = 4
    fusenet = build_model("fusenet_tiny", num_classes=k)
    segnet = build_model("segnet_tiny", num_classes=k)
    x = jax.random.normal(rbg_key(5), (1, 19, 21, 4))
    v = jax.jit(lambda x: fusenet.init(rbg_key(0), x, train=False))(x)
    params = {
        name: (jax.tree.map(jnp.zeros_like, p) if name.startswith("depth_") else p)
        for name, p in v["params"].items()
    }
    # Non-zero BN statistics in the RGB stream and decoder, so that they are checked to
    # carry over; the depth stream keeps mean 0, var 1, and with zero offsets gives 0.
    stats = {
        n: (s if n.startswith("depth_") else jax.tree.map(lambda a: a + 0.1, s))
        for n, s in v["batch_stats"].items()
    }

    def segnet_tree(tree):
        out = {"encoder": {}}
        for name, p in tree.items():
            if name.startswith("rgb_"):
                out["encoder"][name.removeprefix("rgb_")] = p
            elif name.startswith("dec_"):
                out[name.removeprefix("dec_") + "_D"] = p  # one conv per tiny stage
        return out

    fused = jax.jit(lambda v, x: fusenet.apply(v, x, train=False)["logits"])(
        {"params": params, "batch_stats": stats}, x
    )
    plain = jax.jit(lambda v, x: segnet.apply(v, x, train=False)["logits"])(
        {"params": segnet_tree(params), "batch_stats": segnet_tree(stats)}, x[..., :3]
    )
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)
