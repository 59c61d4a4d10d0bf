"""Small NYUDv2 and SUN RGB-D copies in the layouts users download, for the tests.

NYUDv2: ``nyu_depth_v2_labeled.mat`` written with h5py as MATLAB v7.3 writes it (a
512-byte user block, column-major arrays seen transposed: ``images`` [N, 3, W, H]),
``splits.mat`` and ``classMapping40.mat`` written with scipy as MATLAB v5 files (1-based
frame numbers, doubles). SUN RGB-D: ESANet's converted folder (the six lists, frames
below ``SUNRGBD/``, depth in the toolbox's rotated-millimetre PNGs, ``label.npy``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import scipy.io

NYU_NUM_RAW = 894


def write_nyudv2(
    root,
    *,
    num_frames: int = 6,
    height: int = 24,
    width: int = 32,
    train: tuple[int, ...] = (1, 3, 4, 6),
    test: tuple[int, ...] = (2, 5),
    seed: int = 0,
    depths_shape: tuple[int, ...] | None = None,
    skip: tuple[str, ...] = (),
) -> dict:
    """Writes the three NYUDv2 files under `root`; returns the arrays in H x W order.

    Returns a dict with `rgb` [N, H, W, 3] uint8, `depth` [N, H, W] metres, `labels`
    [N, H, W] (raw 894-class ids) and `map_class` [894] (1..40), plus `dir` (= root).
    `depths_shape` overrides the stored depths' shape (to test a mismatch); `skip`
    leaves out arrays ("depths") or files ("classMapping40.mat").
    """
    import h5py

    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    rgb = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.4, 9.9, (num_frames, height, width)).astype(np.float32)
    labels = rng.integers(0, NYU_NUM_RAW + 1, (num_frames, height, width)).astype(np.uint16)
    labels[:, 0, 0] = 0  # unlabelled
    labels[:, 0, 1] = NYU_NUM_RAW
    map_class = rng.integers(1, 41, NYU_NUM_RAW)
    with h5py.File(os.path.join(root, "nyu_depth_v2_labeled.mat"), "w", userblock_size=512) as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)  # [N, 3, W, H]
        if "depths" not in skip:
            stored = depth.transpose(0, 2, 1)
            if depths_shape is not None:
                stored = rng.uniform(0.4, 9.9, depths_shape).astype(np.float32)
            f["depths"] = stored
        f["labels"] = labels.transpose(0, 2, 1)
    if "splits.mat" not in skip:
        scipy.io.savemat(
            os.path.join(root, "splits.mat"),
            {
                "trainNdxs": np.asarray(train, np.float64)[:, None],
                "testNdxs": np.asarray(test, np.float64)[:, None],
            },
        )
    if "classMapping40.mat" not in skip:
        names = np.empty((1, 40), dtype=object)
        for k in range(40):
            names[0, k] = f"class{k + 1}"
        scipy.io.savemat(
            os.path.join(root, "classMapping40.mat"),
            {"mapClass": map_class.astype(np.float64)[None, :], "className": names},
        )
    return {"rgb": rgb, "depth": depth, "labels": labels, "map_class": map_class, "dir": root}


def sun_depth_png(depth_mm: np.ndarray) -> bytes:
    """Millimetres -> the SUN RGB-D toolbox's PNG (each value rotated left by 3 bits)."""
    mm = depth_mm.astype(np.uint16)
    ok, data = cv2.imencode(".png", (mm << 3) | (mm >> 13))
    assert ok
    return data.tobytes()


def write_sunrgbd(root, *, seed: int = 0, sizes=((24, 32), (26, 36), (24, 32))) -> dict:
    """Writes ESANet's SUN RGB-D layout: train = the frames of `sizes`, test = 2 frames.

    Frames of each split alternate between two sensors (kv1, realsense). One training
    label is a PNG, the others `.npy`. Returns {split: [(rgb, depth_mm, label37)]}.
    """
    rng = np.random.default_rng(seed)
    root = os.fspath(root)
    frames: dict[str, list] = {}
    for split, split_sizes in (("train", sizes), ("test", ((24, 32), (26, 36)))):
        lists = {"rgb": [], "depth": [], "label": []}
        frames[split] = []
        for k, (h, w) in enumerate(split_sizes):
            scene = f"{'kv1/NYUdata' if k % 2 == 0 else 'realsense/lg'}/{split}{k:04d}"
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            depth_mm = rng.integers(0, 10000, (h, w)).astype(np.uint16)
            depth_mm[0, 0] = 0  # no measurement
            label = rng.integers(0, 38, (h, w)).astype(np.uint8)
            label[0, :2] = (0, 37)
            rel = {
                "rgb": f"{scene}/image/{k:07d}.jpg",
                "depth": f"{scene}/depth_bfx/{k:07d}.png",
                "label": f"{scene}/label/label.{'png' if (split, k) == ('train', 1) else 'npy'}",
            }
            for kind, path in rel.items():
                full = os.path.join(root, "SUNRGBD", path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                if kind == "rgb":
                    ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1])
                    assert ok
                    with open(full, "wb") as f:
                        f.write(jpg.tobytes())
                    # What a reader decodes (JPEG is lossy): the expected image.
                    rgb = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[..., ::-1]
                elif kind == "depth":
                    with open(full, "wb") as f:
                        f.write(sun_depth_png(depth_mm))
                elif path.endswith(".npy"):
                    np.save(full, label)
                else:
                    cv2.imwrite(full, label)
                lists[kind].append(path)
            frames[split].append((rgb, depth_mm, label))
        for kind, paths in lists.items():
            with open(os.path.join(root, f"{split}_{kind}.txt"), "w") as f:
                f.write("\n".join(paths))
    return frames
