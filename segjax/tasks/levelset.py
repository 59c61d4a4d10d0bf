"""Binary segmentation by a CNN-driven, differentiable level-set evolution (DALS / TDAC).

The task behind `config.task = "levelset"`:

- data: any dataset, its labels made binary at read time (`relabel.ForegroundLabels`):
  `config.levelset.foreground_classes` (empty: every class but `background_class`)
  are "object" (1), the rest "background" (0), void kept. `config.dataset` stays the
  dataset's own (its class count is checked against it); the model has 2 classes.
- model: `LevelSetSegmentor` (`segjax/models/levelset.py`) around the registered
  segmentor `config.model.name` built with 3 outputs (initial level set, the two
  Chan-Vese weight maps; 4 with `region_input="learned"`), evolved for
  `config.levelset.steps` steps. `steps = 0` is the same CNN without the level set.
- loss: `config.loss` on the evolved level set's 2-class logits, plus
  `config.loss.aux_weight` times it on the CNN's own level set (DALS trains the CNN's
  initialisation too), plus `morph_acwe_weight` times Gur et al.'s unsupervised
  morphological active-contour loss of the evolved mask on the image
  (`losses.morphological_active_contour_loss`; it uses no labels).
- evaluation, report, pictures: the semantic task's, with 2 classes.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from segjax import losses
from segjax.data import relabel
from segjax.models import build_model as build_registered_model
from segjax.models.levelset import REGION_INPUTS, LevelSetSegmentor
from segjax.tasks import base, semantic

CLASS_NAMES = ("background", "object")
PALETTE = ((0, 0, 0), (230, 25, 75))

__all__ = ["CLASS_NAMES", "REGION_INPUTS", "build", "config_block", "foreground_classes"]


def config_block() -> ml_collections.ConfigDict:
    """The `config.levelset` keys and their defaults."""
    c = ml_collections.ConfigDict()
    c.steps = 10  # Chan-Vese steps unrolled in the model; 0 = the CNN alone
    c.dt = 0.5
    c.mu = 0.1  # weight of the curvature (contour length) term
    c.eps = 1.0  # width of the smoothed Heaviside / Dirac
    c.window = 0  # 0: global region means (Chan-Vese); odd > 0: local (DALS), box size
    c.region_input = "image"  # fit the means on the "image", or on a "learned" CNN channel
    c.foreground_classes = ()  # the classes that are "object"; () = all but background
    c.background_class = 0
    # Gur et al.'s unsupervised morphological active-contour loss on the evolved mask.
    c.morph_acwe_weight = 0.0
    c.morph_smoothing = 3
    c.morph_area_weight = 0.0
    return c


def foreground_classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The dataset classes that are "object" (label 1) in the binary task."""
    lc = config.levelset
    if lc.foreground_classes:
        return tuple(int(k) for k in lc.foreground_classes)
    return tuple(k for k in range(config.dataset.num_classes) if k != lc.background_class)


def binary_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with 2 classes (what the model, loss and evaluation see)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.dataset.num_classes = 2
    return c


def build_model(config: ml_collections.ConfigDict) -> LevelSetSegmentor:
    """`LevelSetSegmentor` around the registered segmentor `config.model.name`."""
    lc = config.levelset
    kwargs = {k: v for k, v in config.model.items() if k not in semantic.NOT_BUILDER_KEYS}
    cnn = build_registered_model(
        config.model.name,
        num_classes=LevelSetSegmentor.num_outputs(lc.region_input),
        dtype=base.compute_dtype(config),
        **kwargs,
    )
    return LevelSetSegmentor(
        cnn=cnn,
        steps=lc.steps,
        dt=lc.dt,
        mu=lc.mu,
        eps=lc.eps,
        window=lc.window,
        region_input=lc.region_input,
    )


def make_loss(model: LevelSetSegmentor, loss_fn, config: ml_collections.ConfigDict):
    """The `Task.loss`: see the module docstring. Terms: `main` (evolved), `aux` (the
    CNN's own level set, when `steps > 0`), `morph_acwe` (when its weight is > 0)."""
    lc, ignore_index = config.levelset, config.dataset.ignore_index
    aux_weight, weight = config.loss.aux_weight, lc.morph_acwe_weight

    def loss(params, batch_stats, batch, rng):
        outputs, new_batch_stats = base.train_apply(model, params, batch_stats, batch["image"], rng)
        total, terms = losses.segmentation_loss(
            outputs, batch["label"], loss_fn, aux_weight=aux_weight
        )
        if weight > 0:
            terms["morph_acwe"] = losses.morphological_active_contour_loss(
                jax.nn.sigmoid(outputs["level_set"]),
                batch["image"],
                smoothing_steps=lc.morph_smoothing,
                area_weight=lc.morph_area_weight,
                valid=batch["label"] != ignore_index,
            )
            total = total + weight * terms["morph_acwe"]
            terms["total"] = total
        return total, (new_batch_stats, terms)

    return loss


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The binary level-set task of `config` (evaluation sharded over `mesh`)."""
    model = build_model(config)
    binary = binary_config(config)
    plain = semantic.build(binary, mesh, model=model, class_names=CLASS_NAMES, palette=PALETTE)
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=losses.loss_options(config),
    )
    foreground, ignore_index = foreground_classes(config), config.dataset.ignore_index

    def binarised(source):
        return relabel.ForegroundLabels(source, foreground, ignore_index)

    describe, panel = plain.describe, plain.panel
    return dataclasses.replace(
        plain,
        name="levelset",
        loss=make_loss(model, loss_fn, config),
        train_batches=lambda source, per_process_batch, seed: plain.train_batches(
            binarised(source), per_process_batch, seed
        ),
        eval_batches=lambda source, per_process_batch: plain.eval_batches(
            binarised(source), per_process_batch
        ),
        # The report's panels get the decoded record of the dataset: binarise its label.
        panel=lambda sample, pred, title: panel(
            {**sample, "label": relabel.binary_labels(sample["label"], foreground, ignore_index)},
            pred,
            title,
        ),
        describe=lambda: {
            **describe(),
            "level_set_steps": int(config.levelset.steps),
            "foreground_classes": list(foreground),
        },
    )
