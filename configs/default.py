"""The default run: DeepLabv3+ on a tiny ResNet, on the built-in segjax_shapes dataset.

What `python train.py` runs with no flags (about 8 minutes on 2 CPU cores), on the
64x64 `small` config of the dataset (4,096 training, 512 validation images):

  python train.py --config configs/default.py --workdir workdirs/default

The argument is a comma-separated list of `key=value` (big_vision style), e.g. the
few-second smoke run that the tests use:

  python train.py --config configs/default.py:tiny --workdir /tmp/smoke

Any key can then be overridden: `--config.optimizer.learning_rate=0.01`.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    common.shapes_64(c)  # the 64x64 `small` dataset, batch 32, 2,000 steps

    return common.finish(c, args)
