"""The train-mode gradient check that the model contract tests share."""

from __future__ import annotations

import jax
import numpy as np
import optax

from tests.models.rng import rbg_key


def train_gradients(model, variables, x, labels, *, seed: int = 4):
    """(gradients of every logits' mean cross-entropy, the updated batch_stats state).

    One train-mode pass of `model` on images `x` [B, H, W, C] with `labels` [B, H, W];
    the loss sums the softmax cross-entropy of each output (logits and aux logits).
    """

    def loss_fn(params):
        out, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rbg_key(seed)},
        )
        loss = sum(
            optax.softmax_cross_entropy_with_integer_labels(v, labels).mean() for v in out.values()
        )
        return loss, state

    return jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])


def dead_parameters(grads) -> list[str]:
    """The paths of the parameters whose gradient is zero everywhere."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
