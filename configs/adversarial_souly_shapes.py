"""Souly et al.'s semi-supervised GAN classifier on segjax_shapes with 1/8 of the labels.

As configs/adversarial_semi_shapes.py (the default run's model and data, a random eighth
of the training split labelled: 512 of 4,096 images; 16 labelled + 16 unlabelled images a
step), but the segmentor is the discriminator: it has 6 + 1 outputs (the classes and
"fake"), and a small generator makes 16 images a step from noise (Souly et al., ICCV
2017; segjax/tasks/adversarial.py). The segmentor's loss is cross-entropy on the labelled
images over the 6 classes + 0.1 x (-log(1 - p_fake) on the unlabelled pixels - log p_fake
on the generated ones); the generator's, -log(1 - p_fake) on its images:

  python train.py --config configs/adversarial_souly_shapes.py --workdir workdirs/adv_souly

`:baseline` trains the same segmentor on the same 512 labelled images, same steps and
batch, with no generator and no unlabelled images (its "fake" output then gets no
gradient: the README's comparison):

  python train.py --config configs/adversarial_souly_shapes.py:baseline \\
      --workdir workdirs/adv_souly_baseline

Arguments: `fraction=0.125`, `weight=0.1`, `steps=N`; `:tiny` is the smoke run the tests
use.
"""

from configs import common
from segjax.tasks import adversarial


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, baseline=False, steps=0, fraction=0.125, weight=0.1)
    c = common.base_config()
    c.task = "adversarial"
    c.adversarial = adversarial.config_block()
    a = c.adversarial
    a.discriminator = "souly"
    a.features = 16  # the generator: 64 channels at 8x8, then 32, 16, 3 up to 64x64
    a.noise_dim = 64
    a.adv_weight = args.weight
    a.semi_weight = 0.0  # Hung et al.'s term: not Souly's
    a.learning_rate = 2e-4
    common.semi_supervised_shapes(c, args.fraction, tiny=args.tiny, steps=args.steps)
    a.generated_batch_size = a.unlabelled_batch_size  # 16 (8 with `tiny`)
    if args.baseline:
        a.adv_weight = 0.0
        a.unlabelled_batch_size = 0
        a.generated_batch_size = 0
    c.lock()
    return c
