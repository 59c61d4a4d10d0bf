"""One process of the two-process test in tests/test_reliability.py.

Usage: worker.py PROCESS_ID PORT DATA_DIR OUT_DIR. Each process has 2 CPU devices; the
two processes form one 4-device mesh through `jax.distributed` (gloo collectives).
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, data_dir, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(
    coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id
)

from configs import default  # noqa: E402
from segjax import sharding, train_lib  # noqa: E402
from tests.multihost.common import global_batch  # noqa: E402

config = default.get_config("tiny")
with config.unlocked():
    config.dataset.data_dir = data_dir
    config.train.steps = 3

mesh = sharding.make_mesh()
assert mesh.devices.size == 4 and jax.process_count() == 2

# 1. Two steps on a fixed global batch, each process feeding its half.
run = train_lib.setup(config, mesh)
state = run.new_state(jax.random.key(0))
rng = sharding.replicate(jax.random.key(1), mesh)
batch = global_batch(config)
half = config.input.batch_size // 2
local = {k: v[process_id * half : (process_id + 1) * half] for k, v in batch.items()}
for _ in range(2):
    state, _ = run.train_step(state, sharding.shard_batch(local, mesh), rng)
# Replicated: every process holds the whole array on each of its devices.
params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
if process_id == 0:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, "params.npz"), **flat)

# 2. The full loop: per-process data shards, one shared workdir, one checkpoint.
result = train_lib.train_and_evaluate(config, os.path.join(out_dir, "run"), mesh=mesh)
with open(os.path.join(out_dir, f"done_{process_id}.txt"), "w") as f:
    f.write(f"{result['step']} {result['miou']:.8f}\n")
