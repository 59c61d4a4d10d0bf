"""Volumetric segmentation: a 3-D U-Net on the built-in volume_shapes dataset.

Spheres, tubes and boxes in noisy 32^3 volumes (segjax/data/builders/volume_shapes.py);
random 16^3 crops (8 a batch), flips and 90-degree rotations; cross-entropy + V-Net soft
Dice; evaluated by 16^3 sliding windows (overlap 0.5: 27 per volume, Gaussian blending,
as MONAI), per-class Dice and HD95 per volume (segjax/tasks/volume.py). 400 steps: 35
minutes on a 2-core CPU shared with four other jobs (mean foreground Dice 62.8%, README):

  python train.py --config configs/volume_shapes.py --workdir workdirs/volume_shapes
  python eval.py --workdir workdirs/volume_shapes

`:tiny` is the smoke run of the tests (16^3 volumes, 4 steps); `:model=vnet` (or
`vnet_tiny`, `unet3d_tiny`) trains another volume model at its own defaults.
"""

from configs import common
from segjax.data.builders import volume_shapes
from segjax.tasks import volume


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0, model="unet3d")
    c = common.base_config()
    c.task = "volume"
    c.volume = volume.config_block()
    c.volume.crop_size = (16, 16, 16)
    c.volume.roi_size = (16, 16, 16)
    c.volume.eval_pad_size = (32, 32, 32)
    c.volume.window_batch = 9
    c.dataset.name = "volume_shapes"
    c.dataset.num_classes = volume_shapes.NUM_CLASSES
    c.model.name = args.model
    c.model.output_stride = None
    if args.model == "unet3d" and not args.tiny:
        c.model.base_width = 8  # the paper's 32 / 4: CPU-sized
        c.model.depth = 2
    c.loss.name = "cross_entropy+dice"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 20
    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.train.steps = 400
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.eval.num_visualizations = 4
    if args.tiny:
        c.dataset.config = "tiny"
        c.model.name = "unet3d_tiny" if args.model == "unet3d" else args.model
        c.volume.crop_size = (16, 16, 16)
        c.volume.eval_pad_size = (16, 16, 16)
        c.volume.roi_size = (16, 16, 16)
        c.volume.window_batch = 1
        c.input.batch_size = 8
        c.input.eval_batch_size = 8
        c.optimizer.warmup_steps = 1
        c.train.steps = 4
        c.train.log_every = 2
        c.train.eval_every = 2
        c.train.checkpoint_every = 2
        c.train.async_checkpointing = False
        c.eval.num_visualizations = 1
    if args.steps:
        c.train.steps = args.steps
    c.lock()
    return c
