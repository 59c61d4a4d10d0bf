"""How slow are the recurrent models? Each against a CNN of about its size, in one run.

    python benchmarks/recurrent_speed.py                      # 2 x 128x128, float32
    python benchmarks/recurrent_speed.py --size 64 --batch 8 --pairs lstm2d_tiny:unet_tiny

For each pair `recurrent:cnn` (default `PAIRS`), times the recurrent model and then the
CNN back to back in this one process with `segjax.bench.run_benchmark` (the train step
`train.py` compiles, SGD as `python -m segjax.bench`, and the jitted forward + argmax, on
one random batch on device; median of `--steps` after `--warmup`), so that the two share
the machine's load of that moment. Prints one JSON line per model, then a table of images/s
with each CNN's images/s divided by its recurrent model's: "x slower". On a shared
machine the absolute figures move with the load (printed before and after); the ratios are
what to read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (recurrent model, registered CNN of about its parameter count at 21 classes)
PAIRS = (
    ("reseg_tiny", "enet_tiny"),  # 9.5 k : 9.0 k
    ("lstm2d_tiny", "unet_tiny"),  # 43 k : 31 k
    ("fcn_crfrnn_tiny", "fcn8s_tiny"),  # 161.6 k : 161.2 k (the same FCN without the CRF)
    ("lstm2d", "deeplabv3plus_tiny"),  # 290 k : 389 k
    ("reseg_vgg16", "deeplabv3plus_mobilenetv2"),  # 2.96 M : 2.72 M
)


def _pairs(specs: Sequence[str] | None) -> list[tuple[str, str]]:
    if not specs:
        return list(PAIRS)
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 2 or not all(parts):
            raise SystemExit(f"--pairs {spec!r}: expected RECURRENT:CNN, two model names")
        out.append((parts[0], parts[1]))
    return out


def table(rows: dict[str, dict], pairs: Sequence[tuple[str, str]]) -> str:
    """The markdown table of `pairs` from `rows` (model -> `run_benchmark` result)."""
    lines = [
        "| recurrent model | params | infer img/s | train img/s | CNN | params "
        "| infer img/s | train img/s | infer: x slower | train: x slower |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rnn, cnn in pairs:
        r, c = rows[rnn], rows[cnn]
        lines.append(
            f"| `{rnn}` | {r['params']:,} | {r['infer_img_per_s']:.3g} "
            f"| {r['train_img_per_s']:.3g} | `{cnn}` | {c['params']:,} "
            f"| {c['infer_img_per_s']:.3g} | {c['train_img_per_s']:.3g} "
            f"| {c['infer_img_per_s'] / r['infer_img_per_s']:.2f} "
            f"| {c['train_img_per_s'] / r['train_img_per_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Times every model of the pairs, prints the JSON lines and the table; returns the rows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", nargs="+", help="RECURRENT:CNN model pairs (default: PAIRS)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="square input size")
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="also write the rows and the table to this file")
    a = p.parse_args(argv)
    pairs = _pairs(a.pairs)

    import jax

    from segjax import bench

    started = datetime.datetime.now(datetime.UTC)
    load_before = tuple(round(x, 1) for x in os.getloadavg())
    print(f"{started:%Y-%m-%d %H:%M} UTC, load average before: {load_before}", flush=True)
    rows: dict[str, dict] = {}
    for pair in pairs:
        for model in pair:
            if model in rows:
                continue
            config = bench.bench_config(
                model, batch=a.batch, size=(a.size, a.size), num_classes=a.num_classes
            )
            rows[model] = bench.run_benchmark(config, steps=a.steps, warmup=a.warmup)
            print(json.dumps(rows[model]), flush=True)
    load_after = tuple(round(x, 1) for x in os.getloadavg())
    text = table(rows, pairs)
    device = jax.devices()[0]
    print(
        f"\n{a.batch} x {a.size}x{a.size}, float32, {a.num_classes} classes, median of "
        f"{a.steps} steps; {device.platform} ({device.device_kind}, {os.cpu_count()} cores), "
        f"host {platform.node()}; load average {load_before} before, {load_after} after\n"
    )
    print(text, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "pairs": pairs, "table": text, "argv": vars(a)}, f)
    return rows


if __name__ == "__main__":
    os.chdir(REPO)
    main()
