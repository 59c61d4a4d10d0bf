"""COCO panoptic and Cityscapes panoptic builders, prepared from tiny copies of the real
layouts generated here; bad annotations fail naming the file and the id."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from segjax.data.builders import cityscapes_panoptic, coco_panoptic
from tests.data.test_builders import H, W, _jpg, _records, _write

COCO_IDS = [c[0] for c in coco_panoptic.CATEGORIES]


def _rgb_png(ids: np.ndarray) -> bytes:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _coco_image(rng):
    # Segment ids: road 5, sky 7 (stuff); persons 10, 11; a crowd of persons 12; a car 300
    # (an id that needs the G channel); void 0.
    ids = np.zeros((H, W), np.int64)
    ids[:8] = 7
    ids[8:] = 5
    ids[10:20, 2:10] = 10
    ids[10:20, 12:20] = 11
    ids[22:30, 2:30] = 12
    ids[12:18, 30:44] = 300
    ids[30:, 40:] = 0
    segments = [
        {"id": 5, "category_id": 149, "iscrowd": 0},
        {"id": 7, "category_id": 187, "iscrowd": 0},
        {"id": 10, "category_id": 1, "iscrowd": 0},
        {"id": 11, "category_id": 1, "iscrowd": 0},
        {"id": 12, "category_id": 1, "iscrowd": 1},
        {"id": 300, "category_id": 3, "iscrowd": 0},
    ]
    rng.shuffle(segments)
    return ids, segments


def _coco_files(rng, names, *, break_val=None):
    # names: {"train2017": [...], "val2017": [...]}; the layout of the official archives,
    # train images and PNGs zipped, val ones extracted. break_val(ids, segments) spoils
    # the validation annotation.
    extracted, zipped = {}, {"train2017.zip": {}, "annotations/panoptic_train2017.zip": {}}
    truth = {}
    for folder, stems in names.items():
        images, annotations = [], []
        for n, stem in enumerate(stems):
            ids, segments = _coco_image(rng)
            if folder == "val2017" and break_val:
                break_val(ids, segments)
            truth[stem] = (ids, segments)
            images.append({"id": 100 + n, "file_name": f"{stem}.jpg", "height": H, "width": W})
            annotations.append(
                {"image_id": 100 + n, "file_name": f"{stem}.png", "segments_info": segments}
            )
            if folder == "train2017":
                zipped["train2017.zip"][f"train2017/{stem}.jpg"] = _jpg(rng)
                zipped["annotations/panoptic_train2017.zip"][f"panoptic_train2017/{stem}.png"] = (
                    _rgb_png(ids)
                )
            else:
                extracted[f"val2017/{stem}.jpg"] = _jpg(rng)
                extracted[f"annotations/panoptic_val2017/{stem}.png"] = _rgb_png(ids)
        body = {"images": images, "annotations": annotations, "categories": []}
        extracted[f"annotations/panoptic_{folder}.json"] = json.dumps(body).encode()
    return extracted, zipped, truth


def _write_coco(tmp_path, name, **kw):
    extracted, zipped, truth = _coco_files(np.random.default_rng(0), {
        "train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"],
    }, **kw)  # fmt: skip
    manual = tmp_path / name
    _write(extracted, manual)
    for archive, files in zipped.items():
        _write(files, manual, archive)
    return manual, truth


def test_coco_panoptic_classes_instances_crowd_and_void(tmp_path):
    manual, truth = _write_coco(tmp_path, "coco")
    builder = coco_panoptic.prepare(tmp_path / "data", "default", manual)
    assert builder.info.metadata["thing_classes"] == list(coco_panoptic.THING_CLASSES)
    assert len(builder.info.metadata["class_names"]) == 133
    assert builder.info.splits["train"].num_examples == 2
    for record in _records(builder, "train") + _records(builder, "validation"):
        ids, segments = truth[record["id"].decode()]
        label, instance = record["label"][..., 0], record["instance"][..., 0]
        assert record["instance"].dtype == np.uint16
        objects = [s["id"] for s in segments if s["category_id"] in (1, 3) and not s["iscrowd"]]
        for y in range(H):
            for x in range(W):
                sid = int(ids[y, x])
                if sid == 0:
                    assert label[y, x] == 255 and instance[y, x] == 0
                    continue
                seg = next(s for s in segments if s["id"] == sid)
                assert label[y, x] == COCO_IDS.index(seg["category_id"])
                # Objects numbered 1, 2, ... in the JSON's order; crowd and stuff 0.
                expected = objects.index(sid) + 1 if sid in objects else 0
                assert instance[y, x] == expected


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda ids, segs: ids.__setitem__((0, 0), 99), r"000000000139\.png.*\[99\].*missing"),
        (
            lambda ids, segs: segs[0].__setitem__("category_id", 12),
            r"000000000139\.png: segment id \d+ has category_id 12",
        ),
        (
            lambda ids, segs: segs.append(dict(segs[0])),
            r"000000000139\.png: segment id \d+ is listed twice.*overlapping",
        ),
    ],
    ids=["id_not_in_json", "unknown_category", "overlapping_segments"],
)
def test_coco_panoptic_bad_annotations_name_the_file_and_id(tmp_path, spoil, message):
    manual, _ = _write_coco(tmp_path, "coco", break_val=spoil)
    with pytest.raises(ValueError, match=message):
        coco_panoptic.prepare(tmp_path / "data", "default", manual)


def _png16(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _write_cityscapes(tmp_path, spoil=None):
    rng = np.random.default_rng(4)
    img, gt, raws = {}, {}, {}
    for split, n in (("train", "aachen_000000_000019"), ("val", "lindau_000000_000019")):
        raw = np.full((H, W), 7)  # road
        raw[:6] = 23  # sky
        raw[8:14, 2:12] = 26000  # car k=0
        raw[8:14, 14:24] = 26001  # car k=1
        raw[16:24, 2:10] = 24000  # person k=0
        raw[16:24, 12:30] = 26  # a crowd of cars
        raw[26:30, 2:10] = 29000  # a caravan: no train id, void
        raw[26:30, 12:16] = 0  # unlabeled
        raw[30:, 40:] = 65535  # license plate (-1)
        if split == "val" and spoil is not None:
            spoil(raw)
        raws[n] = raw
        city = n.split("_")[0]
        img[f"leftImg8bit/{split}/{city}/{n}_leftImg8bit.png"] = cv2.imencode(
            ".png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        )[1].tobytes()
        gt[f"gtFine/{split}/{city}/{n}_gtFine_labelIds.png"] = _png16(
            np.where(raw >= 1000, raw // 1000, raw) % 256
        )
        gt[f"gtFine/{split}/{city}/{n}_gtFine_instanceIds.png"] = _png16(raw)
    _write(img, tmp_path / "manual", cityscapes_panoptic.ARCHIVES[0])
    _write(gt, tmp_path / "manual")  # gtFine extracted
    return tmp_path / "manual", raws


def test_cityscapes_panoptic_from_instance_ids(tmp_path):
    manual, raws = _write_cityscapes(tmp_path)
    builder = cityscapes_panoptic.prepare(tmp_path / "data", "default", manual)
    things = builder.info.metadata["thing_classes"]
    assert [n for n, t in zip(builder.info.metadata["class_names"], things, strict=True) if t] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip
    for record in _records(builder, "train") + _records(builder, "validation"):
        raw = raws[record["id"].decode()]
        label, instance = record["label"][..., 0], record["instance"][..., 0]
        expected_label = {7: 0, 23: 10, 26000: 13, 26001: 13, 24000: 11, 26: 13}
        expected_instance = {26000: 1, 26001: 2, 24000: 1}
        for y in range(H):
            for x in range(W):
                v = int(raw[y, x])
                assert label[y, x] == expected_label.get(v, 255), (y, x, v)
                assert instance[y, x] == expected_instance.get(v, 0), (y, x, v)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            7001,
            r"lindau_000000_000019_gtFine_instanceIds\.png: instance id 7001 is an object of 'ro",
        ),
        (45, r"lindau_000000_000019_gtFine_instanceIds\.png: instance id 45 has labelId 45"),
    ],
    ids=["object_of_a_stuff_class", "unknown_label_id"],
)
def test_cityscapes_panoptic_bad_ids_name_the_file(tmp_path, value, message):
    manual, _ = _write_cityscapes(tmp_path, spoil=lambda raw: raw.__setitem__((0, 0), value))
    with pytest.raises(ValueError, match=message):
        cityscapes_panoptic.prepare(tmp_path / "data", "default", manual)
