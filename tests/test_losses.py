"""Tests for segjax.losses: hand-computed values, numpy references and the shared contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses

IGNORE = 255
K = 3


def _batch(seed=0, batch=2, height=5, width=6, num_classes=K, void=0.2):
    """Random float32 logits [B,H,W,K] and labels [B,H,W] with some void pixels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, height, width, num_classes)).astype(np.float32) * 2
    labels = rng.integers(0, num_classes, size=(batch, height, width)).astype(np.int32)
    labels[rng.random(labels.shape) < void] = IGNORE
    return logits, labels


def _np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Every loss with its default arguments, and a few non-default variants, for the
# contract tests. `min_kept` is small so that OHEM actually selects.
CONTRACT_CASES = {
    **{name: (fn, {}) for name, fn in losses.LOSSES.items()},
    "ohem_small": (losses.ohem_cross_entropy, {"min_kept": 5}),
    "ce_weighted_smooth": (
        losses.cross_entropy,
        {"class_weights": [1.0, 2.0, 0.5], "label_smoothing": 0.1},
    ),
    "ce_all_pixels": (losses.cross_entropy, {"avg_non_ignore": False}),
    "focal_alpha": (losses.focal_loss, {"alpha": [0.25, 0.5, 1.0], "gamma": 0.5}),
    "lovasz_all": (losses.lovasz_softmax, {"classes": "all"}),
    "boundary_fg": (losses.boundary_loss, {"classes": [1, 2]}),
    "dice_exp1": (losses.dice_loss, {"exponent": 1, "class_weights": [0.0, 1.0, 2.0]}),
}


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
class TestContract:
    def test_all_ignored_is_zero_with_zero_grad(self, name):
        fn, kwargs = CONTRACT_CASES[name]
        logits, labels = _batch(1)
        labels = np.full_like(labels, IGNORE)
        value, grad = jax.value_and_grad(lambda x: fn(x, labels, **kwargs))(logits)
        assert float(value) == 0.0
        assert np.all(np.asarray(grad) == 0.0)

    def test_ignored_pixels_change_nothing(self, name):
        fn, kwargs = CONTRACT_CASES[name]
        logits, labels = _batch(2)
        void = labels == IGNORE
        assert void.any() and (~void).any()
        other = logits.copy()
        other[void] = np.random.default_rng(3).normal(size=other[void].shape) * 5
        f = jax.jit(jax.value_and_grad(lambda x: fn(x, labels, **kwargs)))
        value_a, grad_a = f(logits)
        value_b, _ = f(other)
        assert np.isfinite(float(value_a))
        np.testing.assert_allclose(float(value_a), float(value_b), rtol=1e-5, atol=1e-6)
        grad_a = np.asarray(grad_a)
        assert np.all(grad_a[void] == 0.0)
        assert np.all(np.isfinite(grad_a)) and np.any(grad_a[~void] != 0.0)

    def test_bfloat16_gives_float32(self, name):
        fn, kwargs = CONTRACT_CASES[name]
        logits, labels = _batch(4)
        value16 = fn(jnp.asarray(logits, jnp.bfloat16), labels, **kwargs)
        value32 = fn(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), labels, **kwargs)
        assert value16.dtype == jnp.float32 and value16.shape == ()
        np.testing.assert_allclose(float(value16), float(value32), rtol=1e-6, atol=1e-6)


class TestCrossEntropy:
    def test_hand_computed(self):
        # Pixel 1: logits (0, 0), label 0 -> ln 2. Pixel 2: logits (ln 3, 0), label 1 ->
        # p = 1/4 -> ln 4. Pixel 3 is void.
        logits = np.array([[[[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]]], np.float32)
        labels = np.array([[[0, 1, IGNORE]]], np.int32)
        ln2 = math.log(2.0)
        assert float(losses.cross_entropy(logits, labels)) == pytest.approx(1.5 * ln2)
        weighted = losses.cross_entropy(logits, labels, class_weights=[1.0, 3.0])
        assert float(weighted) == pytest.approx((ln2 + 3 * 2 * ln2) / 4)
        # mmsegmentation default: divide by all 3 pixels, the void one included.
        all_pixels = losses.cross_entropy(logits, labels, avg_non_ignore=False)
        assert float(all_pixels) == pytest.approx(3 * ln2 / 3)

    @staticmethod
    def _reference(logits, labels, weights, smoothing):
        """Per-pixel loop with smoothed target distributions (torch semantics)."""
        num, den = 0.0, 0.0
        flat_logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
        for z, y in zip(flat_logits, labels.ravel(), strict=True):
            if y == IGNORE:
                continue
            log_p = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
            target = np.full(len(z), smoothing / len(z))
            target[y] += 1.0 - smoothing
            num += -np.sum(weights * target * log_p)
            den += weights[y]
        return num / den

    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("smoothing", [0.0, 0.2])
    def test_against_numpy(self, weighted, smoothing):
        logits, labels = _batch(5)
        weights = np.array([0.5, 2.0, 1.5]) if weighted else np.ones(K)
        got = losses.cross_entropy(
            logits,
            labels,
            class_weights=weights if weighted else None,
            label_smoothing=smoothing,
        )
        expected = self._reference(logits, labels, weights, smoothing)
        assert float(got) == pytest.approx(expected, rel=1e-5)

    def test_bad_class_weights_shape_raises(self):
        logits, labels = _batch(0)
        with pytest.raises(ValueError, match="class weights"):
            losses.cross_entropy(logits, labels, class_weights=[1.0, 2.0])


def _two_class_logits(true_probs, labels):
    """Logits [1,1,N,2] whose softmax gives `true_probs` for class `labels`."""
    p = np.asarray(true_probs, np.float64)
    other = np.log1p(-p)
    out = np.zeros((len(p), 2))
    for i, (lab, prob) in enumerate(zip(labels, p, strict=True)):
        out[i, lab] = np.log(prob)
        out[i, 1 - lab] = other[i]
    return out[None, None].astype(np.float32)


class TestHardPixelMining:
    PROBS = [0.9, 0.8, 0.6, 0.95, 0.3, 0.5]
    LABELS = [0, 1, 0, 1, 0, 1]

    def _case(self):
        logits = _two_class_logits(self.PROBS, self.LABELS)
        labels = np.array([self.LABELS], np.int32)[None]
        labels[0, 0, 5] = IGNORE  # the 0.5 pixel is void: never kept
        return logits, labels

    @pytest.mark.parametrize(
        ("min_kept", "kept"),
        [
            (1, [2, 4]),  # threshold max(0.6, 0.7) = 0.7
            (3, [1, 2, 4]),  # threshold = 4th smallest = 0.9
            (100, [0, 1, 2, 4]),  # threshold = largest = 0.95, which is not kept
        ],
    )
    def test_ohem_keeps_exactly(self, min_kept, kept):
        logits, labels = self._case()
        fn = lambda x: losses.ohem_cross_entropy(x, labels, thresh=0.7, min_kept=min_kept)
        value, grad = jax.value_and_grad(fn)(logits)
        expected = np.mean([-np.log(self.PROBS[i]) for i in kept])
        assert float(value) == pytest.approx(expected, rel=1e-5)
        has_grad = np.any(np.asarray(grad)[0, 0] != 0, axis=-1)
        np.testing.assert_array_equal(np.flatnonzero(has_grad), kept)

    def test_topk_keeps_hardest(self):
        logits, labels = self._case()
        # 5 valid pixels, ratio 0.5 -> ceil(2.5) = 3 hardest: p = 0.3, 0.6, 0.8.
        fn = lambda x: losses.topk_cross_entropy(x, labels, k_ratio=0.5)
        value, grad = jax.value_and_grad(fn)(logits)
        expected = np.mean(-np.log([0.3, 0.6, 0.8]))
        assert float(value) == pytest.approx(expected, rel=1e-5)
        has_grad = np.any(np.asarray(grad)[0, 0] != 0, axis=-1)
        np.testing.assert_array_equal(np.flatnonzero(has_grad), [1, 2, 4])

    def test_topk_ratio_one_is_cross_entropy(self):
        logits, labels = _batch(6)
        a = losses.topk_cross_entropy(logits, labels, k_ratio=1.0)
        b = losses.cross_entropy(logits, labels)
        assert float(a) == pytest.approx(float(b), rel=1e-6)


class TestFocal:
    def test_against_numpy(self):
        logits, labels = _batch(7)
        alpha = np.array([0.25, 0.5, 1.0])
        probs = _np_softmax(logits)
        values = []
        for p, y in zip(probs.reshape(-1, K), labels.ravel(), strict=True):
            if y != IGNORE:
                values.append(-alpha[y] * (1 - p[y]) ** 2 * np.log(p[y]))
        got = losses.focal_loss(logits, labels, gamma=2.0, alpha=alpha)
        assert float(got) == pytest.approx(np.mean(values), rel=1e-5)

    def test_gamma_zero_is_cross_entropy(self):
        logits, labels = _batch(8)
        a = losses.focal_loss(logits, labels, gamma=0.0)
        assert float(a) == pytest.approx(float(losses.cross_entropy(logits, labels)), rel=1e-6)


def _valid_probs_onehot(logits, labels):
    """Softmax probs and one-hot targets of valid pixels only (boolean indexing)."""
    keep = labels != IGNORE
    probs = _np_softmax(logits)[keep]
    onehot = np.eye(logits.shape[-1])[labels[keep]]
    return probs, onehot


class TestRegionLosses:
    @pytest.mark.parametrize("exponent", [1, 2])
    def test_dice_against_formula(self, exponent):
        logits, labels = _batch(9)
        weights = np.array([1.0, 2.0, 3.0])
        probs, onehot = _valid_probs_onehot(logits, labels)
        per_class = []
        for c in range(K):
            p, g = probs[:, c], onehot[:, c]
            dice = (2 * np.sum(p * g) + 1.0) / (np.sum(p**exponent) + np.sum(g**exponent) + 1.0)
            per_class.append(1 - dice)
        got = losses.dice_loss(logits, labels, exponent=exponent)
        assert float(got) == pytest.approx(np.mean(per_class), rel=1e-5)
        got_w = losses.dice_loss(logits, labels, exponent=exponent, class_weights=weights)
        expected_w = np.sum(weights * per_class) / weights.sum()
        assert float(got_w) == pytest.approx(expected_w, rel=1e-5)

    def test_dice_perfect_prediction_is_near_zero(self):
        _, labels = _batch(10, void=0.0)
        logits = 50.0 * np.eye(K, dtype=np.float32)[labels]
        assert float(losses.dice_loss(logits, labels, smooth=0.0)) == pytest.approx(0, abs=1e-6)

    def test_jaccard_against_formula(self):
        logits, labels = _batch(11)
        probs, onehot = _valid_probs_onehot(logits, labels)
        inter = (probs * onehot).sum(0)
        union = np.maximum(probs, onehot).sum(0) + np.minimum(probs, onehot).sum(0) - inter
        expected = np.mean(1 - (inter + 1) / (union + 1))
        assert float(losses.jaccard_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)

    def test_tversky(self):
        logits, labels = _batch(12)
        probs, onehot = _valid_probs_onehot(logits, labels)
        tp = (probs * onehot).sum(0)
        fp = (probs * (1 - onehot)).sum(0)
        fn = ((1 - probs) * onehot).sum(0)
        expected = np.mean(1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1))
        assert float(losses.tversky_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)
        # alpha = beta = 1/2 is the Dice loss with exponent 1 (and twice the smoothing).
        half = losses.tversky_loss(logits, labels, alpha=0.5, beta=0.5, smooth=0.5)
        dice = losses.dice_loss(logits, labels, exponent=1, smooth=1.0)
        assert float(half) == pytest.approx(float(dice), rel=1e-5)


def _lovasz_reference(logits, labels, classes="present"):
    """Transcription of Berman et al.'s `lovasz_softmax_flat` (numpy, dynamic shapes)."""
    probs, _ = _valid_probs_onehot(logits, labels)
    lab = labels[labels != IGNORE]
    class_list = range(probs.shape[1]) if classes in ("all", "present") else classes
    values = []
    for c in class_list:
        fg = (lab == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        perm = np.argsort(-errors, kind="stable")
        errors_sorted, fg_sorted = errors[perm], fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - np.cumsum(fg_sorted)
        union = gts + np.cumsum(1 - fg_sorted)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        values.append(np.dot(errors_sorted, jaccard))
    return np.mean(values)


class TestLovasz:
    @pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
    def test_against_reference(self, classes):
        logits, labels = _batch(13, num_classes=4)
        labels[labels == 3] = 1  # class 3 absent: "present" and "all" differ
        got = losses.lovasz_softmax(logits, labels, classes=classes)
        expected = _lovasz_reference(logits, labels, classes)
        assert float(got) == pytest.approx(expected, rel=1e-5)

    def test_bad_classes_raises(self):
        logits, labels = _batch(0)
        with pytest.raises(ValueError, match="present"):
            losses.lovasz_softmax(logits, labels, classes="some")


class TestBoundary:
    def test_signed_distance_against_brute_force(self):
        labels = np.zeros((1, 5, 6), np.int32)
        labels[0, 1:4, 2:5] = 1
        labels[0, 0, 0] = IGNORE
        got = losses.signed_distance_maps(labels, 3)
        coords = np.stack(np.meshgrid(np.arange(5), np.arange(6), indexing="ij"), -1)
        for k in range(2):
            inside = labels[0] == k
            for i in range(5):
                for j in range(6):
                    # Distance to the nearest pixel of the other side.
                    other = ~inside if inside[i, j] else inside
                    d = np.sqrt(((coords[other] - [i, j]) ** 2).sum(-1)).min()
                    expected = -(d - 1) if inside[i, j] else d
                    assert got[0, i, j, k] == pytest.approx(expected), (k, i, j)
        np.testing.assert_array_equal(got[..., 2], 0.0)  # absent class

    def test_value_and_callback_path(self):
        logits, labels = _batch(14)
        dist = losses.signed_distance_maps(labels, K)
        probs = _np_softmax(logits)
        keep = labels != IGNORE
        expected = np.mean((probs * dist)[keep])
        given = losses.boundary_loss(logits, labels, dist_maps=dist)
        assert float(given) == pytest.approx(expected, rel=1e-5)
        # Without dist_maps they are computed on host, also under jit.
        from_callback = jax.jit(losses.boundary_loss)(logits, labels)
        assert float(from_callback) == pytest.approx(expected, rel=1e-5)
        fg_only = losses.boundary_loss(logits, labels, dist_maps=dist, classes=[1, 2])
        assert float(fg_only) == pytest.approx(np.mean((probs * dist)[keep][:, 1:]), rel=1e-5)


class TestActiveContour:
    def test_against_loops(self):
        logits, labels = _batch(15, height=4, width=5)
        u = _np_softmax(logits)
        v = np.eye(K)[np.where(labels == IGNORE, 0, labels)]
        valid = labels != IGNORE
        batch, height, width = labels.shape
        region, length = [], []
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    if valid[b, i, j]:
                        r = u[b, i, j] * (v[b, i, j] - 1) ** 2 + (1 - u[b, i, j]) * v[b, i, j] ** 2
                        region.append(r.mean())
                    inner = i + 1 < height and j + 1 < width
                    if inner and valid[b, i, j] and valid[b, i + 1, j] and valid[b, i, j + 1]:
                        dh = u[b, i + 1, j] - u[b, i, j]
                        dw = u[b, i, j + 1] - u[b, i, j]
                        length.append(np.sqrt(dh**2 + dw**2 + 1e-8).mean())
        expected = 0.5 * np.mean(length) + 2.0 * np.mean(region)
        got = losses.active_contour_loss(logits, labels, lambda_region=2.0, mu_length=0.5)
        assert float(got) == pytest.approx(expected, rel=1e-5)


class TestBuildLoss:
    def test_weighted_sum(self):
        logits, labels = _batch(16)
        fn = losses.build_loss("cross_entropy:1.0+dice:0.5")
        expected = losses.cross_entropy(logits, labels) + 0.5 * losses.dice_loss(logits, labels)
        assert float(jax.jit(fn)(logits, labels)) == pytest.approx(float(expected), rel=1e-6)

    def test_default_weight_alias_and_spaces(self):
        logits, labels = _batch(17)
        fn = losses.build_loss(" focal_loss + lovasz:2 ")
        expected = losses.focal_loss(logits, labels) + 2 * losses.lovasz_softmax(logits, labels)
        assert float(fn(logits, labels)) == pytest.approx(float(expected), rel=1e-6)

    def test_options_and_ignore_index(self):
        logits, labels = _batch(18)
        labels = np.where(labels == IGNORE, 7, labels)
        opts = {"cross_entropy": {"class_weights": [1.0, 5.0, 1.0]}}
        fn = losses.build_loss("cross_entropy", ignore_index=7, options=opts)
        expected = losses.cross_entropy(
            logits, labels, ignore_index=7, class_weights=[1.0, 5.0, 1.0]
        )
        assert float(fn(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
        assert float(fn(logits, labels)) != pytest.approx(
            float(losses.cross_entropy(logits, labels, ignore_index=7)), rel=1e-3
        )

    def test_extra_call_kwargs_reach_accepting_terms(self):
        logits, labels = _batch(19)
        dist = losses.signed_distance_maps(labels, K)
        fn = losses.build_loss("dice+boundary:0.1")
        expected = losses.dice_loss(logits, labels) + 0.1 * losses.boundary_loss(
            logits, labels, dist_maps=dist
        )
        assert float(fn(logits, labels, dist_maps=dist)) == pytest.approx(float(expected), rel=1e-6)

    def test_unknown_name_lists_known(self):
        with pytest.raises(ValueError, match=r"known losses: .*cross_entropy.*dice"):
            losses.build_loss("cross_entropy+dise:0.5")

    @pytest.mark.parametrize(
        ("spec", "options"),
        [
            ("", None),
            ("dice:abc", None),
            ("dice+", None),
            ("dice", {"focal": {"gamma": 1.0}}),
            ("dice", {"dice": {"smoth": 1.0}}),
        ],
    )
    def test_bad_specs_raise(self, spec, options):
        with pytest.raises(ValueError):
            losses.build_loss(spec, options=options)


class TestSegmentationLoss:
    def test_main_aux_and_deep_supervision(self):
        logits, labels = _batch(20)
        rng = np.random.default_rng(21)
        aux = rng.normal(size=logits.shape).astype(np.float32)
        small = rng.normal(size=(2, 3, 3, K)).astype(np.float32)
        outputs = {"logits": logits, "aux_logits": aux, "deep_supervision": [aux, small]}
        fn = losses.build_loss("cross_entropy")
        total, terms = losses.segmentation_loss(outputs, labels, fn, aux_weight=0.25)
        resized = jax.image.resize(small, logits.shape, method="bilinear")
        parts = [fn(logits, labels), fn(aux, labels), fn(aux, labels), fn(resized, labels)]
        expected = parts[0] + 0.25 * (parts[1] + parts[2] + parts[3])
        assert float(total) == pytest.approx(float(expected), rel=1e-6)
        assert set(terms) == {"main", "aux", "deep_supervision_0", "deep_supervision_1", "total"}
        assert float(terms["aux"]) == pytest.approx(float(parts[1]), rel=1e-6)

    def test_main_only(self):
        logits, labels = _batch(22)
        total, terms = losses.segmentation_loss({"logits": logits}, labels, losses.dice_loss)
        assert set(terms) == {"main", "total"}
        assert float(total) == pytest.approx(float(losses.dice_loss(logits, labels)))
