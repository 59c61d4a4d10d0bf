"""Random keys for the model tests that are cheap to compile.

`jax.jit(model.init)` with jax's default threefry key compiles the random-bit generation
of every parameter, which dominates a tiny model's init on CPU: `unet_tiny` 39.5 s with
threefry against 6.4 s with "rbg" (XLA's RngBitGenerator) on this project's 2-core CPU
(2026-12-03, another job running). The contract tests need random values, not the
threefry stream, so they draw their keys here. segjax itself keeps jax's default key.
"""

from __future__ import annotations

import jax


def rbg_key(seed: int) -> jax.Array:
    """A typed PRNG key of the "rbg" implementation for `seed`."""
    return jax.random.key(seed, impl="rbg")
