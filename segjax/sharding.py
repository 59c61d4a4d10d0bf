"""One device mesh for the whole run, and the helpers that put host data on it.

The mesh has a single axis, `"data"`, over every device of every host. Batches are
split along it; the train state is replicated (data parallelism). Under `jax.jit` the
program is global, so BatchNorm statistics and the loss are over the global batch
without any explicit collective.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `"data"` over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full array on every device."""
    return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch; the batch must split evenly over devices."""
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"batch size {global_batch_size} does not divide over {num_devices} devices; "
            f"use a multiple of {num_devices}"
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles global arrays from each process's local slice of the batch."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch(items: Iterable[Any], transform: Callable[[Any], Any], size: int = 2) -> Iterator:
    """Yields `transform(item)`, applied `size` items ahead of the consumer.

    With `transform` a host-to-device transfer (which JAX runs asynchronously), the
    next batches are on their way while the current step runs.
    """
    queue: collections.deque[Any] = collections.deque()
    iterator = iter(items)
    for item in itertools.islice(iterator, max(size, 1)):
        queue.append(transform(item))
    while queue:
        yield queue.popleft()
        for item in itertools.islice(iterator, 1):
            queue.append(transform(item))


def prefetch_to_mesh(
    batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Yields sharded batches, keeping `size` transfers in flight ahead of the consumer."""
    return prefetch(batches, lambda batch: shard_batch(batch, mesh), size)
