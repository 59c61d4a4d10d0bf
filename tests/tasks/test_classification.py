"""The second task of the shared loop: multi-label classification, end to end.

Same loop, other outputs, batch, loss and metric: average precision against an
independent computation, 4 devices == 1 device, exact resume, eval.py's report.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from segjax import eval_lib, sharding, tasks, train_lib
from segjax.checkpoint import Checkpointer
from segjax.tasks import classification
from tests.test_eval_cli import run_eval_cli


@pytest.fixture
def cls_config(shapes_data_dir):
    from configs import classify_shapes

    config = classify_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    return config


def _reference_ap(scores, targets):
    # Average precision by its definition: over distinct thresholds t, from high to low,
    # sum (recall(>= t) - recall(> t)) * precision(>= t). Plain Python loops.
    out = []
    for k in range(scores.shape[1]):
        s, y = [float(v) for v in scores[:, k]], [int(v) for v in targets[:, k]]
        positives = sum(y)
        if positives == 0:
            out.append(float("nan"))
            continue
        ap, previous_recall = 0.0, 0.0
        for t in sorted(set(s), reverse=True):
            chosen = [yi for si, yi in zip(s, y, strict=True) if si >= t]
            recall = sum(chosen) / positives
            ap += (recall - previous_recall) * sum(chosen) / len(chosen)
            previous_recall = recall
        out.append(ap)
    return np.asarray(out)


def test_average_precision_equals_its_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(40, 5)), 1)  # rounded: many ties
    targets = (rng.random((40, 5)) < 0.3).astype(np.float32)
    targets[:, 3] = 0  # a class without positives: NaN
    expected = _reference_ap(scores, targets)
    got = classification.average_precision(scores, targets)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(got[3])
    # Perfect ranking: AP 1; the worst ranking of one positive among 4: 1/4.
    np.testing.assert_allclose(
        classification.average_precision(
            np.array([[3.0], [2.0], [1.0]]), np.array([[1], [1], [0]])
        ),
        [1.0],
    )
    np.testing.assert_allclose(
        classification.average_precision(
            np.array([[4.0], [3], [2], [1]]), np.array([[0], [0], [0], [1]])
        ),
        [0.25],
    )


def test_presence_counts_pixels_and_ignores_void():
    label = np.array([[[0, 0, 2], [2, 255, 255]], [[1, 1, 1], [1, 1, 1]]])
    got = classification.presence(label, 4, ignore_index=255, min_pixels=2)
    np.testing.assert_array_equal(got, [[1, 0, 1, 0], [0, 1, 0, 0]])
    got_j = classification.presence(jax.numpy.asarray(label), 4, ignore_index=255, min_pixels=1)
    np.testing.assert_array_equal(np.asarray(got_j), [[1, 0, 1, 0], [0, 1, 0, 0]])


def test_unknown_task_lists_the_known_ones(cls_config):
    config = cls_config.copy_and_resolve_references()
    config.task = "segmentation_of_dreams"
    with pytest.raises(ValueError, match=r"config\.task='segmentation_of_dreams'.*classification"):
        tasks.build_task(config)


def test_a_batch_of_another_task_is_named(cls_config):
    task = tasks.build_task(cls_config)
    semantic_batch = {"image": np.zeros((2, 64, 64, 3), np.float32), "label": np.zeros((2, 64, 64))}
    with pytest.raises(ValueError, match=r"missing 'classes'.*unexpected 'label'"):
        tasks.base.check_batch(task, semantic_batch, 2)


def test_one_step_on_four_devices_equals_one_device(cls_config):
    task = tasks.build_task(cls_config)
    batch = task.example_batch(cls_config.input.batch_size, 0)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = sharding.make_mesh(devices)
        run = train_lib.setup(cls_config, mesh)
        state = run.new_state(jax.random.key(0))
        rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
        state, metrics = run.train_step(state, sharding.shard_batch(batch, mesh), rng)
        results.append(jax.device_get((state, metrics)))
    (state1, metrics1), (state4, metrics4) = results
    np.testing.assert_allclose(metrics1["loss"], metrics4["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        (state1.params, state1.batch_stats),
        (state4.params, state4.batch_stats),
    )


def test_train_resume_exactly_and_evaluate(cls_config, eval_cli, tmp_path):
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:2])
    final = train_lib.train_and_evaluate(cls_config, workdir, mesh=mesh)
    assert final["step"] == 6 and 0.0 <= final["map"] <= 1.0
    assert set(final["summary"]) == {"map", "label_accuracy", "exact_match"}
    ckpt_dir = os.path.join(workdir, "checkpoints")
    with open(os.path.join(workdir, "eval", "validation_step6.json")) as f:
        report = json.load(f)
    assert report["task"] == "classification"
    np.testing.assert_allclose(report["summary"]["map"], final["map"])
    assert [c["name"] for c in report["classes"]][1:] == [
        "disk",
        "rectangle",
        "triangle",
        "ring",
        "cross",
    ]
    assert report["classes"][0]["ap"] is None  # background: left out

    # Lose step 6; the same command resumes from 3 and ends bitwise where it did.
    run = train_lib.setup(cls_config, mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="map")
    before = jax.device_get(ckpt.restore(6, run.abstract_state))
    assert ckpt.best_step() in (3, 6)
    ckpt.close()
    shutil.rmtree(os.path.join(ckpt_dir, "6"))
    resumed = train_lib.train_and_evaluate(cls_config, workdir, mesh=mesh)
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric="map")
    after = jax.device_get(ckpt.restore(6, run.abstract_state))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_allclose(resumed["map"], final["map"])

    # eval.py: the task's report, panels and file predictions, with one unreadable file.
    out = str(tmp_path / "out")
    run_eval_cli(eval_cli, ["--workdir", workdir, "--output", out, "--num_visualizations", "2"])
    with open(os.path.join(out, "eval", "validation_step6.json")) as f:
        evaluated = json.load(f)
    np.testing.assert_allclose(evaluated["summary"]["map"], final["map"])
    assert evaluated["speed"]["images_per_second"] > 0
    assert len(os.listdir(os.path.join(out, "eval", evaluated["files"]["visualizations"]))) == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(photos / "a.png")
    (photos / "b.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match=r"b\.png"):
        run_eval_cli(
            eval_cli, ["--workdir", workdir, "--images", str(photos / "*.png"), "--output", out]
        )
    with open(os.path.join(out, "a.json")) as f:
        predicted = json.load(f)
    assert set(predicted["probabilities"]) == {"disk", "rectangle", "triangle", "ring", "cross"}
    assert not os.path.exists(os.path.join(out, "b.json"))
    assert eval_lib.load_config(os.path.join(workdir, "config.json")).task == "classification"
