"""The instance task: the shapes' instance maps, box-and-mask-consistent augmentation,
mask pasting against torchvision, COCO AP, config checks; under -m slow the step on 4
devices against 1, exact resume and eval.py's report and --images."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from segjax import config_check, eval_lib, sharding, train_lib
from segjax.checkpoint import Checkpointer
from segjax.data import instances
from segjax.data.builders import segjax_shapes as ss
from segjax.detection import coco


def test_instance_maps_match_the_semantic_shapes():
    for i in range(6):
        image, label = ss.render_sample(np.random.default_rng([0, 1, i]), 64)
        image2, label2, inst = ss.render_sample(
            np.random.default_rng([0, 1, i]), 64, with_instances=True
        )
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_array_equal(label, label2)
        np.testing.assert_array_equal(label > 0, inst > 0)
        record = {"image": image, "label": label[..., None], "instances": inst[..., None]}
        sample = instances.decode_instances(record)
        for k, mask in enumerate(sample["masks"]):
            assert len(np.unique(label[mask > 0])) == 1  # one class per instance
            assert sample["classes"][k] == label[mask > 0][0]
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(
                sample["boxes"][k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            )


def _sample():
    masks = np.zeros((3, 40, 60), np.uint8)
    masks[0, 5:20, 10:30] = 1
    masks[1, 22:38, 35:58] = 1
    masks[2, 0:8, 0:8] = 1
    return {
        "image": np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8),
        "masks": masks,
        "classes": np.array([1, 2, 3], np.int32),
        "boxes": instances.boxes_from_masks(masks),
        "crowd": np.array([False, False, True]),
    }


def test_augmentation_keeps_boxes_and_masks_together():
    sample = _sample()
    flipped = instances.flip_instances(sample)
    np.testing.assert_array_equal(flipped["boxes"], instances.boxes_from_masks(flipped["masks"]))
    resized = instances.resize_instances(sample, 20, 30)  # halving: boxes exactly / 2
    np.testing.assert_allclose(resized["boxes"], sample["boxes"] / 2)
    # Nearest-neighbour masks agree with the scaled boxes to a pixel.
    np.testing.assert_allclose(
        resized["boxes"], instances.boxes_from_masks(resized["masks"]), atol=1.0
    )
    assert instances.short_side_size(40, 60, 32, 1000) == (32, 48)
    assert instances.short_side_size(40, 60, 32, 36) == (24, 36)  # longer side capped
    assert instances.short_side_size(40, 60, 64, 1000, canvas=(64, 64)) == (43, 64)
    op = instances.InstanceTrainAugment(
        canvas=(64, 64),
        min_sizes=(30,),
        max_size=64,
        flip=True,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        max_instances=4,
    )
    out = op.random_map(sample, np.random.default_rng(1))
    assert out["image"].shape == (64, 64, 3) and out["masks"].shape == (4, 64, 64)
    assert out["image_hw"].tolist() == [30, 45]
    # The crowd region is not a target; the two others keep box == mask extent.
    assert out["instance_valid"].tolist() == [True, True, False, False]
    boxes = instances.boxes_from_masks(out["masks"][:2])
    np.testing.assert_allclose(out["boxes"][:2], boxes, atol=1.0)
    assert not out["masks"][:, 30:].any() and not out["masks"][:, :, 45:].any()


def test_paste_masks_equals_torchvision():
    # torchvision 0.29.1 paste_masks_in_image(m [2, 1, 4, 4], boxes, (12, 16), padding=1),
    # m[d, i, j] = 0.5 sin(0.5 i + 0.3 j + d) + 0.5: rows 3 and 6 and the sums.
    m = np.fromfunction(lambda d, i, j: np.sin(0.5 * i + 0.3 * j + d) * 0.5 + 0.5, (2, 4, 4))
    boxes = np.array([[2.3, 1.7, 9.8, 7.2], [10.0, 5.0, 19.5, 14.0]])
    out = coco.paste_masks(m.astype(np.float32), boxes, 12, 16)
    row0 = [0, 0.1749, 0.5248, 0.7307, 0.7926, 0.8472, 0.8947, 0.9328, 0.9615, 0.7319, 0.244]
    row1 = [0.0944, 0.4721, 0.8497, 0.9559, 0.9716, 0.9829, 0.9813, 0.9797]
    np.testing.assert_allclose(out[0, 3], row0 + [0] * 5, atol=2e-4)
    np.testing.assert_allclose(out[1, 6], [0] * 8 + row1, atol=2e-4)
    np.testing.assert_allclose(out.sum((1, 2)), [41.9668, 45.4301], atol=2e-3)


def _coco_case():
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 2:12, 2:14] = 1
    masks[1, 15:30, 10:28] = 1
    masks[2, 0:6, 20:31] = 1
    rles = coco.encode(masks)
    boxes = coco.xywh(instances.boxes_from_masks(masks))
    gt = [
        {
            "image_id": 7,
            "category_id": c,
            "bbox": list(b),
            "segmentation": r,
            "area": float(m.sum()),
            "iscrowd": 0,
        }
        for c, b, r, m in zip([1, 2, 1], boxes, rles, masks, strict=True)
    ]
    dets = [
        {"image_id": 7, "category_id": c, "bbox": list(b), "segmentation": r, "score": s}
        for c, b, r, s in zip([1, 2, 1], boxes, rles, [0.9, 0.8, 0.7], strict=True)
    ]
    return [{"id": 7, "height": 32, "width": 32}], gt, dets


def test_coco_scores_perfect_missing_and_wrong_class():
    images, gt, dets = _coco_case()
    perfect = coco.coco_scores(images, gt, dets, [1, 2])
    assert perfect["box"]["ap"] == pytest.approx(1.0) and perfect["mask"]["ap"] == pytest.approx(1)
    assert np.isnan(perfect["mask"]["ap_large"])  # no large object: COCOeval's -1
    # Class 2 detected as class 1: class 2's AP is 0, class 1's precision drops.
    wrong = [dict(d, category_id=1) for d in dets]
    scores = coco.coco_scores(images, gt, wrong, [1, 2])
    assert scores["mask"]["ap"] < 0.55
    none = coco.coco_scores(images, gt, [], [1, 2])
    assert none["box"]["ap"] == 0.0 and none["mask"]["ap50"] == 0.0
    # A crowd region matched by a detection is ignored, not a false positive.
    crowd = [dict(g, iscrowd=1) if i == 2 else g for i, g in enumerate(gt)]
    scores = coco.coco_scores(images, crowd, dets, [1, 2])
    assert scores["mask"]["ap"] == pytest.approx(1.0)


def _instance_config(data_dir):
    from configs import instance_shapes

    config = instance_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = data_dir
    return config


def test_config_checks_of_the_instance_task():
    from configs import instance_coco, instance_shapes

    config = instance_shapes.get_config("tiny")
    assert config_check.config_problems(config, num_devices=1) == []
    coco_config = instance_coco.get_config("panet")
    assert config_check.config_problems(coco_config, num_devices=8) == []
    with config.unlocked():
        config.instance.max_instances = 0
        config.instance.min_sizes = ()
        config.instance.mask_threshold = 1.0
        config.model.name = "deeplabv3plus_tiny"
    problems = "\n".join(config_check.config_problems(config, num_devices=1))
    for key in ("max_instances=0", "min_sizes=()", "mask_threshold=1.0", "needs one of"):
        assert key in problems
    semantic = instance_shapes.get_config("tiny")
    with semantic.unlocked():
        semantic.task = "semantic"
    assert "an instance model" in "\n".join(config_check.config_problems(semantic, num_devices=1))


@pytest.fixture(scope="module")
def instance_data_dir(tmp_path_factory):
    from segjax.data.builders import segjax_shapes_instances

    data_dir = str(tmp_path_factory.mktemp("instance_data"))
    segjax_shapes_instances.prepare(data_dir, "tiny")
    return data_dir


@pytest.mark.slow  # two compiles of the Mask R-CNN step
def test_instance_step_on_4_devices_equals_1_device(instance_data_dir):
    config = _instance_config(instance_data_dir)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = sharding.make_mesh(devices)
        run = train_lib.setup(config, mesh)
        state = run.new_state(jax.random.key(0))
        batch = sharding.shard_batch(run.task.example_batch(8, 0), mesh)
        rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
        state, metrics = run.train_step(state, batch, rng)
        results.append((jax.device_get(state), jax.device_get(metrics)))
    (s1, m1), (s4, m4) = results
    for key in ("loss", "loss/loss_mask", "loss/loss_objectness", "loss/loss_classifier"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        (s1.params, s1.batch_stats),
        (s4.params, s4.batch_stats),
    )


@pytest.mark.slow  # trains, resumes, evaluates and predicts files (~5 min on 2 cores)
def test_train_resume_eval_report_and_images(instance_data_dir, tmp_path, eval_cli):
    config = _instance_config(instance_data_dir)
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:2])
    final = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert final["step"] == 6 and 0.0 <= final["summary"]["mask_ap"] <= 1.0
    ckpt_dir = os.path.join(workdir, "checkpoints")
    run = train_lib.setup(config, mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    before = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    shutil.rmtree(os.path.join(ckpt_dir, "6"))
    resumed = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert resumed["step"] == 6
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    after = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before, after)

    out = eval_lib.run_evaluation(
        eval_lib.load_config(os.path.join(workdir, "config.json")),
        ckpt_dir,
        str(tmp_path / "ev"),
        mesh=mesh,
    )
    with open(out["files"]["report"]) as f:
        report = json.load(f)
    assert report["task"] == "instance" and set(report["mask"]) == set(coco.STAT_NAMES)
    np.testing.assert_allclose(report["summary"]["mask_ap"], resumed["summary"]["mask_ap"])
    assert report["speed"]["images_per_second"] > 0 and report["memory"]["parameters"] > 0
    assert len(out["files"]["visualizations"]) == config.eval.num_visualizations
    panel = np.asarray(Image.open(out["files"]["visualizations"][0]))
    assert panel.shape[1] > 3 * 64

    images = tmp_path / "mine"
    images.mkdir()
    Image.fromarray(np.full((50, 90, 3), 120, np.uint8)).save(images / "a.png")
    written = eval_lib.predict_files(
        eval_lib.load_config(os.path.join(workdir, "config.json")),
        ckpt_dir,
        [str(images / "*.png")],
        str(tmp_path / "pred"),
        mesh=mesh,
        progress=False,
    )
    assert sorted(os.path.basename(p) for p in written) == ["a.json", "a_instances.png"]
    with open(tmp_path / "pred" / "a.json") as f:
        assert json.load(f)["width"] == 90
    assert Image.open(tmp_path / "pred" / "a_instances.png").size == (90, 50)
