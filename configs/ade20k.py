"""DeepLabv3+ (ResNet-50, output stride 8) on ADE20K (SceneParse150), mmsegmentation's recipe.

Prepare the data once (see the README's "Datasets"), then train:

  python -m segjax.data.prepare --dataset ade20k --manual_dir ~/data/ade20k
  python train.py --config configs/ade20k.py --workdir workdirs/ade20k

The recipe is mmsegmentation's `deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512`: batch
16, 512x512 crops of images rescaled to (2048, 512) x [0.5, 2.0], cat_max_ratio 0.75,
flip, photometric distortion; SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly decay
(power 0.9) to 1e-4 over 160k steps (`steps=80000` for the 80k schedule); evaluation on
the 2,000 validation images resized to fit 512 x 2048. mmsegmentation starts from an
ImageNet-pretrained backbone; segjax trains it from scratch here.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, steps=160000)
    c = common.base_config()
    c.dataset.name = "ade20k"
    c.dataset.num_classes = 150

    c.input.batch_size = 16
    c.input.eval_batch_size = 8
    c.input.crop_size = (512, 512)
    c.input.base_size = (2048, 512)
    c.input.scale_range = (0.5, 2.0)
    c.input.cat_max_ratio = 0.75
    c.input.photometric = True
    c.input.worker_count = 8
    c.input.eval_pad_size = (512, 2048)  # after eval.resize
    c.eval.resize = (512, 2048)
    # Labels are scored at their original size; raise this if an image is larger.
    c.eval.label_pad_size = (2048, 2048)

    common.deeplabv3plus_r50_d8(c)

    common.sgd_poly(c)

    c.train.steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 16000
    c.train.checkpoint_every = 16000
    c.lock()
    return c
