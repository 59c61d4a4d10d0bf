"""Optimizers and learning-rate schedules from config, as optax transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def poly_schedule(
    base_lr: float, total_steps: int, *, power: float = 0.9, end_lr: float = 0.0
) -> optax.Schedule:
    """DeepLab's poly decay: `end + (base - end) * (1 - step / total) ** power`."""
    return optax.polynomial_schedule(
        init_value=base_lr, end_value=end_lr, power=power, transition_steps=max(total_steps, 1)
    )


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 for `warmup_steps`, then the configured decay to the end."""
    oc = config.optimizer
    warmup = min(oc.warmup_steps, max(total_steps - 1, 0))
    decay_steps = total_steps - warmup
    if oc.schedule == "poly":
        decay = poly_schedule(
            oc.learning_rate, decay_steps, power=oc.poly_power, end_lr=oc.end_learning_rate
        )
    elif oc.schedule == "cosine":
        alpha = oc.end_learning_rate / oc.learning_rate if oc.learning_rate else 0.0
        decay = optax.cosine_decay_schedule(oc.learning_rate, max(decay_steps, 1), alpha=alpha)
    elif oc.schedule == "constant":
        decay = optax.constant_schedule(oc.learning_rate)
    else:
        raise ValueError(
            f"config.optimizer.schedule={oc.schedule!r}; expected 'poly', 'cosine' or 'constant'"
        )
    if warmup <= 0:
        return decay
    ramp = optax.linear_schedule(0.0, oc.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], boundaries=[warmup])


def _decay_mask(params):
    # No weight decay on biases and normalisation scales (1-D parameters), as is standard.
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds `config.optimizer` as an optax chain; returns it and its LR schedule.

    `sgd`: SGD with momentum and L2 weight decay added to the gradient (the DeepLab /
    mmsegmentation recipe). `adamw`: AdamW with decoupled weight decay. Both skip
    decay on 1-D parameters and clip the global gradient norm when `grad_clip_norm > 0`.
    """
    oc = config.optimizer
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if oc.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(oc.grad_clip_norm))
    if oc.name == "sgd":
        if oc.weight_decay:
            parts.append(optax.add_decayed_weights(oc.weight_decay, mask=_decay_mask))
        parts.append(optax.sgd(schedule, momentum=oc.momentum or None, nesterov=oc.nesterov))
    elif oc.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=oc.weight_decay, mask=_decay_mask))
    else:
        raise ValueError(f"config.optimizer.name={oc.name!r}; expected 'sgd' or 'adamw'")
    return optax.chain(*parts), schedule
