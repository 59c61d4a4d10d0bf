"""Tests for segjax.metrics, each score checked against an independent computation."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segjax import metrics

IGNORE = 255


def _random_batch(seed, batch=4, height=5, width=7, num_classes=5, absent=(3,)):
    """Random pred/label with void pixels, out-of-range labels and classes absent from GT."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, size=(batch, height, width)).astype(np.int32)
    for c in absent:
        label[label == c] = 0
    label[rng.random(label.shape) < 0.15] = IGNORE
    label[rng.random(label.shape) < 0.05] = num_classes + 2  # outside [0, K): excluded
    pred = rng.integers(0, num_classes, size=label.shape).astype(np.int32)
    return pred, label


def _loop_confusion(pred, label, num_classes, valid=None):
    """Per-pixel Python loop: the slowest, most obviously correct reference."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for b in range(label.shape[0]):
        if valid is not None and not valid[b]:
            continue
        for gt, pr in zip(label[b].ravel(), pred[b].ravel(), strict=True):
            if gt == IGNORE or not 0 <= gt < num_classes or not 0 <= pr < num_classes:
                continue
            cm[gt, pr] += 1
    return cm


def _bincount_confusion(pred, label, num_classes, valid=None):
    """Boolean indexing + np.bincount, as mmsegmentation / torchvision references do."""
    keep = (label != IGNORE) & (label >= 0) & (label < num_classes)
    if valid is not None:
        keep &= np.asarray(valid)[:, None, None]
    idx = label[keep].astype(np.int64) * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


class TestConfusionMatrix:
    def test_matches_loop_and_bincount(self):
        pred, label = _random_batch(0)
        valid = np.array([True, False, True, True])
        # A padded sample may hold anything; it must not count.
        label[1] = 1
        got = np.asarray(metrics.confusion_matrix(pred, label, 5, valid=valid))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _loop_confusion(pred, label, 5, valid))
        np.testing.assert_array_equal(got, _bincount_confusion(pred, label, 5, valid))
        # Class 3 never appears in the ground truth.
        assert got[3].sum() == 0 and got[:, 3].sum() > 0

    def test_without_valid_counts_all_samples(self):
        pred, label = _random_batch(1)
        got = np.asarray(metrics.confusion_matrix(pred, label, 5))
        np.testing.assert_array_equal(got, _loop_confusion(pred, label, 5))

    def test_out_of_range_prediction_is_excluded(self):
        label = np.array([[[0, 1, 1]]], np.int32)
        pred = np.array([[[0, 1, 9]]], np.int32)
        got = np.asarray(metrics.confusion_matrix(pred, label, 2))
        np.testing.assert_array_equal(got, [[1, 0], [0, 1]])

    def test_under_jit(self):
        pred, label = _random_batch(2)
        valid = np.array([True, True, False, True])
        fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
        got = np.asarray(fn(pred, label, 5, valid=valid))
        np.testing.assert_array_equal(got, _loop_confusion(pred, label, 5, valid))

    def test_sharded_batch_equals_single_device(self):
        devices = jax.devices()
        assert len(devices) >= 8, "conftest.py should provide 8 CPU devices"
        mesh = Mesh(np.array(devices[:8]), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        pred, label = _random_batch(3, batch=8, height=6, width=4)
        # 5 real images and 3 padding samples: the last devices hold only padding.
        valid = np.array([True] * 5 + [False] * 3)
        label[5:] = 0
        pred[5:] = 1

        fn = jax.jit(lambda p, lab, v: metrics.confusion_matrix(p, lab, 5, valid=v))
        sharded_args = [jax.device_put(x, sharding) for x in (pred, label, valid)]
        assert len(sharded_args[0].sharding.device_set) == 8
        got_sharded = np.asarray(fn(*sharded_args))
        single = jax.device_put((pred, label, valid), devices[0])
        got_single = np.asarray(fn(*single))
        np.testing.assert_array_equal(got_sharded, got_single)
        np.testing.assert_array_equal(got_sharded, _bincount_confusion(pred, label, 5, valid))

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match="shape"):
            metrics.confusion_matrix(jnp.zeros((1, 2, 2), int), jnp.zeros((1, 2, 3), int), 3)


class TestAccumulator:
    def test_int64_sum_does_not_overflow(self):
        acc = metrics.ConfusionMatrixAccumulator(2)
        big = jnp.full((2, 2), 2**30, jnp.int32)
        for _ in range(5):
            acc.update(big)
        assert acc.matrix.dtype == np.int64
        np.testing.assert_array_equal(acc.matrix, np.full((2, 2), 5 * 2**30, np.int64))
        acc.reset()
        np.testing.assert_array_equal(acc.matrix, np.zeros((2, 2)))

    def test_sum_over_batches_equals_whole(self):
        pred, label = _random_batch(4, batch=6)
        acc = metrics.ConfusionMatrixAccumulator(5)
        for b in range(0, 6, 2):
            acc.update(metrics.confusion_matrix(pred[b : b + 2], label[b : b + 2], 5))
        np.testing.assert_array_equal(acc.matrix, _loop_confusion(pred, label, 5))
        assert acc.scores()["num_pixels"] == int(acc.matrix.sum())

    def test_wrong_shape_raises(self):
        with pytest.raises(ValueError):
            metrics.ConfusionMatrixAccumulator(3).update(np.zeros((2, 2), np.int32))


def _reference_scores(pred, label, num_classes):
    """Scores from per-class pixel sets (not from a confusion matrix)."""
    keep = (label != IGNORE) & (label < num_classes)
    p, g = pred[keep], label[keep]
    out = {k: [] for k in ("iou", "acc", "prec", "dice")}
    for c in range(num_classes):
        inter = np.sum((p == c) & (g == c))
        union = np.sum((p == c) | (g == c))
        out["iou"].append(inter / union if union else np.nan)
        out["acc"].append(inter / np.sum(g == c) if np.sum(g == c) else np.nan)
        out["prec"].append(inter / np.sum(p == c) if np.sum(p == c) else np.nan)
        den = np.sum(p == c) + np.sum(g == c)
        out["dice"].append(2 * inter / den if den else np.nan)
    out = {k: np.array(v) for k, v in out.items()}
    out["pixel_accuracy"] = np.mean(p == g)
    freq = np.array([np.mean(g == c) for c in range(num_classes)])
    out["fwiou"] = np.nansum(freq * np.where(freq > 0, out["iou"], 0))
    return out


class TestScores:
    def test_hand_computed_three_classes(self):
        label = np.array([[[0, 0, 0, 1], [1, 2, IGNORE, 2]]], np.int32)
        pred = np.array([[[0, 0, 1, 1], [2, 2, 0, 1]]], np.int32)
        cm = np.asarray(metrics.confusion_matrix(pred, label, 3))
        np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 1, 1]])
        s = metrics.segmentation_scores(cm)
        np.testing.assert_allclose(s["iou"], [2 / 3, 1 / 4, 1 / 3])
        assert s["miou"] == pytest.approx(5 / 12)
        np.testing.assert_allclose(s["accuracy"], [2 / 3, 1 / 2, 1 / 2])
        assert s["mean_accuracy"] == pytest.approx(5 / 9)
        assert s["pixel_accuracy"] == pytest.approx(4 / 7)
        assert s["fwiou"] == pytest.approx(19 / 42)
        np.testing.assert_allclose(s["precision"], [1, 1 / 3, 1 / 2])
        np.testing.assert_allclose(s["recall"], [2 / 3, 1 / 2, 1 / 2])
        np.testing.assert_allclose(s["dice"], [4 / 5, 2 / 5, 1 / 2])
        np.testing.assert_allclose(s["f1"], s["dice"])
        assert s["mean_dice"] == pytest.approx(1.7 / 3)
        assert s["mean_precision"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
        np.testing.assert_array_equal(s["pixel_count"], [3, 2, 2])
        assert s["num_pixels"] == 7
        for key in ("miou", "pixel_accuracy", "fwiou", "mean_dice", "mean_f1"):
            assert type(s[key]) is float
        assert type(s["num_pixels"]) is int

    def test_random_against_pixel_sets(self):
        pred, label = _random_batch(5, batch=3, height=8, width=8)
        s = metrics.segmentation_scores(np.asarray(metrics.confusion_matrix(pred, label, 5)))
        ref = _reference_scores(pred, label, 5)
        np.testing.assert_allclose(s["iou"], ref["iou"])
        np.testing.assert_allclose(s["accuracy"], ref["acc"])
        np.testing.assert_allclose(s["precision"], ref["prec"])
        np.testing.assert_allclose(s["dice"], ref["dice"])
        assert s["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"])
        assert s["fwiou"] == pytest.approx(ref["fwiou"])
        assert s["miou"] == pytest.approx(np.nanmean(ref["iou"]))

    # Class 0 normal, 1 absent from GT and prediction, 2 GT-only, 3 prediction-only.
    CM = np.array([[5, 0, 0, 1], [0, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])

    def test_empty_nan_convention(self):
        s = metrics.segmentation_scores(self.CM, empty="nan")
        np.testing.assert_allclose(s["iou"], [5 / 8, np.nan, 0, 0])
        np.testing.assert_allclose(s["dice"], [10 / 13, np.nan, 0, 0])
        np.testing.assert_allclose(s["accuracy"], [5 / 6, np.nan, 0, np.nan])
        np.testing.assert_allclose(s["precision"], [5 / 7, np.nan, np.nan, 0])
        assert s["miou"] == pytest.approx(5 / 24)
        assert s["mean_dice"] == pytest.approx(10 / 39)
        assert s["mean_accuracy"] == pytest.approx(5 / 12)
        assert s["fwiou"] == pytest.approx(6 / 8 * 5 / 8)

    def test_empty_one_convention(self):
        s = metrics.segmentation_scores(self.CM, empty="one")
        np.testing.assert_allclose(s["iou"], [5 / 8, 1, 0, 0])
        np.testing.assert_allclose(s["f1"], [10 / 13, 1, 0, 0])
        assert s["miou"] == pytest.approx((5 / 8 + 1) / 4)
        assert s["mean_dice"] == pytest.approx((10 / 13 + 1) / 4)
        # Recall stays undefined without ground truth, whatever the convention.
        np.testing.assert_allclose(s["accuracy"], [5 / 6, np.nan, 0, np.nan])
        assert s["mean_accuracy"] == pytest.approx(5 / 12)

    def test_all_empty_gives_nan_without_warnings(self):
        with np.errstate(all="raise"):
            s = metrics.segmentation_scores(np.zeros((3, 3), np.int64))
        assert math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"])
        assert s["num_pixels"] == 0

    def test_bad_empty_raises(self):
        with pytest.raises(ValueError, match="empty"):
            metrics.segmentation_scores(self.CM, empty="zero")


class TestBinary:
    def test_against_numpy(self):
        rng = np.random.default_rng(6)
        probs = rng.random((3, 6, 5)).astype(np.float32)
        target = (rng.random((3, 6, 5)) > 0.6).astype(np.int32)
        target[2] = 0
        probs[2] = 0.1  # empty prediction and empty target: scores 1
        ious, dices = [], []
        for p, t in zip(probs > 0.5, target.astype(bool), strict=True):
            inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
            ious.append(1.0 if union == 0 else inter / union)
            dices.append(1.0 if union == 0 else 2 * inter / (p.sum() + t.sum()))
        got_iou = metrics.binary_iou(probs, target, per_sample=True, eps=1e-9)
        got_dice = metrics.binary_dice(probs, target, per_sample=True, eps=1e-9)
        np.testing.assert_allclose(got_iou, ious, rtol=1e-6)
        np.testing.assert_allclose(got_dice, dices, rtol=1e-6)
        assert float(metrics.binary_iou(probs, target, eps=1e-9)) == pytest.approx(
            np.mean(ious), rel=1e-6
        )
        jitted = jax.jit(metrics.binary_dice)(jnp.asarray(probs), jnp.asarray(target))
        assert float(jitted) == pytest.approx(np.mean(dices), rel=1e-5)


class TestReports:
    def _scores(self, empty="nan"):
        return metrics.segmentation_scores(TestScores.CM, empty=empty)

    def test_format_report(self):
        text = metrics.format_report(self._scores(), ["road", "sky", "car", "tree"])
        lines = text.splitlines()
        road = next(line for line in lines if line.startswith("road"))
        # IoU, accuracy, Dice, F1 in percent, then the GT pixel count.
        assert road.split()[1:] == ["62.50", "83.33", "76.92", "76.92", "6"]
        sky = next(line for line in lines if line.startswith("sky"))
        assert sky.split()[1:] == ["nan", "nan", "nan", "nan", "0"]
        miou = next(line for line in lines if line.startswith("mIoU"))
        assert miou.split()[-1] == "20.83"
        for title in ("mean accuracy", "pixel accuracy", "fwIoU", "mean Dice", "mean F1"):
            assert any(line.startswith(title) for line in lines)
        assert "left out of the means" in text
        assert "included in the means" in metrics.format_report(self._scores("one"))

    def test_wrong_number_of_names_raises(self):
        with pytest.raises(ValueError):
            metrics.format_report(self._scores(), ["a", "b"])

    def test_report_dict_is_json(self):
        d = metrics.report_dict(self._scores(), ["road", "sky", "car", "tree"])
        text = json.dumps(d, allow_nan=False)
        back = json.loads(text)
        assert back["summary"]["miou"] == pytest.approx(5 / 24)
        assert back["classes"][1]["name"] == "sky"
        assert back["classes"][1]["iou"] is None
        assert back["classes"][0]["pixel_count"] == 6
