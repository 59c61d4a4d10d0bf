"""Anchor boxes per FPN level, as torchvision's `AnchorGenerator` (numpy, static).

Anchors depend only on the (padded, fixed) image size and the feature-map sizes, so they
are computed once on the host and enter the jitted program as constants.

Example (Mask R-CNN R-50-FPN on an 800 x 800 canvas, P2-P6 at strides 4-64):
    >>> grids = [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)]
    >>> levels = anchors_per_level((800, 800), grids, ((32,), (64,), (128,), (256,), (512,)))
    >>> [len(a) for a in levels]   # 3 aspect ratios per location
    [120000, 30000, 7500, 1875, 507]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ASPECT_RATIOS = (0.5, 1.0, 2.0)
# torchvision's maskrcnn_resnet50_fpn: one size per level, P2 .. P6.
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """`[len(ratios) * len(sizes), 4]` anchors centred on (0, 0), rounded as torchvision's.

    Aspect ratio = height / width; ratio-major order (`generate_anchors`).
    """
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2).astype(np.float32)


def grid_anchors(grid_hw: Sequence[int], stride_hw: Sequence[int], cell: np.ndarray) -> np.ndarray:
    """`[H * W * A, 4]`: `cell` shifted to every location (row-major, anchors innermost)."""
    gh, gw = grid_hw
    sh, sw = stride_hw
    shift_y, shift_x = np.meshgrid(np.arange(gh) * sh, np.arange(gw) * sw, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    return (shifts.astype(np.float32) + cell[None]).reshape(-1, 4)


def anchors_per_level(
    image_hw: Sequence[int],
    grids: Sequence[Sequence[int]],
    sizes: Sequence[Sequence[float]] = FPN_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
) -> list[np.ndarray]:
    """The anchors of each level, `[H_l * W_l * A_l, 4]` float32.

    The stride of a level is `image size // grid size` per axis (torchvision), so a
    padded canvas gives the same anchors as torchvision's batched (padded) images.
    """
    if len(sizes) != len(grids):
        raise ValueError(f"{len(sizes)} anchor sizes for {len(grids)} feature levels")
    out = []
    for grid, level_sizes in zip(grids, sizes, strict=True):
        stride = (image_hw[0] // grid[0], image_hw[1] // grid[1])
        out.append(grid_anchors(grid, stride, cell_anchors(level_sizes, aspect_ratios)))
    return out
