"""Adversarial training (Luc et al.) of the default segmentor on segjax_shapes.

The default run's model and data (DeepLabv3+ on a tiny ResNet, 64x64 `small`
segjax_shapes) trained against Luc et al.'s "basic" discriminator, which sees the image
with a one-hot ground truth or predicted label map (segjax/tasks/adversarial.py):

  python train.py --config configs/adversarial_shapes.py --workdir workdirs/adversarial_shapes

`:baseline` is the same run with the adversarial term's weight at 0 (the segmentor's
updates are then exactly the semantic task's: the comparison the README reports):

  python train.py --config configs/adversarial_shapes.py:baseline --workdir workdirs/adv_baseline

Other arguments: `disc=product` (or `labels`, `fcn`), `weight=0.1`, `steps=N`; `:tiny` is
the seconds-long smoke run the tests use.
"""

from configs import common
from segjax.tasks import adversarial


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, baseline=False, steps=0, disc="basic", weight=-1.0)
    c = common.base_config()
    c.task = "adversarial"
    c.adversarial = adversarial.config_block()
    c.adversarial.discriminator = args.disc
    c.adversarial.features = 16
    c.adversarial.input_stride = 4  # 64x64 maps and image seen at 16x16
    c.adversarial.adv_weight = 0.1
    c.adversarial.learning_rate = 1e-4
    common.shapes_64(c)
    if args.tiny:
        common.smoke_run(c)
    if args.steps:
        c.train.steps = args.steps
    if args.weight >= 0:
        c.adversarial.adv_weight = args.weight
    if args.baseline:
        c.adversarial.adv_weight = 0.0
    c.lock()
    return c
