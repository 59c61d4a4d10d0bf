"""Evaluates a segjax checkpoint and writes the metric report.

  python eval.py --workdir workdirs/default                  # latest checkpoint, val split
  python eval.py --workdir workdirs/default --step best
  python eval.py --config configs/default.py --checkpoint_dir DIR/checkpoints --step 1500

Prints the per-class IoU table with mIoU and pixel accuracy; writes
`<output>/eval/<split>_step<N>.json` and `.txt` (output: --output or the workdir).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: the workdir's saved config.json).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Checkpoint directory (default: <workdir>/checkpoints)."
)
_STEP = flags.DEFINE_string("step", "latest", "'latest', 'best' (val mIoU) or a step number.")
_SPLIT = flags.DEFINE_string("split", None, "Split to score (default: config.dataset.eval_split).")
_OUTPUT = flags.DEFINE_string("output", None, "Where reports go (default: the workdir).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from segjax import distributed, train_lib

    if _WORKDIR.value is None and (_CONFIG.value is None or _CHECKPOINT_DIR.value is None):
        raise app.UsageError("Pass --workdir, or both --config and --checkpoint_dir.")
    config = _CONFIG.value
    if config is None:
        config = train_lib.load_config(os.path.join(_WORKDIR.value, "config.json"))
    checkpoint_dir = _CHECKPOINT_DIR.value or os.path.join(_WORKDIR.value, "checkpoints")
    output = _OUTPUT.value or _WORKDIR.value or os.path.dirname(checkpoint_dir.rstrip("/"))

    distributed.initialize()
    split = _SPLIT.value or config.dataset.eval_split
    step, scores = train_lib.evaluate_checkpoint(
        config, checkpoint_dir, which=_STEP.value, split=split
    )
    table = train_lib.write_eval_report(output, config, split, step, scores)
    print(f"{config.model.name} step {step} on {config.dataset.name}/{split}")
    print(table)
    logging.info("Report written to %s", os.path.join(output, "eval"))


if __name__ == "__main__":
    app.run(main)
