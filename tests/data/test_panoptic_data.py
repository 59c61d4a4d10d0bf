"""The panoptic shapes dataset, packed labels through the shared pipeline, and
Panoptic-DeepLab's targets against loops written here."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segjax.data import panoptic_targets as pt
from segjax.data import transforms
from segjax.data.builders import segjax_shapes_panoptic as shapes

THINGS = np.array(shapes.THING_CLASSES)


def test_prepared_records_are_the_rendered_samples(panoptic_data_dir):
    builder = tfds.builder_from_directory(shapes.dataset_dir(panoptic_data_dir, "tiny"))
    assert builder.info.metadata["thing_classes"] == list(shapes.THING_CLASSES)
    source = builder.as_data_source("validation")
    assert len(source) == 16
    for i in (0, 7):
        record = source[i]
        image, label, instance = shapes.render_panoptic_sample(np.random.default_rng([1, 1, i]), 64)
        np.testing.assert_array_equal(record["image"], image)
        np.testing.assert_array_equal(record["label"][..., 0], label)
        np.testing.assert_array_equal(record["instance"][..., 0], instance)
        assert record["instance"].dtype == np.uint16


def test_instances_lie_exactly_on_thing_classes():
    for i in range(20):
        _, label, instance = shapes.render_panoptic_sample(np.random.default_rng([5, 0, i]), 64)
        np.testing.assert_array_equal(instance > 0, THINGS[label])
        assert label.max() < shapes.NUM_CLASSES
        # One object = one class (its shape): no instance id spans two classes.
        for n in np.unique(instance[instance > 0]):
            assert len(np.unique(label[instance == n])) == 1


def test_pack_unpack_and_the_shared_augmentation_move_class_and_instance_together():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 8, (20, 24))
    label[0, :5] = 255
    instance = np.where(THINGS[np.minimum(label, 7)], rng.integers(1, 4000, (20, 24)), 0)
    packed = pt.pack(label, instance, ignore_index=255)
    cls, inst = pt.unpack(packed)
    np.testing.assert_array_equal(cls, np.where(label == 255, -1, label))
    np.testing.assert_array_equal(inst, np.where(label == 255, 0, instance))
    augment = transforms.TrainAugment(
        crop_size=(32, 32), scale_range=(1.3, 1.7), flip=True,
        mean=(0, 0, 0), std=(1, 1, 1), ignore_index=255,
    )  # fmt: skip
    sample = {"image": rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), "label": packed}
    out = augment.random_map(sample, np.random.default_rng(3))
    cls, inst = pt.unpack(out["label"])
    pairs = {(int(c), int(i)) for c, i in zip(cls.ravel(), inst.ravel(), strict=True)}
    original = {(int(c), int(i)) for c, i in zip(label.ravel(), instance.ravel(), strict=True)}
    assert pairs - {(-1, 0)} <= original  # nearest-neighbour: no new (class, instance) pair
    assert (cls == -1).any()  # the padding is void


def test_targets_against_loops():
    # Stuff 0, object 1 of class 3 (an L shape), object 2 of class 4, a crowd of class 5
    # and void; the centers and offsets by hand.
    h, w = 10, 12
    label = np.zeros((h, w), np.int64)
    instance = np.zeros((h, w), np.int64)
    label[1:4, 1:3], instance[1:4, 1:3] = 3, 1
    label[3, 3:6], instance[3, 3:6] = 3, 1
    label[6:9, 7:11], instance[6:9, 7:11] = 4, 2
    label[0, 8:12] = 5  # crowd: a thing class, instance 0
    label[9, 0:3] = 255
    packed = pt.pack(label, instance, ignore_index=255)
    t = pt.panoptic_targets(
        packed, THINGS, ignore_index=255, sigma=2.0, small_instance_area=10,
        small_instance_weight=3.0,
    )  # fmt: skip
    for n in (1, 2):
        points = [(y, x) for y in range(h) for x in range(w) if instance[y, x] == n]
        cy = sum(p[0] for p in points) / len(points)
        cx = sum(p[1] for p in points) / len(points)
        for y, x in points:
            np.testing.assert_allclose(t["offset"][y, x], [cy - y, cx - x], rtol=1e-6)
        assert t["center"][int(cy), int(cx)] == pytest.approx(1.0)
        weight = 3.0 if len(points) < 10 else 1.0
        assert all(t["semantic_weight"][y, x] == weight for y, x in points)
    for y in range(h):
        for x in range(w):
            expected = max(
                np.exp(-((y - 2) ** 2 + (x - 2) ** 2) / 8.0),  # object 1: center (2.33, 2.33)
                np.exp(-((y - 7) ** 2 + (x - 8) ** 2) / 8.0),  # object 2: center (7, 8.5)
            )
            assert t["center"][y, x] == pytest.approx(expected, rel=1e-5)
            is_void = label[y, x] == 255
            assert t["semantic"][y, x] == label[y, x]
            assert t["center_weight"][y, x] == float(not is_void and label[y, x] != 5)
            assert t["offset_weight"][y, x] == float(instance[y, x] > 0)
            if instance[y, x] == 0:
                assert (t["offset"][y, x] == 0).all()
            if is_void:
                assert t["semantic_weight"][y, x] == 0.0


def test_a_semantic_record_is_not_panoptic():
    source = pt.PanopticSource(
        [{"image": np.zeros((2, 2, 3)), "label": np.zeros((2, 2, 1))}], ignore_index=255
    )
    with pytest.raises(KeyError, match="record 0 has no 'instance'"):
        source[0]


def test_panoptic_fpn_targets_against_loops():
    # Classes 0 stuff, 1 thing, 2 stuff, 3 thing; a crowd region of class 3 (instance 0),
    # two objects of class 1 and one of class 3, void pixels.
    things = (False, True, False, True)
    label = np.zeros((6, 9), np.int64)
    instance = np.zeros((6, 9), np.int64)
    label[:, 5:] = 2
    label[1:3, 1:4], instance[1:3, 1:4] = 1, 1
    label[4, 0:2], instance[4, 0:2] = 1, 2
    label[0:2, 6:8], instance[0:2, 6:8] = 3, 1  # instance id 1 again, another class
    label[5, 6:9] = 3  # crowd
    label[3, 4] = 255
    packed = pt.pack(label, instance, ignore_index=255)
    out = pt.panoptic_fpn_targets(packed, things, ignore_index=255, max_instances=4)
    for y in range(6):
        for x in range(9):
            c = label[y, x]
            want = 255 if c == 255 else (0 if things[c] else {0: 1, 2: 2}[c])
            assert out["semantic"][y, x] == want
    objects = [(1, 1), (1, 2), (3, 1)]  # (class, instance), in packed-key order
    assert out["instance_valid"].tolist() == [True, True, True, False]
    assert out["classes"].tolist() == [1, 1, 2, 0]  # things 1 -> 1, 3 -> 2
    for i, (c, k) in enumerate(objects):
        mask = (label == c) & (instance == k)
        np.testing.assert_array_equal(out["masks"][i], mask)
        ys, xs = np.nonzero(mask)
        assert out["boxes"][i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert not out["masks"][3].any() and out["image_hw"].tolist() == [6, 9]
    # More objects than max_instances: the largest are kept.
    few = pt.panoptic_fpn_targets(packed, things, ignore_index=255, max_instances=2)
    assert few["classes"].tolist() == [1, 2] and few["masks"].reshape(2, -1).sum(1).tolist() == [
        6,
        4,
    ]
