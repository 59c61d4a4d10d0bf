"""One device mesh for the whole run, and the helpers that put host data on it.

The mesh has a single axis, `"data"`, over every device of every host. Batches are
split along it (or, for a volume too large for one device, each volume along its depth
or height: `spatial_sharding`); the train state is replicated (data parallelism). Under
`jax.jit` the program is global, so BatchNorm statistics and the loss are over the global batch
without any explicit collective.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# config.train.param_sharding: the state replicated, or large arrays split (see state_shardings).
PARAM_SHARDINGS = ("replicated", "fsdp")


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `"data"` over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def spatial_sharding(mesh: Mesh, ndim: int, axis: int = 1) -> NamedSharding:
    """Axis `axis` of an `ndim`-D array split over the data axis, the others whole.

    For a volume batch [B, D, H, W, C], `axis=1` splits the depth and `axis=2` the
    height: one volume too large for a device is spread over the mesh, and XLA partitions
    the convolutions spatially, exchanging the halo voxels that each window needs between
    neighbouring devices.
    """
    spec = [None] * ndim
    spec[axis] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


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


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, batch_sharding: dict[str, Any] | None = None
) -> dict[str, jax.Array]:
    """Assembles global arrays from each process's local slice of the batch.

    `batch_sharding` (a task's `Task.batch_sharding`: `{key: NamedSharding}`, e.g. each
    volume split along its depth) places each key so instead of along the batch axis.
    """
    if batch_sharding is None:
        sharding = data_sharding(mesh)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return {
        k: jax.make_array_from_process_local_data(batch_sharding[k], x) for k, x in batch.items()
    }


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


def state_shardings(
    abstract_state: Any, mesh: Mesh, mode: str = "replicated", *, min_size: int = 2**14
) -> Any:
    """Shardings for a train state: replicated, or FSDP-style split over the data axis.

    `mode="fsdp"` splits every array of at least `min_size` elements along its largest
    dimension that divides evenly over the mesh (parameters, optimizer moments, ...);
    smaller arrays and those with no such dimension stay replicated. XLA gathers the
    pieces where a computation needs them, so the step's result does not change, only
    where each array lives.
    """
    if mode not in PARAM_SHARDINGS:
        raise ValueError(f"config.train.param_sharding={mode!r}; expected one of {PARAM_SHARDINGS}")
    n = mesh.devices.size
    repl = replicated(mesh)

    def leaf_sharding(leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if mode == "replicated" or n == 1 or math.prod(shape) < min_size:
            return repl
        dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        for d in dims:
            if shape[d] % n == 0:
                spec = [None] * len(shape)
                spec[d] = DATA_AXIS
                return NamedSharding(mesh, P(*spec))
        return repl

    return jax.tree.map(leaf_sharding, abstract_state)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree` (host values, the same on every process) as arrays replicated on `mesh`.

    Unlike `jax.device_put`, this also works when the mesh spans several processes,
    whose devices are not all addressable from here.
    """
    return _replicator(mesh)(tree)


@functools.lru_cache(maxsize=16)
def _replicator(mesh: Mesh) -> Callable[[Any], Any]:
    # One jitted identity per mesh, so repeated calls hit the compilation cache.
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))
