"""Each real dataset's builder, prepared from a tiny copy of its real file layout.

The copies are generated here (32x48 images, a few per split) as the archives or
folders users have; each test prepares one and checks counts, shapes, label ranges and
the raw -> training label mapping, and that bad input fails naming the file.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from segjax.data.builders import ade20k, camvid, cityscapes, folder, pascal_context, pascal_voc

H, W = 32, 48


def _jpg(rng) -> bytes:
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _png(array: np.ndarray, palette: bool = False) -> bytes:
    """A label PNG: greyscale, or (VOC style) indexed with a colour palette."""
    im = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette:  # pixel = palette index, shown in colour
        im = Image.frombytes("P", im.size, array.astype(np.uint8).tobytes())
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write(files: dict[str, bytes], root, archive: str | None = None) -> str:
    """Writes `files` under `root` as a folder, or as one .zip/.tar archive in `root`."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    if archive is None:
        for rel, data in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    elif archive.endswith(".zip"):
        with zipfile.ZipFile(os.path.join(root, archive), "w") as zf:
            for rel, data in files.items():
                zf.writestr(rel, data)
    else:
        mode = "w:gz" if archive.endswith((".tgz", ".tar.gz")) else "w"
        with tarfile.open(os.path.join(root, archive), mode) as tf:
            for rel, data in files.items():
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


def _records(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _check_records(records, num_classes: int) -> None:
    for r in records:
        assert r["image"].shape == (H, W, 3) and r["image"].dtype == np.uint8
        assert r["label"].shape == (H, W, 1) and r["label"].dtype == np.uint8
        values = set(np.unique(r["label"]).tolist())
        assert values <= set(range(num_classes)) | {255}, values


# ------------------------------------------------------------------------ PASCAL VOC


def _voc_files(rng, train_ids, val_ids, *, prefix="VOCdevkit/VOC2012/"):
    files, labels = {}, {}
    for i in train_ids + val_ids:
        label = rng.integers(0, 21, (H, W))
        label[:2] = 255  # the void boundary
        labels[i] = label
        files[f"{prefix}JPEGImages/{i}.jpg"] = _jpg(rng)
        files[f"{prefix}SegmentationClass/{i}.png"] = _png(label, palette=True)
    files[f"{prefix}ImageSets/Segmentation/train.txt"] = "\n".join(train_ids).encode()
    files[f"{prefix}ImageSets/Segmentation/val.txt"] = "\n".join(val_ids).encode()
    return files, labels


def test_voc_from_tar_keeps_palette_indices(tmp_path):
    rng = np.random.default_rng(0)
    files, labels = _voc_files(rng, ["2007_000001", "2007_000002", "2007_000003"], ["2007_000004"])
    manual = _write(files, tmp_path / "manual", pascal_voc.VOC_ARCHIVE)
    builder = pascal_voc.prepare(tmp_path / "data", "default", manual)
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 1
    assert builder.info.metadata["num_classes"] == 21
    assert builder.info.metadata["class_names"][15] == "person"
    records = _records(builder, "train")
    _check_records(records, 21)
    for r in records:  # Palette PNG indices are the labels, unchanged (void stays 255).
        np.testing.assert_array_equal(r["label"][..., 0], labels[r["id"].decode()])
    assert pascal_voc.is_prepared(tmp_path / "data")


def test_voc_aug_adds_sbd_minus_val(tmp_path):
    import scipy.io

    rng = np.random.default_rng(1)
    files, _ = _voc_files(rng, ["a1", "a2"], ["v1", "v2"])
    sbd_ids = ["s1", "s2", "v1", "a1"]  # v1 is VOC val: must be excluded; a1 keeps VOC's label.
    sbd_labels = {}
    for i in sbd_ids:
        if i not in ("a1", "v1"):
            files[f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"] = _jpg(rng)
        sbd_labels[i] = rng.integers(0, 21, (H, W)).astype(np.uint8)
        buf = io.BytesIO()
        scipy.io.savemat(buf, {"GTcls": {"Segmentation": sbd_labels[i]}})
        files[f"benchmark_RELEASE/dataset/cls/{i}.mat"] = buf.getvalue()
    files["benchmark_RELEASE/dataset/train.txt"] = b"s1\nv1\n"
    files["benchmark_RELEASE/dataset/val.txt"] = b"s2\na1\n"
    voc = {k: v for k, v in files.items() if k.startswith("VOCdevkit")}
    sbd = {k: v for k, v in files.items() if k.startswith("benchmark")}
    _write(voc, tmp_path / "manual")  # extracted VOC folder
    _write(sbd, tmp_path / "manual", pascal_voc.SBD_ARCHIVE)  # SBD as its .tgz
    builder = pascal_voc.prepare(tmp_path / "data", "aug", tmp_path / "manual")
    train = {r["id"].decode(): r for r in _records(builder, "train")}
    assert sorted(train) == ["a1", "a2", "s1", "s2"]
    np.testing.assert_array_equal(train["s1"]["label"][..., 0], sbd_labels["s1"])
    assert (train["a1"]["label"][:2] == 255).all()  # VOC's own label, not SBD's
    assert builder.info.splits["validation"].num_examples == 2


def test_voc_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(2)
    ids = ["x1", "x2"]
    files, _ = _voc_files(rng, ids[:1], ids[1:])
    bad = dict(files)
    bad["VOCdevkit/VOC2012/JPEGImages/x1.jpg"] = files["VOCdevkit/VOC2012/JPEGImages/x1.jpg"][:200]
    with pytest.raises(ValueError, match=r"x1\.jpg: cannot decode image"):
        pascal_voc.prepare(tmp_path / "d1", "default", _write(bad, tmp_path / "m1"))
    bad = dict(files)
    bad["VOCdevkit/VOC2012/SegmentationClass/x2.png"] = _png(np.zeros((H, W + 1)))
    with pytest.raises(
        ValueError, match=r"x2\.png: label is 32x49 but its image .*x2\.jpg is 32x48"
    ):
        pascal_voc.prepare(tmp_path / "d2", "default", _write(bad, tmp_path / "m2"))
    bad = dict(files)
    label = np.zeros((H, W))
    label[5, 5] = 21
    bad["VOCdevkit/VOC2012/SegmentationClass/x1.png"] = _png(label)
    with pytest.raises(ValueError, match=r"x1\.png: label values \[21\] are not classes"):
        pascal_voc.prepare(tmp_path / "d3", "default", _write(bad, tmp_path / "m3"))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pascal_voc.prepare(tmp_path / "d4", "default", None)


# ------------------------------------------------------------------------ Cityscapes


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    rng = np.random.default_rng(3)
    img, gt = {}, {}
    ids = {
        "train": ["aachen_000000_000019", "bremen_000001_000019"],
        "val": ["lindau_000000_000019"],
    }
    raw = {}
    for split, names in ids.items():
        for n in names:
            city = n.split("_")[0]
            label = rng.integers(0, 34, (H, W))
            label[0, :4] = (7, 26, 0, 255)  # road, car, unlabeled, license plate
            raw[n] = label
            img[f"leftImg8bit/{split}/{city}/{n}_leftImg8bit.png"] = cv2.imencode(
                ".png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            )[1].tobytes()
            gt[f"gtFine/{split}/{city}/{n}_gtFine_labelIds.png"] = _png(label)
            gt[f"gtFine/{split}/{city}/{n}_gtFine_color.png"] = b"not read"
    _write(img, tmp_path / "manual", cityscapes.ARCHIVES[0])
    _write(gt, tmp_path / "manual", cityscapes.ARCHIVES[1])
    builder = cityscapes.prepare(tmp_path / "data", "default", tmp_path / "manual")
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["validation"].num_examples == 1
    lut = np.full(256, 255)
    for label_id, train_id in cityscapes.LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    records = _records(builder, "train") + _records(builder, "validation")
    _check_records(records, 19)
    for r in records:
        label = r["label"][..., 0]
        assert tuple(label[0, :4]) == (0, 13, 255, 255)
        np.testing.assert_array_equal(label, lut[raw[r["id"].decode()]])
    assert sorted(set(cityscapes.LABEL_ID_TO_TRAIN_ID.values()) - {255}) == list(range(19))


# ---------------------------------------------------------------------------- ADE20K


def test_ade20k_reduce_zero_label(tmp_path):
    rng = np.random.default_rng(4)
    files, raw = {}, {}
    for folder_name, n in (("training", 3), ("validation", 2)):
        for k in range(n):
            stem = f"ADE_{folder_name[:5]}_{k:08d}"
            label = rng.integers(0, 151, (H, W))
            label[0, :3] = (0, 1, 150)
            raw[stem] = label
            files[f"ADEChallengeData2016/images/{folder_name}/{stem}.jpg"] = _jpg(rng)
            files[f"ADEChallengeData2016/annotations/{folder_name}/{stem}.png"] = _png(label)
    builder = ade20k.prepare(
        tmp_path / "data", "default", _write(files, tmp_path, ade20k.ARCHIVE) + "/" + ade20k.ARCHIVE
    )
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 2
    records = _records(builder, "train")
    _check_records(records, 150)
    for r in records:
        label = r["label"][..., 0].astype(int)
        expected = np.where(raw[r["id"].decode()] == 0, 255, raw[r["id"].decode()] - 1)
        np.testing.assert_array_equal(label, expected)
        assert tuple(label[0, :3]) == (255, 0, 149)


# ---------------------------------------------------------------------------- CamVid


def test_camvid_void_and_splits(tmp_path):
    rng = np.random.default_rng(5)
    files = {}
    for folder_name, n in (("train", 2), ("val", 1), ("test", 1)):
        for k in range(n):
            label = rng.integers(0, 12, (H, W))
            label[0, 0] = 11
            files[f"CamVid/{folder_name}/0001TP_{k:06d}.png"] = cv2.imencode(
                ".png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            )[1].tobytes()
            files[f"CamVid/{folder_name}annot/0001TP_{k:06d}.png"] = _png(label)
    files["CamVid/train.txt"] = b"/SegNet/CamVid/train/0001TP_000000.png ..."
    builder = camvid.prepare(
        tmp_path / "data", "default", _write(files, tmp_path / "m") + "/CamVid"
    )
    counts = {s: i.num_examples for s, i in builder.info.splits.items()}
    assert counts == {"train": 2, "validation": 1, "test": 1}
    records = _records(builder, "train")
    _check_records(records, 11)
    assert all(r["label"][0, 0, 0] == 255 for r in records)
    assert any((r["label"] == 10).any() for r in records)


# -------------------------------------------------------------------- PASCAL Context


def test_pascal_context_59(tmp_path):
    rng = np.random.default_rng(6)
    files, raw = {}, {}
    base = "VOCdevkit/VOC2010/"
    for i in ("2008_000002", "2008_000003", "2008_000007"):
        label = rng.integers(0, 60, (H, W))
        label[0, :3] = (0, 1, 59)
        raw[i] = label
        files[f"{base}SegmentationClassContext/{i}.png"] = _png(label)
    images = {f"{base}JPEGImages/{i}.jpg": _jpg(rng) for i in raw}
    files[f"{base}ImageSets/SegmentationContext/train.txt"] = b"2008_000002\n2008_000003\n"
    files[f"{base}ImageSets/SegmentationContext/val.txt"] = b"2008_000007\n"
    _write(files, tmp_path / "m")  # converter output, extracted
    _write(images, tmp_path / "m", pascal_context.ARCHIVES[0])  # images still in the tar
    builder = pascal_context.prepare(tmp_path / "data", "default", tmp_path / "m")
    assert builder.info.metadata["num_classes"] == 59
    records = _records(builder, "train")
    assert len(records) == 2
    _check_records(records, 59)
    for r in records:
        label = r["label"][..., 0].astype(int)
        np.testing.assert_array_equal(
            label, np.where(raw[r["id"].decode()] == 0, 255, raw[r["id"].decode()] - 1)
        )


# ---------------------------------------------------------------------- user's folder


def _folder_files(rng, stems, num_classes=3):
    files = {"classes.txt": "\n".join(f"c{k}" for k in range(num_classes)).encode()}
    for s in stems:
        label = rng.integers(0, num_classes, (H, W))
        label[0, 0] = 255
        files[f"images/{s}.jpg"] = _jpg(rng)
        files[f"masks/{s}.png"] = _png(label)
    return files


def test_folder_deterministic_split(tmp_path):
    rng = np.random.default_rng(7)
    stems = [f"img{k:02d}" for k in range(10)] + ["sub/deep"]
    manual = _write(_folder_files(rng, stems), tmp_path / "m")
    builder = folder.prepare(tmp_path / "data", "mine", manual, val_fraction=0.2)
    assert builder.info.metadata["class_names"] == ["c0", "c1", "c2"]
    train = {r["id"].decode() for r in _records(builder, "train")}
    val = {r["id"].decode() for r in _records(builder, "validation")}
    assert len(val) == 2 and not train & val and train | val == set(stems)
    _check_records(_records(builder, "train"), 3)
    # Same folder, other data dir: the same split (it depends on the stems only).
    again = folder.prepare(tmp_path / "data2", "mine", manual, val_fraction=0.2)
    assert {r["id"].decode() for r in _records(again, "validation")} == val


def test_folder_split_files_and_errors(tmp_path):
    rng = np.random.default_rng(8)
    files = _folder_files(rng, ["a", "b", "c"])
    files["train.txt"] = b"a\nb\n"
    files["val.txt"] = b"c\n"
    builder = folder.prepare(
        tmp_path / "d0", "default", _write(files, tmp_path / "m0", "mine.zip") + "/mine.zip"
    )
    assert [r["id"] for r in _records(builder, "validation")] == [b"c"]
    assert builder.info.splits["train"].num_examples == 2

    bad = dict(files)
    label = np.zeros((H, W))
    label[3, 4] = 7
    bad["masks/b.png"] = _png(label)
    with pytest.raises(ValueError, match=r"masks/b\.png: label values \[7\] are not classes"):
        folder.prepare(tmp_path / "d1", "default", _write(bad, tmp_path / "m1"))
    bad = dict(files)
    del bad["masks/c.png"]
    with pytest.raises(FileNotFoundError, match=r"images/c\.jpg: no mask masks/c\.png"):
        folder.prepare(tmp_path / "d2", "default", _write(bad, tmp_path / "m2"))
    bad = dict(files)
    bad["masks/a.png"] = cv2.imencode(".png", rng.integers(0, 3, (H, W, 3), dtype=np.uint8))[
        1
    ].tobytes()
    with pytest.raises(ValueError, match=r"masks/a\.png: label is a colour image"):
        folder.prepare(tmp_path / "d3", "default", _write(bad, tmp_path / "m3"))
