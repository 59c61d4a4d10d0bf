"""Instance segmentation on segjax_shapes_instances: Mask R-CNN (tiny) on a CPU.

The instance task of the shared loop (segjax/tasks/instance.py): a ResNet-Micro FPN Mask
R-CNN on the 64 x 64 shapes with an instance id per object (occlusions included),
scored with COCO box and mask AP (pycocotools):

  python train.py --config configs/instance_shapes.py --workdir workdirs/instance_shapes
  python eval.py --workdir workdirs/instance_shapes

`:model=panet_tiny` trains PANet instead; `:tiny` is the seconds-long smoke run the tests
use; `:steps=N` changes the length.
"""

from configs import common
from segjax.tasks import instance


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0, model="maskrcnn_tiny")
    c = common.base_config()
    c.task = "instance"
    c.instance = instance.config_block()
    c.dataset.name = "segjax_shapes_instances"
    c.dataset.config = "default"
    c.dataset.num_classes = 6  # background + the five shapes
    c.model.name = args.model
    common.mask_rcnn_shapes(c, widen=not args.tiny)  # :tiny keeps the tiny model's widths
    c.input.batch_size = 8
    c.input.eval_batch_size = 32
    c.input.crop_size = (64, 64)
    c.input.eval_pad_size = (64, 64)
    c.eval.num_visualizations = 8
    c.train.steps = 3000
    c.train.log_every = 100
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    if args.tiny:
        common.smoke_run(c)
        c.input.eval_batch_size = 8
    if args.steps:
        c.train.steps = args.steps
    c.lock()
    return c
