"""The trained zoo: every tiny model trained on segjax_shapes for the same budget.

    python benchmarks/zoo_shapes.py                              # every *_tiny model + pixel_mlp
    python benchmarks/zoo_shapes.py --models unet_tiny,fpn_tiny --steps 300
    python benchmarks/zoo_shapes.py --write README.md            # its rows into the README

Each model is trained by `train_lib.train_and_evaluate` on a config of `train.py`
(`--config`, default `configs/zoo_shapes.py`: the default run's dataset and batch, no
rescale, cosine AdamW, 1,000 steps), with `model.name` overridden and `train.steps =
--steps` (default: the config's) for every model alike; the config's own model keeps its
`config.model` block (output stride, ...), the others run at their builders' defaults.
Then, per model:

- val mIoU / pixel accuracy: the final evaluation of that run (its `eval_split`);
- train / infer img/s and the train step's peak memory: `segjax.bench.run_benchmark` on
  the same config (the compiled train step, and the forward + argmax, on a batch of
  `input.batch_size` at `input.crop_size`; memory is XLA's estimate for one device:
  arguments + outputs + temporaries - donated);
- parameters and GFLOPs: of the trained model (its class count), the forward pass at
  512x512 from XLA's cost analysis (`python -m segjax.models --flops`);
- train time: wall time of the training run, compilation and evaluation included.

A model whose mIoU is not at least `--margin` points (default 1) above the
always-majority-class score (predicting the most frequent validation class everywhere)
is flagged and the command exits with status 1:
such a row is a bug to find (`pixel_mlp`, a per-pixel colour classifier, is the
reference that is expected there). `--write FILE` replaces the rows of the models it ran
between `<!-- zoo-table:begin -->` and `<!-- zoo-table:end -->` in FILE, keeping the rows
of the others and every other line; without it the table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
# Models that are expected at the always-majority score, and why (not flagged as bugs).
REFERENCES = {"pixel_mlp": "reference: one pixel's colour, blind to shape"}
GFLOPS_SIZE = (512, 512)
COLUMNS = (
    "model",
    "val mIoU",
    "pixel acc.",
    "train img/s",
    "infer img/s",
    "train step peak MB",
    "parameters",
    "GFLOPs 512x512",
    "train time",
    "steps",
    "measured",
)


def zoo_models() -> list[str]:
    """The registered tiny variants (names ending in `_tiny`) and `pixel_mlp`, sorted."""
    from segjax.models.registry import MODELS

    return sorted(n for n in MODELS if n.endswith("_tiny") or n == "pixel_mlp")


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> its `get_config(arg)` (what `train.py --config` loads)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("zoo_config", os.path.join(REPO, path))
    if module_spec is None:
        raise FileNotFoundError(f"--config {spec}: no such config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def model_config(base, name: str, steps: int):
    """`base` training `name` for `steps` steps, evaluated and checkpointed once, at the end."""
    from configs import common

    config = base.copy_and_resolve_references()
    with config.unlocked():
        if name != base.model.name:
            # Another model: the builder's defaults, not the base model's options.
            model = common.base_config().model
            model.name = name
            model.output_stride = None
            model.aux_head = False
            model.dtype = base.model.dtype
            config.model = model
        config.train.steps = steps
        config.train.eval_every = steps
        config.train.checkpoint_every = steps
        config.train.log_every = min(config.train.log_every, steps)
        config.train.keep_checkpoints = 1
        config.train.async_checkpointing = False
        config.eval.num_visualizations = 0
    config.lock()
    return config


def majority_class_miou(config) -> float:
    """mIoU of predicting the most frequent class of the eval split everywhere."""
    from segjax.data import audit

    (counts,) = audit.audit_prepared(
        config.dataset.name,
        config.dataset.config,
        os.path.expanduser(config.dataset.data_dir),
        [config.dataset.eval_split],
        config.dataset.ignore_index,
    )
    labelled = max(int(counts.pixels.sum()), 1)
    return float(counts.pixels.max()) / labelled / len(counts.pixels)


def measure(name: str, config, workdir: str, bench_steps: int) -> dict[str, Any]:
    """Trains and benchmarks one model; returns its row's figures."""
    from segjax import bench, train_lib
    from segjax.models.__main__ import abstract_variables, forward_gflops, param_count
    from segjax.tasks import semantic

    start = time.perf_counter()
    scores = train_lib.train_and_evaluate(config, workdir)
    train_s = time.perf_counter() - start
    speed = bench.run_benchmark(config, steps=bench_steps, warmup=1, inference=True)
    model = semantic.build_model(config)
    variables = abstract_variables(model, (1, *GFLOPS_SIZE, 3))
    return {
        "model": name,
        "miou": scores["summary"]["miou"],
        "pixel_accuracy": scores["summary"]["pixel_accuracy"],
        "train_img_per_s": speed["train_img_per_s"],
        "infer_img_per_s": speed["infer_img_per_s"],
        "train_peak_bytes": (speed["train_memory"] or {}).get("peak_estimate_bytes"),
        "params": param_count(variables),
        "gflops_512": forward_gflops(model, variables, (1, *GFLOPS_SIZE, 3)),
        "train_s": train_s,
        "steps": config.train.steps,
    }


def learned(r: dict[str, Any], baseline: float, margin: float) -> bool:
    """Whether a row's mIoU is `margin` (a fraction) above the always-majority score."""
    return r["miou"] >= baseline + margin


def format_row(r: dict[str, Any], stamp: str, baseline: float, margin: float) -> str:
    """One markdown table row (`COLUMNS`)."""
    if r["model"] in REFERENCES:
        flag = f" ({REFERENCES[r['model']]})"
    else:
        flag = "" if learned(r, baseline, margin) else " (at the always-majority score: a bug)"
    mem = f"{r['train_peak_bytes'] / 2**20:,.0f}" if r["train_peak_bytes"] else "-"
    gflops = f"{r['gflops_512']:.2f}" if r["gflops_512"] else "-"
    minutes, seconds = divmod(round(r["train_s"]), 60)
    cells = [
        f"`{r['model']}`",
        f"{100 * r['miou']:.2f}{flag}",
        f"{100 * r['pixel_accuracy']:.2f}",
        f"{r['train_img_per_s']:,.0f}",
        f"{r['infer_img_per_s']:,.0f}",
        mem,
        f"{r['params']:,d}",
        gflops,
        f"{minutes}:{seconds:02d}",
        f"{r['steps']:,d}",
        stamp,
    ]
    return "| " + " | ".join(cells) + " |"


def _row_model(line: str) -> str | None:
    match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
    return match.group(1) if match else None


def render_block(rows: dict[str, str], notes: Sequence[str], baseline_line: str) -> list[str]:
    """The lines between the markers: the table (rows sorted by model), then the notes."""
    header = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return [header, rule, *(rows[m] for m in sorted(rows)), "", baseline_line, *notes]


def merge_block(old: Sequence[str], new_rows: dict[str, str], note: str, baseline_line: str):
    """The block `old` with `new_rows` replacing or adding rows; notes still used are kept.

    A note is a line `- <stamp>: ...` saying how the rows of that stamp were made; it stays
    while a row of its stamp remains.
    """
    rows = {m: line for line in old if (m := _row_model(line))}
    rows.update(new_rows)
    notes = [line for line in old if line.startswith("- ")] + [note]
    live = {line.rsplit("|", 2)[-2].strip() for line in rows.values()}
    kept = []
    for line in notes:
        stamp = re.match(r"- (\d{4}-\d\d-\d\d \d\d:\d\d) UTC:", line)
        if stamp and stamp.group(1) in live and line not in kept:
            kept.append(line)
    return render_block(rows, kept, baseline_line)


def write_table(path: str, new_rows: dict[str, str], note: str, baseline_line: str) -> None:
    """Replaces the block between `BEGIN` and `END` in `path` (merged: see `merge_block`)."""
    with open(path) as f:
        lines = f.read().split("\n")
    try:
        begin, end = lines.index(BEGIN), lines.index(END)
    except ValueError:
        raise ValueError(
            f"{path} has no {BEGIN} ... {END} markers; add them where the table goes"
        ) from None
    if end < begin:
        raise ValueError(f"{path}: {END} comes before {BEGIN}")
    block = merge_block(lines[begin + 1 : end], new_rows, note, baseline_line)
    text = "\n".join([*lines[: begin + 1], *block, *lines[end:]])
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def public_args(argv: Sequence[str]) -> list[str]:
    """`argv` without the options that name this machine's files (`--json`, `--workdir`):
    the command written under the table is the one to rerun anywhere."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--json", "--workdir"):
            skip = True
        elif not a.startswith(("--json=", "--workdir=")):
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Trains the models, prints or writes the table; 1 if a model did not learn."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated (default: every *_tiny model)")
    p.add_argument(
        "--steps", type=int, default=0, help="training steps, per model (0: the config's)"
    )
    p.add_argument("--config", default="configs/zoo_shapes.py", help="train.py's --config")
    p.add_argument("--write", default="", help="a file with the table's markers (README.md)")
    p.add_argument("--json", default="", help="also write the rows' figures to this file")
    p.add_argument("--bench_steps", type=int, default=5, help="timed steps for img/s (median)")
    p.add_argument("--workdir", default="", help="keep the runs here (default: a temp dir)")
    p.add_argument(
        "--margin", type=float, default=1.0, help="mIoU points above always-majority to pass"
    )
    args = p.parse_args(argv)

    names = [n.strip() for n in args.models.split(",") if n.strip()] or zoo_models()
    from segjax.models.registry import MODELS

    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; the zoo's tiny models: {zoo_models()}")
    if args.steps < 0:
        p.error(f"--steps {args.steps}: at least 1, or 0 for the config's train.steps")
    base = load_config(args.config)
    steps = args.steps or base.train.steps
    baseline = majority_class_miou(base)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    root = args.workdir or tempfile.mkdtemp(prefix="zoo_shapes_")
    results, rows = [], {}
    try:
        for name in names:
            config = model_config(base, name, steps)
            print(f"[zoo] {name}: training {steps} steps ...", flush=True)
            r = measure(name, config, os.path.join(root, name), args.bench_steps)
            results.append(r)
            rows[name] = format_row(r, stamp, baseline, args.margin / 100)
            print(f"[zoo] {rows[name]}", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    ds = f"{base.dataset.name}/{base.dataset.config}"
    command = "python benchmarks/zoo_shapes.py " + " ".join(
        public_args(argv if argv is not None else sys.argv[1:])
    )
    note = (
        f"- {stamp} UTC: `{command.strip()}` ({args.config} on {ds}: batch "
        f"{base.input.batch_size}, crop {tuple(base.input.crop_size)}, "
        f"{base.optimizer.name} lr {base.optimizer.learning_rate:g}; "
        f"{os.cpu_count()} CPU cores of {platform.node()}, load {os.getloadavg()[0]:.1f})"
    )
    baseline_line = (
        f"Always the majority class on {ds}/{base.dataset.eval_split}: {100 * baseline:.2f} mIoU."
    )
    if args.write:
        write_table(args.write, rows, note, baseline_line)
        print(f"[zoo] wrote {len(rows)} rows into {args.write}")
    else:
        print("\n".join(render_block(rows, [note], baseline_line)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stamp": stamp, "baseline_miou": baseline, "rows": results}, f, indent=2)
    stuck = [
        r["model"]
        for r in results
        if not learned(r, baseline, args.margin / 100) and r["model"] not in REFERENCES
    ]
    if stuck:
        print(
            f"[zoo] not {args.margin:g} mIoU points above the always-majority score "
            f"({100 * baseline:.2f}): {stuck}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
