"""RoIAlign against a direct bilinear-sampling loop and torchvision's numbers."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.detection import roi_align as ra

B, C, H, W = 2, 2, 7, 9
# Image b, box (x1, y1, x2, y2) in image pixels; spatial scale 0.5: one inside, one
# crossing the top-left corner, a thin one, one crossing the bottom-right corner.
BOXES = [
    (0, (1.0, 2.0, 13.0, 9.5)),
    (1, (-3.0, -2.0, 5.0, 4.0)),
    (0, (10.0, 6.0, 11.0, 6.5)),
    (1, (14.0, 9.0, 20.0, 16.0)),
]
# torchvision.ops.roi_align(x [B, C, H, W] float64, rois, (2, 3), spatial_scale=0.5,
# sampling_ratio=2, aligned=...) on the features of `_features()` (torchvision 0.29.1),
# [K, C, ph, pw].
TORCHVISION = {
    True: [
        [
            [[0.932378, 0.643186, -0.475103], [1.192449, 0.372494, -0.515929]],
            [[0.881857, -0.187324, -0.706901], [0.706786, -0.375854, -0.284655]],
        ],
        [
            [[0.227324, 0.414489, 0.09987], [0.42872, 0.76235, 0.063497]],
            [[0.03528, 0.014647, -0.335212], [-0.003574, -0.10943, -0.716311]],
        ],
        [
            [[-0.435589, -0.516162, -0.596736], [-0.447097, -0.524733, -0.60237]],
            [[-0.641415, -0.618239, -0.595062], [-0.620272, -0.5929, -0.565529]],
        ],
        [
            [[1.294195, 0.899023, 0.417686], [0.611997, 0.352275, 0.156194]],
            [[0.545121, -0.015867, -0.048261], [0.172108, -0.079159, -0.056957]],
        ],
    ],
    False: [
        [
            [[1.111945, 0.295148, -0.689977], [1.129545, -0.020983, -0.503778]],
            [[0.643175, -0.520791, -0.498572], [0.333487, -0.533421, 0.118084]],
        ],
        [
            [[0.452661, 0.660531, -0.142052], [0.404496, 0.499803, -0.32754]],
            [[0.064345, -0.20454, -0.842524], [-0.051529, -0.385238, -0.788576]],
        ],
        [
            [[-0.625994, -0.600617, -0.575241], [-0.583374, -0.524435, -0.465496]],
            [[-0.290618, -0.087365, 0.115889], [-0.123193, 0.092833, 0.308859]],
        ],
        [
            [[1.031594, 0.745337, 0.0], [0.471936, 0.312388, 0.0]],
            [[0.144573, -0.161859, 0.0], [0.025103, -0.113913, 0.0]],
        ],
    ],
}


def _jit(fn, *arrays, **static):
    # One compile per call (eager dispatch would compile every op on its own).
    return np.asarray(jax.jit(functools.partial(fn, **static))(*map(jnp.asarray, arrays)))


def _features():
    # [B, H, W, C] (NHWC) of f(b, c, h, w) = sin(0.3 h + 0.7 w + c + 2 b) + 0.1 h.
    b, h, w, c = np.meshgrid(np.arange(B), np.arange(H), np.arange(W), np.arange(C), indexing="ij")
    return (np.sin(0.3 * h + 0.7 * w + c + 2 * b) + 0.1 * h).astype(np.float32)


def _bilinear(f, y, x):
    # One sample of f [H, W, C] at (y, x), torchvision's rules written out.
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = math.floor(y), math.floor(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * f[y0, x0]
        + (1 - ly) * lx * f[y0, x1]
        + ly * (1 - lx) * f[y1, x0]
        + ly * lx * f[y1, x1]
    )


def _reference(f, box, out_hw, scale, ratio, aligned):
    # RoIAlign by its definition: per bin, the mean of ratio x ratio bilinear samples.
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * scale - off for v in box)
    bw, bh = x2 - x1, y2 - y1
    if not aligned:
        bw, bh = max(bw, 1.0), max(bh, 1.0)
    ph, pw = out_hw
    out = np.zeros((ph, pw, f.shape[-1]))
    for i in range(ph):
        for j in range(pw):
            acc = np.zeros(f.shape[-1])
            for iy in range(ratio):
                for ix in range(ratio):
                    y = y1 + (i + (iy + 0.5) / ratio) * bh / ph
                    x = x1 + (j + (ix + 0.5) / ratio) * bw / pw
                    acc += _bilinear(f, y, x)
            out[i, j] = acc / ratio**2
    return out


def _batched_boxes():
    # [B, 2, 4]: the boxes of each image, in BOXES order within the image.
    per_image = [[box for b, box in BOXES if b == i] for i in range(B)]
    return np.asarray(per_image, np.float32)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_equals_sampling_loop_and_torchvision(aligned):
    f = _features()
    got = _jit(
        ra.roi_align,
        f,
        _batched_boxes(),
        output_size=(2, 3),
        spatial_scale=0.5,
        sampling_ratio=2,
        aligned=aligned,
    )
    slot = {0: 0, 1: 0}
    for k, (b, box) in enumerate(BOXES):
        mine = got[b, slot[b]]
        slot[b] += 1
        ref = _reference(f[b], box, (2, 3), 0.5, 2, aligned)
        np.testing.assert_allclose(mine, ref, atol=1e-5)
        tv = np.transpose(np.asarray(TORCHVISION[aligned][k]), (1, 2, 0))  # [C,ph,pw] -> NHWC
        np.testing.assert_allclose(mine, tv, atol=2e-6)


def test_roi_align_other_sampling_ratio_and_output_size():
    f = _features()
    boxes = _batched_boxes()
    got = _jit(ra.roi_align, f, boxes, output_size=(4, 2), spatial_scale=0.5, sampling_ratio=3)
    for b in range(B):
        for r in range(2):
            ref = _reference(f[b], boxes[b, r], (4, 2), 0.5, 3, True)
            np.testing.assert_allclose(got[b, r], ref, atol=1e-5)
    with pytest.raises(ValueError, match="sampling_ratio"):
        ra.roi_align(
            jnp.asarray(f), jnp.asarray(boxes), (2, 2), spatial_scale=1.0, sampling_ratio=0
        )


def test_fpn_levels_as_level_mapper():
    # floor(4 + log2(sqrt(area) / 224)), clamped to [2, 5], minus 2.
    sides = [10.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 896.0, 2000.0]
    boxes = jnp.asarray([[0.0, 0.0, s, s] for s in sides])
    expected = [min(max(math.floor(4 + math.log2(s / 224) + 1e-6), 2), 5) - 2 for s in sides]
    np.testing.assert_array_equal(_jit(ra.fpn_levels, boxes, k_min=2, k_max=5), expected)


def test_multilevel_roi_align_reads_each_box_from_its_level():
    rng = np.random.default_rng(0)
    strides = (4, 8, 16, 32)
    feats = [rng.normal(size=(2, 64 // s, 48 // s, 3)).astype(np.float32) for s in strides]
    boxes = np.asarray(
        [
            [[2, 3, 20, 30], [0, 0, 60, 47], [5, 5, 40, 9], [1, 1, 3, 2]],
            [[10, 4, 47, 63], [3, 3, 30, 30], [0, 0, 48, 64], [20, 20, 21, 40]],
        ],
        np.float32,
    )
    # Small canonical scale so that these boxes spread over all four levels.
    levels = _jit(ra.fpn_levels, boxes, k_min=2, k_max=5, canonical_scale=16)
    assert len(np.unique(levels)) >= 3
    got = np.asarray(
        jax.jit(lambda f, b: ra.multilevel_roi_align(f, strides, b, (3, 3), canonical_scale=16))(
            [jnp.asarray(f) for f in feats], jnp.asarray(boxes)
        )
    )
    for b in range(2):
        for r in range(4):
            level = levels[b, r]
            ref = _reference(feats[level][b], boxes[b, r], (3, 3), 1 / strides[level], 2, True)
            np.testing.assert_allclose(got[b, r], ref, atol=1e-5)


def test_roi_align_channel_equals_roi_align_of_that_channel():
    f = _features()
    boxes = _batched_boxes()
    channels = np.array([[1, 0], [0, 1]])
    got = _jit(ra.roi_align_channel, f, boxes, channels, output_size=(2, 3), spatial_scale=0.5)
    full = _jit(ra.roi_align, f, boxes, output_size=(2, 3), spatial_scale=0.5)
    for b in range(B):
        for r in range(2):
            np.testing.assert_allclose(got[b, r], full[b, r, ..., channels[b, r]], atol=1e-6)
