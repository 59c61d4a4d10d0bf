"""FuseNet, early fusion or RGB only on NYUDv2 (40 classes; 795 train / 654 test frames).

Prepare the data once (docs/datasets.md, "RGB-D"), then train:

  python -m segjax.data.prepare --dataset nyudv2 --manual_dir ~/data/nyudv2
  python train.py --config configs/nyudv2.py --workdir workdirs/nyudv2_fusenet
  python train.py --config configs/nyudv2.py:fusion=early --workdir workdirs/nyudv2_early
  python train.py --config configs/nyudv2.py:fusion=none --workdir workdirs/nyudv2_rgb

`fusion`: "fusenet" (FuseNet-SF5: a VGG-16-BN depth encoder summed into the RGB encoder
after each stage, SegNet's unpooling decoder), "early" (SegNet on the 4-band RGB-D image)
or "none" (SegNet on RGB). The optimiser is that of FuseNet's PyTorch port (SGD lr 1e-3,
momentum 0.9, weight decay 5e-4, batch 4, 400 epochs of 795 frames = 80k steps), with
poly decay instead of its x0.9 every 25 epochs; full 480x640 frames rescaled by
[1.0, 1.5], cropped back to 480x640, flipped. The port starts both encoders from
ImageNet VGG-16; segjax trains from scratch, so expect less than the paper's. Evaluation:
the 654 test frames at 480x640: pixel accuracy, mean accuracy, mIoU (the survey's table
7). `tiny`: fusenet_tiny / segnet_tiny on small crops for 4 steps (tests).
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, fusion="fusenet", steps=80000, tiny=False)
    c = common.rgbd_config("nyudv2", 40, args)
    c.input.scale_range = (1.0, 1.5)
    if args.tiny:
        common.rgbd_smoke_run(c)
    c.lock()
    return c
