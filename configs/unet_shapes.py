"""A U-Net (16-128 channels) on the built-in dataset: the recipe that learns it best so far.

segjax's `unet` at base width 16 and depth 3 (482,822 parameters) on the default run's
64x64 `small` segjax_shapes, without the rescale augmentation, AdamW 2e-3 with cosine
decay over 3,000 steps (docs/training.md, "The default run's recipe"): 55.32 val mIoU
after 3,000 steps, against the default run's 23.8 after 2,000.

  python train.py --config configs/unet_shapes.py --workdir workdirs/unet_shapes
  python train.py --config configs/unet_shapes.py:steps=1000 --workdir /tmp/unet1000
  python train.py --config configs/unet_shapes.py:tiny --workdir /tmp/smoke   # seconds
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    common.shapes_64_raced(c, steps=3000)
    c.model.name = "unet"
    c.model.output_stride = None
    c.model.base_width = 16
    c.model.depth = 3

    return common.finish(c, args)
