"""Evaluates a segjax checkpoint: accuracy, visual quality, speed and memory.

  python eval.py --workdir workdirs/default                  # latest checkpoint, val split
  python eval.py --workdir workdirs/default --step best      # or --step 1500
  python eval.py --workdir workdirs/default --mode slide --crop_size 96,96 --stride 64,64
  python eval.py --workdir workdirs/default --scales 0.75,1,1.25 --flip
  python eval.py --workdir workdirs/default --crf            # + dense CRF (config.eval.crf)
  python eval.py --config configs/default.py --checkpoint_dir DIR/checkpoints --step 1500
  python eval.py --workdir workdirs/default --images 'photos/*.jpg' --output /tmp/pred

Scoring a split writes, under `<output>/eval/` (output: --output or the workdir):
`<split>_step<N>.json` / `.txt` (per-class table, mIoU, accuracy, and the inference
mode, speed and memory figures), `<split>_step<N>_vis/*.png` (image | ground truth |
prediction) and `<split>_step<N>_confusion_matrix.png`. With --images it writes, per file, a
palette label PNG and a colour overlay at the image's original size instead (other tasks
write their own kind of prediction); a file that cannot be decoded is skipped and named,
the others are predicted, and the command exits non-zero at the end.
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
_IMAGES = flags.DEFINE_multi_string(
    "images", None, "Glob(s) of image files to predict instead of scoring a split."
)
# Overrides of config.eval (None: keep the config's value).
_MODE = flags.DEFINE_enum("mode", None, ["whole", "slide"], "Inference mode.")
_CROP = flags.DEFINE_list("crop_size", None, "Sliding window 'height,width'.")
_STRIDE = flags.DEFINE_list("stride", None, "Sliding window step 'height,width'.")
_GAUSSIAN = flags.DEFINE_boolean("gaussian", None, "Gaussian-weighted window averaging.")
_SCALES = flags.DEFINE_list("scales", None, "Multi-scale TTA ratios, e.g. '0.75,1,1.25'.")
_FLIP = flags.DEFINE_boolean("flip", None, "Horizontal-flip TTA.")
_RESIZE = flags.DEFINE_list("resize", None, "Resize images to fit 'height,width' (0,0: off).")
_NUM_VIS = flags.DEFINE_integer("num_visualizations", None, "Comparison panels to write.")
_SPEED_ITERS = flags.DEFINE_integer("speed_iters", None, "Timed runs for the speed figures.")
_CRF = flags.DEFINE_boolean(
    "crf", None, "Refine the probabilities by the dense CRF of config.eval.crf (--nocrf: off)."
)


def _with_overrides(config):
    overrides = {
        "mode": _MODE.value,
        "crop_size": _CROP.value and tuple(int(s) for s in _CROP.value),
        "stride": _STRIDE.value and tuple(int(s) for s in _STRIDE.value),
        "gaussian": _GAUSSIAN.value,
        "scales": _SCALES.value and tuple(float(s) for s in _SCALES.value),
        "flip": _FLIP.value,
        "resize": _RESIZE.value and tuple(int(s) for s in _RESIZE.value),
        "num_visualizations": _NUM_VIS.value,
        "speed_iters": _SPEED_ITERS.value,
    }
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in overrides.items():
            if value is not None:
                config.eval[key] = value
        if _CRF.value is not None:
            if "crf" not in config.eval:  # a config saved before the CRF existed
                from configs import common

                config.eval.crf = common.base_config().eval.crf
            config.eval.crf.enabled = _CRF.value
    config.lock()
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from segjax import config_check, distributed, eval_lib, logs

    logs.setup_logging()

    if _WORKDIR.value is None and (_CONFIG.value is None or _CHECKPOINT_DIR.value is None):
        raise app.UsageError("Pass --workdir, or both --config and --checkpoint_dir.")
    config = _CONFIG.value
    if config is None:
        config = eval_lib.load_config(os.path.join(_WORKDIR.value, "config.json"))
    config = _with_overrides(config)
    checkpoint_dir = _CHECKPOINT_DIR.value or os.path.join(_WORKDIR.value, "checkpoints")
    output = _OUTPUT.value or _WORKDIR.value or os.path.dirname(checkpoint_dir.rstrip("/"))

    distributed.initialize()
    try:
        _run(config, checkpoint_dir, output)
    except config_check.ConfigError as e:
        raise SystemExit(f"eval.py: {e}") from None


def _run(config, checkpoint_dir: str, output: str) -> None:
    from segjax import eval_lib

    if _IMAGES.value:
        try:
            written = eval_lib.predict_files(
                config, checkpoint_dir, _IMAGES.value, output, which=_STEP.value
            )
        except eval_lib.UnreadableFilesError as e:
            print(f"Wrote {len(e.written)} prediction files to {output}")
            raise SystemExit(str(e)) from None
        print(f"Wrote {len(written)} prediction files to {output}")
        return
    split = _SPLIT.value or config.dataset.eval_split
    result = eval_lib.run_evaluation(config, checkpoint_dir, output, which=_STEP.value, split=split)
    print(f"{config.model.name} step {result['step']} on {config.dataset.name}/{split}")
    print(result["table"])
    logging.info("Report written to %s", os.path.join(output, "eval"))


if __name__ == "__main__":
    app.run(main)
