"""DeepLabv3+ (ResNet-18) on your own folder of images and masks.

Prepare your folder once (layout in the README's "Datasets": images/, masks/,
classes.txt), then train, giving the number of classes and the name you prepared it as:

  python -m segjax.data.prepare --dataset folder --manual_dir ~/my_data --config my_data
  python train.py --config configs/folder.py:name=my_data,classes=3 --workdir workdirs/my_data

Multi-band (multispectral GeoTIFF) folders train the same way with `photometric=false`
(the photometric distortion is for 8-bit RGB); the model takes the dataset's bands and
its per-band statistics normalise them (docs/datasets.md, "Multispectral images").

Arguments: `name` (the --config given to prepare), `classes` (lines of classes.txt),
`crop=512` (square training crop side), `eval_size=1024` (evaluation images are padded
to eval_size x eval_size; raise it if yours are larger), `steps=20000`,
`photometric=true` (false for images other than 8-bit RGB). The recipe is
mmsegmentation's generic one: batch 8, crops of images rescaled by [0.5, 2.0],
cat_max_ratio 0.75, flip, photometric distortion; SGD lr 0.01, momentum 0.9, weight
decay 5e-4, poly decay to 1e-4.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg, name="default", classes=0, crop=512, eval_size=1024, steps=20000, photometric=True
    )
    if args.classes < 1:
        raise ValueError("configs/folder.py needs classes=K (the number of lines of classes.txt)")
    c = common.base_config()
    c.dataset.name = "folder"
    c.dataset.config = args.name
    c.dataset.num_classes = args.classes

    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.input.crop_size = (args.crop, args.crop)
    c.input.scale_range = (0.5, 2.0)
    c.input.cat_max_ratio = 0.75
    c.input.photometric = args.photometric
    c.input.worker_count = 4
    c.input.eval_pad_size = (args.eval_size, args.eval_size)

    c.model.name = "deeplabv3plus_resnet18"
    c.model.output_stride = 16
    c.model.aux_head = False

    common.sgd_poly(c)

    c.train.steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.lock()
    return c
