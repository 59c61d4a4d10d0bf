"""The trained zoo's recipe: every tiny model, the same budget, on the built-in dataset.

The default run's 64x64 `small` segjax_shapes and batch 32 (configs/default.py), with the
changes that the default run's recipe study found to help every model it raced
(docs/training.md): no random rescale and cosine decay of AdamW 2e-3, over 1,000 steps.
`python benchmarks/zoo_shapes.py` (its default `--config`) trains each `*_tiny` model on
it, with `model.name` overridden and the model at its builder's defaults:

  python benchmarks/zoo_shapes.py --models fcn_hr_tiny,danet_tiny --write README.md
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, steps=0)
    c = common.base_config()
    common.shapes_64_raced(c, steps=1000)

    return common.finish(c, args)
