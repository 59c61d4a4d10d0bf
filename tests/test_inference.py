"""Inference modes: sliding window, test-time augmentation, resize back to original size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import inference
from segjax.models import build_model

K = 4


def _conv_apply_fn(seed=0):
    # A 3x3 conv with zero "SAME" padding: spatial context, not equivariant near borders,
    # and not mirror-symmetric (random kernel).
    kernel = jax.random.normal(jax.random.key(seed), (3, 3, 3, K))

    def apply_fn(x):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return apply_fn


def _pixel_mlp_apply_fn():
    # pixel_mlp in eval mode: 1x1 convs with BN as an affine map: per-pixel by construction.
    model = build_model("pixel_mlp", num_classes=K)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), train=False)
    return lambda x: model.apply(variables, x, train=False)["logits"]


def _images(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_window_starts_cover_and_touch_border():
    assert inference.window_starts(20, 8, 5) == [0, 5, 10, 12]
    assert inference.window_starts(8, 8, 5) == [0]
    assert inference.window_starts(6, 8, 5) == [0]


def test_window_equal_to_image_is_exactly_whole():
    apply_fn = _conv_apply_fn()
    x = _images((2, 12, 16, 3))
    whole = inference.whole_logits(apply_fn, x)
    slide = inference.sliding_window_logits(apply_fn, x, crop_size=(12, 16), stride=(5, 5))
    np.testing.assert_array_equal(np.asarray(slide), np.asarray(whole))
    mode = inference.InferenceMode(mode="slide", crop_size=(12, 16), stride=(12, 16))
    np.testing.assert_array_equal(np.asarray(inference.predict(apply_fn, x, mode)), whole)


@pytest.mark.parametrize("gaussian", [False, True], ids=["mean", "gaussian"])
def test_overlapping_windows_match_whole_for_per_pixel_model(gaussian):
    x = _images((2, 16, 20, 3))
    kwargs = dict(crop_size=(8, 8), stride=(5, 6), gaussian=gaussian)
    apply_fn = _pixel_mlp_apply_fn()
    whole = inference.whole_logits(apply_fn, x)
    slide = jax.jit(lambda x: inference.sliding_window_logits(apply_fn, x, **kwargs))(x)
    np.testing.assert_allclose(slide, whole, rtol=1e-5, atol=1e-5)
    # The same windows on a model with spatial context differ at window borders, so the
    # comparison above can fail.
    conv = _conv_apply_fn()
    slide_conv = jax.jit(lambda x: inference.sliding_window_logits(conv, x, **kwargs))(x)
    diff = np.abs(slide_conv - conv(x)).max()
    assert diff > 1e-2


def test_image_smaller_than_window_is_padded_and_cut_back():
    apply_fn = _pixel_mlp_apply_fn()
    x = _images((1, 6, 7, 3))
    slide = inference.sliding_window_logits(apply_fn, x, crop_size=(8, 8), stride=(4, 4))
    assert slide.shape == (1, 6, 7, K)
    np.testing.assert_allclose(slide, apply_fn(x), rtol=1e-5, atol=1e-5)


def test_flip_tta_of_symmetric_input_is_symmetric():
    apply_fn = _conv_apply_fn(seed=3)
    half = _images((2, 10, 6, 3))
    x = jnp.concatenate([half, half[:, :, ::-1]], axis=2)  # mirror-symmetric, width 12
    flipped = inference.InferenceMode(flip=True)
    scores = np.asarray(inference.predict(apply_fn, x, flipped))
    np.testing.assert_array_equal(scores, scores[:, :, ::-1])
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)  # averaged probabilities
    plain = np.asarray(inference.predict(apply_fn, x, inference.InferenceMode()))
    assert np.abs(plain - plain[:, :, ::-1]).max() > 1e-2  # the model itself is not


def test_multi_scale_sliding_flip_combination():
    apply_fn = _pixel_mlp_apply_fn()
    x = _images((2, 16, 16, 3))
    mode = inference.InferenceMode(
        mode="slide", crop_size=(8, 8), stride=(6, 6), scales=(0.5, 1.0, 1.5), flip=True
    )
    predict = jax.jit(lambda x: inference.predict(apply_fn, x, mode))
    scores = predict(x)
    assert scores.shape == (2, 16, 16, K)
    np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)
    # A per-pixel model on a constant image predicts the same at every scale and flip.
    const = jnp.broadcast_to(x[:, :1, :1], x.shape)
    probs = jax.nn.softmax(apply_fn(const), -1)
    np.testing.assert_allclose(predict(const), probs, atol=1e-5)


def _quadrants(h, w):
    y, x = np.mgrid[:h, :w]
    return ((y >= round(0.4 * h)).astype(np.int32) + 2 * (x >= round(0.7 * w))).astype(np.int32)


def test_resize_to_original_keeps_label_alignment():
    canvas, out = (32, 32), (48, 56)
    originals = [(45, 20), (30, 56), (16, 16)]
    scores, resized, labels = [], [], []
    for h, w in originals:
        rh, rw = inference.fit_size(h, w, canvas)
        label = _quadrants(h, w)
        # What a perfect model outputs on the resized image: one-hot of the label resized
        # (nearest); the padding says "class 3" to show that none of it leaks in.
        rows = ((np.arange(rh) + 0.5) * h / rh).astype(int)
        cols = ((np.arange(rw) + 0.5) * w / rw).astype(int)
        small = label[rows][:, cols]
        s = np.full((*canvas, K), 0.0, np.float32)
        s[..., 3] = 10.0
        s[:rh, :rw] = np.eye(K, dtype=np.float32)[small] * 10.0
        scores.append(s)
        resized.append((rh, rw))
        labels.append(label)
    back = jax.jit(inference.resize_to_original, static_argnums=3)(
        jnp.asarray(np.stack(scores)),
        jnp.asarray(resized, jnp.int32),
        jnp.asarray(originals, jnp.int32),
        out,
    )
    assert back.shape == (3, *out, K)
    pred = np.asarray(back.argmax(-1))
    for i, (h, w) in enumerate(originals):
        got, label = pred[i, :h, :w], labels[i]
        wrong = got != label
        # Only pixels next to a class boundary may differ (resampling blurs one pixel).
        boundary = np.zeros_like(wrong)
        by, bx = round(0.4 * h), round(0.7 * w)
        boundary[max(by - 2, 0) : by + 2] = True
        boundary[:, max(bx - 2, 0) : bx + 2] = True
        assert not (wrong & ~boundary).any(), f"image {i}: misaligned pixels"
        assert wrong.mean() < 0.1
    # At scale 1 the resampling is the identity.
    same = inference.resize_to_original(
        jnp.asarray(scores[2:]), jnp.asarray([[16, 16]]), jnp.asarray([[16, 16]]), (16, 16)
    )
    np.testing.assert_allclose(same[0], scores[2][:16, :16], atol=1e-5)
