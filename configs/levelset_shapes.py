"""Binary segmentation of segjax_shapes by a CNN-driven level set (DALS / TDAC).

Every shape is "object", the rest "background" (labels made binary at read time). The
default run's CNN (DeepLabv3+ on a tiny ResNet) predicts the initial level set and the
two Chan-Vese weight maps; 10 differentiable Chan-Vese steps on the image evolve it
(segjax/tasks/levelset.py, segjax/models/levelset.py):

  python train.py --config configs/levelset_shapes.py --workdir workdirs/levelset_shapes

`:baseline` is the same CNN without the evolution (`levelset.steps = 0`), the README's
comparison:

  python train.py --config configs/levelset_shapes.py:baseline --workdir workdirs/levelset_base

Arguments: `steps=N` (training steps), `evolve=K` (level-set steps), `window=W` (local
means over a W x W box, DALS), `acwe=0.1` (Gur et al.'s unsupervised loss weight);
`:tiny` is the smoke run the tests use.
"""

from configs import common
from segjax.tasks import levelset


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, baseline=False, steps=0, evolve=10, window=0, acwe=0.0)
    c = common.base_config()
    c.task = "levelset"
    c.levelset = levelset.config_block()
    c.levelset.steps = args.evolve
    c.levelset.window = args.window
    c.levelset.morph_acwe_weight = args.acwe
    common.shapes_64(c)
    if args.tiny:
        common.smoke_run(c)
    if args.steps:
        c.train.steps = args.steps
    if args.baseline:
        c.levelset.steps = 0
    c.lock()
    return c
