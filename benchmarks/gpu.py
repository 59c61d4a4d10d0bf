"""The GPU comparison in one table: segjax and its PyTorch AMP twins on one accelerator.

For a machine with one H100 / H200 and JAX with CUDA (about 6 minutes there):

    python benchmarks/gpu.py                      # or: bash benchmarks/gpu.sh (wheels first)
    python benchmarks/gpu.py --dry_run            # the same plumbing on this CPU, in seconds

Each case runs `python -m segjax.bench` at 512x512, batch 16, bfloat16, synthetic data,
twice (XLA's own BatchNorm backward with `SEGJAX_BN=flax`, and segjax's custom one), and
`torch_reference.py --amp` (bf16 autocast, channels_last) on the twin, each in a process of
its own so that peak memory is the run's alone. Columns: images/s, ms per train step, peak
device memory, TFLOP/s and MFU (XLA's FLOP count of the compiled step; for torch the same
count is used, since both run the same model), and segjax / torch speed. A twin whose
package is missing on the machine (segmentation_models_pytorch for `smp:*`), or no torch at
all (`--torch_python ""`), gives a row that says so.

`--dry_run` swaps in the tiny models at 64x64, batch 2, one timed step on the CPU, so that
the tests exercise every line but the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE = os.path.join(os.path.dirname(REPO), "shared", "bench", "torch_reference.py")

# segjax model, its PyTorch twin in torch_reference.py, dry-run stand-in.
CASES = (
    ("deeplabv3plus_resnet50", "smp:DeepLabV3Plus:resnet50", "deeplabv3plus_tiny"),
    ("deeplabv3_resnet50", "deeplabv3_resnet50", "deeplabv3plus_tiny"),
    ("unet", "unet", "unet_tiny"),
)
VARIANTS = (("segjax", {}), ("segjax SEGJAX_BN=flax", {"SEGJAX_BN": "flax"}))


def _last_json(cmd: list[str], env: dict[str, str]) -> tuple[dict | None, str]:
    """The last JSON line that `cmd` prints, or None and the tail of its error output."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.strip().startswith("{"):
            return json.loads(line), ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return None, f"failed ({proc.returncode}): {tail[0][:160]}"


def _peak_bytes(result: dict) -> float | None:
    """The device's measured peak (GPU); else the compiled step's estimate (CPU)."""
    peak = (result.get("device_memory_stats") or {}).get("peak_bytes_in_use")
    return peak or (result.get("train_memory") or {}).get("peak_estimate_bytes")


def segjax_row(name: str, model: str, args, env: dict[str, str]) -> dict:
    cmd = [
        sys.executable, "-m", "segjax.bench", "--model", model, "--batch", str(args.batch),
        "--size", str(args.size), str(args.size), "--dtype", args.dtype,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--no_inference",
        "--devices", "1",  # one accelerator; on a CPU, whatever XLA_FLAGS simulates
    ]  # fmt: skip
    result, error = _last_json(cmd, {**os.environ, **env})
    if result is None:
        return {"impl": name, "model": model, "error": error}
    return {
        "impl": name,
        "model": model,
        "img_s": result["train_img_per_s"],
        "ms_step": 1e3 * result["train_step_s"],
        "peak_bytes": _peak_bytes(result),
        "flops_per_image": result.get("train_flops_per_image"),
        "tflops": result.get("train_tflops"),
        "mfu": result.get("train_mfu"),
        "device": result.get("device"),
    }


def torch_row(twin: str, args, flops_per_image: float | None) -> dict:
    row = {"impl": "torch AMP channels_last", "model": twin}
    if not args.torch_python:
        return {**row, "error": "no torch interpreter (--torch_python)"}
    if not os.path.exists(args.reference):
        return {**row, "error": f"no {args.reference} (--reference)"}
    cmd = [
        args.torch_python, args.reference, "--model", twin, "--batch", str(args.batch),
        "--size", str(args.size), "--steps", str(args.steps),
    ]  # fmt: skip
    if not args.dry_run:
        cmd.append("--amp")
    else:
        cmd += ["--device", "cpu"]
    result, error = _last_json(cmd, dict(os.environ))
    if result is None:
        return {**row, "error": error}
    step_s = result["train_step_s"]
    row.update(img_s=args.batch / step_s, ms_step=1e3 * step_s)
    row["peak_bytes"] = result.get("train_peak_bytes")  # None on the CPU
    if flops_per_image:
        row["tflops"] = flops_per_image * args.batch / step_s / 1e12
    return row


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table; a failed or missing run says why in place of figures."""

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, int | float) else "-"

    lines = [
        "| implementation | model | img/s | ms/step | peak memory GB | TFLOP/s | MFU | vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    torch_img_s = {}
    for row in rows:
        if row["impl"].startswith("torch") and "img_s" in row:
            torch_img_s[row["case"]] = row["img_s"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['impl']} | {row['model']} | {row['error']} |||||| ")
            continue
        peak = row.get("peak_bytes")
        ratio = "-"
        if not row["impl"].startswith("torch") and row["case"] in torch_img_s:
            ratio = f"{row['img_s'] / torch_img_s[row['case']]:.2f}x"
        lines.append(
            f"| {row['impl']} | {row['model']} | {num(row['img_s'], '.1f')} | "
            f"{num(row['ms_step'], '.1f')} | {num(peak / 2**30 if peak else None, '.2f')} | "
            f"{num(row.get('tflops'), '.1f')} | {num(row.get('mfu'), '.1%')} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--torch_python", default=os.environ.get("SEGJAX_TORCH_PYTHON", sys.executable))
    p.add_argument(
        "--reference", default=os.environ.get("SEGJAX_TORCH_REFERENCE", DEFAULT_REFERENCE)
    )
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dry_run", action="store_true", help="tiny models on the CPU, 1 step")
    p.add_argument("--json", default="", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.dry_run:
        args.size, args.batch, args.dtype, args.steps, args.warmup = 64, 2, "float32", 1, 1

    rows = []
    for model, twin, tiny in CASES:
        case = tiny if args.dry_run else model
        flops = None
        for name, env in VARIANTS:
            row = segjax_row(name, case, args, env)
            flops = flops or row.get("flops_per_image")
            rows.append({**row, "case": model})
            print(json.dumps(rows[-1]), flush=True)
        rows.append({**torch_row(twin, args, flops), "case": model})
        print(json.dumps(rows[-1]), flush=True)
        if args.dry_run:
            break  # one case shows every code path; the others differ in names only
    print(f"\n{args.batch} images of {args.size}x{args.size}, {args.dtype}, train step median")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
