"""Panoptic FPN: the parameter count against detectron2's layout, the tiny model's outputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from segjax.models.mask_rcnn import LOSS_TERMS
from segjax.models.panoptic_fpn import PANOPTIC_FPN_MODELS, PanopticFPN, build_panoptic_fpn
from tests.models.rng import rbg_key


def _params(name, num_things, num_stuff, size=128, collection="params"):
    # The model and its abstract params (all variables with collection=None).
    model = build_panoptic_fpn(name, num_things=num_things, num_stuff=num_stuff)
    shapes = jax.eval_shape(
        lambda: model.init(
            rbg_key(0), jnp.zeros((1, size, size, 3)), method=PanopticFPN.create_variables
        )
    )
    return model, shapes if collection is None else shapes[collection]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def _detectron2_panoptic_fpn_r50(things=80, stuff=53):
    # sum(p.numel() for p in model.parameters()) of detectron2's panoptic_fpn_R_50
    # (configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml over Base-RCNN-FPN.yaml,
    # detectron2/modeling/{backbone/resnet.py, backbone/fpn.py,
    # proposal_generator/rpn.py, roi_heads/*, meta_arch/semantic_seg.py}), layer by layer:
    # ResNet-50 with FrozenBN (its weight and bias are buffers, not parameters), convs
    # without bias.
    resnet = _conv(7, 3, 64, False)
    for cin, mid, cout, blocks in ((64, 64, 256, 3), (256, 128, 512, 4), (512, 256, 1024, 6),
                                   (1024, 512, 2048, 3)):  # fmt: skip
        for b in range(blocks):
            c = cin if b == 0 else cout
            resnet += (
                _conv(1, c, mid, False) + _conv(3, mid, mid, False) + _conv(1, mid, cout, False)
            )
            resnet += _conv(1, c, cout, False) if b == 0 else 0  # the projection shortcut
    # FPN (NORM ""): 1x1 lateral and 3x3 output convs with bias; LastLevelMaxPool: none.
    fpn = sum(_conv(1, c, 256, True) + _conv(3, 256, 256, True) for c in (256, 512, 1024, 2048))
    # StandardRPNHead: 3x3 conv, objectness (3 anchors), deltas (4 x 3).
    rpn = _conv(3, 256, 256, True) + _conv(1, 256, 3, True) + _conv(1, 256, 12, True)
    # FastRCNNConvFCHead (2 FC of 1024 on 256 x 7 x 7) + FastRCNNOutputLayers (81 scores,
    # class-specific boxes for the 80 thing classes only: 320).
    box = (256 * 49 * 1024 + 1024) + (1024 * 1024 + 1024)
    box += (1024 * (things + 1) + things + 1) + (1024 * 4 * things + 4 * things)
    # MaskRCNNConvUpsampleHead: four 3x3 convs, a 2x2 deconv, a 1x1 predictor (80 masks).
    mask = 4 * _conv(3, 256, 256, True) + _conv(2, 256, 256, True) + _conv(1, 256, things, True)
    # SemSegFPNHead (CONVS_DIM 128, NORM "GN": convs without bias): 1, 1, 2, 3 convs for
    # P2-P5 (the first of each level from 256 channels), 7 GroupNorms, the 1x1 predictor
    # to 53 stuff + 1 thing classes.
    heads = [max(1, int(math.log2(s) - 2)) for s in (4, 8, 16, 32)]
    sem = 4 * _conv(3, 256, 128, False) + (sum(heads) - 4) * _conv(3, 128, 128, False)
    sem += sum(heads) * 2 * 128 + _conv(1, 128, stuff + 1, True)
    return resnet + fpn + rpn + box + mask + sem


def test_panoptic_fpn_r50_parameter_count_against_detectron2():
    # detectron2 counts 45,973,990. Ours differs by: the backbone's BatchNorm scale and
    # bias, which are parameters here (Flax BatchNorm; FrozenBN buffers there), 53,120;
    # torchvision's box and mask predictors, which also have outputs for the background
    # class: class-specific box deltas 4 x 81 instead of 4 x 80 (+4 x 1,025) and 81 mask
    # channels instead of 80 (+257).
    reference = _detectron2_panoptic_fpn_r50()
    assert reference == 45_973_990
    _model, params = _params("panoptic_fpn_r50", 80, 53)
    assert _count(params["instance"]["backbone"]) - 23_454_912 == 53_120  # convs + BN
    assert _count(params) == reference + 53_120 + 4 * 1025 + 257


def test_tiny_model_outputs_and_semantic_head_layout():
    model, variables = _params("panoptic_fpn_tiny", 5, 3, size=64, collection=None)
    sem = flatten_dict(variables["params"]["semantic_head"])
    convs = sorted(k[0] for k in sem if k[1] == "kernel" and k[0] != "predictor")
    assert convs == ["p2_0_conv", "p3_0_conv", "p4_0_conv", "p4_1_conv", "p5_0_conv",
                     "p5_1_conv", "p5_2_conv"]  # fmt: skip
    assert sem[("predictor", "kernel")].shape == (1, 1, 32, 4)  # 3 stuff + "thing"
    assert ("p5_2_conv", "bias") not in sem and sem[("p5_2_norm", "scale")].shape == (32,)
    images = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    d = model.instance.detections_per_img
    assert {k: v.shape for k, v in out.items()} == {
        "boxes": (2, d, 4),
        "scores": (2, d),
        "classes": (2, d),
        "masks": (2, d, 28, 28),
        "valid": (2, d),
        "semantic_logits": (2, 64, 96, 4),
    }
    assert model.instance.num_classes == 6  # 5 things + background


@pytest.mark.slow  # traces the training graph (~30 s on 2 loaded cores)
def test_tiny_model_training_outputs():
    model, variables = _params("panoptic_fpn_tiny", 5, 3, size=64, collection=None)
    images = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
    g = 3
    targets = {
        "boxes": jax.ShapeDtypeStruct((2, g, 4), jnp.float32),
        "classes": jax.ShapeDtypeStruct((2, g), jnp.int32),
        "masks": jax.ShapeDtypeStruct((2, g, 64, 96), jnp.uint8),
        "valid": jax.ShapeDtypeStruct((2, g), jnp.bool_),
    }
    train_out, _ = jax.eval_shape(
        lambda v, x, t: model.apply(
            v, x, None, t, train=True, rngs={"sample": rbg_key(1)}, mutable=["batch_stats"]
        ),
        variables,
        images,
        targets,
    )
    assert set(train_out) == {*LOSS_TERMS, "semantic_logits"}
    assert all(train_out[k].shape == () for k in LOSS_TERMS)


def test_registry_errors():
    assert sorted(PANOPTIC_FPN_MODELS) == ["panoptic_fpn_r50", "panoptic_fpn_tiny"]
    with pytest.raises(KeyError, match="unknown Panoptic FPN model 'panoptic_fpn_x'"):
        build_panoptic_fpn("panoptic_fpn_x", num_things=1, num_stuff=1)
    with pytest.raises(TypeError, match="no_such"):
        build_panoptic_fpn("panoptic_fpn_tiny", num_things=1, num_stuff=1, no_such=1)
    with pytest.raises(ValueError, match=">= 1 thing"):
        build_panoptic_fpn("panoptic_fpn_tiny", num_things=0, num_stuff=2)
