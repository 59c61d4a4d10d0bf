"""RGB-D input end to end: the depth band in the pipelines, and (slow) a tiny training and
evaluation run of early fusion and FuseNet on a generated NYUDv2 copy."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from segjax import eval_lib, train_lib
from segjax.data import datasets, eval_pipeline, pipeline, transforms
from segjax.data.builders import nyudv2
from tests.data import rgbd_files


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """A generated NYUDv2 copy (6 frames of 24x32), prepared once: (data_dir, files)."""
    root = tmp_path_factory.mktemp("nyudv2")
    files = rgbd_files.write_nyudv2(root / "manual")
    data_dir = str(root / "data")
    nyudv2.prepare(data_dir, "default", files["dir"])
    return data_dir, files


def _config(data_dir: str, fusion: str):
    from configs import nyudv2 as nyudv2_config

    config = nyudv2_config.get_config(f"fusion={fusion},tiny")
    with config.unlocked():
        config.dataset.data_dir = data_dir
    return config


def test_depth_is_the_fourth_band_of_train_and_eval_images(nyu):
    data_dir, files = nyu
    config = datasets.resolve_inputs(_config(data_dir, "early"))
    assert config.model.in_channels == 4
    info = datasets.image_info(config.dataset)
    assert (info.channels, info.dtype) == (4, "uint16")
    assert tuple(config.input.mean) == info.mean and len(info.mean) == 4
    source = pipeline.load_split(config, "test")
    sample = transforms.decode_record(source[0], depth=True)  # test frame 2
    np.testing.assert_array_equal(sample["image"][..., :3], files["rgb"][1])
    np.testing.assert_array_equal(
        sample["image"][..., 3], np.rint(files["depth"][1].astype(np.float64) * 1000)
    )
    batch = next(eval_pipeline.eval_batches(config, source, per_process_batch=2))
    expected = (sample["image"].astype(np.float32) - np.float32(info.mean)) / np.float32(info.std)
    np.testing.assert_allclose(batch["image"][0, :24, :32], expected, rtol=1e-5, atol=1e-5)
    train = next(
        iter(
            pipeline.train_loader(
                config, pipeline.load_split(config, "train"), per_process_batch=2, seed=0
            )
        )
    )
    assert train["image"].shape == (2, 24, 32, 4) and train["image"].dtype == np.float32
    # RGB only (fusion=none): the depth map is not read.
    rgb = datasets.resolve_inputs(_config(data_dir, "none"))
    assert rgb.model.in_channels == 3
    assert (
        next(eval_pipeline.eval_batches(rgb, source, per_process_batch=2))["image"].shape[-1] == 3
    )
    with pytest.raises(ValueError, match="records hold no 'depth' map"):
        transforms.decode_record(
            {"image": files["rgb"][0], "label": files["labels"][0]}, depth=True
        )


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["early", "fusenet"])
def test_train_and_evaluate_on_generated_nyudv2(nyu, tmp_path, fusion):
    data_dir, files = nyu
    config = _config(data_dir, fusion)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
    workdir = str(tmp_path / "run")
    final = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert final["step"] == 4
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["in_channels"] == 4 and len(saved["input"]["mean"]) == 4

    # eval.py's report (its library call): the survey's table-7 measures.
    result = eval_lib.run_evaluation(
        config, os.path.join(workdir, "checkpoints"), str(tmp_path), mesh=mesh
    )
    with open(result["files"]["report"]) as f:
        report = json.load(f)
    summary = report["summary"]
    cm = np.asarray(result["total"], np.float64)
    labelled = int((files["labels"][[1, 4]] != 0).sum())  # test frames 2 and 5; 0 = void
    assert cm.shape == (40, 40) and cm.sum() == labelled
    accuracies, ious = [], []
    for k in range(40):
        gt, pred, tp = cm[k].sum(), cm[:, k].sum(), cm[k, k]
        if gt > 0:
            accuracies.append(tp / gt)
        if gt + pred - tp > 0:
            ious.append(tp / (gt + pred - tp))
    np.testing.assert_allclose(summary["pixel_accuracy"], np.trace(cm) / cm.sum(), rtol=1e-6)
    np.testing.assert_allclose(summary["mean_accuracy"], np.mean(accuracies), rtol=1e-6)
    np.testing.assert_allclose(summary["miou"], np.mean(ious), rtol=1e-6)
    np.testing.assert_allclose(summary["miou"], final["summary"]["miou"], rtol=1e-6)
