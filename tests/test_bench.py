"""The benchmark harness: `python -m segjax.bench` prints one JSON line of sane figures."""

import json

import pytest

from segjax import bench

KEYS = (
    "train_step_s",
    "train_img_per_s",
    "train_compile_s",
    "train_memory",
    "train_flops_per_image",
    "train_tflops",
    "train_mfu",
    "infer_batch_s",
    "infer_img_per_s",
    "infer_compile_s",
    "infer_memory",
    "infer_flops_per_image",
    "params",
    "peak_tflops_per_device",
    "device_memory_stats",
)


def test_bench_prints_json_with_every_figure(capsys):
    result = bench.main(
        [
            "--model", "deeplabv3plus_tiny", "--batch", "2", "--size", "32", "32",
            "--steps", "2", "--warmup", "1", "--devices", "1", "--num_classes", "5",
        ]
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert printed == json.loads(json.dumps(result))
    for key in KEYS:
        assert key in printed, key

    assert printed["model"] == "deeplabv3plus_tiny"
    assert printed["batch"] == 2 and printed["size"] == [32, 32]
    assert printed["num_devices"] == 1
    # Parameters only (BatchNorm running statistics are not counted).
    assert printed["params"] == bench_params("deeplabv3plus_tiny", 5)
    assert printed["train_loss_finite"]
    for key in ("train_step_s", "train_compile_s", "infer_batch_s", "infer_compile_s"):
        assert printed[key] > 0, key
    assert printed["train_img_per_s"] == pytest.approx(2 / printed["train_step_s"])
    assert printed["infer_img_per_s"] == pytest.approx(2 / printed["infer_batch_s"])
    # Training costs more than inference: backward is about twice the forward pass.
    assert printed["train_flops_per_image"] > 2 * printed["infer_flops_per_image"] > 0
    assert printed["train_tflops"] == pytest.approx(
        printed["train_flops_per_image"] * 2 / printed["train_step_s"] / 1e12
    )
    # CPU: no known peak, so no MFU; the compiled memory analysis is there.
    assert printed["peak_tflops_per_device"] is None and printed["train_mfu"] is None
    memory = printed["train_memory"]
    assert memory["peak_estimate_bytes"] >= memory["argument_bytes"] > 0


def bench_params(name: str, num_classes: int) -> int:
    # Independent count: the registry's model, initialised through its own eval_shape.
    from segjax.models.__main__ import abstract_variables, param_count
    from segjax.models.registry import build_model

    model = build_model(name, num_classes=num_classes)
    return param_count(abstract_variables(model, (1, 32, 32, 3)))


def test_peak_table_matches_device_kinds():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert bench.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
    assert bench.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert bench.peak_tflops("TPU v4", "bfloat16") == 275.0
    assert bench.peak_tflops("cpu", "float32") is None


def test_bench_config_matches_the_torch_reference():
    config = bench.bench_config("deeplabv3_resnet50", batch=4, size=(256, 256))
    assert config.optimizer.name == "sgd"
    assert config.optimizer.learning_rate == 0.01 and config.optimizer.momentum == 0.9
    assert config.optimizer.weight_decay == 0.0 and config.optimizer.warmup_steps == 0
    assert config.optimizer.schedule == "constant"
    assert config.loss.name == "cross_entropy" and config.dataset.ignore_index == 255
    assert config.model.aux_head is False and config.model.output_stride is None
    assert config.dataset.num_classes == 21 and config.input.crop_size == (256, 256)


# 30 s on a quiet 2-core machine, 10 min at load 20 (three models compiled in a subprocess).
@pytest.mark.slow
def test_gpu_comparison_dry_run_prints_its_table(tmp_path):
    # benchmarks/gpu.py end to end on the CPU (tiny model, one step; no torch given): the
    # script that a lent GPU runs is checked here before it meets one.
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--dry_run", "--torch_python", "", "--json", out],
        cwd=root, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["impl"] for r in rows] == [
        "segjax",
        "segjax SEGJAX_BN=flax",
        "torch AMP channels_last",
    ]
    for row in rows[:2]:
        assert "error" not in row, row
        assert row["model"] == "deeplabv3plus_tiny" and row["img_s"] > 0 and row["ms_step"] > 0
        assert row["peak_bytes"] > 0 and row["flops_per_image"] > 0
    assert "no torch interpreter" in rows[2]["error"]
    assert "| segjax SEGJAX_BN=flax | deeplabv3plus_tiny |" in proc.stdout


def test_gpu_table_ratio_is_against_the_twin_of_the_same_case():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    rows = [
        {"case": "a", "impl": "segjax", "model": "a", "img_s": 30.0, "ms_step": 1.0},
        {"case": "a", "impl": "torch AMP channels_last", "model": "ta", "img_s": 20.0,
         "ms_step": 2.0, "peak_bytes": 2**31},
        {"case": "b", "impl": "segjax", "model": "b", "img_s": 5.0, "ms_step": 3.0},
        {"case": "b", "impl": "torch AMP channels_last", "model": "tb", "error": "failed (1)"},
    ]  # fmt: skip
    table = gpu.format_table(rows).splitlines()
    assert table[2].endswith("| 1.50x |") and "| 2.00 |" in table[3]
    assert table[4].endswith("| - |") and "failed (1)" in table[5]


def test_a_volume_model_benchmarks_the_volume_task():
    config = bench.bench_config("unet3d_tiny", batch=2, size=(8, 16, 16), num_classes=3)
    assert config.task == "volume" and tuple(config.volume.crop_size) == (8, 16, 16)
    assert config.dataset.name == "volume_shapes"
    with pytest.raises(ValueError, match=r"needs --size D H W"):
        bench.bench_config("unet3d_tiny", batch=2, size=(16, 16), num_classes=3)
    with pytest.raises(ValueError, match=r"needs --size H W"):
        bench.bench_config("unet_tiny", batch=2, size=(8, 16, 16), num_classes=3)


@pytest.mark.slow
def test_volume_benchmark_times_a_3d_step_and_reports_memory(capsys):
    result = bench.main(
        ["--model", "unet3d_tiny", "--batch", "1", "--size", "8", "16", "16",
         "--steps", "1", "--warmup", "0", "--devices", "1", "--num_classes", "3"]
    )  # fmt: skip
    assert result["size"] == [8, 16, 16] and result["train_step_s"] > 0
    assert result["train_memory"]["peak_estimate_bytes"] > 0 and result["train_loss_finite"]
    compiled = bench.main(
        ["--model", "unet3d_tiny", "--batch", "1", "--size", "8", "16", "16",
         "--devices", "1", "--num_classes", "3", "--compile_only"]
    )  # fmt: skip
    assert compiled["compile_only"] and compiled["train_memory"]["peak_estimate_bytes"] > 0
    assert compiled["train_step_s"] != compiled["train_step_s"]  # NaN: nothing ran
