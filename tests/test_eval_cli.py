"""eval.py end to end on a tiny trained workdir: the four parts of the report, and
predictions on the user's own image files."""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from segjax import sharding, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(shapes_data_dir, tmp_path_factory):
    from configs import default

    # pixel_mlp compiles in a fraction of DeepLab's time; 3 steps: one eval, one checkpoint.
    config = default.get_config("tiny,steps=3")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
        config.model.name = "pixel_mlp"
        config.model.output_stride = None
    workdir = str(tmp_path_factory.mktemp("run"))
    train_lib.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(jax.devices()[:2]))
    return workdir


def run_eval_cli(eval_cli, argv):
    """Runs eval.py's main with `argv` (the flags parsed afresh)."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["eval.py", *argv])
    try:
        eval_cli.main(["eval.py"])
    finally:
        flags.FLAGS.unparse_flags()


def test_eval_writes_the_four_parts(eval_cli, workdir, tmp_path, capsys):
    out = str(tmp_path / "out")
    run_eval_cli(
        eval_cli,
        [
            "--workdir",
            workdir,
            "--step",
            "best",
            "--output",
            out,
            "--num_visualizations",
            "3",
            "--speed_iters",
            "2",
        ],
    )
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "speed:" in printed and "memory:" in printed
    eval_dir = os.path.join(out, "eval")
    (report_name,) = [f for f in os.listdir(eval_dir) if f.endswith(".json")]
    with open(os.path.join(eval_dir, report_name)) as f:
        report = json.load(f)
    # 1. accuracy; the same numbers as the training run's own evaluation of that step.
    with open(os.path.join(workdir, "eval", report_name)) as f:
        train_report = json.load(f)
    assert report["summary"]["miou"] == pytest.approx(train_report["summary"]["miou"])
    assert len(report["classes"]) == 6
    # 2. visual quality: panels and the confusion-matrix plot.
    vis = os.path.join(eval_dir, report["files"]["visualizations"])
    panels = sorted(os.listdir(vis))
    assert panels == ["00000.png", "00001.png", "00002.png"]
    w, h = Image.open(os.path.join(vis, panels[0])).size
    assert w > 3 * 64 and h > 64
    plot = Image.open(os.path.join(eval_dir, report["files"]["confusion_matrix"]))
    assert plot.size[0] > 6 * 20
    # 3. speed and 4. memory.
    speed, memory = report["speed"], report["memory"]
    assert speed["images_per_second"] > 0 and speed["ms_per_image"] > 0
    assert speed["compile_seconds"] > 0
    n_params = sum(x.size for x in jax.tree.leaves(_params(workdir)))
    assert memory["parameters"] == n_params
    assert memory["parameter_bytes"] == 4 * n_params
    assert memory["eval_program_per_device"]["peak_estimate_bytes"] > 0
    assert report["inference"]["mode"] == "whole"


def _params(workdir):
    from segjax import eval_lib

    config = eval_lib.load_config(os.path.join(workdir, "config.json"))
    run = train_lib.setup(config, sharding.make_mesh(jax.devices()[:1]))
    return run.abstract_state.params


def test_predict_own_files_at_original_size(eval_cli, workdir, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "photos"
    inputs.mkdir()
    sizes = {"a": (50, 70), "b": (90, 40), "c": (64, 64)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            inputs / f"{name}.jpg"
        )
    out = str(tmp_path / "pred")
    run_eval_cli(
        eval_cli,
        ["--workdir", workdir, "--images", str(inputs / "*.jpg"), "--output", out, "--flip"],
    )
    for name, (h, w) in sizes.items():
        label = Image.open(os.path.join(out, f"{name}.png"))
        assert label.mode == "P" and label.size == (w, h)
        assert np.asarray(label).max() < 6
        assert Image.open(os.path.join(out, f"{name}_overlay.png")).size == (w, h)


def test_one_unreadable_file_is_skipped_and_named(eval_cli, workdir, tmp_path):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for name in ("a", "c", "d"):
        Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(inputs / f"{name}.png")
    (inputs / "b.png").write_text("this is not a PNG")
    out = str(tmp_path / "pred")
    with pytest.raises(SystemExit, match=r"(?s)1 of the files.*b\.png"):
        run_eval_cli(
            eval_cli, ["--workdir", workdir, "--images", str(inputs / "*"), "--output", out]
        )
    assert sorted(f for f in os.listdir(out) if not f.endswith("_overlay.png")) == [
        "a.png",
        "c.png",
        "d.png",
    ]


def test_eval_names_a_bad_override_before_restoring(eval_cli, workdir, tmp_path):
    # A sliding-window step larger than the window would leave pixels no window covers.
    out = tmp_path / "out"
    argv = ["--workdir", workdir, "--output", str(out), "--mode", "slide"]
    argv += ["--crop_size", "32,32", "--stride", "48,32"]
    with pytest.raises(SystemExit, match=r"config\.eval\.stride=\(48, 32\): expected at most"):
        run_eval_cli(eval_cli, argv)
    assert not out.exists()


@pytest.mark.slow  # ~4 min wall on the loaded 2-core CPU (10 dense-CRF iterations a batch)
def test_eval_with_the_dense_crf(eval_cli, workdir, tmp_path):
    out = str(tmp_path / "out")
    argv = ["--workdir", workdir, "--output", out, "--crf", "--num_visualizations", "0"]
    run_eval_cli(eval_cli, [*argv, "--speed_iters", "1"])
    eval_dir = os.path.join(out, "eval")
    (report_name,) = [f for f in os.listdir(eval_dir) if f.endswith(".json")]
    with open(os.path.join(eval_dir, report_name)) as f:
        report = json.load(f)
    assert report["inference"]["mode"].startswith("whole + dense CRF 10 it")
    assert 0 <= report["summary"]["miou"] <= 1
