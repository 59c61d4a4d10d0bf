"""Knowledge distillation: a student segmentor trained against a frozen teacher.

The task behind `config.task = "distill"`:

- teacher: the checkpoint (`config.distill.teacher_step`: "latest", "best" or a step) of
  a finished run in `config.distill.teacher_workdir`, any task whose model outputs
  class logits for the same classes (a semantic run, an adversarial one's segmentor,
  ...). It is restored once, when the task is built, with `eval.py`'s own code
  (`eval_lib.load_config` and `eval_lib.restore`: its config is checked, its step
  resolved, its tree checked against the model).
- state: `params = {"student": ..., "teacher": ...}` (plus `"adapter"`, a 1x1 conv, with
  feature distillation), `batch_stats` likewise. The teacher's entries are the
  checkpoint's and never change: its optimizer partition is `optax.set_to_zero()` and
  it is applied in eval mode, under stop_gradient. Checkpoints hold it, so a resumed
  run needs no teacher workdir to agree with itself.
- step: one jitted step runs the teacher's forward and the student's.
- loss, averaged over the valid pixels of the global batch:

      config.loss(student logits, label)                      (CE and aux heads)
      + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
      + feature_weight * CWD(adapter(student features), teacher features)

  (Hinton et al.'s distillation at temperature T, per pixel; CWD: Shu et al.'s
  channel-wise distillation, "Channel-wise Knowledge Distillation for Dense
  Prediction", 2021: each channel of a feature level turned into a distribution over
  the pixels by a softmax at temperature `feature_tau`, KL teacher -> student, times
  tau^2, averaged over channels and images). The feature level is
  `config.distill.feature_key` ("s8", "s16", ... of both backbones; "" = off); the
  student's map is resized to the teacher's when their strides differ.
- evaluation, report, pictures, `eval.py --images`: the semantic task's, of the student
  (`DistillPair.__call__`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import losses, optim
from segjax.models.layers import resize_bilinear
from segjax.tasks import base, semantic

Array = jax.Array

__all__ = ["DistillPair", "build", "channel_wise_distillation", "config_block", "pixel_kd"]


def config_block() -> ml_collections.ConfigDict:
    """The `config.distill` keys and their defaults."""
    c = ml_collections.ConfigDict()
    c.teacher_workdir = ""  # a finished run's --workdir (its config.json and checkpoints)
    c.teacher_step = "latest"  # "latest", "best" or a step number
    c.temperature = 2.0
    c.kd_weight = 1.0
    c.feature_key = ""  # a backbone feature level ("s8", "s16", ...); "" = no CWD
    c.feature_weight = 1.0
    c.feature_tau = 4.0
    return c


def pixel_kd(student: Array, teacher: Array, valid: Array, temperature: float) -> Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over valid pixels.

    `student`, `teacher` logits [B, H, W, K]; `valid` bool [B, H, W].
    """
    t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    total = jnp.sum(jnp.where(valid, kl, 0.0))
    return temperature**2 * total / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def channel_wise_distillation(student: Array, teacher: Array, tau: float) -> Array:
    """Shu et al.'s CWD loss of feature maps [B, H, W, C] (same shape).

    Per image and channel, a softmax over the H * W pixels of `x / tau`; KL(teacher ||
    student) of these distributions, times tau^2, averaged over channels and images.
    """
    b, h, w, c = teacher.shape
    t = jax.nn.log_softmax(teacher.astype(jnp.float32).reshape(b, h * w, c) / tau, axis=1)
    s = jax.nn.log_softmax(student.astype(jnp.float32).reshape(b, h * w, c) / tau, axis=1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=1)  # [B, C]
    return tau**2 * jnp.mean(kl)


class DistillPair(nn.Module):
    """Student and teacher as one module; applying it runs the student only.

    Attributes:
        student: the segmentor trained.
        teacher: the frozen segmentor (its variables come from the teacher's checkpoint).
    """

    student: nn.Module
    teacher: nn.Module

    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """The student's outputs for `image` [B, H, W, 3]."""
        return self.student(image, train=train)


def _is_backbone(module: nn.Module, method_name: str) -> bool:
    return module.name == "backbone" and method_name == "__call__"


def _backbone_features(intermediates: dict) -> dict[str, Array]:
    # The output of the first module named "backbone" among captured intermediates.
    for key, value in intermediates.items():
        if key == "backbone" and "__call__" in value:
            return value["__call__"][0]
        if isinstance(value, dict):
            found = _backbone_features(value)
            if found is not None:
                return found
    return None


def load_teacher(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any], Any]:
    """(teacher model, teacher variables as numpy, teacher config) from its workdir."""
    # eval.py's restore (config check, step resolution, tree check). Imported here: the
    # loop imports the tasks, so a task may use it only once both are loaded.
    from segjax import eval_lib, sharding

    dc = config.distill
    workdir = os.path.expanduser(dc.teacher_workdir)
    if not workdir:
        raise ValueError("config.distill.teacher_workdir is empty: give a finished run's workdir")
    teacher_config = eval_lib.load_config(os.path.join(workdir, "config.json"))
    if teacher_config.dataset.num_classes != config.dataset.num_classes:
        raise ValueError(
            f"config.distill.teacher_workdir={workdir!r}: the teacher has "
            f"{teacher_config.dataset.num_classes} classes, the student "
            f"{config.dataset.num_classes} (config.dataset.num_classes)"
        )
    mesh = sharding.make_mesh(jax.devices()[:1])
    run, _, state = eval_lib.restore(
        teacher_config, os.path.join(workdir, "checkpoints"), str(dc.teacher_step), mesh
    )
    return run.task.model, jax.device_get(base.variables(state)), teacher_config


def network_labels(params: dict) -> dict:
    """`multi_transform` labels: the teacher's leaves are frozen, the rest trained."""
    return {
        name: jax.tree.map(lambda _, n=name: "frozen" if n == "teacher" else "trained", tree)
        for name, tree in params.items()
    }


def make_loss(pair: DistillPair, adapter: nn.Module | None, loss_fn, config):
    """The `Task.loss` of the student (see the module docstring)."""
    dc = config.distill
    ignore_index = config.dataset.ignore_index
    aux_weight, se_weight = config.loss.aux_weight, config.loss.se_weight
    features = bool(dc.feature_key)

    def loss(params, batch_stats, batch, rng):
        image, label = batch["image"], batch["label"]
        teacher_vars = jax.lax.stop_gradient(
            {"params": params["teacher"], "batch_stats": batch_stats["teacher"]}
        )
        student_vars = {"params": params["student"], "batch_stats": batch_stats["student"]}
        capture = {"capture_intermediates": _is_backbone} if features else {}
        mutable = ["batch_stats", "intermediates"] if features else ["batch_stats"]
        if features:
            teacher_out, teacher_state = pair.teacher.apply(
                teacher_vars, image, train=False, mutable=["intermediates"], **capture
            )
        else:
            teacher_out = pair.teacher.apply(teacher_vars, image, train=False)
        outputs, student_state = pair.student.apply(
            student_vars, image, train=True, rngs={"dropout": rng}, mutable=mutable, **capture
        )
        total, terms = losses.segmentation_loss(
            outputs, label, loss_fn, aux_weight=aux_weight, se_weight=se_weight
        )
        valid = (label != ignore_index) & (label >= 0) & (label < config.dataset.num_classes)
        terms["kd"] = pixel_kd(
            outputs["logits"], jax.lax.stop_gradient(teacher_out["logits"]), valid, dc.temperature
        )
        total = total + dc.kd_weight * terms["kd"]
        if features:
            t_feat = _backbone_features(teacher_state["intermediates"])[dc.feature_key]
            s_feat = _backbone_features(student_state["intermediates"])[dc.feature_key]
            s_feat = resize_bilinear(s_feat.astype(jnp.float32), t_feat.shape[1:3])
            s_feat = adapter.apply({"params": params["adapter"]}, s_feat)
            terms["cwd"] = channel_wise_distillation(
                s_feat, jax.lax.stop_gradient(t_feat), dc.feature_tau
            )
            total = total + dc.feature_weight * terms["cwd"]
        terms["total"] = total
        new_stats = {**batch_stats, "student": student_state.get("batch_stats", {})}
        return total, (new_stats, terms)

    return loss


def _feature_channels(model, image_shape, key: str, rng) -> int:
    # Channels of `key` in the backbone output of `model` (shapes only, nothing runs).
    def features(rng):
        variables = model.init({"params": rng, "dropout": rng}, jnp.zeros(image_shape), train=False)
        _, state = model.apply(
            variables,
            jnp.zeros(image_shape),
            train=False,
            capture_intermediates=_is_backbone,
            mutable=["intermediates"],
        )
        found = _backbone_features(state["intermediates"])
        if found is None or key not in found:
            raise ValueError(
                f"config.distill.feature_key={key!r}: the model's backbone outputs "
                f"{sorted(found) if found else 'nothing'}"
            )
        return found[key]

    return int(jax.eval_shape(features, rng).shape[-1])


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The distillation task of `config` (teacher restored from its workdir now)."""
    dc = config.distill
    student = semantic.build_model(config)
    teacher, teacher_vars, _ = load_teacher(config)
    pair = DistillPair(student=student, teacher=teacher)
    plain = semantic.build(config, mesh, model=pair)
    h, w = config.input.crop_size
    adapter = None
    if dc.feature_key:
        shape = (1, h, w, base.in_channels(config))
        rng = jax.random.key(0)
        channels = _feature_channels(teacher, shape, dc.feature_key, rng)
        _feature_channels(student, shape, dc.feature_key, rng)  # checks the key
        adapter = nn.Conv(channels, (1, 1), name="adapter")
    student_tx, schedule = optim.make_optimizer(config, config.train.steps)
    tx = optax.multi_transform(
        {"trained": student_tx, "frozen": optax.set_to_zero()}, network_labels
    )
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=losses.loss_options(config),
    )
    teacher_params = jax.tree.map(np.asarray, teacher_vars["params"])
    teacher_stats = jax.tree.map(np.asarray, teacher_vars.get("batch_stats", {}))

    def init_variables(rng, batch):
        seg = semantic.init_variables(student, rng, batch["image"].shape)
        params = {"student": seg["params"], "teacher": teacher_params}
        if adapter is not None:
            s_channels = _feature_channels(student, batch["image"].shape, dc.feature_key, rng)
            params["adapter"] = adapter.init(
                jax.random.fold_in(rng, 1), jnp.zeros((1, 1, 1, s_channels))
            )["params"]
        return {
            "params": params,
            "batch_stats": {"student": seg.get("batch_stats", {}), "teacher": teacher_stats},
        }

    describe = plain.describe
    return dataclasses.replace(
        plain,
        name="distill",
        tx=tx,
        schedule=schedule,
        init_variables=init_variables,
        loss=make_loss(pair, adapter, loss_fn, config),
        describe=lambda: {
            **describe(),
            "teacher": os.path.abspath(os.path.expanduser(dc.teacher_workdir)),
        },
    )
