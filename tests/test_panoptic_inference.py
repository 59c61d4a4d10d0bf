"""Panoptic-DeepLab's post-processing against a loop version of the reference written here,
and its one-program guarantee."""

import jax
import numpy as np
import pytest

from segjax.panoptic_inference import panoptic_postprocess

THINGS = np.array([False, False, True, True])  # 2 stuff, 2 thing classes
OPTIONS = dict(center_threshold=0.1, nms_kernel=3, top_k=6, stuff_area=5)


def _reference(logits, heat, offset, *, center_threshold, nms_kernel, top_k, stuff_area):
    # bowenc0221/panoptic-deeplab's post-processing, one image, as loops over pixels and
    # over instance ids (torch.unique / torch.mode written out).
    h, w, k = logits.shape
    sem = logits.argmax(-1)
    r = nms_kernel // 2
    candidates = []
    for y in range(h):
        for x in range(w):
            window = heat[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if heat[y, x] > center_threshold and heat[y, x] == window.max():
                candidates.append((heat[y, x], y, x))
    centers = [(y, x) for _, y, x in sorted(candidates, reverse=True)[:top_k]]
    ins = np.zeros((h, w), int)
    for y in range(h):
        for x in range(w):
            if THINGS[sem[y, x]] and centers:
                ty, tx = y + offset[y, x, 0], x + offset[y, x, 1]
                d = [(ty - cy) ** 2 + (tx - cx) ** 2 for cy, cx in centers]
                ins[y, x] = int(np.argmin(d)) + 1
    pan_cls, pan_ins = np.full((h, w), -1), np.zeros((h, w), int)
    for n in sorted(set(ins.ravel().tolist()) - {0}):
        classes = [int(sem[y, x]) for y in range(h) for x in range(w) if ins[y, x] == n]
        counts = {c: classes.count(c) for c in classes}
        best = max(counts.values())
        mode = min(c for c, v in counts.items() if v == best)  # torch.mode: the smallest
        pan_cls[ins == n], pan_ins[ins == n] = mode, n
    for c in range(k):
        if not THINGS[c] and (sem == c).sum() >= stuff_area:
            pan_cls[sem == c] = c
    return pan_cls, pan_ins


def _same_partition(got_cls, got_ins, ref_cls, ref_ins):
    np.testing.assert_array_equal(got_cls, ref_cls)
    pairs = set(zip(got_ins.ravel().tolist(), ref_ins.ravel().tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.fixture(scope="module")
def postprocess():
    return jax.jit(lambda lg, c, o: panoptic_postprocess(lg, c, o, thing_classes=THINGS, **OPTIONS))


def _random_inputs(rng, b=3, h=14, w=17):
    logits = rng.normal(size=(b, h, w, 4)).astype(np.float32)
    logits[:, 3:10, 4:12, 2] += 2.0  # a thing region, mostly class 2
    logits[..., 1] -= 1.5  # a rare stuff class: often under stuff_area
    heat = rng.random((b, h, w)).astype(np.float32) ** 4
    offset = rng.normal(scale=3.0, size=(b, h, w, 2)).astype(np.float32)
    return logits, heat, offset


def test_random_inputs_match_the_reference(postprocess):
    rng = np.random.default_rng(0)
    for _ in range(2):
        logits, heat, offset = _random_inputs(rng)
        out = jax.device_get(postprocess(logits, heat, offset))
        for i in range(logits.shape[0]):
            ref = _reference(logits[i], heat[i], offset[i], **OPTIONS)
            _same_partition(out["class"][i], out["instance"][i], *ref)
        assert (out["instance"] > 0).any() and (out["class"] == -1).any()
    assert postprocess._cache_size() == 1  # new values, same shapes: no new program


def test_hand_built_grouping_vote_and_stuff_area(postprocess):
    h, w = 14, 17
    logits = np.zeros((1, h, w, 4), np.float32)
    logits[..., 0] = 1.0  # stuff 0 everywhere ...
    logits[0, 0, :4, 1] = 2.0  # ... but 4 pixels of stuff 1: under stuff_area (5) -> void
    logits[0, 2:8, 2:8, 2] = 3.0  # object A: class 2 ...
    logits[0, 2:4, 2:8, 3] = 4.0  # ... with 12 of its 36 pixels voting class 3
    logits[0, 9:13, 10:15, 3] = 5.0  # object B: class 3
    heat = np.zeros((1, h, w), np.float32)
    heat[0, 5, 5], heat[0, 5, 6] = 0.9, 0.8  # A's peak and a neighbour the NMS removes
    heat[0, 11, 12] = 0.7  # B
    heat[0, 0, 16] = 0.05  # below the threshold
    yy, xx = np.mgrid[0:h, 0:w]
    offset = np.zeros((1, h, w, 2), np.float32)
    in_b = (yy >= 9) & (xx >= 10)
    offset[0, ..., 0] = np.where(in_b, 11 - yy, 5 - yy)
    offset[0, ..., 1] = np.where(in_b, 12 - xx, 5 - xx)
    out = jax.device_get(postprocess(logits, heat, offset))
    cls, ins = out["class"][0], out["instance"][0]
    a, b = ins[5, 5], ins[11, 12]
    assert a > 0 and b > 0 and a != b
    assert set(np.unique(ins).tolist()) == {0, a, b}  # the neighbour peak made no instance
    assert (cls[2:8, 2:8] == 2).all() and (ins[2:8, 2:8] == a).all()  # majority: class 2
    assert (cls[9:13, 10:15] == 3).all() and (ins[9:13, 10:15] == b).all()
    assert (cls[0, :4] == -1).all()  # the small stuff region is void
    assert cls[0, 10] == 0 and ins[0, 10] == 0
    # No center at all: thing pixels are void, stuff stays.
    out = jax.device_get(postprocess(logits, np.zeros_like(heat), offset))
    assert (out["class"][0][2:8, 2:8] == -1).all() and out["class"][0][13, 0] == 0


def test_image_region_on_a_padded_canvas():
    rng = np.random.default_rng(1)
    logits, heat, offset = _random_inputs(rng, b=2)
    hw = np.array([[10, 12], [14, 17]])
    out = jax.device_get(
        jax.jit(
            lambda lg, c, o, s: panoptic_postprocess(
                lg, c, o, thing_classes=THINGS, image_hw=s, **OPTIONS
            )
        )(logits, heat, offset, hw)
    )
    assert (out["class"][0, 10:] == -1).all() and (out["class"][0, :, 12:] == -1).all()
    ref = _reference(logits[0, :10, :12], heat[0, :10, :12], offset[0, :10, :12], **OPTIONS)
    _same_partition(out["class"][0, :10, :12], out["instance"][0, :10, :12], *ref)
