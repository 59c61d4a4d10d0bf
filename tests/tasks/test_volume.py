"""The volume task (segjax.tasks.volume) and its pipeline (segjax.data.volumes)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from segjax import config_check, eval_lib, tasks, train_lib, volume_metrics
from segjax.checkpoint import Checkpointer
from segjax.data import volumes
from segjax.data.builders import volume_shapes


@pytest.fixture(scope="module")
def volume_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("volume_data"))
    volume_shapes.prepare(data_dir, "tiny")
    return data_dir


@pytest.fixture
def volume_config(volume_data_dir):
    from configs import volume_shapes as config_module

    config = config_module.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = volume_data_dir
    return config


def test_synthetic_volumes_are_deterministic_and_hold_every_shape():
    rng = lambda i: np.random.default_rng([0, 0, i])
    image, label = volume_shapes.render_volume(rng(3), 24)
    again, label_again = volume_shapes.render_volume(rng(3), 24)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(label, label_again)
    assert image.shape == label.shape == (24, 24, 24) and image.dtype == np.uint8
    seen = set()
    for i in range(12):
        seen |= set(np.unique(volume_shapes.render_volume(rng(i), 24)[1]).tolist())
    assert seen == {0, 1, 2, 3}


def test_normalisation_and_resampling():
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 5, 6, 2)).astype(np.float32)
    z = volumes.normalize_intensity(x, "zscore")
    np.testing.assert_allclose(z.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std((0, 1, 2)), 1, atol=1e-5)
    ct = volumes.normalize_intensity(np.array([[-2000.0], [0.0], [500.0]]), "ct", (-1000, 1000))
    np.testing.assert_allclose(ct[:, 0], [0.0, 0.5, 0.75])
    label = np.zeros((4, 6, 6), np.int32)
    label[:, :3] = 1
    sample = {"image": label[..., None].astype(np.float32), "label": label,
              "spacing": np.array([2.0, 1.0, 1.0], np.float32)}  # fmt: skip
    out = volumes.resample(sample, (1.0, 2.0, 2.0))
    assert out["label"].shape == (8, 3, 3) and out["image"].shape == (8, 3, 3, 1)
    np.testing.assert_array_equal(out["spacing"], [1.0, 2.0, 2.0])
    assert set(np.unique(out["label"]).tolist()) == {0, 1}  # nearest: no new values


def test_train_augment_is_deterministic_and_moves_image_and_label_together(volume_config):
    record = {"image": np.arange(16**3, dtype=np.float32).reshape(16, 16, 16, 1),
              "label": (np.arange(16**3) % 4).reshape(16, 16, 16, 1).astype(np.uint8),
              "spacing": np.ones(3, np.float32)}  # fmt: skip
    with volume_config.unlocked():
        volume_config.volume.crop_size = (8, 10, 10)
        volume_config.volume.normalization = "none"
    op = volumes.VolumeTrainAugment(volume_config)
    outs = [op.random_map(record, np.random.default_rng(s)) for s in (5, 5, 6)]
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    assert outs[0]["image"].shape == (8, 10, 10, 1) and outs[0]["label"].shape == (8, 10, 10)
    for out in outs:
        # Voxel values are their index; the label is index % 4: still aligned.
        np.testing.assert_array_equal(out["image"][..., 0].astype(int) % 4, out["label"])


def test_eval_batches_pad_volumes_and_name_one_too_large(volume_config):
    source = [
        {
            "image": np.ones((12, 16, 14, 1), np.uint8),
            "label": np.ones((12, 16, 14, 1), np.uint8),
            "spacing": np.array([1.5, 1.0, 1.0], np.float32),
        }
    ] * 3
    with volume_config.unlocked():
        volume_config.volume.normalization = "none"
    batches = list(volumes.eval_batches(volume_config, source, per_process_batch=2))
    assert len(batches) == 2
    assert batches[0]["image"].shape == (2, 16, 16, 16, 1)
    assert (batches[0]["label"][0, 12:] == 255).all() and (
        batches[0]["label"][0, :12, :, :14] == 1
    ).all()
    np.testing.assert_array_equal(batches[1]["valid"], [True, False])
    np.testing.assert_array_equal(batches[1]["index"], [2, -1])
    big = [{**source[0], "image": np.ones((20, 8, 8, 1)), "label": np.ones((20, 8, 8, 1))}]
    with pytest.raises(ValueError, match=r"volume #0 is 20x8x8 voxels.*eval_pad_size"):
        list(volumes.eval_batches(volume_config, big, per_process_batch=2))


def test_evaluation_scores_volumes_as_the_metrics_say(volume_config):
    task = tasks.build_task(volume_config)
    ev = task.evaluation
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (2, 16, 16, 16)).astype(np.int32)
    pred = np.where(rng.random(label.shape) < 0.8, label, 0).astype(np.int32)
    probs = np.eye(4)[pred].astype(np.float32)
    terms = np.asarray(volume_metrics.dice_terms(probs, pred, label, ignore_index=255))
    outputs = {"terms": terms, "valid": np.array([True, False]), "spacing": np.ones((2, 3)),
               "pred": pred.astype(np.uint8), "label": label}  # fmt: skip
    total = ev.merge_outputs(ev.new_total(), outputs)
    scores = ev.finalize(total)
    assert scores["num_volumes"] == 1
    for k in range(1, 4):
        g, p = label[0] == k, pred[0] == k
        np.testing.assert_allclose(scores["dice"][k], 2 * (g & p).sum() / (g.sum() + p.sum()))
        hd = volume_metrics.hausdorff_distance(p, g)
        np.testing.assert_allclose(scores["hd95"][k], hd)
    np.testing.assert_allclose(scores["mean_dice"], np.mean(scores["dice"][1:]))
    table, body = task.report(scores)
    assert "sphere" in table and "HD95" in table
    assert body["classes"][1]["name"] == "sphere"


def test_a_volume_model_needs_the_volume_task(volume_config):
    config = volume_config.copy_and_resolve_references()
    config.task = "semantic"
    with pytest.raises(config_check.ConfigError, match=r"is a volume model.*needs an image model"):
        config_check.check_config(config, num_devices=1)


@pytest.mark.slow
def test_train_resume_exactly_and_evaluate(volume_config, tmp_path):
    workdir = str(tmp_path / "run")
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
    final = train_lib.train_and_evaluate(volume_config, workdir, mesh=mesh)
    assert final["step"] == 4 and 0.0 <= final["mean_dice"] <= 1.0
    assert set(final["summary"]) == {
        "mean_dice", "mean_soft_dice", "miou", "voxel_accuracy", "mean_hd95"
    }  # fmt: skip
    with open(os.path.join(workdir, "eval", "validation_step4.json")) as f:
        report = json.load(f)
    assert report["task"] == "volume"
    assert [c["name"] for c in report["classes"]] == ["background", "sphere", "tube", "box"]
    ckpt_dir = os.path.join(workdir, "checkpoints")
    run = train_lib.setup(volume_config, mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="mean_dice")
    before = jax.device_get(ckpt.restore(4, run.abstract_state))
    ckpt.close()
    shutil.rmtree(os.path.join(ckpt_dir, "4"))
    train_lib.train_and_evaluate(volume_config, workdir, mesh=mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="mean_dice")
    after = jax.device_get(ckpt.restore(4, run.abstract_state))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before, after)

    # eval.py's four measures (its library call: the CLI would use all 8 test devices).
    out = str(tmp_path / "out")
    with volume_config.unlocked():
        volume_config.eval.num_visualizations = 1
    result = eval_lib.run_evaluation(volume_config, ckpt_dir, out, mesh=mesh)
    with open(result["files"]["report"]) as f:
        evaluated = json.load(f)
    np.testing.assert_allclose(evaluated["summary"]["mean_dice"], final["mean_dice"])
    assert evaluated["speed"]["images_per_second"] > 0
    assert evaluated["memory"]["parameters"] > 0
    assert len(os.listdir(os.path.join(out, "eval", evaluated["files"]["visualizations"]))) == 1


def test_audit_counts_voxels_of_a_prepared_volume_dataset(volume_data_dir, capsys):
    from segjax.data import audit

    assert audit.main(["--dataset", "volume_shapes", "--config", "tiny",
                       "--data_dir", volume_data_dir]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"split train: 16 images, {16 * 16**3:,} label pixels" in out and "no problems" in out
