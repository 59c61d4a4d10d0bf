"""Distillation on segjax_shapes: the default model learns from a frozen, stronger teacher.

First train the teacher (a plain semantic run: `deeplabv3plus_tiny` at output stride 8,
4,000 steps; any finished run's workdir will do), then the student (the default run's
model and schedule, 2,000 steps) against it (segjax/tasks/distill.py):

  python train.py --config configs/distill_shapes.py:teacher --workdir workdirs/distill_teacher
  python train.py --config configs/distill_shapes.py --workdir workdirs/distill_student

The student alone, for the README's comparison, is `python train.py` (configs/default.py:
the same model, data, schedule and seed). Arguments: `teacher_dir=PATH` (default
workdirs/distill_teacher), `T=2.0` (temperature), `kd=1.0`, `features=s16` (adds
channel-wise distillation of that backbone level), `steps=N`; `:tiny` for the tests.
"""

from configs import common
from segjax.tasks import distill


def get_config(arg: str | None = None):
    args = common.parse_arg(
        arg,
        tiny=False,
        teacher=False,
        steps=0,
        teacher_dir="workdirs/distill_teacher",
        T=2.0,
        kd=1.0,
        features="",
    )
    c = common.base_config()
    common.shapes_64(c)
    if args.teacher:
        c.model.output_stride = 8
        c.train.steps = 4000
    else:
        c.task = "distill"
        c.distill = distill.config_block()
        c.distill.teacher_workdir = args.teacher_dir
        c.distill.temperature = args.T
        c.distill.kd_weight = args.kd
        c.distill.feature_key = args.features
    if args.tiny:
        common.smoke_run(c)
    if args.steps:
        c.train.steps = args.steps
    c.lock()
    return c
