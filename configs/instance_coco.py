"""Mask R-CNN R-50-FPN on COCO 2017 instances, torchvision's 1x recipe in segjax's loop.

Needs the COCO files (see segjax/data/builders/coco_instances.py) and, as torchvision's
reference, an ImageNet ResNet-50 converted with `python -m segjax.weights convert`
(`model.pretrained`); accelerators, not a CPU:

  python train.py --config configs/instance_coco.py --workdir workdirs/maskrcnn_r50_coco \\
      --config.dataset.manual_dir=~/data/coco --config.model.pretrained=~/weights/r50.npz
  python eval.py --workdir workdirs/maskrcnn_r50_coco

Images: shorter side 800, longer at most 1333, padded to a 1344 x 1344 canvas (static
shapes); ground truth padded to 128 instances (COCO 2017 has at most 93 per image).
`:panet` trains PANet (`panet_resnet50_fpn`).
"""

from configs import common
from segjax.tasks import instance


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, panet=False, steps=0)
    c = common.base_config()
    c.task = "instance"
    c.instance = instance.config_block()
    c.instance.max_instances = 128
    c.instance.min_sizes = (800,)
    c.instance.max_size = 1333
    c.instance.test_size = 800
    c.dataset.name = "coco_instances"
    c.dataset.num_classes = 91  # category ids 1..90 and background, as torchvision
    c.model.name = "panet_resnet50_fpn" if args.panet else "maskrcnn_resnet50_fpn"
    c.model.output_stride = None
    c.model.freeze_backbone_bn = True  # torchvision's FrozenBatchNorm2d with weights
    c.input.batch_size = 16  # torchvision: 8 GPUs x 2 images
    c.input.eval_batch_size = 16
    c.input.crop_size = (1344, 1344)
    c.input.eval_pad_size = (1344, 1344)
    c.eval.label_pad_size = (640, 640)  # COCO's original images are at most 640 a side
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.02
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 1000
    c.train.steps = 90_000  # 1x schedule: 12 epochs of 118k images at batch 16
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 5_000
    if args.steps:
        c.train.steps = args.steps
    c.lock()
    return c
