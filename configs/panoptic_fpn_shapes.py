"""Panoptic segmentation on segjax_shapes_panoptic with Panoptic FPN (tiny ResNet-FPN).

Kirillov et al.'s Panoptic FPN (segjax/models/panoptic_fpn.py): Mask R-CNN for the five
shapes and the semantic FPN head for the three background textures (plus one "thing"
class) on one ResNet-Micro FPN, trained with Mask R-CNN's losses + 0.5 x the semantic
cross-entropy, merged by detectron2's heuristic (segjax/panoptic_inference.py), scored
by panoptic quality through the same task as configs/panoptic_shapes.py:

  python train.py --config configs/panoptic_fpn_shapes.py --workdir workdirs/panoptic_fpn_shapes
  python eval.py --workdir workdirs/panoptic_fpn_shapes

The data and metric settings are panoptic_shapes.py's (`common.panoptic_shapes_64`:
objects padded / merged up to 16, stuff segments of at least 32 pixels); the instance
branch and optimizer are instance_shapes.py's (`common.mask_rcnn_shapes`); the merge
keeps detections scoring at least 0.2 (below). `:tiny` is the
seconds-long smoke run the tests use; `:steps=N` changes the length.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    common.panoptic_shapes_64(c)
    c.model.name = "panoptic_fpn_tiny"
    # detectron2's 0.5 suits a converged detector; this CPU-sized one's class scores
    # (softmax over background + five shapes) stay under about 0.25 for hundreds of
    # steps, so 0.5 keeps no instance at all (things PQ 0.00 at step 400, 4.77 at 0.2).
    c.panoptic.instance_score_threshold = 0.2
    common.mask_rcnn_shapes(c, widen=not args.tiny)  # :tiny keeps the tiny model's widths
    c.input.batch_size = 8
    c.input.eval_batch_size = 32
    c.train.steps = 1200
    c.train.log_every = 100
    c.train.eval_every = 400
    c.train.checkpoint_every = 400
    return common.finish(c, args)
