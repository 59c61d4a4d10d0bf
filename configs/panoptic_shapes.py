"""Panoptic segmentation on segjax_shapes_panoptic with Panoptic-DeepLab (tiny ResNet).

Stuff = three background textures, things = the five shapes, each with its instance id
(segjax/tasks/panoptic.py); the metric is panoptic quality (PQ = SQ x RQ):

  python train.py --config configs/panoptic_shapes.py --workdir workdirs/panoptic_shapes
  python eval.py --workdir workdirs/panoptic_shapes

The paper's settings scaled to 64x64 images: Gaussian centers of sigma 3 pixels, objects
under 100 pixels weigh 3 in the semantic loss, center NMS in 5x5 windows, stuff regions
under 32 pixels dropped, the offset loss weighted 0.1 (offsets here are ~1/16 of
Cityscapes', whose weight is 0.01). The semantic loss is the mean cross-entropy over all
pixels (top_k_ratio 1.0): bootstrapping over the hardest 20% (the paper's) learned far
slower in a CPU-sized run (pixel accuracy 25% against 50% after 200 steps). `:tiny` is
the seconds-long smoke run the tests use.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    common.panoptic_shapes_64(c)
    c.model.name = "panoptic_deeplab_tiny"
    c.model.output_stride = 16
    c.train.steps = 2000
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return common.finish(c, args)
