"""NYUDv2 and SUN RGB-D builders, on small copies in the real layouts (rgbd_files.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from segjax.data.builders import nyudv2, sunrgbd
from tests.data import rgbd_files


def _records(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


# --------------------------------------------------------------------------- NYUDv2


def test_nyudv2_layout_mapping_split_and_depth(tmp_path):
    files = rgbd_files.write_nyudv2(tmp_path / "m")
    builder = nyudv2.prepare(tmp_path / "data", "default", files["dir"])
    meta = builder.info.metadata
    assert meta["num_classes"] == 40 and meta["depth_unit"] == "mm"
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 4, "test": 2}
    # Per-band statistics of the train frames' RGB-D pixels (R, G, B 0-255; depth mm).
    train = np.array([0, 2, 3, 5])
    stacked = (
        np.concatenate(
            [
                files["rgb"][train],
                np.rint(files["depth"][train].astype(np.float64) * 1000)[..., None],
            ],
            axis=-1,
        )
        .reshape(-1, 4)
        .astype(np.float64)
    )
    np.testing.assert_allclose(meta["rgbd_band_mean"], stacked.mean(0), rtol=1e-9)
    np.testing.assert_allclose(meta["rgbd_band_std"], stacked.std(0), rtol=1e-9)
    for split, frames in (("train", (1, 3, 4, 6)), ("test", (2, 5))):
        records = _records(builder, split)
        assert [r["id"].decode() if isinstance(r["id"], bytes) else r["id"] for r in records] == [
            f"{f:04d}" for f in frames
        ]
        for record, frame in zip(records, frames, strict=True):
            i = frame - 1  # splits.mat is 1-based
            np.testing.assert_array_equal(record["image"], files["rgb"][i])
            assert record["depth"].dtype == np.uint16
            np.testing.assert_array_equal(
                record["depth"][..., 0], np.rint(files["depth"][i].astype(np.float64) * 1000)
            )
            raw = files["labels"][i]
            expected = np.empty(raw.shape, np.int64)
            for y in range(raw.shape[0]):
                for x in range(raw.shape[1]):
                    r = int(raw[y, x])
                    expected[y, x] = 255 if r == 0 else int(files["map_class"][r - 1]) - 1
            np.testing.assert_array_equal(record["label"][..., 0], expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skip": ("depths",)}, "nyu_depth_v2_labeled.mat: no 'depths' array"),
        ({"depths_shape": (6, 33, 24)}, "nyu_depth_v2_labeled.mat:depths[1]: depth is 24x33"),
        ({"skip": ("classMapping40.mat",)}, "classMapping40.mat: not found"),
        ({"train": (1, 7)}, "splits.mat: trainNdxs holds frames [7] outside 1..6"),
        ({"train": (1, 2), "test": (2,)}, "splits.mat: frames [2] are in both splits"),
    ],
)
def test_nyudv2_bad_files_name_the_file(tmp_path, kwargs, message):
    files = rgbd_files.write_nyudv2(tmp_path / "m", **kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=_escape(message)):
        nyudv2.prepare(tmp_path / "data", "default", files["dir"])


def test_nyudv2_label_and_depth_values_checked(tmp_path):
    import h5py

    files = rgbd_files.write_nyudv2(tmp_path / "m")
    path = os.path.join(files["dir"], nyudv2.MAT_FILE)
    with h5py.File(path, "r+") as f:
        labels = f["labels"][...]
        labels[2, 5, 7] = 900  # frame 3, not one of the 894 classes
        f["labels"][...] = labels
    with pytest.raises(ValueError, match=_escape("labels[3]: label values [900]")):
        nyudv2.prepare(tmp_path / "data", "default", files["dir"])
    with h5py.File(path, "r+") as f:
        f["labels"][...] = files["labels"].transpose(0, 2, 1)
        depths = f["depths"][...]
        depths[0, 1, 1] = np.nan
        f["depths"][...] = depths
    with pytest.raises(ValueError, match=_escape("depths[1]: 1 depth values are not finite")):
        nyudv2.prepare(tmp_path / "data2", "default", files["dir"])


def test_nyudv2_mapping_outside_40_classes(tmp_path):
    import scipy.io

    files = rgbd_files.write_nyudv2(tmp_path / "m")
    bad = files["map_class"].astype(np.float64)
    bad[10] = 41
    scipy.io.savemat(os.path.join(files["dir"], nyudv2.MAPPING_FILE), {"mapClass": bad[None]})
    with pytest.raises(ValueError, match=_escape("mapClass maps classes [11] to [41]")):
        nyudv2.prepare(tmp_path / "data", "default", files["dir"])


# ------------------------------------------------------------------------ SUN RGB-D


def test_sunrgbd_esanet_layout(tmp_path):
    frames = rgbd_files.write_sunrgbd(tmp_path / "m")
    builder = sunrgbd.prepare(tmp_path / "data", "default", tmp_path / "m")
    assert builder.info.metadata["num_classes"] == 37
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 3, "test": 2}
    for split in ("train", "test"):
        for record, (rgb, depth_mm, label) in zip(
            _records(builder, split), frames[split], strict=True
        ):
            assert record["image"].shape == rgb.shape
            # JPEG decoders may differ by a grey level on some pixels.
            assert np.abs(record["image"].astype(int) - rgb).max() <= 2
            np.testing.assert_array_equal(record["depth"][..., 0], depth_mm)
            expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
            np.testing.assert_array_equal(record["label"][..., 0], expected)


def test_sun_depth_rotation():
    mm = np.array([0, 1, 1234, 8191], np.uint16)
    stored = np.array([0, 8, 1234 * 8, 8191 * 8], np.uint16)  # small values: just x8
    np.testing.assert_array_equal(sunrgbd.sun_depth_to_mm(stored), mm)
    wrapped = np.array([(9000 << 3) & 0xFFFF | (9000 >> 13)], np.uint16)
    np.testing.assert_array_equal(sunrgbd.sun_depth_to_mm(wrapped), [9000])


def _rewrite(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_sunrgbd_bad_files_name_the_file(tmp_path):
    root = tmp_path / "m"
    rgbd_files.write_sunrgbd(root)
    depth_list = (root / "train_depth.txt").read_text().splitlines()
    label_list = (root / "train_label.txt").read_text().splitlines()
    # A missing depth file: the list, its line and the file are named.
    missing = root / "SUNRGBD" / depth_list[2]
    saved = missing.read_bytes()
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=r"train_depth.txt line 3: depth file .*0000002"):
        sunrgbd.prepare(tmp_path / "d1", "default", root)
    _rewrite(missing, saved)
    # A depth of another size than its image.
    _rewrite(missing, rgbd_files.sun_depth_png(np.ones((10, 12), np.uint16)))
    with pytest.raises(ValueError, match=r"0000002.png: depth is 10x12 but its image .* is 24x32"):
        sunrgbd.prepare(tmp_path / "d2", "default", root)
    _rewrite(missing, saved)
    # A label value outside the 37 classes (0 void, 1..37).
    label_path = root / "SUNRGBD" / label_list[0]
    label = np.load(label_path)
    label[3, 3] = 38
    np.save(label_path, label)
    with pytest.raises(ValueError, match=r"label/label.npy: label values \[38\]"):
        sunrgbd.prepare(tmp_path / "d3", "default", root)
    # Lists of different lengths.
    (root / "test_label.txt").write_text(label_list[0])
    with pytest.raises(ValueError, match="test lists differ in length"):
        sunrgbd.prepare(tmp_path / "d4", "default", root)


def _escape(text: str) -> str:
    import re

    return re.escape(text)
