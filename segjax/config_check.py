"""Every value of a run's config checked in one place, before any work starts.

`check_config(config, num_devices=...)` looks at each key of `configs/common.py`'s
`base_config()` (and a task's own block, `config.classification`, `config.panoptic`) that the config
holds: its type, range, shape or choices, and the rules between keys (a batch that
splits evenly over the devices, a sliding-window stride no larger than the window, an
eval resize that fits the padded canvas, ...). It reads no data and builds no model, so
`train_lib.train_and_evaluate` and `eval_lib` call it first; every problem is collected
and raised together as one `ConfigError` whose lines each name the key, its value and
what is allowed:

    config.optimizer.learning_rate=-1.0: expected a finite number >= 0 (0 freezes the weights)
    config.input.crop_size=(64,): expected (height, width), 2 integers >= 1

A key the config does not hold is not checked: a config saved before the key existed
(an old `config.json` that `eval.py` reads) runs on the key's default. Keys of
`config.model` other than the ones below are the model builder's own arguments, checked
by the builder.

Conventions the rules settle:
- `optimizer.learning_rate = 0` is allowed: a run with frozen weights (only BatchNorm
  statistics move), which the weight-conversion tests use.
- `train.steps >= 1`: a run of no steps trains nothing (a finished run given a higher
  count resumes; given a lower one it only re-scores its final state).
- `train.max_nonfinite_in_a_row = 0` turns the stop off; `train.keep_best = 0` keeps
  no extra best checkpoint; `input.worker_count = 0` reads in the main process.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

__all__ = ["ConfigError", "check_config", "config_problems", "input_problems"]

DTYPES = ("float32", "bfloat16")
# 12: lstm2d (Byeon et al.): 3x3 input blocks, merged twice by 2x2.
OUTPUT_STRIDES = (None, 1, 2, 4, 8, 12, 16, 32)
# config.input.norm_stats: where the per-band normalisation comes from (see
# `segjax.data.datasets.resolve_inputs`).
NORM_STATS = ("auto", "config", "dataset")
_ABSENT = object()


class ConfigError(ValueError):
    """Config values that cannot run; `problems` holds one line per bad key."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        count = f"{len(self.problems)} config value{'s' if len(self.problems) > 1 else ''}"
        super().__init__(f"{count} not allowed:\n  " + "\n  ".join(self.problems))


# ------------------------------------------------------------------------ value checks


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int | None = None, hi: int | None = None) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)

    return ok, "an integer" + _range_text(lo, hi)


def _number(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open=False
) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    text = "a finite number"
    if lo is not None:
        text += f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        text += f"{' and' if lo is not None else ''} {'<' if hi_open else '<='} {hi:g}"
    return ok, text


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def _bool() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "True or False"


def _string(*, nonempty: bool = False) -> tuple[Callable[[Any], bool], str]:
    if nonempty:
        return (lambda v: isinstance(v, str) and bool(v.strip())), "a non-empty string"
    return (lambda v: isinstance(v, str)), "a string"


def _choice(choices: Sequence[Any]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in choices), f"one of {sorted(choices)}"


def _sequence(
    length: int | None, item: tuple[Callable[[Any], bool], str], what: str
) -> tuple[Callable[[Any], bool], str]:
    item_ok, item_text = item

    def ok(v: Any) -> bool:
        if not isinstance(v, tuple | list) or (length is not None and len(v) != length):
            return False
        return (length is not None or len(v) > 0) and all(item_ok(x) for x in v)

    count = f"{length} values" if length is not None else "one or more values"
    plural = item_text.replace("an integer", "integers").replace("a finite number", "numbers")
    return ok, f"{what}, {count}: {plural}"


def _pair(what: str, lo: int) -> tuple[Callable[[Any], bool], str]:
    return _sequence(2, _int(lo), what)


def _optional_pair(what: str) -> tuple[Callable[[Any], bool], str]:
    # (0, 0) turns the feature off; otherwise both sides are positive.
    ok, _ = _pair(what, 0)

    def both(v: Any) -> bool:
        return ok(v) and (v[0] > 0) == (v[1] > 0)

    return both, f"{what}: 2 integers, both 0 (off) or both >= 1"


# ----------------------------------------------------------------------------- the rules


def _rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Key -> (is the value allowed, what is allowed), for every key of `base_config()`."""
    from segjax import crf, inference, sharding, tasks
    from segjax.data import datasets
    from segjax.data.volumes import NORMALIZATIONS
    from segjax.models.mask_rcnn import INSTANCE_MODELS
    from segjax.models.panoptic_fpn import PANOPTIC_FPN_MODELS
    from segjax.models.registry import MODELS, RGBD_MODELS, VOLUME_MODELS
    from segjax.tasks import adversarial, levelset
    from segjax.tasks.volume import SPATIAL_SPLITS
    from segjax.volume_inference import BLEND_MODES
    from segjax.weights.pretrained import SCOPES

    hw = "(height, width)"
    return {
        "seed": _int(0),
        "task": _choice(tasks.TASKS),
        "dataset.name": _choice(datasets.DATASETS),
        "dataset.config": _string(nonempty=True),
        "dataset.data_dir": _string(nonempty=True),
        "dataset.train_split": _string(nonempty=True),
        "dataset.eval_split": _string(nonempty=True),
        "dataset.num_classes": _int(1),
        "dataset.ignore_index": _int(),
        "dataset.manual_dir": _string(),
        "dataset.depth": _bool(),
        "input.batch_size": _int(1),
        "input.eval_batch_size": _int(1),
        "input.crop_size": _pair(hw, 1),
        "input.scale_range": _sequence(2, _number(0, lo_open=True), "(low, high)"),
        "input.base_size": _optional_pair("(long, short)"),
        "input.cat_max_ratio": _number(0, 1, lo_open=True),
        "input.flip": _bool(),
        "input.photometric": _bool(),
        "input.mean": _sequence(None, _number(), "one value per input band"),
        "input.std": _sequence(None, _number(0, lo_open=True), "one value per input band"),
        "input.norm_stats": _choice(NORM_STATS),
        "input.eval_pad_size": _pair(hw, 1),
        "input.worker_count": _int(0),
        "input.prefetch": _int(1),
        # Which kind (image, instance, volume model) the task needs: a cross-key rule.
        "model.name": _choice(
            {**MODELS, **INSTANCE_MODELS, **PANOPTIC_FPN_MODELS, **VOLUME_MODELS, **RGBD_MODELS}
        ),
        "model.output_stride": (
            lambda v: v is None or (_is_int(v) and v in OUTPUT_STRIDES),
            f"None (the model's default) or one of {list(OUTPUT_STRIDES[1:])}",
        ),
        "model.aux_head": _bool(),
        "model.in_channels": (
            lambda v: _is_int(v) and v >= 0,
            "an integer >= 0 (0 = the dataset's number of image bands)",
        ),
        "model.dtype": _choice(DTYPES),
        "model.pretrained": _string(),
        "model.pretrained_scope": _choice(SCOPES),
        "loss.name": _string(nonempty=True),  # and a valid spec: see _cross_key_problems
        "loss.aux_weight": _number(0),
        "loss.se_weight": _number(0),
        "loss.options": _string(),
        "optimizer.name": _choice(("sgd", "adamw")),
        "optimizer.learning_rate": (
            _number(0)[0],
            "a finite number >= 0 (0 freezes the weights)",
        ),
        "optimizer.momentum": _number(0, 1, hi_open=True),
        "optimizer.nesterov": _bool(),
        "optimizer.weight_decay": _number(0),
        "optimizer.schedule": _choice(("poly", "cosine", "constant")),
        "optimizer.poly_power": _number(0, lo_open=True),
        "optimizer.end_learning_rate": _number(0),
        "optimizer.warmup_steps": _int(0),
        "optimizer.grad_clip_norm": (_number(0)[0], "a finite number >= 0 (0 = no clipping)"),
        "eval.mode": _choice(inference.MODES),
        "eval.crop_size": _pair(hw, 1),
        "eval.stride": _pair(hw, 1),
        "eval.gaussian": _bool(),
        "eval.scales": _sequence(None, _number(0, lo_open=True), "resize ratios"),
        "eval.flip": _bool(),
        "eval.resize": _optional_pair(hw),
        "eval.label_pad_size": _optional_pair(hw),
        "eval.num_visualizations": _int(0),
        "eval.speed_iters": _int(1),
        "eval.crf.enabled": _bool(),
        "eval.crf.iterations": _int(1),
        "eval.crf.bilateral_weight": _number(0),
        "eval.crf.theta_alpha": (_number(0, lo_open=True)[0], "a kernel width > 0 (pixels)"),
        "eval.crf.theta_beta": (_number(0, lo_open=True)[0], "a kernel width > 0 (0-255 units)"),
        "eval.crf.spatial_weight": _number(0),
        "eval.crf.theta_gamma": (_number(0, lo_open=True)[0], "a kernel width > 0 (pixels)"),
        "eval.crf.method": _choice(crf.METHODS),
        "eval.crf.dense_max_pixels": _int(1),
        "eval.crf.grid_spacing": _number(0, 1, lo_open=True),
        "train.steps": _int(1),
        "train.log_every": _int(1),
        "train.eval_every": _int(1),
        "train.checkpoint_every": _int(1),
        "train.keep_checkpoints": _int(1),
        "train.keep_best": _int(0),
        "train.async_checkpointing": _bool(),
        "train.max_nonfinite_in_a_row": (_int(0)[0], "an integer >= 0 (0 = never stop)"),
        "train.param_sharding": _choice(sharding.PARAM_SHARDINGS),
        "train.fsdp_min_size": _int(0),
        "train.compilation_cache_dir": _string(),
        # config.classification (segjax/tasks/classification.py), when the task has it.
        "classification.min_pixels": _int(1),
        "classification.background_class": _int(-1),
        "classification.dropout": _number(0, 1, hi_open=True),
        # config.instance (segjax/tasks/instance.py), when the task has it.
        "instance.max_instances": _int(1),
        "instance.min_sizes": _sequence(None, _int(1), "shorter-side sizes"),
        "instance.max_size": _int(1),
        "instance.test_size": _int(1),
        "instance.mask_threshold": _number(0, 1, lo_open=True, hi_open=True),
        "instance.vis_score_threshold": _number(0, 1),
        # config.adversarial (segjax/tasks/adversarial.py), when the task has it.
        "adversarial.discriminator": _choice(adversarial.DISCRIMINATORS),
        "adversarial.features": _int(1),
        "adversarial.input_stride": _int(1, 32),
        "adversarial.adv_weight": _number(0),
        "adversarial.gt_encoding": _choice(adversarial.GT_ENCODINGS),
        "adversarial.scaling_tau": _number(0, 1, lo_open=True),
        "adversarial.optimizer": _choice(("sgd", "adamw")),
        "adversarial.learning_rate": _number(0),
        "adversarial.weight_decay": _number(0),
        "adversarial.critic_clip": _number(0),
        "adversarial.labelled_fraction": _number(0, 1, lo_open=True),
        "adversarial.split_seed": _int(0),
        "adversarial.unlabelled_list": _string(),
        "adversarial.unlabelled_batch_size": _int(0),
        "adversarial.unlabelled_adv_weight": _number(0),
        "adversarial.semi_weight": _number(0),
        "adversarial.semi_threshold": _number(0, 1, hi_open=True),
        "adversarial.semi_start_step": _int(0),
        "adversarial.noise_dim": _int(1),
        "adversarial.generated_batch_size": _int(0),
        # config.volume (segjax/tasks/volume.py), when the task has it.
        "volume.in_channels": _int(1),
        "volume.crop_size": _sequence(3, _int(1), "(depth, height, width)"),
        "volume.flip_axes": (
            lambda v: isinstance(v, tuple | list) and all(_is_int(a) and 0 <= a <= 2 for a in v),
            "a tuple of distinct spatial axes among 0 (D), 1 (H), 2 (W), possibly empty",
        ),
        "volume.rotate90": _bool(),
        "volume.normalization": _choice(NORMALIZATIONS),
        "volume.ct_window": _sequence(2, _number(), "(low, high) in HU"),
        "volume.target_spacing": (
            lambda v: _sequence(3, _number(0), "")[0](v) and (all(x > 0 for x in v) or not any(v)),
            "(depth, height, width) mm, all > 0, or (0, 0, 0) to keep the stored spacing",
        ),
        "volume.eval_pad_size": _sequence(3, _int(1), "(depth, height, width)"),
        "volume.roi_size": _sequence(3, _int(1), "(depth, height, width)"),
        "volume.overlap": _number(0, 1, hi_open=True),
        "volume.blend": _choice(BLEND_MODES),
        "volume.sigma_scale": _number(0, lo_open=True),
        "volume.window_batch": _int(1),
        "volume.include_background": _bool(),
        "volume.hd95": _bool(),
        "volume.spatial_split": (
            lambda v: _is_int(v) and v in SPATIAL_SPLITS,
            "0 (the batch split over the devices), 1 (each volume's depth) or 2 (its height)",
        ),
        # config.panoptic (segjax/tasks/panoptic.py), when the task has it.
        "panoptic.center_sigma": _number(0, lo_open=True),
        "panoptic.small_instance_area": _int(0),
        "panoptic.small_instance_weight": _number(0),
        "panoptic.top_k_ratio": _number(0, 1, lo_open=True),
        "panoptic.semantic_loss_weight": _number(0),
        "panoptic.center_loss_weight": _number(0),
        "panoptic.offset_loss_weight": _number(0),
        "panoptic.nms_kernel": (
            lambda v: _is_int(v) and v >= 1 and v % 2 == 1,
            "an odd integer >= 1",
        ),
        "panoptic.center_threshold": _number(),
        "panoptic.max_instances": _int(1),
        "panoptic.stuff_area": _int(0),
        "panoptic.max_segments": _int(2),
        "panoptic.lambda_sem": _number(0),
        "panoptic.instance_score_threshold": _number(0, 1),
        "panoptic.overlap_threshold": _number(0, 1),
        "panoptic.mask_threshold": _number(0, 1, lo_open=True, hi_open=True),
        # config.levelset (segjax/tasks/levelset.py), when the task has it.
        "levelset.steps": _int(0),
        "levelset.dt": _number(0, lo_open=True),
        "levelset.mu": _number(0),
        "levelset.eps": _number(0, lo_open=True),
        "levelset.window": (
            lambda v: _is_int(v) and (v == 0 or (v > 0 and v % 2 == 1)),
            "0 (global means) or an odd integer >= 1 (the local box)",
        ),
        "levelset.region_input": _choice(levelset.REGION_INPUTS),
        "levelset.foreground_classes": (
            lambda v: isinstance(v, tuple | list) and all(_is_int(k) and k >= 0 for k in v),
            "a list of class indices >= 0 (empty: every class but background_class)",
        ),
        "levelset.background_class": _int(-1),
        "levelset.morph_acwe_weight": _number(0),
        "levelset.morph_smoothing": _int(0),
        "levelset.morph_area_weight": _number(0),
        # config.distill (segjax/tasks/distill.py), when the task has it.
        "distill.teacher_workdir": _string(),  # non-empty for the task: _distill_problems
        "distill.teacher_step": (
            lambda v: isinstance(v, str) and (v in ("latest", "best") or v.isdigit()),
            "'latest', 'best' or a step number (as a string)",
        ),
        "distill.temperature": _number(0, lo_open=True),
        "distill.kd_weight": _number(0),
        "distill.feature_key": (
            lambda v: isinstance(v, str) and (v == "" or (v[:1] == "s" and v[1:].isdigit())),
            "'' (no feature distillation) or a backbone level such as 's8', 's16'",
        ),
        "distill.feature_weight": _number(0),
        "distill.feature_tau": _number(0, lo_open=True),
    }


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict | dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _show(value: Any) -> str:
    # Tuples and lists print alike: JSON-loaded configs hold lists where files hold tuples.
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def config_problems(
    config: ml_collections.ConfigDict, *, num_devices: int | None = None
) -> list[str]:
    """One line per value of `config` that is not allowed (empty when all are).

    Args:
      config: a run's config (`configs/*.py`, or a saved `config.json`).
      num_devices: the devices of the mesh the run uses (default: all of JAX's); the
        global batch sizes must split evenly over them (and so over the processes).
    """
    problems = []
    values = {}
    for key, (ok, allowed) in _rules().items():
        value = _get(config, key)
        if value is _ABSENT:
            continue
        if ok(value):
            values[key] = value
        else:
            problems.append(f"config.{key}={_show(value)}: expected {allowed}")
    problems += _cross_key_problems(values, num_devices)
    return problems


def _cross_key_problems(v: dict[str, Any], num_devices: int | None) -> list[str]:
    # Rules between keys, over the values that passed their own check.
    out = []

    def has(*keys: str) -> bool:
        return all(k in v for k in keys)

    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    # A spatially split volume run splits each volume, not the batch (_volume_problems).
    spatial = v.get("task") == "volume" and v.get("volume.spatial_split", 0)
    for key in ("input.batch_size", "input.eval_batch_size"):
        if key == "input.batch_size" and spatial:
            continue
        if has(key) and v[key] % num_devices:
            out.append(
                f"config.{key}={v[key]}: expected a multiple of the number of devices "
                f"({num_devices}), so that the global batch splits evenly over them"
            )
    if has("dataset.num_classes", "dataset.ignore_index") and (
        0 <= v["dataset.ignore_index"] < v["dataset.num_classes"]
    ):
        out.append(
            f"config.dataset.ignore_index={v['dataset.ignore_index']}: expected a value "
            f"outside the classes [0, {v['dataset.num_classes']}) "
            "(config.dataset.num_classes), e.g. 255"
        )
    if has("dataset.name", "dataset.config"):
        from segjax.data import datasets

        spec = datasets.get_spec(v["dataset.name"])
        if spec.configs and v["dataset.config"] not in spec.configs:
            out.append(
                f"config.dataset.config={v['dataset.config']!r}: expected one of "
                f"{list(spec.configs)} (the configs of dataset {v['dataset.name']!r})"
            )
        known = len(spec.class_names)
        if has("dataset.num_classes") and known and v["dataset.num_classes"] != known:
            out.append(
                f"config.dataset.num_classes={v['dataset.num_classes']}: dataset "
                f"{v['dataset.name']!r} has {known} classes"
            )
    out += _band_problems(v)
    out += _depth_problems(v)
    if has("input.scale_range") and v["input.scale_range"][0] > v["input.scale_range"][1]:
        out.append(
            f"config.input.scale_range={_show(v['input.scale_range'])}: expected low <= high"
        )
    if has("optimizer.learning_rate", "optimizer.end_learning_rate"):
        lr, end = v["optimizer.learning_rate"], v["optimizer.end_learning_rate"]
        if end > lr and v.get("optimizer.schedule") != "constant":
            out.append(
                f"config.optimizer.end_learning_rate={end:g}: expected <= "
                f"config.optimizer.learning_rate ({lr:g}); the schedule decays to it"
            )
    if has("eval.crop_size", "eval.stride") and v.get("eval.mode") == "slide":
        crop, stride = v["eval.crop_size"], v["eval.stride"]
        if stride[0] > crop[0] or stride[1] > crop[1]:
            out.append(
                f"config.eval.stride={_show(stride)}: expected at most config.eval.crop_size "
                f"({_show(crop)}) on each side; a larger step leaves pixels that no window covers"
            )
    if has("eval.resize", "input.eval_pad_size") and v["eval.resize"][0] > 0:
        resize, pad = v["eval.resize"], v["input.eval_pad_size"]
        if resize[0] > pad[0] or resize[1] > pad[1]:
            out.append(
                f"config.eval.resize={_show(resize)}: expected at most "
                f"config.input.eval_pad_size ({_show(pad)}) on each side; resized images "
                "are padded to that canvas"
            )
    if has("classification.background_class", "dataset.num_classes"):
        bg, k = v["classification.background_class"], v["dataset.num_classes"]
        if bg >= k:
            out.append(
                f"config.classification.background_class={bg}: expected -1 (none) or a "
                f"class in [0, {k})"
            )
    if has("model.name", "task"):
        from segjax.models.mask_rcnn import INSTANCE_MODELS
        from segjax.models.panoptic_fpn import PANOPTIC_FPN_MODELS

        is_instance = v["model.name"] in INSTANCE_MODELS
        is_fpn = v["model.name"] in PANOPTIC_FPN_MODELS  # the rule below
        if is_instance != (v["task"] == "instance") and not is_fpn:
            kind = "an instance model" if is_instance else "a segmentation model"
            wanted = (
                f"one of {sorted(INSTANCE_MODELS)}"
                if v["task"] == "instance"
                else "a model of segjax.models.MODELS"
            )
            out.append(
                f"config.model.name={v['model.name']!r}: {kind}, but config.task="
                f"{v['task']!r} needs {wanted}"
            )
        if is_fpn and v["task"] != "panoptic":
            out.append(
                f"config.model.name={v['model.name']!r}: a Panoptic FPN model, but "
                f"config.task={v['task']!r}; it needs config.task='panoptic'"
            )
    out += _adversarial_problems(v, num_devices)
    out += _volume_problems(v, num_devices)
    if has("panoptic.max_segments", "panoptic.max_instances", "dataset.num_classes"):
        segments, instances = v["panoptic.max_segments"], v["panoptic.max_instances"]
        if segments < instances + 1:
            out.append(
                f"config.panoptic.max_segments={segments}: expected more than "
                f"config.panoptic.max_instances ({instances}), so that every predicted "
                "instance and some stuff are counted"
            )
    out += _levelset_problems(v)
    if v.get("task") == "distill" and not v.get("distill.teacher_workdir", "").strip():
        out.append(
            "config.task='distill': expected config.distill.teacher_workdir, the --workdir "
            "of a finished run (a config.distill block: segjax.tasks.distill.config_block())"
        )
    if has("loss.name"):
        out += _loss_problems(v)
    return out


def _band_problems(v: dict[str, Any]) -> list[str]:
    # Normalisation statistics, one per band; what only 8-bit RGB input can take.
    out = []
    mean, std = v.get("input.mean"), v.get("input.std")
    if mean is not None and std is not None and len(mean) != len(std):
        out.append(
            f"config.input.std={_show(std)}: expected as many values as config.input.mean "
            f"({len(mean)}), one per input band"
        )
    channels = v.get("model.in_channels", 0)
    if channels and v.get("input.norm_stats") == "config" and mean and len(mean) != channels:
        out.append(
            f"config.input.mean={_show(mean)}: expected {channels} values (one per band of "
            f"config.model.in_channels={channels}) with config.input.norm_stats='config'"
        )
    if channels not in (0, 3):
        out += rgb_only_problems(v, f"config.model.in_channels={channels}")
    return out


def _depth_problems(v: dict[str, Any]) -> list[str]:
    # Depth bands need an RGB-D dataset; the RGB-D models need depth bands.
    from segjax.data import datasets
    from segjax.models.registry import RGBD_MODELS

    out = []
    depth = v.get("dataset.depth", False)
    if depth and "dataset.name" in v and not datasets.get_spec(v["dataset.name"]).depth:
        rgbd = sorted(n for n, s in datasets.DATASETS.items() if s.depth)
        out.append(
            f"config.dataset.depth=True: dataset {v['dataset.name']!r} has no depth maps "
            f"(RGB-D datasets: {rgbd})"
        )
    if v.get("model.name") in RGBD_MODELS and not depth:
        out.append(
            f"config.model.name={v['model.name']!r} is an RGB-D model: expected "
            "config.dataset.depth=True on an RGB-D dataset (it splits RGB and depth bands)"
        )
    if depth:
        out += rgb_only_problems(v, "config.dataset.depth=True (uint16 RGB-D images)")
    return out


def rgb_only_problems(v: dict[str, Any], because: str) -> list[str]:
    """The options on that need 8-bit RGB images, when `because` says they are not.

    `v`: flat `{"input.photometric": ..., ...}` values (a config's, see `input_problems`).
    """
    out = []
    if v.get("input.photometric"):
        out.append(
            f"config.input.photometric=True: expected False with {because} (the photometric "
            "distortion works on 8-bit RGB images)"
        )
    if v.get("eval.crf.enabled"):
        out.append(
            f"config.eval.crf.enabled=True: expected False with {because} (the dense CRF's "
            "appearance kernel compares RGB colours in 0-255)"
        )
    return out


def input_problems(config: ml_collections.ConfigDict, info: Any) -> list[str]:
    """What `config` asks of its images that the dataset's (`info`, a
    `segjax.data.bands.ImageInfo`) do not have: one line per key, naming the dataset."""
    dc = config.dataset
    where = f"dataset {dc.name!r} (config {dc.config!r})"
    out = []
    channels = int(config.model.get("in_channels", 0))
    if channels and channels != info.channels:
        out.append(
            f"config.model.in_channels={channels}: {where} has {info.channels}-band images "
            f"(set it to {info.channels}, or 0 to take the dataset's)"
        )
    from segjax.data import bands

    given = config.input.get("norm_stats", "config")
    mean = tuple(config.input.mean)
    mode = bands.norm_stats_source(given, len(mean), info)
    if mode == "dataset" and info.mean is None:
        out.append(
            f"config.input.norm_stats='dataset': {where} has no per-band statistics "
            "(only datasets prepared with them, e.g. multi-band folders); use 'config'"
        )
    if mode == "config" and len(mean) != info.channels:
        out.append(
            f"config.input.mean={_show(mean)}: {where} has {info.channels}-band images "
            f"and no per-band statistics; expected {info.channels} values"
            if given == "auto"
            else f"config.input.mean={_show(mean)}: {where} has {info.channels}-band images; "
            f"expected {info.channels} values (or config.input.norm_stats='auto' for the "
            "dataset's own statistics)"
        )
    if not info.is_rgb8:
        flat = {
            "input.photometric": config.input.get("photometric", False),
            "eval.crf.enabled": config.get("eval", {}).get("crf", {}).get("enabled", False),
        }
        out += rgb_only_problems(flat, f"{where}'s {info.channels}-band {info.dtype} images")
    return out


def _levelset_problems(v: dict[str, Any]) -> list[str]:
    # The level-set task: its block, foreground classes of the dataset.
    if v.get("task") != "levelset":
        return []
    if "levelset.steps" not in v:
        return [
            "config.task='levelset': expected a config.levelset block "
            "(segjax.tasks.levelset.config_block())"
        ]
    k = v.get("dataset.num_classes")
    classes = v.get("levelset.foreground_classes", ())
    if k is not None and any(c >= k for c in classes):
        return [
            f"config.levelset.foreground_classes={_show(classes)}: expected classes in "
            f"[0, {k}) (config.dataset.num_classes)"
        ]
    if k is not None and not classes and not 0 <= v.get("levelset.background_class", 0) < k:
        return [
            f"config.levelset.background_class={v['levelset.background_class']}: expected a "
            f"class in [0, {k}) when config.levelset.foreground_classes is empty"
        ]
    return []


def _adversarial_problems(v: dict[str, Any], num_devices: int) -> list[str]:
    # The adversarial task: its block, a segmentor-only pretrained file, the size that
    # Hung et al.'s discriminator needs.
    if v.get("task") != "adversarial":
        return []
    out = []
    if "adversarial.discriminator" not in v:
        out.append(
            "config.task='adversarial': expected a config.adversarial block "
            "(segjax.tasks.adversarial.config_block())"
        )
    if v.get("model.pretrained"):
        out.append(
            f"config.model.pretrained={v['model.pretrained']!r}: expected '' with "
            "config.task='adversarial' (a file for the segmentor alone is not supported yet)"
        )
    ub = v.get("adversarial.unlabelled_batch_size", 0)
    if ub % num_devices:
        out.append(
            f"config.adversarial.unlabelled_batch_size={ub}: expected a multiple of the "
            f"number of devices ({num_devices}), so that the batch splits evenly over them"
        )
    disc = v.get("adversarial.discriminator", "fcn")
    if ub and disc == "segan":
        out.append(
            f"config.adversarial.unlabelled_batch_size={ub}: expected 0 with "
            "config.adversarial.discriminator='segan' (its loss needs the ground truth)"
        )
    if ub and v.get("adversarial.semi_weight", 0) > 0 and disc != "fcn":
        out.append(
            f"config.adversarial.semi_weight={v['adversarial.semi_weight']:g}: expected 0 "
            f"with config.adversarial.discriminator={disc!r}; the semi-supervised term "
            "needs the per-pixel confidence of 'fcn'"
        )
    gb = v.get("adversarial.generated_batch_size", 0)
    if gb and disc != "souly":
        out.append(
            f"config.adversarial.generated_batch_size={gb}: expected 0 unless "
            "config.adversarial.discriminator='souly' (only it has a generator)"
        )
    if gb % num_devices:
        out.append(
            f"config.adversarial.generated_batch_size={gb}: expected a multiple of the "
            f"number of devices ({num_devices}), so that the batch splits evenly over them"
        )
    crop = v.get("input.crop_size", (32, 32))
    if disc == "souly" and any(int(x) % 8 for x in crop):
        out.append(
            f"config.input.crop_size={_show(crop)}: expected multiples of 8 with "
            "config.adversarial.discriminator='souly' (its generator upsamples 8 times)"
        )
    if v.get("adversarial.discriminator") == "fcn" and min(crop) < 32:
        out.append(
            f"config.input.crop_size={_show(crop)}: expected at least "
            "(32, 32) with config.adversarial.discriminator='fcn' (five stride-2 convs)"
        )
    return out


def _volume_problems(v: dict[str, Any], num_devices: int) -> list[str]:
    # A volume task needs a volume model, and the other tasks an image model.
    from segjax.models.registry import VOLUME_MODELS

    out = []
    if "model.name" in v and "task" in v:
        is_volume_model = v["model.name"] in VOLUME_MODELS
        if (v["task"] == "volume") != is_volume_model:
            kind = "a volume model" if is_volume_model else "an image model"
            needs = (
                f"one of {sorted(VOLUME_MODELS)}"
                if v["task"] == "volume"
                else "an image model (the volume models need config.task='volume')"
            )
            out.append(
                f"config.model.name={v['model.name']!r} is {kind}; config.task="
                f"{v['task']!r} needs {needs}"
            )
    if "volume.flip_axes" in v and len(set(v["volume.flip_axes"])) != len(v["volume.flip_axes"]):
        out.append(f"config.volume.flip_axes={_show(v['volume.flip_axes'])}: an axis twice")
    crop = v.get("volume.crop_size")
    if crop is not None and v.get("volume.rotate90") and crop[1] != crop[2]:
        out.append(
            f"config.volume.crop_size={_show(crop)}: config.volume.rotate90 rotates the H-W "
            "plane, so height and width must be equal (or set rotate90=False)"
        )
    if "volume.ct_window" in v and v["volume.ct_window"][0] >= v["volume.ct_window"][1]:
        out.append(f"config.volume.ct_window={_show(v['volume.ct_window'])}: expected low < high")
    split = v.get("volume.spatial_split", 0)
    if v.get("task") == "volume" and split and crop is not None and crop[split - 1] % num_devices:
        side = "depth" if split == 1 else "height"
        out.append(
            f"config.volume.spatial_split={split}: the crop's {side} "
            f"(config.volume.crop_size={_show(crop)}) must be a multiple of the number of "
            f"devices ({num_devices}), so that each volume splits evenly over them"
        )
    return out


def _loss_problems(v: dict[str, Any]) -> list[str]:
    # The loss spec and its options, parsed as the loss builder parses them (no model).
    from segjax import losses

    options = v.get("loss.options", "")
    try:
        parsed = losses.loss_options(ml_collections.ConfigDict({"loss": {"options": options}}))
    except ValueError as e:
        return [f"config.loss.options={options!r}: {e}"]
    try:
        losses.build_loss(v["loss.name"], options=parsed)
    except ValueError as e:
        given = f" (with config.loss.options={options!r})" if options else ""
        return [f"config.loss.name={v['loss.name']!r}{given}: {e}"]
    return []


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises `ConfigError` listing every value of `config` that is not allowed.

    Reads no data and builds no model: call it before either. See `config_problems`.
    """
    problems = config_problems(config, num_devices=num_devices)
    if problems:
        raise ConfigError(problems)
