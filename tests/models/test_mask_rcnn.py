"""Mask R-CNN / PANet: parameter counts against torchvision, a tiny model's losses,
gradients and detections."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from segjax.models.mask_rcnn import INSTANCE_MODELS, LOSS_TERMS, MaskRCNN, build_instance_model
from tests.models.rng import rbg_key


def _param_count(name, num_classes=91, size=128):
    model = build_instance_model(name, num_classes=num_classes)
    shapes = jax.eval_shape(
        lambda: model.init(
            rbg_key(0), jnp.zeros((1, size, size, 3)), method=MaskRCNN.create_variables
        )
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


def test_maskrcnn_resnet50_fpn_parameter_count_equals_torchvision():
    # torchvision 0.29.1: sum(p.numel() for p in maskrcnn_resnet50_fpn(weights=None,
    # weights_backbone=None, num_classes=91).parameters()) = 44,454,513, with trainable
    # BatchNorm2d in the backbone. With pretrained weights torchvision swaps them for
    # FrozenBatchNorm2d, whose weight and bias are buffers: it then reports 44,401,393
    # parameters + 53,120 BN affine buffers; here those are always parameters (Flax
    # BatchNorm scale/bias; `freeze_backbone_bn` only stops the statistics).
    assert _param_count("maskrcnn_resnet50_fpn") == 44_454_513


@pytest.mark.slow
def test_resnet101_and_panet_parameter_counts():
    # torchvision: MaskRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None,
    # trainable_layers=5), num_classes=91) has 63,341,297 parameters plus 105,344
    # FrozenBatchNorm2d weight/bias buffers (resnet_fpn_backbone's default norm layer).
    assert _param_count("maskrcnn_resnet101_fpn") == 63_341_297 + 105_344
    # PANet = Mask R-CNN + the bottom-up path (3 x (two 3x3 256->256 convs with bias))
    # + three more fc6 (12544 -> 1024) and three more first mask convs (adaptive pooling).
    bottom_up = 3 * 2 * (3 * 3 * 256 * 256 + 256)
    fc6 = 256 * 7 * 7 * 1024 + 1024
    mask_conv = 3 * 3 * 256 * 256 + 256
    assert _param_count("panet_resnet50_fpn") == 44_454_513 + bottom_up + 3 * fc6 + 3 * mask_conv


def _toy_targets(batch=2, g=4, size=64):
    boxes = np.zeros((batch, g, 4), np.float32)
    classes = np.zeros((batch, g), np.int32)
    boxes[0, :2] = [[5, 5, 30, 30], [20, 10, 60, 40]]
    classes[0, :2] = [1, 2]
    boxes[1, :1] = [[10, 30, 50, 63]]
    classes[1, :1] = [3]
    valid = classes > 0
    masks = np.zeros((batch, g, size, size), np.uint8)
    for b, i in zip(*np.nonzero(valid), strict=True):
        x1, y1, x2, y2 = boxes[b, i].astype(int)
        masks[b, i, y1:y2, x1:x2] = 1
    return {
        "boxes": jnp.asarray(boxes),
        "classes": jnp.asarray(classes),
        "masks": jnp.asarray(masks),
        "valid": jnp.asarray(valid),
    }


@pytest.mark.slow  # two compiles of the whole detector (~1 min on 2 loaded cores)
@pytest.mark.parametrize("name", ["maskrcnn_tiny", "panet_tiny"])
def test_tiny_model_losses_gradients_and_detections(name):
    model = build_instance_model(name, num_classes=6)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32)
    init = jax.jit(functools.partial(model.init, method=MaskRCNN.create_variables))
    variables = init(rbg_key(0), images)
    targets = _toy_targets()

    def loss(params, key):
        terms, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            None,
            targets,
            train=True,
            rngs={"sample": key},
            mutable=["batch_stats"],
        )
        return sum(terms.values()), terms

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (total, terms), grads = grad_fn(variables["params"], rbg_key(1))
    assert sorted(terms) == sorted(LOSS_TERMS)
    assert all(np.isfinite(float(v)) and float(v) >= 0 for v in terms.values())
    # Cross-entropy over 6 classes starts near log(6); objectness BCE near log(2).
    assert abs(float(terms["loss_classifier"]) - np.log(6)) < 0.3
    assert abs(float(terms["loss_objectness"]) - np.log(2)) < 0.05
    flat = flatten_dict(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
    dead = [k for k, g in flat.items() if not np.any(np.asarray(g))]
    assert not dead, f"parameters without gradient: {dead}"
    # Another sampling key, other anchors and RoIs: another loss.
    (total2, _), _ = grad_fn(variables["params"], rbg_key(2))
    assert float(total2) != float(total)

    detect = jax.jit(lambda v, x: model.apply(v, x, train=False))
    hw = jnp.asarray([[64, 64], [40, 50]], jnp.int32)
    out = jax.jit(lambda v, x, hw: model.apply(v, x, hw, train=False))(variables, images, hw)
    d = model.detections_per_img
    assert out["boxes"].shape == (2, d, 4) and out["masks"].shape == (2, d, 28, 28)
    boxes, valid, scores = map(np.asarray, (out["boxes"], out["valid"], out["scores"]))
    assert valid.any()
    assert (boxes[1][valid[1]][:, [2, 3]] <= [50, 40]).all()  # clipped to the image
    assert (boxes[..., 2] >= boxes[..., 0]).all()
    for b in range(2):
        s = scores[b][valid[b]]
        assert (np.diff(s) <= 1e-6).all() and (s > model.box_score_thresh).all()
    classes = np.asarray(out["classes"])
    assert ((classes[valid] >= 1) & (classes[valid] < 6)).all()
    masks = np.asarray(out["masks"])
    assert ((masks >= 0) & (masks <= 1)).all()
    del detect


def test_registry_names_and_unknown_arguments():
    assert {"maskrcnn_resnet50_fpn", "maskrcnn_resnet101_fpn", "panet_resnet50_fpn"} <= set(
        INSTANCE_MODELS
    )
    assert build_instance_model("panet_tiny", num_classes=3).panet
    with pytest.raises(KeyError, match="maskrcnn_tiny"):
        build_instance_model("maskrcnn_nope", num_classes=3)
    with pytest.raises(TypeError, match="no_such"):
        build_instance_model("maskrcnn_tiny", num_classes=3, no_such=1)
