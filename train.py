"""Trains a segjax model.

  python train.py                                   # configs/default.py into workdirs/default
  python train.py --config configs/default.py:tiny --workdir /tmp/run
  python train.py --config.optimizer.learning_rate=0.01 --config.model.dtype=bfloat16

Running the same command again resumes from the latest checkpoint in --workdir.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(_HERE, "configs", "default.py"),
    "Experiment config file.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdirs/default", "Directory for checkpoints, logs and reports of the run."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir even if it was written with another config."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Imported here so that --help does not pay for jax / tensorflow start-up.
    from segjax import config_check, distributed, logs, train_lib

    logs.setup_logging()

    distributed.initialize()
    try:
        scores = train_lib.train_and_evaluate(
            _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
    except config_check.ConfigError as e:
        raise SystemExit(f"train.py: {e}") from None
    if scores.get("preempted"):
        return
    logging.info(
        "Finished at step %d: val %s", scores["step"], train_lib.format_summary(scores["summary"])
    )


if __name__ == "__main__":
    app.run(main)
