"""segjax.config_check: every config value checked, key by key, before any work starts."""

import glob
import os
import subprocess
import sys

import jax
import pytest

from configs import common
from segjax import config_check, eval_lib, sharding, tasks, train_lib
from segjax.train_lib import _flat_items

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (key, a value that is not allowed, a fragment of what the message says is allowed)
BAD_VALUES = [
    ("seed", -1, "integer >= 0"),
    ("task", "detection", f"one of {sorted(tasks.TASKS)}"),
    ("dataset.name", "vocc", "one of ["),
    ("dataset.config", "", "non-empty string"),
    ("dataset.data_dir", "", "non-empty string"),
    ("dataset.train_split", "", "non-empty string"),
    ("dataset.eval_split", 3, "non-empty string"),
    ("dataset.num_classes", 0, "integer >= 1"),
    ("dataset.ignore_index", 2.5, "an integer"),
    ("dataset.manual_dir", None, "a string"),
    ("dataset.depth", 1, "True or False"),
    ("input.batch_size", 0, "integer >= 1"),
    ("input.eval_batch_size", -8, "integer >= 1"),
    ("input.crop_size", (64,), "(height, width), 2 values: integers >= 1"),
    ("input.scale_range", (0.0, 1.0), "(low, high), 2 values: numbers > 0"),
    ("input.base_size", (512, 0), "both 0 (off) or both >= 1"),
    ("input.cat_max_ratio", 0.0, "> 0 and <= 1"),
    ("input.flip", "yes", "True or False"),
    ("input.photometric", 1, "True or False"),
    ("input.mean", (), "one value per input band, one or more values"),
    ("input.std", (1.0, 0.0, 1.0), "numbers > 0"),
    ("input.norm_stats", "imagenet", "one of ['auto', 'config', 'dataset']"),
    ("input.eval_pad_size", (0, 64), "(height, width), 2 values: integers >= 1"),
    ("input.worker_count", -1, "integer >= 0"),
    ("input.prefetch", 0, "integer >= 1"),
    ("model.name", "deeplabv4", "one of ["),
    ("model.output_stride", 6, "None (the model's default) or one of [1, 2, 4, 8, 12, 16, 32]"),
    ("model.aux_head", "no", "True or False"),
    ("model.in_channels", -1, "an integer >= 0 (0 = the dataset's number of image bands)"),
    ("model.dtype", "float64", "one of ['bfloat16', 'float32']"),
    ("model.pretrained", None, "a string"),
    ("model.pretrained_scope", "head", "one of ['all', 'backbone']"),
    ("loss.name", "cross_entropyy", "unknown loss 'cross_entropyy'"),
    ("loss.aux_weight", -0.4, ">= 0"),
    ("loss.se_weight", -0.2, ">= 0"),
    ("loss.options", "{not json", "config.loss.options is not valid JSON"),
    ("optimizer.name", "adam", "one of ['adamw', 'sgd']"),
    ("optimizer.learning_rate", -1.0, ">= 0 (0 freezes the weights)"),
    ("optimizer.momentum", 1.0, ">= 0 and < 1"),
    ("optimizer.nesterov", 0, "True or False"),
    ("optimizer.weight_decay", float("nan"), "a finite number >= 0"),
    ("optimizer.schedule", "step", "one of ['constant', 'cosine', 'poly']"),
    ("optimizer.poly_power", 0.0, "> 0"),
    ("optimizer.end_learning_rate", -1e-4, ">= 0"),
    ("optimizer.warmup_steps", -1, "integer >= 0"),
    ("optimizer.grad_clip_norm", -1.0, ">= 0 (0 = no clipping)"),
    ("eval.mode", "sliding", "one of ['slide', 'whole']"),
    ("eval.crop_size", (128, 0), "integers >= 1"),
    ("eval.stride", (96,), "2 values"),
    ("eval.gaussian", None, "True or False"),
    ("eval.scales", (), "one or more values: numbers > 0"),
    ("eval.flip", "false", "True or False"),
    ("eval.resize", (64, 0), "both 0 (off) or both >= 1"),
    ("eval.label_pad_size", (-1, -1), "both 0 (off) or both >= 1"),
    ("eval.num_visualizations", -1, "integer >= 0"),
    ("eval.speed_iters", 0, "integer >= 1"),
    ("eval.crf.enabled", 1, "True or False"),
    ("eval.crf.iterations", 0, "integer >= 1"),
    ("eval.crf.bilateral_weight", -1.0, ">= 0"),
    ("eval.crf.theta_alpha", -80.0, "kernel width > 0"),
    ("eval.crf.theta_beta", 0.0, "kernel width > 0"),
    ("eval.crf.spatial_weight", float("nan"), ">= 0"),
    ("eval.crf.theta_gamma", -3.0, "kernel width > 0"),
    ("eval.crf.method", "permutohedral", "one of ['auto', 'dense', 'grid']"),
    ("eval.crf.dense_max_pixels", 0, "integer >= 1"),
    ("eval.crf.grid_spacing", 2.0, "> 0 and <= 1"),
    ("train.steps", -5, "integer >= 1"),
    ("train.log_every", 0, "integer >= 1"),
    ("train.eval_every", 0, "integer >= 1"),
    ("train.checkpoint_every", 0, "integer >= 1"),
    ("train.keep_checkpoints", 0, "integer >= 1"),
    ("train.keep_best", -1, "integer >= 0"),
    ("train.async_checkpointing", "true", "True or False"),
    ("train.max_nonfinite_in_a_row", -1, "(0 = never stop)"),
    ("train.param_sharding", "zero3", "one of ['fsdp', 'replicated']"),
    ("train.fsdp_min_size", -1, "integer >= 0"),
    ("train.compilation_cache_dir", None, "a string"),
    ("classification.min_pixels", 0, "integer >= 1"),
    ("classification.background_class", -2, "integer >= -1"),
    ("classification.dropout", 1.0, ">= 0 and < 1"),
    (
        "adversarial.discriminator",
        "patchgan",
        "one of ['basic', 'fcn', 'labels', 'product', 'segan', 'souly']",
    ),
    ("adversarial.features", 0, "integer >= 1"),
    ("adversarial.input_stride", 0, "integer in [1, 32]"),
    ("adversarial.adv_weight", -0.1, ">= 0"),
    ("adversarial.gt_encoding", "soft", "one of ['onehot', 'scaling']"),
    ("adversarial.scaling_tau", 0.0, "> 0 and <= 1"),
    ("adversarial.optimizer", "adam", "one of ['adamw', 'sgd']"),
    ("adversarial.learning_rate", -1e-4, ">= 0"),
    ("adversarial.weight_decay", float("inf"), ">= 0"),
    ("adversarial.critic_clip", -0.05, ">= 0"),
    ("adversarial.labelled_fraction", 0.0, "> 0 and <= 1"),
    ("adversarial.split_seed", -1, "integer >= 0"),
    ("adversarial.unlabelled_list", None, "a string"),
    ("adversarial.unlabelled_batch_size", -8, "integer >= 0"),
    ("adversarial.unlabelled_adv_weight", -1.0, ">= 0"),
    ("adversarial.semi_weight", "0.1", "a finite number >= 0"),
    ("adversarial.semi_threshold", 1.0, ">= 0 and < 1"),
    ("adversarial.semi_start_step", 0.5, "integer >= 0"),
    ("adversarial.noise_dim", 0, "integer >= 1"),
    ("adversarial.generated_batch_size", -8, "integer >= 0"),
    ("panoptic.center_sigma", 0.0, "> 0"),
    ("panoptic.small_instance_area", -1, "integer >= 0"),
    ("panoptic.small_instance_weight", -1.0, ">= 0"),
    ("panoptic.top_k_ratio", 0.0, "> 0 and <= 1"),
    ("panoptic.semantic_loss_weight", -1.0, ">= 0"),
    ("panoptic.center_loss_weight", float("nan"), ">= 0"),
    ("panoptic.offset_loss_weight", -0.01, ">= 0"),
    ("panoptic.nms_kernel", 4, "odd integer"),
    ("panoptic.center_threshold", "0.1", "a finite number"),
    ("panoptic.max_instances", 0, "integer >= 1"),
    ("panoptic.stuff_area", -5, "integer >= 0"),
    ("panoptic.max_segments", 1, "integer >= 2"),
    ("panoptic.lambda_sem", -0.5, ">= 0"),
    ("panoptic.instance_score_threshold", 1.5, ">= 0 and <= 1"),
    ("panoptic.overlap_threshold", -0.1, ">= 0 and <= 1"),
    ("panoptic.mask_threshold", 1.0, "> 0 and < 1"),
    ("volume.in_channels", 0, "integer >= 1"),
    ("volume.crop_size", (16, 16), "(depth, height, width), 3 values"),
    ("volume.flip_axes", (0, 3), "spatial axes among 0 (D), 1 (H), 2 (W)"),
    ("volume.rotate90", "yes", "True or False"),
    ("volume.normalization", "minmax", "one of ['ct', 'none', 'zscore']"),
    ("volume.ct_window", (-100.0,), "(low, high) in HU"),
    ("volume.target_spacing", (1.0, 0.0, 1.0), "all > 0, or (0, 0, 0)"),
    ("volume.eval_pad_size", (0, 32, 32), "(depth, height, width), 3 values"),
    ("volume.roi_size", (16, 16, 16, 1), "(depth, height, width), 3 values"),
    ("volume.overlap", 1.0, ">= 0 and < 1"),
    ("volume.blend", "median", "one of ['constant', 'gaussian']"),
    ("volume.sigma_scale", 0.0, "> 0"),
    ("volume.window_batch", 0, "integer >= 1"),
    ("volume.include_background", 1, "True or False"),
    ("volume.hd95", None, "True or False"),
    ("volume.spatial_split", 3, "0 (the batch split over the devices), 1 (each volume's depth)"),
    ("levelset.steps", -1, "integer >= 0"),
    ("levelset.dt", 0.0, "> 0"),
    ("levelset.mu", -0.1, ">= 0"),
    ("levelset.eps", 0.0, "> 0"),
    ("levelset.window", 4, "odd integer >= 1"),
    ("levelset.region_input", "features", "one of ['image', 'learned']"),
    ("levelset.foreground_classes", (1, -2), "class indices >= 0"),
    ("levelset.background_class", -3, "integer >= -1"),
    ("levelset.morph_acwe_weight", -1.0, ">= 0"),
    ("levelset.morph_smoothing", -1, "integer >= 0"),
    ("levelset.morph_area_weight", float("nan"), ">= 0"),
    ("distill.teacher_workdir", 3, "a string"),
    ("distill.teacher_step", "last", "'latest', 'best' or a step number"),
    ("distill.temperature", 0.0, "> 0"),
    ("distill.kd_weight", -1.0, ">= 0"),
    ("distill.feature_key", "layer3", "a backbone level such as 's8'"),
    ("distill.feature_weight", -1.0, ">= 0"),
    ("distill.feature_tau", -4.0, "> 0"),
]


def _base():
    from segjax.tasks import adversarial, classification, distill, levelset, panoptic, volume

    c = common.base_config()
    c.distill = distill.config_block()
    c.classification = classification.config_block()
    c.adversarial = adversarial.config_block()
    c.panoptic = panoptic.config_block()
    c.volume = volume.config_block()
    c.levelset = levelset.config_block()
    return c


def _set(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    # Bypass ml_collections' type safety: a JSON-loaded or hand-built config can hold anything.
    node._fields[leaf] = value


def test_every_key_of_base_config_has_a_rule_and_a_bad_value():
    keys = set(_flat_items(_base()))
    tested = {key for key, _, _ in BAD_VALUES}
    assert keys == tested


@pytest.mark.parametrize(("key", "value", "allowed"), BAD_VALUES, ids=[k for k, *_ in BAD_VALUES])
def test_a_bad_value_is_named_with_what_is_allowed(key, value, allowed):
    config = _base()
    _set(config, key, value)
    problems = config_check.config_problems(config, num_devices=1)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"config.{key}=")
    assert repr(tuple(value) if isinstance(value, list) else value) in problems[0]
    assert allowed in problems[0]


def _config_files():
    names = sorted(
        os.path.basename(p)[:-3]
        for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
        if not p.endswith(("__init__.py", "common.py"))
    )
    args = {"folder": ["classes=3"], "default": [None, "tiny"], "classify_shapes": [None, "tiny"]}
    args["panoptic_shapes"] = args["panoptic_fpn_shapes"] = [None, "tiny"]
    args["voc"] = [None, "aug"]
    args["adversarial_shapes"] = [None, "tiny", "baseline", "disc=fcn"]
    args["adversarial_semi_shapes"] = [None, "tiny", "baseline"]
    args["adversarial_souly_shapes"] = [None, "tiny", "baseline"]
    args["volume_shapes"] = [None, "tiny", "model=vnet"]
    args["levelset_shapes"] = [None, "tiny", "baseline"]
    args["deeplabv1_voc"] = args["deeplabv2_voc"] = [None, "aug"]
    args["distill_shapes"] = [None, "tiny", "teacher", "features=s16"]
    args["nyudv2"] = args["sunrgbd"] = [None, "fusion=early", "fusion=none", "tiny"]
    return [(n, a) for n in names for a in args.get(n, [None])]


@pytest.mark.parametrize(("name", "arg"), _config_files())
def test_every_config_file_passes(name, arg):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config(arg)
    # As shipped, for one device (the CPU); the batch-over-devices rule has its own test,
    # and a CPU-sized config (volume_shapes: batch 4) need not split over 8.
    assert config_check.config_problems(config, num_devices=1) == []


def test_json_lists_and_absent_keys_are_fine():
    # A saved config.json holds lists where files hold tuples, and may predate some keys.
    config = _base()
    _set(config, "input.crop_size", [64, 64])
    del config.train._fields["fsdp_min_size"]
    assert config_check.config_problems(config, num_devices=1) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input.batch_size": 12}, "multiple of the number of devices (8)"),
        ({"input.eval_batch_size": 4}, "multiple of the number of devices (8)"),
        ({"dataset.ignore_index": 3}, "outside the classes [0, 6)"),
        ({"dataset.config": "huge"}, "the configs of dataset 'segjax_shapes'"),
        ({"dataset.num_classes": 21}, "dataset 'segjax_shapes' has 6 classes"),
        ({"input.scale_range": (2.0, 0.5)}, "low <= high"),
        ({"optimizer.end_learning_rate": 0.1}, "the schedule decays to it"),
        ({"eval.mode": "slide", "eval.stride": (160, 96)}, "no window covers"),
        ({"eval.resize": (256, 256)}, "padded to that canvas"),
        ({"classification.background_class": 6}, "-1 (none) or a class in [0, 6)"),
        ({"loss.options": '{"dice": {"smooth": 0.0}}'}, "which is not in spec"),
        ({"task": "adversarial", "model.pretrained": "x.npz"}, "not supported yet"),
        (
            {
                "task": "adversarial",
                "adversarial.discriminator": "fcn",
                "input.crop_size": (16, 64),
            },
            "at least (32, 32)",
        ),
        (
            {
                "task": "adversarial",
                "adversarial.discriminator": "fcn",
                "adversarial.unlabelled_batch_size": 12,
            },
            "unlabelled_batch_size=12: expected a multiple of the number of devices (8)",
        ),
        ({"task": "distill"}, "expected config.distill.teacher_workdir"),
        (
            {"task": "adversarial", "adversarial.generated_batch_size": 8},
            "expected 0 unless config.adversarial.discriminator='souly'",
        ),
        (
            {
                "task": "adversarial",
                "adversarial.discriminator": "souly",
                "adversarial.generated_batch_size": 12,
            },
            "generated_batch_size=12: expected a multiple of the number of devices (8)",
        ),
        (
            {
                "task": "adversarial",
                "adversarial.discriminator": "souly",
                "input.crop_size": (60, 64),
            },
            "expected multiples of 8 with config.adversarial.discriminator='souly'",
        ),
        (
            {
                "task": "adversarial",
                "adversarial.discriminator": "segan",
                "adversarial.unlabelled_batch_size": 8,
                "adversarial.semi_weight": 0.0,
            },
            "its loss needs the ground truth",
        ),
        (
            {"task": "levelset", "levelset.foreground_classes": (1, 6)},
            "expected classes in [0, 6)",
        ),
        (
            {"task": "adversarial", "adversarial.unlabelled_batch_size": 8},
            "needs the per-pixel confidence of 'fcn'",
        ),
        ({"panoptic.max_segments": 200}, "more than config.panoptic.max_instances (200)"),
        (
            {"model.name": "panoptic_fpn_tiny"},
            "a Panoptic FPN model, but config.task='semantic'; it needs config.task='panoptic'",
        ),
        (
            {"task": "instance", "model.name": "panoptic_fpn_tiny"},
            "a Panoptic FPN model, but config.task='instance'",
        ),
        ({"task": "panoptic", "model.name": "panoptic_fpn_tiny"}, None),
        ({"model.name": "unet3d_tiny"}, "config.task='semantic' needs an image model"),
        ({"task": "volume"}, "is an image model; config.task='volume' needs one of"),
        ({"volume.flip_axes": (1, 1)}, "an axis twice"),
        ({"volume.crop_size": (16, 16, 8)}, "height and width must be equal"),
        ({"volume.ct_window": (100.0, -100.0)}, "expected low < high"),
        (
            {
                "task": "volume",
                "model.name": "unet3d_tiny",
                "volume.spatial_split": 1,
                "volume.crop_size": (12, 16, 16),
                "volume.rotate90": True,
            },
            "spatial_split=1: the crop's depth (config.volume.crop_size=(12, 16, 16)) must be "
            "a multiple of the number of devices (8)",
        ),
        (
            {
                "task": "volume",
                "model.name": "unet3d_tiny",
                "volume.spatial_split": 2,
                "volume.crop_size": (16, 12, 12),
            },
            "spatial_split=2: the crop's height",
        ),
        # Split spatially, the batch need not divide over the devices (the eval batch still does).
        (
            {
                "task": "volume",
                "model.name": "unet3d_tiny",
                "volume.spatial_split": 1,
                "input.batch_size": 1,
            },
            None,
        ),
        (
            {
                "task": "volume",
                "model.name": "unet3d_tiny",
                "volume.spatial_split": 1,
                "input.eval_batch_size": 1,
            },
            "config.input.eval_batch_size=1: expected a multiple of the number of devices (8)",
        ),
        (
            {"task": "volume", "model.name": "unet3d_tiny", "input.batch_size": 1},
            "config.input.batch_size=1: expected a multiple of the number of devices (8)",
        ),
        ({"input.std": (1.0, 1.0)}, "as many values as config.input.mean (3), one per input band"),
        (
            {"model.in_channels": 4, "input.norm_stats": "config"},
            "config.input.mean=(123.675, 116.28, 103.53): expected 4 values",
        ),
        (
            {"model.in_channels": 4, "input.photometric": True},
            "photometric=True: expected False with config.model.in_channels=4",
        ),
        (
            {"model.in_channels": 12, "eval.crf.enabled": True},
            "crf.enabled=True: expected False with config.model.in_channels=12",
        ),
        (
            {"dataset.depth": True},
            "dataset 'segjax_shapes' has no depth maps (RGB-D datasets: ['nyudv2', 'sunrgbd'])",
        ),
        (
            {"dataset.name": "nyudv2", "dataset.num_classes": 40, "model.name": "fusenet_tiny"},
            "'fusenet_tiny' is an RGB-D model: expected config.dataset.depth=True",
        ),
        (
            {
                "dataset.name": "nyudv2",
                "dataset.num_classes": 40,
                "dataset.depth": True,
                "input.photometric": True,
            },
            "photometric=True: expected False with config.dataset.depth=True",
        ),
    ],
)
def test_rules_between_keys(changes, message):
    config = _base()
    for key, value in changes.items():
        _set(config, key, value)
    problems = config_check.config_problems(config, num_devices=8)
    if message is None:
        assert problems == []
    else:
        assert len(problems) == 1 and message in problems[0], problems


def test_frozen_run_and_overlapping_windows_are_allowed():
    config = _base()
    _set(config, "optimizer.learning_rate", 0.0)
    _set(config, "eval.mode", "slide")
    _set(config, "eval.stride", (64, 128))
    assert config_check.config_problems(config, num_devices=8) == []


def test_several_problems_are_reported_together():
    config = _base()
    _set(config, "optimizer.learning_rate", -1.0)
    _set(config, "train.steps", -5)
    with pytest.raises(config_check.ConfigError) as info:
        config_check.check_config(config, num_devices=1)
    assert "2 config values not allowed" in str(info.value)
    assert len(info.value.problems) == 2
    assert isinstance(info.value, ValueError)


def test_train_and_eval_check_before_reading_data_or_building(tmp_path):
    config = _base()
    _set(config, "dataset.data_dir", str(tmp_path / "no_data_here"))
    _set(config, "input.batch_size", 0)
    mesh = sharding.make_mesh(jax.devices()[:1])
    with pytest.raises(config_check.ConfigError, match=r"config\.input\.batch_size=0"):
        train_lib.train_and_evaluate(config, str(tmp_path / "run"), mesh=mesh)
    assert not (tmp_path / "run").exists() and not (tmp_path / "no_data_here").exists()
    with pytest.raises(config_check.ConfigError, match=r"config\.input\.batch_size=0"):
        eval_lib.evaluate_checkpoint(config, str(tmp_path / "ckpt"), mesh=mesh)


def test_train_py_names_every_bad_value_before_any_work(tmp_path):
    # The four examples, as a new user types them.
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config.optimizer.learning_rate=-1",
            "--config.train.steps=-5",
            "--config.input.batch_size=0",
            "--config.input.crop_size=(64,)",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "SEGJAX_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.returncode != 0
    for line in (
        "config.optimizer.learning_rate=-1.0: expected a finite number >= 0",
        "config.train.steps=-5: expected an integer >= 1",
        "config.input.batch_size=0: expected an integer >= 1",
        "config.input.crop_size=(64,): expected (height, width)",
    ):
        assert line in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_adversarial_task_needs_its_block():
    config = common.base_config()
    _set(config, "task", "adversarial")
    problems = config_check.config_problems(config, num_devices=1)
    assert len(problems) == 1 and "expected a config.adversarial block" in problems[0]
