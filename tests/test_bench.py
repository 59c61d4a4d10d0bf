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
