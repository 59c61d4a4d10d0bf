"""Multi-label classification on segjax_shapes: which shapes does an image hold?

The second task of the shared loop (segjax/tasks/classification.py): the tiny ResNet of
the default model with a pooled linear head, sigmoid cross-entropy, mean average
precision over the five shape classes (background left out):

  python train.py --config configs/classify_shapes.py --workdir workdirs/classify_shapes
  python eval.py --workdir workdirs/classify_shapes

`:tiny` is the seconds-long smoke run the tests use.
"""

from configs import common
from segjax.tasks import classification


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    c.task = "classification"
    c.classification = classification.config_block()
    c.dataset.config = "small"
    c.model.name = "deeplabv3plus_tiny"  # its backbone: a tiny ResNet (16-128 channels)
    c.model.output_stride = 32
    c.input.batch_size = 32
    c.input.eval_batch_size = 64
    c.input.crop_size = (64, 64)
    c.input.eval_pad_size = (64, 64)
    c.input.scale_range = (1.0, 1.0)  # a crop of a rescaled image could cut shapes out
    c.train.steps = 1500
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return common.finish(c, args)
