"""segjax and the PyTorch reference, timed side by side on this machine's CPU.

The issue's CPU case by default: DeepLabv3-ResNet-50, output stride 8, 21 classes, batch 4,
256x256, float32, SGD momentum 0.9, cross-entropy (ignore 255), no auxiliary head. Each
round runs the reference (`torch_reference.py`, torchvision's `deeplabv3_resnet50`) and
then segjax (`python -m segjax.bench`, once per `--variants` entry) back to back, each in
its own process, so both see the same machine load; the ratio segjax / torch is taken
within a round (lower is better) and its median over the rounds is printed.

    python benchmarks/run_cpu.py                        # the issue's case, 2 rounds
    python benchmarks/run_cpu.py --rounds 3 --steps 5 \\
        --variants "" "SEGJAX_CONV=xla" "XLA_FLAGS=--xla_cpu_use_onednn=true"

A variant is a set of environment variables for the segjax run, `KEY=VALUE` pairs joined
by `;` ("" = the environment as it is): e.g. `SEGJAX_CONV=xla` (convolutions as one XLA op
each, segjax's behaviour before tap splitting; see `segjax.models.layers.conv2d`) or
`XLA_FLAGS=...`.

torch is not a segjax dependency: give the interpreter of an environment that has torch and
torchvision with `--torch_python` (default `$SEGJAX_TORCH_PYTHON`, else `$TORCH_PYTHON`).
Every JSON line of both programs is printed as it comes, then a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE = os.path.join(os.path.dirname(REPO), "shared", "bench", "torch_reference.py")


def _run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    # The last line of stdout that parses as JSON is the program's result.
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(cmd)} printed no JSON line:\n{proc.stdout[-2000:]}")


def variant_env(assignments: str) -> dict[str, str]:
    """This environment with a variant's `KEY=VALUE;KEY=VALUE` settings (and any platform)."""
    env = dict(os.environ)
    for assignment in filter(None, assignments.split(";")):
        key, _, value = assignment.partition("=")
        env[key.strip()] = value
    env.pop("JAX_PLATFORMS", None)
    return env


def main(argv: list[str] | None = None) -> dict:
    """Runs the rounds, prints every result and the summary; returns the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--torch_python",
        default=os.environ.get("SEGJAX_TORCH_PYTHON") or os.environ.get("TORCH_PYTHON", ""),
        help="interpreter with torch (default $SEGJAX_TORCH_PYTHON, else $TORCH_PYTHON)",
    )
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="torch_reference.py")
    p.add_argument("--model", default="deeplabv3_resnet50", help="same name in both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="square input size")
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=5, help="timed steps per run (median)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help="one segjax run per variant per round: 'KEY=VALUE;KEY=VALUE' environment",
    )
    p.add_argument("--no_inference", action="store_true", help="time training only")
    a = p.parse_args(argv)
    if not a.torch_python:
        p.error("--torch_python: no interpreter with torch given (or set $SEGJAX_TORCH_PYTHON)")

    torch_cmd = [
        a.torch_python, a.reference, "--model", a.model, "--batch", str(a.batch),
        "--size", str(a.size), "--classes", str(a.num_classes), "--steps", str(a.steps),
        "--device", "cpu",
    ]  # fmt: skip
    segjax_cmd = [
        sys.executable, "-m", "segjax.bench", "--model", a.model, "--batch", str(a.batch),
        "--size", str(a.size), str(a.size), "--num_classes", str(a.num_classes),
        "--steps", str(a.steps), "--dtype", "float32",
    ]  # fmt: skip
    if a.no_inference:
        segjax_cmd.append("--no_inference")

    results: dict[str, list[dict]] = {"torch": []}
    ratios: dict[str, list[float]] = {}
    infer_ratios: dict[str, list[float]] = {}
    print(f"load average before: {os.getloadavg()}", flush=True)
    for r in range(a.rounds):
        ref = _run_json(torch_cmd)
        ref["load_average"] = list(os.getloadavg())
        results["torch"].append(ref)
        print(json.dumps({"round": r, **ref}), flush=True)
        for flags in a.variants:
            start = time.perf_counter()
            seg = _run_json(segjax_cmd, variant_env(flags))
            seg["wall_s"] = time.perf_counter() - start
            results.setdefault(flags, []).append(seg)
            ratios.setdefault(flags, []).append(seg["train_step_s"] / ref["train_step_s"])
            if "infer_batch_s" in seg:
                infer_ratios.setdefault(flags, []).append(
                    seg["infer_batch_s"] / ref["infer_batch_s"]
                )
            print(json.dumps({"round": r, **seg}), flush=True)

    summary = {
        "case": f"{a.model} batch {a.batch} {a.size}x{a.size} float32, {a.rounds} rounds",
        "torch_train_step_s": [x["train_step_s"] for x in results["torch"]],
        "torch_infer_batch_s": [x["infer_batch_s"] for x in results["torch"]],
        "variants": {},
    }
    print("\nsegjax / torch (median over rounds; < 1 means segjax is faster)")
    print(f"{'variant':60s} {'train':>8s} {'infer':>8s} {'compile s':>10s}")
    for flags in a.variants:
        runs = results[flags]
        row = {
            "train_ratio": statistics.median(ratios[flags]),
            "train_ratios": ratios[flags],
            "train_step_s": [x["train_step_s"] for x in runs],
            "train_compile_s": statistics.median(x["train_compile_s"] for x in runs),
        }
        if flags in infer_ratios:
            row["infer_ratio"] = statistics.median(infer_ratios[flags])
        summary["variants"][flags or "(none)"] = row
        infer = f"{row['infer_ratio']:8.2f}" if "infer_ratio" in row else f"{'-':>8s}"
        print(
            f"{(flags or '(none)'):60s} {row['train_ratio']:8.2f} {infer} "
            f"{row['train_compile_s']:10.1f}"
        )
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
