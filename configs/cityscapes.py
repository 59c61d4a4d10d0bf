"""DeepLabv3+ (ResNet-50, output stride 8) on Cityscapes, mmsegmentation's recipe.

Prepare the data once (see the README's "Datasets"), then train:

  python -m segjax.data.prepare --dataset cityscapes --manual_dir ~/data/cityscapes
  python train.py --config configs/cityscapes.py --workdir workdirs/cityscapes

The recipe is mmsegmentation's `deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024`:
batch 8, 512x1024 crops of images rescaled to (2048, 1024) x [0.5, 2.0], cat_max_ratio
0.75, flip, photometric distortion; SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly
decay (power 0.9) to 1e-4 over 80k steps (`steps=40000` for the 40k schedule);
evaluation on the 500 val images at full 1024x2048 resolution. mmsegmentation starts
from an ImageNet-pretrained backbone; segjax trains it from scratch here.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, steps=80000)
    c = common.base_config()
    c.dataset.name = "cityscapes"
    c.dataset.num_classes = 19

    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.input.crop_size = (512, 1024)
    c.input.base_size = (2048, 1024)
    c.input.scale_range = (0.5, 2.0)
    c.input.cat_max_ratio = 0.75
    c.input.photometric = True
    c.input.worker_count = 8
    c.input.eval_pad_size = (1024, 2048)

    common.deeplabv3plus_r50_d8(c)

    common.sgd_poly(c)

    c.train.steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 8000
    c.train.checkpoint_every = 8000
    c.lock()
    return c
