"""Semi-supervised adversarial training (Hung et al.) on segjax_shapes with 1/8 of the labels.

The default run's model and data, but only a random eighth of the training split
(512 of 4,096 images) keeps its labels; the other 3,584 images are used without them.
Each step sees 16 labelled and 16 unlabelled images. Hung et al.'s fully convolutional
discriminator gives a confidence per pixel; the segmentor's loss is cross-entropy on the
labelled images + 0.01 x adversarial (labelled) + 0.001 x adversarial (unlabelled) +
0.1 x the semi-supervised term (cross-entropy against its own argmax where the
discriminator's confidence exceeds 0.2, from step 500 on). segjax/tasks/adversarial.py:

  python train.py --config configs/adversarial_semi_shapes.py --workdir workdirs/adv_semi

`:baseline` trains the same segmentor on the same 512 labelled images, same steps and
batch, with no discriminator term and no unlabelled images (the README's comparison):

  python train.py --config configs/adversarial_semi_shapes.py:baseline \
      --workdir workdirs/adv_semi_baseline

Arguments: `fraction=0.125`, `steps=N`; `:tiny` is the smoke run the tests use. Images
of a `folder` dataset without masks: `--config.adversarial.unlabelled_list=LIST.txt`
(one image path per line).
"""

from configs import common
from segjax.tasks import adversarial


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, baseline=False, steps=0, fraction=0.125)
    c = common.base_config()
    c.task = "adversarial"
    c.adversarial = adversarial.config_block()
    a = c.adversarial
    a.discriminator = "fcn"
    a.features = 16
    a.adv_weight = 0.01
    a.unlabelled_adv_weight = 0.001
    a.semi_weight = 0.1
    a.semi_threshold = 0.2
    a.semi_start_step = 500
    a.learning_rate = 1e-4
    common.semi_supervised_shapes(c, args.fraction, tiny=args.tiny, steps=args.steps)
    if args.tiny:
        a.semi_start_step = 2
    if args.baseline:
        a.adv_weight = 0.0
        a.unlabelled_batch_size = 0
    c.lock()
    return c
