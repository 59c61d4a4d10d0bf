"""Training augmentations: image-label alignment, crop sizes, ignore pixels, cat_max_ratio,
photometric distortion and mmsegmentation's keep-ratio rescale."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.data import transforms

IGNORE = 255


def _aligned_sample(rng, h=40, w=56):
    """Blocky labels (with an ignore block); image channel 0 encodes the label."""
    label = np.repeat(np.repeat(rng.integers(0, 6, (h // 8, w // 8)), 8, 0), 8, 1)
    label[:8, :8] = IGNORE
    code = np.where(label == IGNORE, 250, label * 30 + 20).astype(np.uint8)
    image = np.stack([code, rng.integers(0, 256, (h, w), dtype=np.uint8), code], -1)
    return {"image": image, "label": label.astype(np.int32)}


def _augment(**kw) -> transforms.TrainAugment:
    args = dict(
        crop_size=(32, 32), scale_range=(0.5, 2.0), flip=True, mean=(0.0,) * 3,
        std=(1.0,) * 3, ignore_index=IGNORE,
    )  # fmt: skip
    return transforms.TrainAugment(**{**args, **kw})


@pytest.mark.parametrize("base_size", [None, (64, 40)])
def test_train_augment_keeps_image_and_label_aligned(base_size):
    op = _augment(base_size=base_size, cat_max_ratio=0.75)
    padded = 0
    for seed in range(30):
        out = op.random_map(
            _aligned_sample(np.random.default_rng(seed)), np.random.default_rng(seed)
        )
        image, label = out["image"], out["label"]
        assert image.shape == (32, 32, 3) and image.dtype == np.float32
        assert label.shape == (32, 32) and label.dtype == np.int32
        assert set(np.unique(label).tolist()) <= set(range(6)) | {IGNORE}
        # Pixels inside a block (5x5 label neighbourhood constant; bilinear and nearest
        # sample up to a pixel apart at block edges): exact relation.
        pad = np.pad(label, 2, constant_values=-1)  # The crop border has unseen neighbours.
        inner = np.ones_like(label, bool)
        for dy in range(5):
            for dx in range(5):
                inner &= pad[dy : dy + 32, dx : dx + 32] == label
        expected = np.where(label == IGNORE, 250, label * 30 + 20)
        is_pad = (image[..., 0] == 0) & (image[..., 2] == 0)  # padded with zeros
        padded += is_pad.sum()
        assert (label[is_pad] == IGNORE).all()  # padding is always ignored
        ok = inner & ~is_pad
        np.testing.assert_allclose(image[..., 0][ok], expected[ok], atol=1.0)
        np.testing.assert_array_equal(image[..., 0], image[..., 2])  # same op on channels
    assert padded > 0  # Some draws shrink the image below the crop: padding was exercised.


def test_ignore_pixels_never_become_a_class():
    label = np.full((24, 24), IGNORE, np.int32)
    label[10:14, 10:14] = 3
    sample = {"image": np.zeros((24, 24, 3), np.uint8), "label": label}
    op = _augment(crop_size=(20, 28), scale_range=(0.3, 3.0))
    for seed in range(20):
        out = op.random_map(sample, np.random.default_rng(seed))
        assert out["label"].shape == (20, 28)
        assert set(np.unique(out["label"]).tolist()) <= {3, IGNORE}
        # Nearest-neighbour resizing: the class area scales with the image, never grows
        # out of the ignored region by interpolation.
        assert (out["label"] == 3).sum() <= (4 * 3.0 + 1) ** 2


def test_cat_max_ratio_rejects_one_class_crops():
    label = np.zeros((64, 64), np.int32)
    label[:, :16] = 1  # Only windows with left <= 8 keep class 0's share under 0.75.
    sample = {"image": np.zeros((64, 64, 3), np.uint8), "label": label}

    def share_ok(cat_max_ratio: float) -> int:
        ok = 0
        for seed in range(40):
            crop = transforms.random_crop(
                sample, np.random.default_rng(seed), 32, 32, cat_max_ratio=cat_max_ratio
            )["label"]
            counts = np.bincount(crop.ravel(), minlength=2)
            ok += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return ok

    assert share_ok(1.0) <= 20  # ~27% of windows qualify
    assert share_ok(0.75) >= 36  # 11 draws: fails with probability ~3%


def test_cat_max_ratio_ignores_ignore_pixels():
    label = np.full((32, 32), IGNORE, np.int32)
    label[:, :8] = 0
    label[:, 8:16] = 1  # 6 of 17 window positions hold both, neither above 3/4.
    sample = {"image": np.zeros((32, 32, 3), np.uint8), "label": label}
    ok = 0
    for seed in range(40):
        crop = transforms.random_crop(
            sample, np.random.default_rng(seed), 16, 16, cat_max_ratio=0.75
        )["label"]
        counts = np.bincount(crop[crop != IGNORE].ravel(), minlength=2)
        # Counting ignore as a class would accept windows holding class 1 alone.
        ok += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
    assert ok >= 38


def test_photometric_distortion():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = transforms.photometric_distortion(image, np.random.default_rng(5))
    b = transforms.photometric_distortion(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == image.shape
    grey = np.full((4, 4, 3), 128, np.uint8)
    unchanged = 0
    for seed in range(400):
        out = transforms.photometric_distortion(grey, np.random.default_rng(seed))
        # Saturation and hue do nothing to grey; brightness and contrast keep it uniform.
        assert (out == out[0, 0, 0]).all()
        unchanged += int(out[0, 0, 0] == 128)
    # Both brightness and contrast are skipped with probability 1/4.
    assert 0.18 < unchanged / 400 < 0.32
    # Labels are untouched by the whole op.
    sample = {"image": image, "label": np.arange(256, dtype=np.int32).reshape(16, 16) % 6}
    out = _augment(
        crop_size=(16, 16), scale_range=(1.0, 1.0), flip=False, photometric=True
    ).random_map(sample, np.random.default_rng(1))
    np.testing.assert_array_equal(out["label"], sample["label"])


def test_rescale_size_matches_mmseg_keep_ratio():
    # Cityscapes 1024x2048 at scale (2048, 1024), ratio 0.5 -> 512x1024.
    assert transforms.rescale_size(1024, 2048, (2048, 1024), 0.5) == (512, 1024)
    # An ADE20K-like 384x512 image at scale (2048, 512): the short side goes to 512 * r.
    assert transforms.rescale_size(384, 512, (2048, 512), 1.0) == (512, 683)
    assert transforms.rescale_size(384, 512, (2048, 512), 2.0) == (1024, 1365)
    # A very long image is bound by the long edge instead.
    assert transforms.rescale_size(100, 1000, (800, 512), 1.0) == (80, 800)
