"""DeepLabv3+ (ResNet-50, output stride 8) on PASCAL VOC 2012, mmsegmentation's recipe.

Prepare the data once (see the README's "Datasets"), then train:

  python -m segjax.data.prepare --dataset voc --manual_dir ~/data/voc --config aug
  python train.py --config configs/voc.py:aug --workdir workdirs/voc_aug

`aug` trains on the 10,582-image train_aug set (needs SBD); without it, on the 1,464
VOC train images. The recipe is mmsegmentation's `deeplabv3plus_r50-d8_4xb4-40k_voc12aug-
512x512`: batch 16, 512x512 crops of images rescaled to (2048, 512) x [0.5, 2.0],
cat_max_ratio 0.75, flip, photometric distortion; SGD lr 0.01, momentum 0.9, weight
decay 5e-4, poly decay (power 0.9) to 1e-4 over 40k steps (`steps=20000` for the 20k
schedule); evaluation on the 1,449 val images resized to fit 512 x 2048. mmsegmentation
starts from an ImageNet-pretrained backbone; segjax trains it from scratch here.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, aug=False, steps=40000)
    c = common.base_config()
    c.dataset.name = "voc"
    c.dataset.config = "aug" if args.aug else "default"
    c.dataset.num_classes = 21

    c.input.batch_size = 16
    c.input.eval_batch_size = 8
    c.input.crop_size = (512, 512)
    c.input.base_size = (2048, 512)
    c.input.scale_range = (0.5, 2.0)
    c.input.cat_max_ratio = 0.75
    c.input.photometric = True
    c.input.worker_count = 8
    c.input.eval_pad_size = (512, 2048)  # after eval.resize; VOC images are <= 500x500
    c.eval.resize = (512, 2048)
    c.eval.label_pad_size = (512, 512)

    common.deeplabv3plus_r50_d8(c)

    common.sgd_poly(c)

    c.train.steps = args.steps
    c.train.log_every = 50
    c.train.eval_every = 4000
    c.train.checkpoint_every = 4000
    c.lock()
    return c
