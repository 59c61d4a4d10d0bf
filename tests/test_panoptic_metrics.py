"""Panoptic quality against an independent plain-Python implementation of the COCO API.

The reference turns each image's (class, instance) maps into a segment-id map and a
`segments_info` list, as a COCO panoptic PNG and JSON would hold them, and then counts
with the loops of panopticapi's `pq_compute_single_core` and `pq_average`, one pixel and
one segment at a time.
"""

import functools
import math

import jax
import numpy as np
import pytest

from segjax import panoptic_metrics as pm

THINGS = np.array([False, False, True, True, True])  # 2 stuff, 3 thing classes
K = len(THINGS)


def _to_coco(cls, inst):
    # (class, instance) maps -> segment-id map (0 = void) and {id: info}; a thing class's
    # instance 0 is its crowd segment.
    h, w = cls.shape
    ids = [[0] * w for _ in range(h)]
    segments, by_pair = {}, {}
    for y in range(h):
        for x in range(w):
            c, i = int(cls[y, x]), int(inst[y, x])
            if not 0 <= c < K:
                continue
            if (c, i) not in by_pair:
                by_pair[(c, i)] = len(by_pair) + 1
                segments[by_pair[(c, i)]] = {
                    "category_id": c,
                    "iscrowd": int(bool(THINGS[c]) and i == 0),
                    "area": 0,
                }
            ids[y][x] = by_pair[(c, i)]
            segments[by_pair[(c, i)]]["area"] += 1
    return ids, segments


def _reference_image(pred_cls, pred_inst, gt_cls, gt_inst, stats):
    # panopticapi pq_compute_single_core, for one image.
    pan_gt, gt_segms = _to_coco(gt_cls, gt_inst)
    pan_pred, pred_segms = _to_coco(pred_cls, pred_inst)
    for seg in pred_segms.values():
        seg["iscrowd"] = 0  # predictions have no crowd
    gt_pred_map = {}
    for y in range(len(pan_gt)):
        for x in range(len(pan_gt[0])):
            pair = (pan_gt[y][x], pan_pred[y][x])
            gt_pred_map[pair] = gt_pred_map.get(pair, 0) + 1
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (
            pred_segms[pred_label]["area"]
            + gt_segms[gt_label]["area"]
            - intersection
            - gt_pred_map.get((0, pred_label), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            stats[gt_segms[gt_label]["category_id"]]["tp"] += 1
            stats[gt_segms[gt_label]["category_id"]]["iou"] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels_dict[gt_info["category_id"]] = gt_label
            continue
        stats[gt_info["category_id"]]["fn"] += 1
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((0, pred_label), 0)
        if pred_info["category_id"] in crowd_labels_dict:
            intersection += gt_pred_map.get(
                (crowd_labels_dict[pred_info["category_id"]], pred_label), 0
            )
        if intersection / pred_info["area"] > 0.5:
            continue
        stats[pred_info["category_id"]]["fp"] += 1


def _reference(pred_cls, pred_inst, gt_cls, gt_inst, valid=None):
    stats = [{"tp": 0, "fp": 0, "fn": 0, "iou": 0.0} for _ in range(K)]
    for b in range(gt_cls.shape[0]):
        if valid is None or valid[b]:
            _reference_image(pred_cls[b], pred_inst[b], gt_cls[b], gt_inst[b], stats)
    return stats


def _reference_average(stats, isthing):
    # panopticapi PQStat.pq_average
    pq = sq = rq = 0.0
    n = 0
    for k in range(K):
        if isthing is not None and bool(THINGS[k]) != isthing:
            continue
        tp, fp, fn, iou = (stats[k][key] for key in ("tp", "fp", "fn", "iou"))
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp != 0 else 0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    return (pq / n, sq / n, rq / n, n) if n else (math.nan, math.nan, math.nan, 0)


@functools.partial(jax.jit, static_argnames="max_segments")
def _jitted_stats(pred_cls, pred_inst, gt_cls, gt_inst, valid, max_segments):
    return pm.panoptic_stats(
        pred_cls, pred_inst, gt_cls, gt_inst,
        thing_classes=THINGS, max_segments=max_segments, valid=valid,
    )  # fmt: skip


def _stats(pred_cls, pred_inst, gt_cls, gt_inst, max_segments=32, valid=None):
    valid = np.ones(gt_cls.shape[0], bool) if valid is None else valid
    return jax.device_get(_jitted_stats(pred_cls, pred_inst, gt_cls, gt_inst, valid, max_segments))


def _check_against_reference(pred_cls, pred_inst, gt_cls, gt_inst, valid=None):
    got = _stats(pred_cls, pred_inst, gt_cls, gt_inst, valid=valid)
    ref = _reference(pred_cls, pred_inst, gt_cls, gt_inst, valid)
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(got[key], [s[key] for s in ref], err_msg=key)
    np.testing.assert_allclose(got["iou_sum"], [s["iou"] for s in ref], rtol=1e-5)
    assert got["overflow"] == 0
    acc = pm.PanopticAccumulator(K)
    acc.update(got)
    scores = pm.pq_scores(acc.total, thing_classes=THINGS)
    for suffix, isthing in (("", None), ("_things", True), ("_stuff", False)):
        pq, sq, rq, n = _reference_average(ref, isthing)
        assert scores["n" + suffix] == n
        np.testing.assert_allclose(
            [scores["pq" + suffix], scores["sq" + suffix], scores["rq" + suffix]],
            [pq, sq, rq],
            rtol=1e-5,
        )
    return got, scores


def _random_panoptic(rng, shape):
    # Rectangles of random (class, instance) painted over stuff, some void and crowd.
    b, h, w = shape
    cls = rng.integers(0, 2, (b, 1, 1)) * np.ones(shape, np.int64)  # a stuff background
    inst = np.zeros(shape, np.int64)
    for i in range(b):
        for n in range(int(rng.integers(1, 7))):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            y1, x1 = y0 + rng.integers(2, h // 2), x0 + rng.integers(2, w // 2)
            c = int(rng.integers(0, K))
            cls[i, y0:y1, x0:x1] = c
            # Things: object n + 1, or crowd (0) now and then.
            inst[i, y0:y1, x0:x1] = (n + 1) * (rng.random() > 0.2) if THINGS[c] else 0
        void = rng.random((h, w)) < 0.1
        cls[i][void] = -1
    return cls, inst


def _perturb(rng, cls, inst):
    # A prediction: the ground truth shifted, with flipped classes, noise and holes.
    pc, pi = np.roll(cls, int(rng.integers(-1, 2)), axis=2).copy(), np.roll(inst, 1, 2).copy()
    pc[pc < 0] = rng.integers(0, K)  # void ground truth gets predicted as something
    pi[(pi == 0) & THINGS[np.clip(pc, 0, K - 1)]] = 7  # predictions have no crowd
    noise = rng.random(pc.shape) < 0.08
    pc[noise] = rng.integers(0, K, noise.sum())
    pi[noise] = rng.integers(1, 4, noise.sum()) * THINGS[pc[noise]]
    holes = rng.random(pc.shape) < 0.05
    pc[holes] = -1
    return pc, pi


def test_random_maps_match_the_coco_reference():
    rng = np.random.default_rng(0)
    for _ in range(3):
        gt_cls, gt_inst = _random_panoptic(rng, (4, 16, 20))
        pred_cls, pred_inst = _perturb(rng, gt_cls, gt_inst)
        got, _ = _check_against_reference(pred_cls, pred_inst, gt_cls, gt_inst)
        assert got["tp"].sum() > 0 and got["fp"].sum() > 0 and got["fn"].sum() > 0
    # Padding samples count for nothing.
    valid = np.array([True, False, True, False])
    _check_against_reference(pred_cls, pred_inst, gt_cls, gt_inst, valid=valid)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(1)
    gt_cls, gt_inst = _random_panoptic(rng, (4, 16, 20))
    pred_cls = gt_cls.copy()
    pred_inst = gt_inst.copy()
    crowd = (gt_inst == 0) & THINGS[np.clip(gt_cls, 0, K - 1)] & (gt_cls >= 0)
    pred_cls[crowd] = -1  # crowd predicted as void: neither TP nor FP
    _, scores = _check_against_reference(pred_cls, pred_inst, gt_cls, gt_inst)
    assert scores["pq"] == pytest.approx(1.0) and scores["fp"].sum() == scores["fn"].sum() == 0


def _maps(rows):
    # "class:instance" strings -> (class, instance) maps of one image; "." is void. Padded
    # with void (which changes no count) to one shape, so that one program serves all.
    cls = np.full((1, 4, 8), -1)
    inst = np.zeros((1, 4, 8), np.int64)
    for y, row in enumerate(rows):
        for x, v in enumerate(row.split()):
            if v != ".":
                cls[0, y, x] = int(v.split(":")[0])
                inst[0, y, x] = int(v.split(":")[1]) if ":" in v else 0
    return cls, inst


def _hand(gt_rows, pred_rows):
    gt_c, gt_i = _maps(gt_rows)
    pr_c, pr_i = _maps(pred_rows)
    got, _ = _check_against_reference(pr_c, pr_i, gt_c, gt_i)
    return (int(got["tp"].sum()), int(got["fp"].sum()), int(got["fn"].sum())), got


def test_iou_of_exactly_one_half_does_not_match():
    # Object 2:1 has 4 pixels; the prediction covers 2 of them and nothing else: IoU 2/4.
    (tp, fp, fn), _ = _hand(
        ["2:1 2:1 2:1 2:1", "0 0 0 0"],
        ["2:1 2:1 0 0", "0 0 0 0"],
    )
    assert (tp, fp, fn) == (1, 1, 1)  # the stuff class 0 matches; the object does not


def test_void_pixels_leave_the_union():
    # The prediction covers the 3-pixel object and 3 void pixels: IoU 3/3, not 3/6.
    (tp, fp, fn), got = _hand(
        ["2:1 2:1 2:1 . . .", "0 0 0 0 0 0"],
        ["2:1 2:1 2:1 2:1 2:1 2:1", "0 0 0 0 0 0"],
    )
    assert (tp, fp, fn) == (2, 0, 0)
    assert got["iou_sum"][2] == pytest.approx(1.0)


def test_unmatched_prediction_on_void_or_crowd():
    # More than half on void: not a false positive; exactly half: a false positive.
    (tp, fp, fn), _ = _hand(["0 0 . . .", "0 0 0 0 0"], ["0 0 3:1 3:1 3:1", "0 0 0 0 3:1"])
    assert (tp, fp, fn) == (1, 0, 0)
    (tp, fp, fn), _ = _hand(["0 0 0 . .", "0 0 0 0 0"], ["0 0 0 3:1 3:1", "0 0 0 3:1 3:1"])
    assert (tp, fp, fn) == (1, 1, 0)
    # On the crowd region of its own class (3:0): ignored, and the crowd is no FN.
    (tp, fp, fn), _ = _hand(["1 3:0 3:0 3:0", "1 1 1 1"], ["1 3:5 3:5 3:5", "1 1 1 1"])
    assert (tp, fp, fn) == (1, 0, 0)
    # On another class's crowd region: a false positive.
    (tp, fp, fn), _ = _hand(["1 4:0 4:0 4:0", "1 1 1 1"], ["1 3:5 3:5 3:5", "1 1 1 1"])
    assert (tp, fp, fn) == (1, 1, 0)


def test_class_must_agree_and_instances_are_told_apart():
    # Two objects of class 2; the prediction swaps their ids (fine) but calls one class 3.
    (tp, fp, fn), _ = _hand(
        ["2:1 2:1 0 2:2 2:2", "2:1 2:1 0 2:2 2:2"],
        ["2:9 2:9 0 3:4 3:4", "2:9 2:9 0 3:4 3:4"],
    )
    assert (tp, fp, fn) == (2, 1, 1)


def test_more_segments_than_max_segments_is_counted():
    # Image 0: 40 objects (one pixel row each) over 32 places; image 1: 32 objects.
    cls = np.full((4, 16, 20), -1)
    inst = np.zeros((4, 16, 20), np.int64)
    cls[0, :, :] = 2
    inst[0] = np.repeat(np.arange(1, 41), 8).reshape(16, 20)
    cls[1, :, :] = 3
    inst[1] = np.repeat(np.arange(1, 33), 10).reshape(16, 20)
    got = _stats(cls, inst, cls, inst, max_segments=32)
    assert got["overflow"] == 1
    assert got["tp"][3] == 32  # image 1 fully counted


def test_scores_and_report():
    total = {
        "tp": np.array([2, 0, 1, 0, 0]),
        "fp": np.array([0, 0, 1, 2, 0]),
        "fn": np.array([0, 0, 0, 1, 0]),
        "iou_sum": np.array([1.6, 0.0, 0.9, 0.0, 0.0]),
        "overflow": 0,
    }
    s = pm.pq_scores(total, thing_classes=THINGS)
    np.testing.assert_allclose(s["pq_class"][[0, 2, 3]], [0.8, 0.9 / 1.5, 0.0])
    assert np.isnan(s["pq_class"][1]) and np.isnan(s["pq_class"][4])
    assert s["n"] == 3 and s["n_things"] == 2 and s["n_stuff"] == 1
    assert s["pq_things"] == pytest.approx((0.6 + 0.0) / 2)
    assert s["sq_things"] == pytest.approx((0.9 + 0.0) / 2)  # SQ 0 for a class without TP
    assert s["pq"] == pytest.approx((0.8 + 0.6 + 0.0) / 3)
    names = ["road", "sky", "car", "person", "bike"]
    table = pm.format_pq_report(s, names, THINGS)
    assert "Things" in table and "car" in table and "nan" in table
    body = pm.pq_report_dict(s, names, THINGS)
    assert body["summary"]["pq_stuff"] == pytest.approx(0.8)
    assert body["classes"][1]["pq"] is None and body["classes"][2]["isthing"] is True
