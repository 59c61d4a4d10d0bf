"""Multi-host start-up: `jax.distributed.initialize` when the environment asks for it."""

from __future__ import annotations

import os

import jax
from absl import logging


def initialize() -> None:
    """Connects the processes of a multi-host job; a no-op for a single process.

    On TPU pods and SLURM / Open MPI clusters JAX discovers everything itself when
    `SEGJAX_DISTRIBUTED=1`. Elsewhere set `SEGJAX_COORDINATOR` (host:port),
    `SEGJAX_NUM_PROCESSES` and `SEGJAX_PROCESS_ID` on every process.
    """
    coordinator = os.environ.get("SEGJAX_COORDINATOR")
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["SEGJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["SEGJAX_PROCESS_ID"]),
        )
    elif os.environ.get("SEGJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "Process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
