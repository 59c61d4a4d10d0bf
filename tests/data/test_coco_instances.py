"""The COCO instances builder on a tiny file in the real layout: polygons, RLE, crowd,
empty images, boxes outside the image, and the errors that name the image id."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segjax.data import instances
from segjax.data.builders import coco_instances


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _write_layout(root, train_annotations, images=None):
    # annotations/instances_{train,val}2017.json + train2017/ and val2017/ JPEGs, 32 x 48.
    images = images or [
        {"id": i, "file_name": f"{i:012d}.jpg", "height": 32, "width": 48} for i in (1, 2, 3, 4)
    ]
    os.makedirs(root / "annotations", exist_ok=True)
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    splits = {
        "train2017": (images, train_annotations),
        "val2017": (
            [{"id": 9, "file_name": "000000000009.jpg", "height": 32, "width": 48}],
            [
                {
                    "id": 90,
                    "image_id": 9,
                    "category_id": 18,
                    "iscrowd": 0,
                    "bbox": [1, 1, 10, 10],
                    "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]],
                    "area": 100.0,
                }
            ],
        ),
    }
    for folder, (ims, anns) in splits.items():
        os.makedirs(root / folder, exist_ok=True)
        for im in ims:
            Image.fromarray(np.full((im["height"], im["width"], 3), 90, np.uint8)).save(
                root / folder / im["file_name"]
            )
        with open(root / "annotations" / f"instances_{folder}.json", "w") as f:
            json.dump({"images": ims, "annotations": anns, "categories": categories}, f)


def _good_annotations():
    car = np.zeros((32, 48), np.uint8)
    car[10:20, 20:40] = 1
    crowd = np.zeros((32, 48), np.uint8)
    crowd[0:5, 0:5] = 1
    raw_counts = {"size": [32, 48], "counts": list(_uncompressed(crowd))}
    return [
        # Image 1: a polygon person, an RLE car, an uncompressed-RLE crowd region.
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [2, 3, 8, 10],
            "segmentation": [[2, 3, 10, 3, 10, 13, 2, 13]],
            "area": 80.0,
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "bbox": [20, 10, 20, 10],
            "segmentation": _rle(car),
            "area": 200.0,
        },
        {
            "id": 13,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 1,
            "bbox": [0, 0, 5, 5],
            "segmentation": raw_counts,
            "area": 25.0,
        },
        # Image 2: none. Image 3: a crowd region only.
        {
            "id": 31,
            "image_id": 3,
            "category_id": 18,
            "iscrowd": 1,
            "bbox": [0, 0, 5, 5],
            "segmentation": raw_counts,
            "area": 25.0,
        },
        # Image 4: a box over the right edge (clipped), one wholly outside (dropped).
        {
            "id": 41,
            "image_id": 4,
            "category_id": 3,
            "iscrowd": 0,
            "bbox": [40, 5, 20, 10],
            "segmentation": [[40, 5, 60, 5, 60, 15, 40, 15]],
            "area": 200.0,
        },
        {
            "id": 42,
            "image_id": 4,
            "category_id": 3,
            "iscrowd": 0,
            "bbox": [60, 40, 5, 5],
            "segmentation": [[60, 40, 65, 40, 65, 45, 60, 45]],
            "area": 25.0,
        },
    ]


def _uncompressed(mask):
    # COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first.
    flat = mask.flatten(order="F")
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    return runs


def test_coco_layout_prepares_and_decodes(tmp_path):
    manual = tmp_path / "coco"
    _write_layout(manual, _good_annotations())
    builder = coco_instances.prepare(str(tmp_path / "data"), manual_dir=str(manual))
    train = builder.as_data_source("train")
    assert len(train) == 4 and len(builder.as_data_source("validation")) == 1
    s1 = instances.decode_instances(train[0])
    assert s1["classes"].tolist() == [1, 3, 1] and s1["crowd"].tolist() == [False, False, True]
    np.testing.assert_array_equal(s1["boxes"][1], [20, 10, 40, 20])
    car = np.zeros((32, 48), np.uint8)
    car[10:20, 20:40] = 1
    np.testing.assert_array_equal(s1["masks"][1], car)
    assert s1["masks"][2][:5, :5].all() and s1["masks"][2].sum() == 25
    person = s1["masks"][0]
    assert abs(int(person.sum()) - 80) <= 20 and not person[:, 12:].any()
    # No instances; crowd only; clipped box, the box outside the image dropped.
    assert len(instances.decode_instances(train[1])["classes"]) == 0
    s3 = instances.decode_instances(train[2])
    assert s3["crowd"].tolist() == [True]
    s4 = instances.decode_instances(train[3])
    np.testing.assert_array_equal(s4["boxes"], [[40, 5, 48, 15]])
    assert s4["masks"][0][5:15, 40:48].all() and s4["masks"][0].sum() == 80
    assert int(train[3]["image_id"]) == 4
    # As training targets: crowd-only and empty images have none.
    op = instances.InstanceTrainAugment(
        canvas=(64, 64),
        min_sizes=(32,),
        max_size=64,
        flip=False,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        max_instances=4,
    )
    assert op.random_map(s3, np.random.default_rng(0))["instance_valid"].sum() == 0
    assert op.random_map(s1, np.random.default_rng(0))["instance_valid"].sum() == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"category_id": 7}, "COCO image id 1: annotation 11 has category_id 7"),
        ({"image_id": 77}, "COCO image id 77: annotation 11 of an image not in"),
        ({"segmentation": [[1, 2, 3, 4]]}, "COCO image id 1: annotation 11: bad segmentation"),
    ],
)
def test_bad_annotations_name_the_image(tmp_path, change, message):
    anns = _good_annotations()
    anns[0] = {**anns[0], **change}
    manual = tmp_path / "coco"
    _write_layout(manual, anns)
    with pytest.raises(ValueError, match=message):
        coco_instances.prepare(str(tmp_path / "data"), manual_dir=str(manual))


def test_wrong_image_size_and_missing_file_name_the_image(tmp_path):
    images = [{"id": 5, "file_name": "000000000005.jpg", "height": 30, "width": 48}]
    manual = tmp_path / "coco"
    _write_layout(manual, [], images)
    with open(manual / "annotations" / "instances_train2017.json") as f:
        coco = json.load(f)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(manual / "train2017" / "000000000005.jpg")
    with pytest.raises(ValueError, match=r"COCO image id 5: .* is 32x48"):
        coco_instances.prepare(str(tmp_path / "data"), manual_dir=str(manual))
    coco["images"] = [{"id": 6, "file_name": "nope.jpg", "height": 32, "width": 48}]
    with open(manual / "annotations" / "instances_train2017.json", "w") as f:
        json.dump(coco, f)
    with pytest.raises(ValueError, match=r"COCO image id 6: image file train2017/nope\.jpg"):
        coco_instances.prepare(str(tmp_path / "data2"), manual_dir=str(manual))
