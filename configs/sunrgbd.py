"""FuseNet, early fusion or RGB only on SUN RGB-D (37 classes; 5,285 train / 5,050 test).

Prepare the data once (docs/datasets.md, "RGB-D"), then train:

  python -m segjax.data.prepare --dataset sunrgbd --manual_dir ~/data/sunrgbd
  python train.py --config configs/sunrgbd.py --workdir workdirs/sunrgbd_fusenet
  python train.py --config configs/sunrgbd.py:fusion=early --workdir workdirs/sunrgbd_early

`fusion` as in configs/nyudv2.py. Frames come from four sensors (640x480 up to 730x530):
training rescales each to fit 640x480 (keeping its aspect ratio) times [1.0, 1.4] and
crops 480x640; evaluation fits each test frame into 480x640 and scores the prediction
resized back to the frame's own size. Optimiser as configs/nyudv2.py's (FuseNet's port:
SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch 4), poly decay over 100k steps
(~76 epochs of 5,285 frames). `tiny` as there.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, fusion="fusenet", steps=100000, tiny=False)
    c = common.rgbd_config("sunrgbd", 37, args)
    c.input.base_size = (640, 480)
    c.input.scale_range = (1.0, 1.4)
    c.eval.resize = (480, 640)
    c.eval.label_pad_size = (544, 736)  # the largest frames (Kinect v2) are 530x730
    if args.tiny:
        common.rgbd_smoke_run(c)
    c.lock()
    return c
