"""The issue's model list timed on this machine: segjax variants side by side, and torchvision.

For each model, runs `python -m segjax.bench` once per `--variants` entry (environment
settings, as in `run_cpu.py`; the first is the baseline every other is divided by), each in
its own process, back to back, and `../shared/bench/torch_reference.py` where torchvision
has the same model (`fcn_resnet50`, `deeplabv3_resnet50`). Prints every JSON result as it
comes, then one table: train step, images/s, ratio to the baseline variant (and to torch),
inference, compile time, peak memory estimate, parameters, GFLOPs per image, achieved
TFLOP/s.

    python benchmarks/zoo_cpu.py                     # the issue's list, 4 x 256x256, f32
    python benchmarks/zoo_cpu.py --models unet fcn8s_vgg16 --size 128 \\
        --variants "" "SEGJAX_CONV=xla"

The default variants compare segjax's convolutions (`""`) with one XLA convolution per
layer and plain autodiff (`SEGJAX_CONV=xla`, see `segjax.models.layers.conv2d`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run_cpu import DEFAULT_REFERENCE, REPO, _run_json, variant_env

ISSUE_MODELS = [
    "deeplabv3_resnet50",
    "deeplabv3plus_resnet50",
    "unet",
    "pspnet_resnet50",
    "fcn8s_vgg16",
    "deeplabv3plus_tiny",
]
# segjax names whose torchvision model (same name) torch_reference.py can time.
TORCH_MODELS = {"fcn_resnet50", "deeplabv3_resnet50"}


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs every model and variant, prints the results and the table; returns the rows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=ISSUE_MODELS)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="square input size")
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (median)")
    p.add_argument("--variants", nargs="+", default=["", "SEGJAX_CONV=xla"])
    p.add_argument(
        "--torch_python",
        default=os.environ.get("SEGJAX_TORCH_PYTHON") or os.environ.get("TORCH_PYTHON", ""),
        help="interpreter with torch (default $SEGJAX_TORCH_PYTHON, else $TORCH_PYTHON)",
    )
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="torch_reference.py")
    p.add_argument("--no_torch", action="store_true", help="skip the torchvision runs")
    a = p.parse_args(argv)

    rows = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    for model in a.models:
        torch_step = None
        if model in TORCH_MODELS and not a.no_torch and os.path.exists(a.torch_python):
            ref = _run_json([
                a.torch_python, a.reference, "--model", model, "--batch", str(a.batch),
                "--size", str(a.size), "--classes", str(a.num_classes),
                "--steps", str(a.steps), "--device", "cpu",
            ])  # fmt: skip
            ref["load_average"] = list(os.getloadavg())
            print(json.dumps(ref), flush=True)
            torch_step = ref["train_step_s"]
            rows.append({"model": model, "variant": "torch", **ref})
        base = None
        for variant in a.variants:
            start = time.perf_counter()
            cmd = [
                sys.executable, "-m", "segjax.bench", "--model", model, "--batch", str(a.batch),
                "--size", str(a.size), str(a.size), "--num_classes", str(a.num_classes),
                "--steps", str(a.steps), "--dtype", "float32",
            ]  # fmt: skip
            seg = _run_json(cmd, variant_env(variant))
            seg["wall_s"] = time.perf_counter() - start
            print(json.dumps({"variant": variant, **seg}), flush=True)
            base = base or seg["train_step_s"]
            row = {"model": model, "variant": variant or "(default)", **seg}
            row["vs_baseline"] = seg["train_step_s"] / base
            if torch_step:
                row["vs_torch"] = seg["train_step_s"] / torch_step
            rows.append(row)

    print(f"\n{a.batch} x {a.size}x{a.size} float32; ratios: train step time / baseline's")
    header = (
        f"{'model':24s} {'variant':18s} {'step s':>7s} {'img/s':>6s} {'/base':>6s} "
        f"{'/torch':>6s} {'infer s':>7s} {'compile':>7s} {'peak GB':>7s} {'params M':>8s} "
        f"{'GFLOP/img':>9s} {'TFLOP/s':>7s}"
    )
    print(header)
    for r in rows:
        if r["variant"] == "torch":
            print(
                f"{r['model']:24s} {'torch':18s} {r['train_step_s']:7.2f} "
                f"{r['train_img_per_s']:6.2f} {'':>6s} {1:6.2f} {r['infer_batch_s']:7.2f}"
            )
            continue
        mem = (r.get("train_memory") or {}).get("peak_estimate_bytes")
        flops = r.get("train_flops_per_image")
        vs_torch = f"{r['vs_torch']:6.2f}" if "vs_torch" in r else f"{'-':>6s}"
        print(
            f"{r['model']:24s} {r['variant'][:18]:18s} {r['train_step_s']:7.2f} "
            f"{r['train_img_per_s']:6.2f} {r['vs_baseline']:6.2f} "
            f"{vs_torch} "
            f"{r.get('infer_batch_s', float('nan')):7.2f} {r['train_compile_s']:7.1f} "
            f"{(mem or 0) / 1e9:7.2f} {r['params'] / 1e6:8.2f} "
            f"{(flops or 0) / 1e9:9.1f} {(r.get('train_tflops') or 0):7.3f}"
        )
    print(f"load average after: {os.getloadavg()}")
    return rows


if __name__ == "__main__":
    os.chdir(REPO)
    main()
