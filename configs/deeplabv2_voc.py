"""DeepLab v2 (ResNet-101, ASPP-L, output stride 8) + dense CRF on PASCAL VOC 2012.

  python -m segjax.data.prepare --dataset voc --manual_dir ~/data/voc --config aug
  python train.py --config configs/deeplabv2_voc.py:aug --workdir workdirs/deeplabv2_voc
  python eval.py --workdir workdirs/deeplabv2_voc          # with the CRF (config.eval.crf)
  python eval.py --workdir workdirs/deeplabv2_voc --nocrf  # the network alone

The paper's setting: 321x321 crops, batch 10, SGD momentum 0.9, weight decay 5e-4,
base learning rate 2.5e-4 (segjax uses poly decay), 20000 steps; at test time the fully
connected CRF post-processes the probabilities with the parameters of the authors'
released script (configs/common.py's DEEPLAB_CRF["v2"]: 10 mean-field iterations).
Unlike the paper, the network trains from scratch here (no ImageNet initialisation).
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, aug=False, steps=20000)
    c = common.base_config()
    c.dataset.name = "voc"
    c.dataset.config = "aug" if args.aug else "default"
    c.dataset.num_classes = 21

    c.input.batch_size = 8  # the paper: 10; a multiple of 8 devices here
    c.input.eval_batch_size = 8
    c.input.crop_size = (321, 321)
    c.input.scale_range = (0.5, 1.5)
    c.input.worker_count = 8
    c.input.eval_pad_size = (512, 512)  # VOC images are <= 500x500
    c.eval.label_pad_size = (512, 512)

    c.model.name = "deeplabv2_resnet101"
    c.model.output_stride = 8
    common.sgd_poly(c, learning_rate=2.5e-4)
    common.deeplab_crf(c, "v2")

    c.train.steps = args.steps
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.lock()
    return c
