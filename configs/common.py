"""Helpers that configs share: plain functions, no inheritance chains.

Every experiment file builds its ConfigDict from `base_config()` and overrides what it
needs, so `configs/default.py` reads top to bottom and a reader never chases `_base_`s.
"""

from __future__ import annotations

import ml_collections

from segjax.data.datasets import default_data_dir

# ImageNet statistics in 0-255 pixel units (mmsegmentation's convention).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a big_vision-style config argument `"a=1,b=x,flag"` over `defaults`.

    A bare word sets a boolean to True. Values keep the type of their default, so
    `"steps=10"` gives an int when the default is an int. An unknown key is an error.
    """
    parsed = ml_collections.ConfigDict(defaults)
    if not arg:
        return parsed
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise KeyError(f"Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            parsed[key] = True
        elif isinstance(default, bool):
            parsed[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            parsed[key] = value
        else:
            parsed[key] = type(default)(value)
    return parsed


def base_config() -> ml_collections.ConfigDict:
    """The full key set of a training run, with defaults that every config may override."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # What is trained and scored (segjax.tasks.TASKS): "semantic" segmentation, or
    # "classification" (multi-label: which classes an image holds).
    c.task = "semantic"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "segjax_shapes"
    c.dataset.config = "default"  # the tfds BuilderConfig name
    c.dataset.data_dir = default_data_dir()
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.num_classes = 6
    c.dataset.ignore_index = 255
    # A real dataset's files (archives and/or extracted folders): when set, an unprepared
    # dataset is prepared from them on first use (`python -m segjax.data.prepare` does it
    # ahead of time). "" = the dataset must already be prepared in data_dir.
    c.dataset.manual_dir = ""
    # RGB-D datasets (nyudv2, sunrgbd): append each image's depth map (uint16 millimetres)
    # to its RGB bands, so models see 4-band images [B, H, W, 4] (early fusion for any 2-D
    # model; the RGB-D models of segjax.models.RGBD_MODELS split them again). False: RGB.
    c.dataset.depth = False

    c.input = ml_collections.ConfigDict()
    c.input.batch_size = 16  # global, over all devices and hosts
    c.input.eval_batch_size = 16  # global
    c.input.crop_size = (128, 128)  # (height, width)
    c.input.scale_range = (0.75, 1.5)  # random rescale ratio; (1.0, 1.0) turns it off
    # (long, short) edge that the ratio multiplies, keeping the aspect ratio, as
    # mmsegmentation's RandomResize(scale=...); (0, 0): the ratio multiplies the image size.
    c.input.base_size = (0, 0)
    # Random crop: redraw (up to 10 times) while one class covers >= this share of the
    # crop's non-ignored pixels (mmsegmentation's cat_max_ratio); 1.0 = off.
    c.input.cat_max_ratio = 1.0
    c.input.flip = True
    # mmsegmentation's PhotoMetricDistortion (brightness, contrast, saturation, hue).
    c.input.photometric = False
    # Per-band normalisation (image - mean) / std, one value per input band, in the stored
    # units (0-255 for 8-bit images). norm_stats "auto": these for 8-bit images with one
    # value per band (RGB: ImageNet's), else the per-band statistics stored with the
    # prepared dataset (multi-band folders); "config": always these; "dataset": always
    # the dataset's (segjax.data.bands).
    c.input.mean = IMAGENET_MEAN
    c.input.std = IMAGENET_STD
    c.input.norm_stats = "auto"
    # Evaluation images are padded to this (height, width) so eval never recompiles.
    c.input.eval_pad_size = (128, 128)
    c.input.worker_count = 0  # grain worker processes; 0 = in the main process
    c.input.prefetch = 2  # batches put on device ahead of the step

    c.model = ml_collections.ConfigDict()
    c.model.name = "deeplabv3plus_tiny"
    c.model.output_stride = 16
    c.model.aux_head = False
    c.model.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    # Bands of the input images [B, H, W, C] of a 2-D model; 0 = the dataset's (3 for RGB
    # datasets, a multi-band folder's own count). A pretrained first convolution is
    # adapted to it (segjax.weights.pretrained.adapt_input_conv).
    c.model.in_channels = 0
    # A file converted from PyTorch weights (`python -m segjax.weights convert`), applied to
    # the fresh parameters before the first step; "" = none. pretrained_scope "backbone":
    # the file's backbone (parameters and BatchNorm statistics), the rest initialised;
    # "all": the whole model (a classifier of another class count is re-initialised).
    c.model.pretrained = ""
    c.model.pretrained_scope = "backbone"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "cross_entropy"  # or a weighted sum: "cross_entropy:1.0+dice:0.5"
    c.loss.aux_weight = 0.4
    c.loss.se_weight = 0.2  # EncNet's semantic encoding loss (models with "se_logits")
    # Per-loss keyword arguments as JSON, e.g. '{"ohem_cross_entropy": {"thresh": 0.7},
    # "cross_entropy": {"class_weights": [1.0, 2.0, 2.0]}}' (checked before training).
    c.loss.options = ""

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "sgd" (momentum, poly decay: the DeepLab recipe) or "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "poly"  # "poly", "cosine" or "constant"
    c.optimizer.poly_power = 0.9
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping

    # Inference at evaluation (segjax/inference.py); `eval.py` flags override these.
    c.eval = ml_collections.ConfigDict()
    c.eval.mode = "whole"  # "whole" image, or "slide" (sliding window)
    c.eval.crop_size = (128, 128)  # sliding window (height, width)
    c.eval.stride = (96, 96)  # sliding window step; < crop_size means overlapping windows
    c.eval.gaussian = False  # weight window logits by a Gaussian (centre counts most)
    c.eval.scales = (1.0,)  # multi-scale test-time augmentation: image resize ratios
    c.eval.flip = False  # also predict the horizontally flipped image and average
    # (0, 0): images are only padded to input.eval_pad_size. (h, w): each image is first
    # resized, keeping its aspect ratio, to fit h x w (then padded to eval_pad_size);
    # predictions are resized back to the original size before scoring.
    c.eval.resize = (0, 0)
    # Labels stay at original size, padded with ignore_index to this (0, 0): eval_pad_size.
    c.eval.label_pad_size = (0, 0)
    c.eval.num_visualizations = 8  # image | ground truth | prediction panels by eval.py
    c.eval.speed_iters = 10  # timed repetitions of the eval program after warm-up
    # Fully connected CRF on the probabilities (segjax/crf.py; `eval.py --crf` turns it on).
    # Defaults are Krähenbühl & Koltun's; `deeplab_crf` sets DeepLab v1 / v2's.
    c.eval.crf = ml_collections.ConfigDict()
    c.eval.crf.enabled = False
    c.eval.crf.iterations = 10  # mean-field iterations
    c.eval.crf.bilateral_weight = 4.0  # appearance kernel weight w_a
    c.eval.crf.theta_alpha = 80.0  # appearance kernel position std, pixels
    c.eval.crf.theta_beta = 13.0  # appearance kernel colour std, 0-255 units
    c.eval.crf.spatial_weight = 3.0  # smoothness kernel weight w_s
    c.eval.crf.theta_gamma = 3.0  # smoothness kernel position std, pixels
    c.eval.crf.method = "auto"  # "dense" (exact, N^2), "grid" (bilateral grid) or "auto"
    c.eval.crf.dense_max_pixels = 4096  # "auto": exact up to this many pixels per image
    c.eval.crf.grid_spacing = 1.0  # bilateral grid cell, in kernel stds (0, 1]

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2  # the latest N
    c.train.keep_best = 1  # plus the best N by validation mIoU
    c.train.async_checkpointing = True
    # Steps whose loss or gradients are not finite are skipped; this many in a row is fatal.
    c.train.max_nonfinite_in_a_row = 10
    # "replicated" (data parallel) or "fsdp": large parameter and optimizer arrays split
    # over the devices (for models that do not fit one device), same results.
    c.train.param_sharding = "replicated"
    c.train.fsdp_min_size = 2**14  # arrays smaller than this stay replicated under fsdp
    # JAX's persistent compilation cache: a directory where compiled programs are kept, so
    # a resumed or repeated run skips compiling them again; "" = off.
    c.train.compilation_cache_dir = ""
    return c


def smoke_run(c: ml_collections.ConfigDict) -> None:
    """Seconds, not minutes: the `tiny` segjax_shapes dataset (64x64), 6 steps, eval and
    checkpoint at 3 and 6 (the `:tiny` variant of the built-in configs, used by tests)."""
    c.dataset.config = "tiny"
    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.input.crop_size = (64, 64)
    c.input.eval_pad_size = (64, 64)
    c.optimizer.warmup_steps = 2
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.train.async_checkpointing = False


def sgd_poly(c: ml_collections.ConfigDict, learning_rate: float = 0.01) -> None:
    """mmsegmentation's schedule: SGD, momentum 0.9, weight decay 5e-4, poly(0.9) to 1e-4."""
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = learning_rate
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "poly"
    c.optimizer.poly_power = 0.9
    c.optimizer.end_learning_rate = 1e-4
    c.optimizer.warmup_steps = 0


def deeplabv3plus_r50_d8(c: ml_collections.ConfigDict) -> None:
    """DeepLabv3+ on ResNet-50 at output stride 8 with an auxiliary FCN head (weight 0.4)."""
    c.model.name = "deeplabv3plus_resnet50"
    c.model.output_stride = 8
    c.model.aux_head = True
    c.loss.aux_weight = 0.4


def finish(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict):
    """The built-in configs' common tail: `:tiny` makes it `smoke_run`, `:steps=N` sets
    the step count; returns `c` locked."""
    if args.tiny:
        smoke_run(c)
    if args.steps:
        c.train.steps = args.steps
    c.lock()
    return c


def shapes_64(c: ml_collections.ConfigDict, steps: int = 2000) -> None:
    """The default run's data and schedule: the 64x64 `small` segjax_shapes, batch 32,
    `steps` steps, logs every 100, eval and checkpoint every 500 (configs/default.py's)."""
    c.dataset.config = "small"
    c.input.batch_size = 32
    c.input.eval_batch_size = 64
    c.input.crop_size = (64, 64)
    c.input.eval_pad_size = (64, 64)
    c.train.steps = steps
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 500


def shapes_64_raced(c: ml_collections.ConfigDict, steps: int) -> None:
    """`shapes_64` with the two changes the default run's recipe races found to help every
    model raced (docs/training.md): no random rescale, cosine decay (AdamW 2e-3)."""
    shapes_64(c, steps=steps)
    c.input.scale_range = (1.0, 1.0)
    c.optimizer.schedule = "cosine"


def mask_rcnn_shapes(c: ml_collections.ConfigDict, *, widen: bool = True) -> None:
    """The Mask R-CNN instance branch for the 64x64 shapes (configs/instance_shapes.py):
    with `widen`, wider than the tiny model's defaults (32-channel FPN, 128-wide box head,
    four 32-channel mask convs: `MaskRCNN` fields); AdamW 1e-3 with cosine decay after
    100 warm-up steps, gradients clipped at norm 10."""
    c.model.output_stride = None  # not a Mask R-CNN argument: the FPN needs stride 32
    if widen:
        c.model.fpn_channels = 32
        c.model.representation_size = 128
        c.model.mask_layers = (32, 32, 32, 32)
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip_norm = 10.0


def panoptic_shapes_64(c: ml_collections.ConfigDict) -> None:
    """The panoptic task on the 64x64 `small` segjax_shapes_panoptic: the paper's
    Panoptic-DeepLab settings scaled to these images (configs/panoptic_shapes.py's
    docstring), the metric's and post-processing's counts, batch 16 / eval 64."""
    from segjax.tasks import panoptic

    c.task = "panoptic"
    c.panoptic = panoptic.config_block()
    c.panoptic.center_sigma = 3.0
    c.panoptic.small_instance_area = 100
    c.panoptic.nms_kernel = 5
    c.panoptic.max_instances = 16
    c.panoptic.stuff_area = 32
    c.panoptic.max_segments = 32
    c.panoptic.top_k_ratio = 1.0
    c.panoptic.offset_loss_weight = 0.1
    c.dataset.name = "segjax_shapes_panoptic"
    c.dataset.config = "small"
    c.dataset.num_classes = 8
    c.input.batch_size = 16
    c.input.eval_batch_size = 64
    c.input.crop_size = (64, 64)
    c.input.eval_pad_size = (64, 64)
    c.input.scale_range = (0.75, 1.25)


def semi_supervised_shapes(
    c: ml_collections.ConfigDict, fraction: float, *, tiny: bool = False, steps: int = 0
) -> None:
    """`shapes_64` for semi-supervised training (`c.adversarial` set): a random `fraction`
    of the training split keeps its labels; 16 labelled + 16 unlabelled images a step.
    `tiny`: `smoke_run`'s data, 8 + 8 images; `steps` > 0 sets the step count."""
    c.adversarial.labelled_fraction = fraction
    shapes_64(c)
    c.input.batch_size = 16
    c.adversarial.unlabelled_batch_size = 16
    if tiny:
        smoke_run(c)
        c.adversarial.unlabelled_batch_size = 8  # smoke_run's labelled batch: 8 images
    if steps:
        c.train.steps = steps


# DeepLab's dense CRF settings: the parameters of the authors' released scripts for PASCAL
# VOC 2012 (v1 LargeFOV: run_pascal.sh; v2 ResNet-101: run_densecrf.sh), 10 iterations.
DEEPLAB_CRF = {
    "v1": dict(
        bilateral_weight=4.0, theta_alpha=121.0, theta_beta=5.0, spatial_weight=3.0, theta_gamma=3.0
    ),
    "v2": dict(
        bilateral_weight=4.0, theta_alpha=67.0, theta_beta=3.0, spatial_weight=3.0, theta_gamma=1.0
    ),
}


def deeplab_crf(c: ml_collections.ConfigDict, version: str) -> None:
    """Turns on the dense CRF at evaluation with DeepLab `version`'s ("v1", "v2") parameters."""
    c.eval.crf.enabled = True
    c.eval.crf.iterations = 10
    for key, value in DEEPLAB_CRF[version].items():
        c.eval.crf[key] = value


def deeplab_voc(version: str, arg: str | None) -> ml_collections.ConfigDict:
    """DeepLab `version` ("v1": LargeFOV VGG-16, "v2": ResNet-101) + dense CRF on VOC 2012.

    The paper's 321x321 crops, SGD (momentum 0.9, weight decay 5e-4; poly decay here) and
    the authors' CRF (`deeplab_crf`); `arg` takes `aug` and `steps=N`.
    """
    model, lr, batch, steps = {
        "v1": ("deeplabv1_vgg16", 1e-3, 16, 6000),  # the paper's batch: 20
        "v2": ("deeplabv2_resnet101", 2.5e-4, 8, 20000),  # the paper's batch: 10
    }[version]
    args = parse_arg(arg, aug=False, steps=steps)
    c = base_config()
    c.dataset.name = "voc"
    c.dataset.config = "aug" if args.aug else "default"
    c.dataset.num_classes = 21
    c.input.batch_size = batch  # a multiple of 8 devices
    c.input.eval_batch_size = 8
    c.input.crop_size = (321, 321)
    c.input.scale_range = (0.5, 1.5)
    c.input.worker_count = 8
    c.input.eval_pad_size = (512, 512)  # VOC images are <= 500x500
    c.eval.label_pad_size = (512, 512)
    c.model.name = model
    c.model.output_stride = 8
    sgd_poly(c, learning_rate=lr)
    deeplab_crf(c, version)
    c.train.steps = args.steps
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.lock()
    return c


# What configs/nyudv2.py and configs/sunrgbd.py take as `fusion`: the model that sees the
# 4-band RGB-D image ("fusenet": two streams; "early": SegNet), or SegNet on RGB ("none").
RGBD_FUSIONS = ("fusenet", "early", "none")


def rgbd_config(
    dataset: str, num_classes: int, args: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """What the RGB-D configs share (unlocked; `args`: fusion, steps, tiny).

    The model (`rgbd_model`); batch 4 of 480x640 crops, evaluation at 480x640 on the
    `test` split; FuseNet's optimiser (its PyTorch port: SGD lr 1e-3, momentum 0.9,
    weight decay 5e-4) with poly decay to 0 over `args.steps`.
    """
    c = base_config()
    c.dataset.name = dataset
    c.dataset.num_classes = num_classes
    c.dataset.eval_split = "test"
    rgbd_model(c, args.fusion, tiny=args.tiny)
    c.input.batch_size = 4
    c.input.eval_batch_size = 4
    c.input.crop_size = (480, 640)
    c.input.eval_pad_size = (480, 640)
    c.input.worker_count = 4
    sgd_poly(c, learning_rate=1e-3)
    c.optimizer.end_learning_rate = 0.0
    c.train.steps = args.steps
    c.train.log_every = 100
    c.train.eval_every = c.train.checkpoint_every = max(args.steps // 20, 1)
    return c


def rgbd_model(c: ml_collections.ConfigDict, fusion: str, tiny: bool = False) -> None:
    """FuseNet (depth encoder summed into the RGB one), or SegNet on RGB-D / RGB.

    `fusion` "fusenet" and "early" read the depth map as a fourth band
    (`config.dataset.depth`), normalised with the per-band statistics stored when the
    dataset was prepared (`config.input.norm_stats` "auto"); "none" is the RGB baseline
    with ImageNet's statistics. `tiny`: the narrow variants (tests, CPU smoke runs).
    """
    if fusion not in RGBD_FUSIONS:
        raise ValueError(f"fusion={fusion!r}: expected one of {RGBD_FUSIONS}")
    c.dataset.depth = fusion != "none"
    base = "fusenet" if fusion == "fusenet" else "segnet"
    c.model.name = f"{base}_tiny" if tiny else ("fusenet" if base == "fusenet" else "segnet_vgg16")
    c.model.output_stride = None
    c.model.aux_head = False
    c.input.photometric = False  # RGB-D images are uint16; the distortion takes 8-bit RGB


def rgbd_smoke_run(c: ml_collections.ConfigDict) -> None:
    """The `tiny` variant of the RGB-D configs: small crops, 4 steps, eval at 2 and 4."""
    c.input.batch_size = 2
    c.input.eval_batch_size = 2
    c.input.crop_size = (24, 32)
    c.input.base_size = (0, 0)
    c.input.scale_range = (1.0, 1.25)
    c.input.eval_pad_size = (32, 40)
    c.input.worker_count = 0
    c.eval.resize = (0, 0)
    c.eval.label_pad_size = (0, 0)
    c.eval.num_visualizations = 1
    c.eval.speed_iters = 1
    c.optimizer.warmup_steps = 0
    c.train.steps = 4
    c.train.log_every = 2
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.train.async_checkpointing = False
