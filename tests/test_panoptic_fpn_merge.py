"""Panoptic FPN's merge of instances and semantics against a loop version of detectron2's
`combine_semantic_and_instance_outputs` written here, its mask pasting against the host
paste, and its one-program guarantee."""

import jax
import numpy as np
import pytest

from segjax.detection import coco
from segjax.panoptic_inference import combine_semantic_and_instances, paste_masks

# Dataset classes: 0 stuff, 1 thing, 2 stuff, 3 thing, 4 thing. Semantic head: 0 = any
# thing, 1 = class 0, 2 = class 2. Instance classes: 1 = class 1, 2 = class 3, 3 = class 4.
THINGS = np.array([False, True, False, True, True])
STUFF_OF = {1: 0, 2: 2}
THING_OF = {1: 1, 2: 3, 3: 4}
OPTIONS = dict(score_threshold=0.5, overlap_threshold=0.5, stuff_area=6, mask_threshold=0.5)


def _reference(sem_logits, det, *, score_threshold, overlap_threshold, stuff_area, mask_threshold):
    # detectron2 panoptic_fpn.combine_semantic_and_instance_outputs, one image, in loops;
    # masks pasted on the host (segjax.detection.coco.paste_masks), not by the code tested.
    h, w = sem_logits.shape[:2]
    semantic = sem_logits.argmax(-1)
    masks = coco.paste_masks(det["masks"], det["boxes"], h, w) >= mask_threshold
    scores = np.where(det["valid"], det["scores"], -np.inf)
    seg = np.zeros((h, w), int)
    cls = np.full((h, w), -1)
    current = 0
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if scores[i] < score_threshold:
            break
        mask = masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        intersect = int((mask & (seg > 0)).sum())
        if intersect / area > overlap_threshold:
            continue
        if intersect > 0:
            mask = mask & (seg == 0)
        current += 1
        seg[mask] = current
        cls[mask] = THING_OF[int(det["classes"][i])]
    for label in np.unique(semantic):
        if label == 0:  # the "thing" class
            continue
        mask = (semantic == label) & (seg == 0)
        if mask.sum() < stuff_area:
            continue
        cls[mask] = STUFF_OF[int(label)]
    return cls, seg


@pytest.fixture(scope="module")
def merge():
    return jax.jit(
        lambda sem, det: combine_semantic_and_instances(sem, det, thing_classes=THINGS, **OPTIONS)
    )


def _random_inputs(rng, b=3, h=20, w=23, d=7, m=6):
    sem = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    sem[..., 2] -= 1.0  # a rarer stuff class: sometimes under stuff_area once things are in
    xy = rng.uniform(-3, 16, (b, d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 12, (b, d, 2))], -1).astype(np.float32)
    return sem, {
        "boxes": boxes,
        "scores": rng.uniform(0.2, 1.0, (b, d)).astype(np.float32),
        "classes": rng.integers(1, 4, (b, d)).astype(np.int32),
        "masks": rng.random((b, d, m, m)).astype(np.float32),
        "valid": rng.random((b, d)) < 0.85,
    }


def _image(det, i):
    return {k: v[i] for k, v in det.items()}


def test_paste_matches_the_host_paste():
    rng = np.random.default_rng(0)
    masks = rng.random((12, 28, 28)).astype(np.float32)
    xy = rng.uniform(-10, 60, (12, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.3, 40, (12, 2))], -1).astype(np.float32)
    got = jax.jit(paste_masks, static_argnums=(2, 3))(masks, boxes, 50, 70)
    np.testing.assert_allclose(got, coco.paste_masks(masks, boxes, 50, 70), atol=1e-5)


def test_random_inputs_match_the_reference(merge):
    rng = np.random.default_rng(0)
    kept = overlapped = 0
    for _ in range(3):
        sem, det = _random_inputs(rng)
        out = jax.device_get(merge(sem, det))
        for i in range(sem.shape[0]):
            cls, seg = _reference(sem[i], _image(det, i), **OPTIONS)
            np.testing.assert_array_equal(out["class"][i], cls)
            np.testing.assert_array_equal(out["instance"][i], seg)
            kept += seg.max()
            overlapped += int((det["valid"][i] & (det["scores"][i] >= 0.5)).sum()) - seg.max()
    assert kept > 10 and overlapped > 0  # both branches of the overlap rule were taken
    assert merge._cache_size() == 1  # new values, same shapes: no new program


def test_hand_built_overlap_score_and_stuff_area(merge):
    h, w = 12, 16
    sem = np.zeros((1, h, w, 3), np.float32)
    sem[..., 1] = 1.0  # stuff class 0 everywhere ...
    sem[0, 0, :5, 2] = 2.0  # ... but 5 pixels of class 2: under stuff_area (6) -> void
    sem[0, 6:, 12:, 0] = 3.0  # a "thing" semantic region no instance covers: void
    full = np.ones((4, 4, 4), np.float32)  # box-filling masks
    det = {
        # A (best), B overlapping A by 1/2 of B (kept, A's pixels stay A's), C inside A
        # (overlap 1 > 0.5: dropped), D scoring under the threshold, E not valid.
        "boxes": np.array(
            [[[2, 2, 6, 6], [5, 2, 9, 6], [3, 3, 5, 5], [9, 1, 11, 3], [9, 8, 11, 10]]],
            np.float32,
        ),
        "scores": np.array([[0.9, 0.8, 0.7, 0.3, 0.95]], np.float32),
        "classes": np.array([[1, 2, 3, 1, 1]], np.int32),
        "masks": np.concatenate([full, full[:1]])[None],
        "valid": np.array([[True, True, True, True, False]]),
    }
    out = jax.device_get(merge(sem, det))
    cls, ins = out["class"][0], out["instance"][0]
    ref_cls, ref_ins = _reference(sem[0], _image(det, 0), **OPTIONS)
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_array_equal(ins, ref_ins)
    # The paste (box grown by (M + 2) / M = 1.5, truncated) covers rows/cols 1..6 for A.
    a = coco.paste_masks(full[:1], det["boxes"][0, :1], h, w)[0] >= 0.5
    assert (ins[a] == 1).all() and (cls[a] == 1).all()
    assert set(np.unique(ins).tolist()) == {0, 1, 2}  # C, D, E made no segment
    assert (cls[ins == 2] == 3).all() and (ins == 2).sum() > 0
    assert (cls[0, :5] == -1).all() and (cls[6:, 12:] == -1).all()
    assert (cls[(ins == 0) & (cls >= 0)] == 0).all()


def test_image_region_on_a_padded_canvas():
    rng = np.random.default_rng(1)
    sem, det = _random_inputs(rng, b=2)
    hw = np.array([[14, 15], [20, 23]])
    out = jax.device_get(
        jax.jit(
            lambda s, d, r: combine_semantic_and_instances(
                s, d, thing_classes=THINGS, image_hw=r, **OPTIONS
            )
        )(sem, det, hw)
    )
    assert (out["class"][0, 14:] == -1).all() and (out["class"][0, :, 15:] == -1).all()
    assert (out["instance"][0, 14:] == 0).all()
    cls, seg = _reference(sem[1], _image(det, 1), **OPTIONS)
    np.testing.assert_array_equal(out["class"][1], cls)
    np.testing.assert_array_equal(out["instance"][1], seg)


def test_class_count_mismatch_is_an_error():
    sem, det = _random_inputs(np.random.default_rng(2), b=1)
    with pytest.raises(ValueError, match="3 semantic classes for 3 stuff classes"):
        combine_semantic_and_instances(sem, det, thing_classes=[False, False, False, True])
