"""What the end-to-end task tests share: a run, its last checkpoint lost, the same run again."""

import os
import shutil

import jax
import numpy as np

from segjax import train_lib
from segjax.checkpoint import Checkpointer


def _restore(ckpt_dir, step, run, best_metric):
    ckpt = Checkpointer(ckpt_dir, async_save=False, best_metric=best_metric)
    try:
        return jax.device_get(ckpt.restore(step, run.abstract_state))
    finally:
        ckpt.close()


def check_exact_resume(config, workdir, mesh, *, best_metric="miou"):
    """Trains `config` (checkpoints at its last step and before), deletes the last
    checkpoint, trains again and asserts that the resumed run ends bitwise where the
    first one did (state, optimizer, BatchNorm statistics) with the same scores.

    Returns (first result, restored final state)."""
    final = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    last = config.train.steps
    assert final["step"] == last
    ckpt_dir = os.path.join(workdir, "checkpoints")
    run = train_lib.setup(config, mesh)
    before = _restore(ckpt_dir, last, run, best_metric)
    shutil.rmtree(os.path.join(ckpt_dir, str(last)))
    resumed = train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    after = _restore(ckpt_dir, last, run, best_metric)
    jax.tree.map(np.testing.assert_array_equal, before, after)
    np.testing.assert_allclose(resumed[best_metric], final[best_metric])
    return final, after
