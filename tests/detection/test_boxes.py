"""Box coding, IoU, matching, sampling, NMS and anchors against Python references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.detection import anchors, boxes


def _jit(fn, *arrays, **static):
    # One compile per call (eager dispatch would compile every op on its own).
    out = jax.jit(functools.partial(fn, **static))(*map(jnp.asarray, arrays))
    return jax.tree.map(np.asarray, out)


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_encode_decode_round_trip_and_formula():
    rng = np.random.default_rng(0)
    ref, gt = _random_boxes(rng, 50), _random_boxes(rng, 50)
    round_trip = lambda g, r, weights: boxes.decode_boxes(
        boxes.encode_boxes(g, r, weights), r, weights
    )
    for weights in (boxes.RPN_WEIGHTS, boxes.ROI_WEIGHTS):
        back = _jit(round_trip, gt, ref, weights=weights)
        np.testing.assert_allclose(back, gt, rtol=1e-5, atol=1e-3)
    # One box by hand: torchvision's BoxCoder formulas.
    r, g = (0.0, 0.0, 10.0, 20.0), (1.0, 2.0, 13.0, 18.0)
    d = np.asarray(boxes.encode_boxes(jnp.asarray(g), jnp.asarray(r), (10.0, 10.0, 5.0, 5.0)))
    np.testing.assert_allclose(
        d,
        [10 * (7 - 5) / 10, 10 * (10 - 10) / 20, 5 * math.log(12 / 10), 5 * math.log(16 / 20)],
        rtol=1e-6,
    )
    # dw is clipped at log(1000 / 16) before exp.
    huge = boxes.decode_boxes(jnp.asarray([0.0, 0.0, 100.0, 0.0]), jnp.asarray(r), (1, 1, 1, 1))
    np.testing.assert_allclose(huge[2] - huge[0], 10 * 1000 / 16, rtol=1e-5)


def _iou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_box_iou_equals_loop():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 13), _random_boxes(rng, 9)
    b[3] = 0.0  # a padding row: zero area
    np.testing.assert_allclose(_jit(boxes.box_iou, a, b), _iou_loop(a, b), atol=1e-6)


def _greedy_nms(b, s, valid, thr, groups):
    order = sorted((i for i in range(len(s)) if valid[i]), key=lambda i: (-s[i], i))
    kept = []
    for i in order:
        if all(
            groups[i] != groups[k] or _iou_loop(b[i : i + 1], b[k : k + 1])[0, 0] <= thr
            for k in kept
        ):
            kept.append(i)
    return kept


@pytest.mark.parametrize("grouped", [False, True])
def test_nms_equals_greedy_python(grouped):
    rng = np.random.default_rng(2)
    n = 60
    # Clustered boxes so that suppression happens a lot.
    centres = rng.uniform(10, 90, (6, 2))[rng.integers(0, 6, n)] + rng.normal(0, 4, (n, 2))
    wh = rng.uniform(8, 20, (n, 2))
    b = np.concatenate([centres - wh / 2, centres + wh / 2], 1).astype(np.float32)
    s = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)  # rounded: ties
    valid = rng.uniform(size=n) > 0.15
    groups = rng.integers(0, 3, n) if grouped else np.zeros(n, int)
    expected = _greedy_nms(b, s, valid, 0.5, groups)
    fn = jax.jit(
        lambda b, s, v, g: boxes.nms(
            b, s, v, iou_threshold=0.5, max_output=40, groups=g if grouped else None
        )
    )
    idx, kept = fn(jnp.asarray(b), jnp.asarray(s), jnp.asarray(valid), jnp.asarray(groups))
    idx, kept = np.asarray(idx), np.asarray(kept)
    assert idx.shape == (40,)
    got = idx[kept].tolist()
    assert got == expected[:40]
    assert kept.sum() == min(len(expected), 40)
    # Fewer outputs than kept boxes: the best ones; more slots than boxes: padded.
    idx5, kept5 = _jit(
        boxes.nms,
        b,
        s,
        valid,
        iou_threshold=0.5,
        max_output=5,
        groups=jnp.asarray(groups) if grouped else None,
    )
    assert idx5[kept5].tolist() == expected[:5]
    idx_big, kept_big = _jit(
        boxes.nms, b[:4], s[:4], np.ones(4, bool), iou_threshold=0.5, max_output=10
    )
    assert idx_big.shape == (10,) and not kept_big[4:].any()


def _match_loop(q, gt_valid, hi, lo, allow):
    g, n = q.shape
    out = []
    for j in range(n):
        cands = [(q[i, j], i) for i in range(g) if gt_valid[i]]
        if not cands:
            out.append(-1)
            continue
        v, i = max(cands, key=lambda t: (t[0], -t[1]))
        out.append(i if v >= hi else (-1 if v < lo else -2))
    if allow:
        for i in range(g):
            if not gt_valid[i] or q[i].max() <= 0:
                continue
            for j in np.flatnonzero(q[i] == q[i].max()):
                cands = [(q[k, j], k) for k in range(g) if gt_valid[k]]
                out[j] = max(cands, key=lambda t: (t[0], -t[1]))[1]
    return out


@pytest.mark.parametrize("allow", [False, True])
def test_match_equals_loop(allow):
    rng = np.random.default_rng(3)
    gt = _random_boxes(rng, 5)
    preds = _random_boxes(rng, 40)
    preds[:5] = gt + rng.normal(0, 2, gt.shape).astype(np.float32)  # some good matches
    q = _iou_loop(gt, preds).astype(np.float32)
    gt_valid = np.array([True, True, False, True, True])
    match = jax.jit(
        functools.partial(
            boxes.match, high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=allow
        )
    )
    got = match(jnp.asarray(q), jnp.asarray(gt_valid))
    assert np.asarray(got).tolist() == _match_loop(q, gt_valid, 0.7, 0.3, allow)
    assert (np.asarray(match(jnp.asarray(q), jnp.zeros(5, bool))) == -1).all()


def test_sample_balanced_counts_and_membership():
    n = 200
    rng = np.random.default_rng(4)
    label = rng.choice([-1, 0, 1], n, p=[0.2, 0.7, 0.1])
    pos, neg = jnp.asarray(label == 1), jnp.asarray(label == 0)
    sample = jax.jit(boxes.sample_balanced, static_argnums=(3, 4))
    idx, is_pos, valid = sample(jax.random.key(0), pos, neg, 64, 0.25)
    idx, is_pos, valid = map(np.asarray, (idx, is_pos, valid))
    n_pos = int((label == 1).sum())
    assert is_pos.sum() == min(n_pos, 16)
    assert valid.sum() == 64 and len(set(idx[valid].tolist())) == 64
    assert (label[idx[is_pos]] == 1).all() and (label[idx[valid & ~is_pos]] == 0).all()
    assert is_pos[: is_pos.sum()].all()  # positives first
    # Few candidates: everything is taken and the rest of the slots are invalid.
    few = np.zeros(n, bool)
    few[[3, 7]] = True
    _, is_pos2, valid2 = sample(
        jax.random.key(1), jnp.asarray(few), jnp.asarray(np.roll(few, 1)), 64, 0.5
    )
    assert np.asarray(is_pos2).sum() == 2 and np.asarray(valid2).sum() == 4
    # Different keys draw different samples; the same key the same one.
    a = sample(jax.random.key(5), pos, neg, 64, 0.25)[0]
    b = sample(jax.random.key(6), pos, neg, 64, 0.25)[0]
    c = sample(jax.random.key(5), pos, neg, 64, 0.25)[0]
    assert not np.array_equal(a, b) and np.array_equal(a, c)


def test_anchors_as_torchvision():
    # torchvision's AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2) on a 64 x 48
    # image with 16 x 12 and 8 x 6 feature maps (torchvision 0.29.1).
    got = np.concatenate(anchors.anchors_per_level((64, 48), [(16, 12), (8, 6)], ((32,), (64,))))
    assert got.shape == (720, 4)
    np.testing.assert_array_equal(
        got[:4], [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23], [-19, -11, 27, 11]]
    )
    np.testing.assert_array_equal(got[200:203], [[13, -3, 35, 43], [5, 9, 51, 31], [12, 4, 44, 36]])
    np.testing.assert_array_equal(got[-3:], [[-5, 33, 85, 79], [8, 24, 72, 88], [17, 11, 63, 101]])


def test_anchor_counts_per_level():
    grids = [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)]
    levels = anchors.anchors_per_level((800, 800), grids)
    assert [len(a) for a in levels] == [3 * h * w for h, w in grids]
    two = anchors.anchors_per_level((64, 64), [(16, 16), (8, 8)], ((8, 16), (32, 64)))
    assert [len(a) for a in two] == [16 * 16 * 6, 8 * 8 * 6]
    # Every anchor of a level has that level's sizes: sqrt(area) ~ size.
    side = np.sqrt((levels[2][:, 2] - levels[2][:, 0]) * (levels[2][:, 3] - levels[2][:, 1]))
    np.testing.assert_allclose(side, 128, rtol=0.02)
    with pytest.raises(ValueError, match="anchor sizes"):
        anchors.anchors_per_level((64, 64), [(16, 16)], ((8,), (16,)))
