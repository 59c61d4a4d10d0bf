"""Adversarial training: a segmentor and a discriminator in one state, one jitted step.

The task behind `config.task = "adversarial"` (Luc et al., "Semantic Segmentation using
Adversarial Networks", 2016; Hung et al.'s per-pixel discriminator, 2018):

- state: one `TrainState` whose `params` are `{"segmentor": ..., "discriminator": ...}`
  (BatchNorm statistics: `{"segmentor": ...}`; the discriminators have none), and whose
  `opt_state` is that of one `optax.multi_transform`: `config.optimizer` for the
  segmentor, `config.adversarial.optimizer` / `learning_rate` / `weight_decay` (same
  schedule shape and warmup) for the discriminator.
- model: `config.model` as in the semantic task; the discriminator
  `config.adversarial.discriminator` (`segjax/models/discriminators.py`): `"labels"`,
  `"basic"`, `"product"` (Luc's variants, one logit per image) or `"fcn"` (Hung's,
  one logit per pixel).
- loss, with `p` the segmentor's class probabilities, `y` the ground truth encoded as
  a label map (`"onehot"`, or Luc's `"scaling"`), `x` the image, `D` the discriminator,
  `sg` stop_gradient, `bce` binary cross-entropy on logits:

      segmentor:      L_S = config.loss(logits, label) + adv_weight * bce(D_sg(p, x), 1)
      discriminator:  L_D = (bce(D(y, x), 1) + bce(D(sg(p), x), 0)) / 2
      total = L_S + L_D

  where `D_sg` is `D` with its parameters under stop_gradient. So the gradient of
  `total` with respect to the segmentor is that of `L_S` and with respect to the
  discriminator that of `L_D`: one `value_and_grad` through the shared guarded step
  (`base.make_train_step`) updates both networks at once, each by its own loss, each
  with its own optimizer (a simultaneous rather than alternating update: both
  gradients are taken at the same parameters). `adv_weight = 0` gives exactly the
  semantic task's step for the segmentor. `bce(., 1)` for the segmentor is the
  non-saturating form both papers use. Void pixels (`ignore_index`) are zero in both
  label maps, and left out of the per-pixel means of `"fcn"`.
- `"segan"` (Xue et al.'s SegAN): a critic of the image masked by each label-map
  channel, and instead of the two cross-entropies the multi-scale L1 distance `l1` of
  its features between the ground-truth-masked and the prediction-masked image:
  `L_S = config.loss + adv_weight * l1(C_sg; y, p)`, `L_C = -l1(C; y, sg(p))` (the
  critic maximises it); its weights are clipped to `critic_clip` after each update.
- semi-supervised (Hung et al.), with `unlabelled_batch_size > 0`: see `train_batches`
  and `config_block`; the unlabelled images add `unlabelled_adv_weight * bce(D_sg(p_u),
  1)` and `semi_weight *` cross-entropy against the segmentor's argmax where
  `sigmoid(D) > semi_threshold` (from `semi_start_step` on) to `L_S`.
- `"souly"` (Souly et al., "Semi and Weakly Supervised Semantic Segmentation Using
  Generative Adversarial Networks", ICCV 2017): the segmentor is the discriminator, with
  K + 1 outputs (the K classes and "fake"), and the second network is an image
  generator `G` (`ImageGenerator`, noise `z` drawn in the step); `params = {"segmentor",
  "generator"}`. With `l` the segmentor's K + 1 logits at a pixel, `-log(1 - p_fake) =
  lse(l) - lse(l[:K])` and `-log p_fake = lse(l) - l[K]`:

      segmentor: L_S = config.loss(l[:K], label)
                       + adv_weight * (mean_real -log(1 - p_fake) + mean_G -log p_fake(sg(G(z))))
      generator: L_G = mean_G -log(1 - p_fake(G(z))) under the segmentor's sg (non-saturating)

  the real pixels being those of the unlabelled images (`unlabelled_batch_size > 0`) or
  else of the labelled ones; `generated_batch_size` images a step. The segmentor's
  BatchNorm statistics of generated images are not kept. Its "fake" channel is dropped
  for evaluation and prediction, so `adv_weight = 0` trains it exactly as the semantic
  task's loss on its first K logits.
- batch, evaluation, report, pictures, `eval.py --images`: the semantic task's, applied
  to the segmentor (`AdversarialPair.__call__`); checkpoints hold both networks.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from segjax import losses, optim
from segjax.data import pipeline, unlabelled
from segjax.models.discriminators import (
    LABEL_MAP_VARIANTS,
    ConfidenceDiscriminator,
    ImageGenerator,
    LabelMapDiscriminator,
    SeganCritic,
    multiscale_l1,
)
from segjax.tasks import base, semantic

Array = jax.Array

DISCRIMINATORS = (*LABEL_MAP_VARIANTS, "fcn", "segan", "souly")
GT_ENCODINGS = ("onehot", "scaling")
NETWORKS = ("segmentor", "discriminator")


def config_block() -> ml_collections.ConfigDict:
    """The `config.adversarial` keys and their defaults."""
    c = ml_collections.ConfigDict()
    # "labels", "basic", "product": Luc et al.'s (one logit per image; "basic" and
    # "product" also see the image); "fcn": Hung et al.'s (one logit per pixel).
    c.discriminator = "basic"
    c.features = 64  # the discriminator's base width (the papers: 64)
    # Luc et al.'s discriminators see the maps and the image average-pooled by this
    # (the paper: the segmentor's output stride, 8); "fcn" sees them at full size.
    c.input_stride = 8
    c.adv_weight = 0.1  # lambda: weight of the adversarial term in the segmentor's loss
    # How the ground truth is shown to the discriminator: "onehot", or Luc et al.'s
    # "scaling" (the true class gets max(scaling_tau, p), the others share the rest in
    # proportion to p), which keeps it from telling maps apart by their one-hotness.
    c.gt_encoding = "onehot"
    c.scaling_tau = 0.9
    # The discriminator's optimizer: config.optimizer's schedule, warmup and clipping,
    # with this optimizer name, peak learning rate and weight decay.
    c.optimizer = "adamw"
    c.learning_rate = 1e-4
    c.weight_decay = 0.0
    # "segan": the critic's weights are clipped to [-critic_clip, critic_clip] after each
    # update (as SegAN, after WGAN); 0 = no clipping.
    c.critic_clip = 0.05
    # Semi-supervised training (Hung et al.): a random labelled_fraction of the training
    # split keeps its labels (drawn with split_seed), the rest is used without them, with
    # the images of unlabelled_list (a text file of image paths) if set. Each step adds
    # unlabelled_batch_size (global) unlabelled images (0: none, fully supervised).
    c.labelled_fraction = 1.0
    c.split_seed = 0
    c.unlabelled_list = ""
    c.unlabelled_batch_size = 0
    c.unlabelled_adv_weight = 0.001  # adversarial term on unlabelled images
    # The semi-supervised term: cross-entropy against the segmentor's own argmax where the
    # discriminator's confidence sigmoid(D) > semi_threshold, from step semi_start_step on.
    c.semi_weight = 0.1
    c.semi_threshold = 0.2
    c.semi_start_step = 0
    # "souly": the generator's noise size, and the images it generates each step (global;
    # 0: none, so only the real pixels' "not fake" term is added).
    c.noise_dim = 64
    c.generated_batch_size = 0
    return c


def is_souly(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` trains Souly et al.'s GAN classifier (a generator, K + 1 outputs)."""
    return config.adversarial.discriminator == "souly"


def second_network(config: ml_collections.ConfigDict) -> str:
    """The name of the segmentor's partner in the state: "discriminator" or "generator"."""
    return "generator" if is_souly(config) else "discriminator"


class AdversarialPair(nn.Module):
    """The two networks as one Linen module; applying it runs the segmentor only.

    Its variables are the task's: `{"params": {"segmentor": ..., "discriminator": ...},
    "batch_stats": {"segmentor": ...}}`, so evaluation, `eval.py --images` and export
    apply it like any segmentor.

    Attributes:
        segmentor: `__call__(image, *, train) -> {"logits": [B, H, W, K], ...}`.
        discriminator: `__call__(label_map [B, H, W, K], image [B, H, W, 3]) -> logits`
            (for `"souly"`: the generator, `__call__(z) -> images`).
        num_classes: 0, or K when the segmentor has K + 1 outputs (`"souly"`): its last,
            "fake", channel is dropped from what the pair returns.
    """

    segmentor: nn.Module
    discriminator: nn.Module
    num_classes: int = 0

    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """The segmentor's outputs for `image` [B, H, W, 3]."""
        outputs = self.segmentor(image, train=train)
        return drop_fake_class(outputs, self.num_classes) if self.num_classes else outputs


def drop_fake_class(outputs: dict, num_classes: int) -> dict:
    """`outputs` with every class axis (`logits`, `aux_logits`, `se_logits`,
    `deep_supervision`) cut to its first `num_classes` entries."""
    out = dict(outputs)
    for key in ("logits", "aux_logits", "se_logits"):
        if out.get(key) is not None:
            out[key] = out[key][..., :num_classes]
    if out.get("deep_supervision"):
        out["deep_supervision"] = [x[..., :num_classes] for x in out["deep_supervision"]]
    return out


def build_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
    """The discriminator named by `config.adversarial.discriminator`."""
    ac = config.adversarial
    dtype = base.compute_dtype(config)
    if ac.discriminator == "fcn":
        return ConfidenceDiscriminator(features=ac.features, dtype=dtype)
    if ac.discriminator == "segan":
        return SeganCritic(features=ac.features, dtype=dtype)
    if ac.discriminator == "souly":
        return ImageGenerator(
            size=tuple(config.input.crop_size),
            features=ac.features,
            mean=tuple(config.input.mean),
            std=tuple(config.input.std),
            dtype=dtype,
        )
    if ac.discriminator in LABEL_MAP_VARIANTS:
        return LabelMapDiscriminator(
            variant=ac.discriminator,
            features=ac.features,
            input_stride=ac.get("input_stride", 1),
            dtype=dtype,
        )
    raise ValueError(
        f"config.adversarial.discriminator={ac.discriminator!r}; expected one of "
        f"{list(DISCRIMINATORS)}"
    )


def encode_ground_truth(
    label: Array, probs: Array, *, ignore_index: int, encoding: str, tau: float = 0.9
) -> Array:
    """The ground truth as a label map float32 [B, H, W, K] (zero at void pixels).

    `label` int [B, H, W]; `probs` [B, H, W, K] the segmentor's probabilities (used by
    `"scaling"` only, under stop_gradient). `"onehot"`: one_hot(label). `"scaling"`
    (Luc et al. 3.2): with l the true class and s = probs, y_l = max(tau, s_l) and
    y_c = s_c (1 - y_l) / (1 - s_l) for c != l (a pixel where s_l = 1 stays one-hot).
    """
    num_classes = probs.shape[-1]
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    onehot = jax.nn.one_hot(jnp.where(valid, label, 0), num_classes, dtype=jnp.float32)
    if encoding == "onehot":
        encoded = onehot
    elif encoding == "scaling":
        s = jax.lax.stop_gradient(probs.astype(jnp.float32))
        s_true = jnp.sum(s * onehot, axis=-1, keepdims=True)
        y_true = jnp.maximum(tau, s_true)
        rest = 1.0 - s_true
        others = jnp.where(rest > 0, s * (1.0 - y_true) / jnp.where(rest > 0, rest, 1.0), 0.0)
        encoded = onehot * y_true + (1.0 - onehot) * others
    else:
        raise ValueError(f"ground-truth encoding {encoding!r}; expected one of {GT_ENCODINGS}")
    return encoded * valid[..., None]


def _bce_mean(logits: Array, target: float, mask: Array | None) -> Array:
    # Binary cross-entropy on logits against a constant target; per-pixel maps are
    # averaged over `mask` [B, H, W], per-image logits [B] over the batch.
    values = optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target))
    if values.ndim == 1 or mask is None:
        return jnp.mean(values)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)


def make_loss(
    segmentor: nn.Module,
    discriminator: nn.Module,
    loss_fn,
    config: ml_collections.ConfigDict,
):
    """The `Task.loss` of both networks (see the module docstring), over the global batch.

    `params` / `batch_stats` are the task's nested trees; `batch["image"]` float32
    [B, H, W, 3], `batch["label"]` int32 [B, H, W]. Terms: the segmentation terms
    (`main`, `aux`, ...), `adversarial` (unweighted), `discriminator` (L_D) and
    `disc_accuracy` (share of real and predicted maps, or pixels, it tells apart).
    """
    ac = config.adversarial
    ignore_index = config.dataset.ignore_index
    aux_weight, se_weight = config.loss.aux_weight, config.loss.se_weight
    with_unlabelled = uses_unlabelled(config)

    def unlabelled_terms(params, seg_stats, batch, rng):
        # Hung et al.'s terms on the unlabelled images: the adversarial one, and
        # cross-entropy against the segmentor's own argmax where D is confident.
        image, valid = batch["unlabelled_image"], batch["unlabelled_valid"]
        outputs, seg_stats = base.train_apply(segmentor, params["segmentor"], seg_stats, image, rng)
        logits = outputs["logits"].astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1)
        d = discriminator.apply(
            {"params": jax.lax.stop_gradient(params["discriminator"])},
            probs * valid[..., None],
            image,
        )
        terms = {"adversarial_unlabelled": _bce_mean(d, 1.0, valid)}
        if d.ndim == 1:  # one logit per image: no confidence map, no semi-supervised term
            terms["semi"] = jnp.zeros((), jnp.float32)
            return seg_stats, terms
        confident = (
            valid
            & (jax.nn.sigmoid(jax.lax.stop_gradient(d)) > ac.semi_threshold)
            & (batch["unlabelled_gate"][:, None, None] > 0)
        )
        pseudo = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, pseudo[..., None], axis=-1)[..., 0]
        count = jnp.sum(confident)
        terms["semi"] = jnp.sum(jnp.where(confident, nll, 0.0)) / jnp.maximum(count, 1)
        terms["semi_pixel_share"] = count / jnp.maximum(jnp.sum(valid), 1)
        return seg_stats, terms

    def segan_loss(disc_params, real, predicted, critic, seg_total, terms):
        # SegAN: the segmentor minimises the multi-scale L1 distance between the critic's
        # features of the ground-truth-masked and the prediction-masked image, the critic
        # maximises it (its loss: minus the distance).
        frozen = jax.lax.stop_gradient(disc_params)
        adversarial = multiscale_l1(critic(frozen, real), critic(frozen, predicted))
        critic_loss = -multiscale_l1(
            critic(disc_params, real), critic(disc_params, jax.lax.stop_gradient(predicted))
        )
        total = seg_total + ac.adv_weight * adversarial + critic_loss
        terms = {
            **{k: v for k, v in terms.items() if k != "total"},
            "adversarial": adversarial,
            "discriminator": critic_loss,
            "total": total,
        }
        return total, terms

    def loss(params, batch_stats, batch, rng):
        image, label = batch["image"], batch["label"]
        outputs, seg_stats = base.train_apply(
            segmentor, params["segmentor"], batch_stats["segmentor"], image, rng
        )
        seg_total, terms = losses.segmentation_loss(
            outputs, label, loss_fn, aux_weight=aux_weight, se_weight=se_weight
        )
        probs = jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)
        valid = (label != ignore_index) & (label >= 0) & (label < probs.shape[-1])
        predicted = probs * valid[..., None]
        real = encode_ground_truth(
            label, probs, ignore_index=ignore_index, encoding=ac.gt_encoding, tau=ac.scaling_tau
        )

        def discriminate(disc_params, label_map):
            return discriminator.apply({"params": disc_params}, label_map, image)

        disc_params = params["discriminator"]
        if isinstance(discriminator, SeganCritic):
            total, terms = segan_loss(disc_params, real, predicted, discriminate, seg_total, terms)
            return total, ({**batch_stats, "segmentor": seg_stats}, terms)
        d_real = discriminate(disc_params, real)
        d_fake = discriminate(disc_params, jax.lax.stop_gradient(predicted))
        disc_loss = 0.5 * (_bce_mean(d_real, 1.0, valid) + _bce_mean(d_fake, 0.0, valid))
        d_for_seg = discriminate(jax.lax.stop_gradient(disc_params), predicted)
        adversarial = _bce_mean(d_for_seg, 1.0, valid)
        total = seg_total + ac.adv_weight * adversarial + disc_loss
        semi_terms = {}
        if with_unlabelled:
            seg_stats, semi_terms = unlabelled_terms(
                params, seg_stats, batch, jax.random.fold_in(rng, 1)
            )
            total = (
                total
                + ac.unlabelled_adv_weight * semi_terms["adversarial_unlabelled"]
                + ac.semi_weight * semi_terms["semi"]
            )
        correct = 0.5 * ((d_real > 0).astype(jnp.float32) + (d_fake < 0).astype(jnp.float32))
        if correct.ndim > 1:
            accuracy = jnp.sum(jnp.where(valid, correct, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        else:
            accuracy = jnp.mean(correct)
        terms = {
            **{k: v for k, v in terms.items() if k != "total"},
            "adversarial": adversarial,
            "discriminator": disc_loss,
            "disc_accuracy": accuracy,
            **semi_terms,
            "total": total,
        }
        return total, ({**batch_stats, "segmentor": seg_stats}, terms)

    return loss


def souly_noise(rng: Array, config: ml_collections.ConfigDict) -> Array:
    """The generator's input of a step: float32 [generated_batch_size, noise_dim] ~ N(0, 1)."""
    ac = config.adversarial
    return jax.random.normal(rng, (ac.generated_batch_size, ac.noise_dim), jnp.float32)


def fake_class_nll(logits: Array) -> tuple[Array, Array]:
    """(-log(1 - p_fake), -log p_fake) per pixel [B, H, W] of K + 1 logits [B, H, W, K+1]."""
    logits = logits.astype(jnp.float32)
    lse_all = jax.nn.logsumexp(logits, axis=-1)
    return lse_all - jax.nn.logsumexp(logits[..., :-1], axis=-1), lse_all - logits[..., -1]


def make_souly_loss(segmentor: nn.Module, generator: nn.Module, loss_fn, config):
    """The `Task.loss` of Souly et al.'s GAN classifier (see the module docstring).

    Terms: the segmentation terms on the first K logits (`main`, `aux`, ...), `real`
    (mean -log(1 - p_fake) over the real pixels), `fake` (mean -log p_fake over the
    generated pixels), `adversarial` (= real + fake, weighted by `adv_weight` in L_S),
    `generator` (L_G) and `disc_accuracy` (share of real and generated pixels whose
    p_fake is on the right side of 1/2).
    """
    ac = config.adversarial
    k = config.dataset.num_classes
    ignore_index = config.dataset.ignore_index
    aux_weight, se_weight = config.loss.aux_weight, config.loss.se_weight
    with_unlabelled = uses_unlabelled(config)
    zero = jnp.zeros((), jnp.float32)

    def loss(params, batch_stats, batch, rng):
        image, label = batch["image"], batch["label"]
        seg_params = params["segmentor"]
        outputs, seg_stats = base.train_apply(
            segmentor, seg_params, batch_stats["segmentor"], image, rng
        )
        seg_total, terms = losses.segmentation_loss(
            drop_fake_class(outputs, k), label, loss_fn, aux_weight=aux_weight, se_weight=se_weight
        )
        real_logits = outputs["logits"]
        real_mask = (label != ignore_index) & (label >= 0) & (label < k)
        if with_unlabelled:
            unlabelled_outputs, seg_stats = base.train_apply(
                segmentor,
                seg_params,
                seg_stats,
                batch["unlabelled_image"],
                jax.random.fold_in(rng, 1),
            )
            real_logits, real_mask = unlabelled_outputs["logits"], batch["unlabelled_valid"]
        real_nll, real_as_fake = fake_class_nll(real_logits)
        real = _masked_mean(real_nll, real_mask)
        correct = jnp.sum(jnp.where(real_mask, real_as_fake > real_nll, 0.0))
        count = jnp.sum(real_mask).astype(jnp.float32)
        fake, gen_loss = zero, zero
        if ac.generated_batch_size:
            generated = generator.apply(
                {"params": params["generator"]}, souly_noise(jax.random.fold_in(rng, 2), config)
            )
            # The segmentor's BatchNorm statistics of generated images are not kept.
            d_rng = jax.random.fold_in(rng, 3)
            fake_outputs, _ = base.train_apply(
                segmentor, seg_params, seg_stats, jax.lax.stop_gradient(generated), d_rng
            )
            fake_not_fake, fake_nll = fake_class_nll(fake_outputs["logits"])
            fake = jnp.mean(fake_nll)
            frozen = jax.lax.stop_gradient(seg_params)
            fooled, _ = base.train_apply(segmentor, frozen, seg_stats, generated, d_rng)
            gen_loss = jnp.mean(fake_class_nll(fooled["logits"])[0])
            correct = correct + jnp.sum(fake_nll < fake_not_fake)
            count = count + fake_nll.size
        adversarial = real + fake
        total = seg_total + ac.adv_weight * adversarial + gen_loss
        terms = {
            **{key: v for key, v in terms.items() if key != "total"},
            "real": real,
            "fake": fake,
            "adversarial": adversarial,
            "generator": gen_loss,
            "disc_accuracy": correct / jnp.maximum(count, 1.0),
            "total": total,
        }
        return total, ({**batch_stats, "segmentor": seg_stats}, terms)

    return loss


def _masked_mean(values: Array, mask: Array) -> Array:
    # The mean of `values` [B, H, W] over `mask`; 0 when the mask is empty.
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)


def uses_unlabelled(config: ml_collections.ConfigDict) -> bool:
    """Whether the steps of `config` see unlabelled images (Hung et al.'s training)."""
    return config.adversarial.get("unlabelled_batch_size", 0) > 0


def train_batches(config: ml_collections.ConfigDict, source, per_process_batch: int, seed: int):
    """The training stream: labelled batches, plus unlabelled ones when `uses_unlabelled`.

    With `labelled_fraction < 1` only that share of `source` is read with labels
    (`unlabelled.split_labelled`); the rest, and the images of `unlabelled_list`, form
    the unlabelled stream (`unlabelled_batch_size` global images per step, its own
    shuffle seed `seed + 1`).
    """
    ac = config.adversarial
    labelled, withheld = unlabelled.split_labelled(source, ac.labelled_fraction, ac.split_seed)
    if not uses_unlabelled(config):
        return pipeline.train_loader(
            config, labelled, per_process_batch=per_process_batch, seed=seed
        )
    sources = [withheld]
    if ac.unlabelled_list:
        sources.append(unlabelled.ImageFiles(ac.unlabelled_list))
    pool = unlabelled.Concatenated(sources)
    if not len(pool):
        raise ValueError(
            f"config.adversarial.unlabelled_batch_size={ac.unlabelled_batch_size} but there "
            "are no unlabelled images: set config.adversarial.labelled_fraction < 1 or "
            "config.adversarial.unlabelled_list"
        )
    per_process_unlabelled = ac.unlabelled_batch_size // jax.process_count()
    return unlabelled.MixedBatches(
        pipeline.train_loader(config, labelled, per_process_batch=per_process_batch, seed=seed),
        pipeline.train_loader(
            config,
            pool,
            per_process_batch=per_process_unlabelled,
            seed=seed + 1,
            extra_operations=[unlabelled.ToUnlabelled(config.dataset.ignore_index)],
        ),
        gate_start=ac.semi_start_step,
    )


def discriminator_optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with `config.optimizer` set to the discriminator's optimizer."""
    ac = config.adversarial
    disc = config.copy_and_resolve_references()
    with disc.unlocked():
        disc.optimizer.name = ac.optimizer
        disc.optimizer.learning_rate = ac.learning_rate
        disc.optimizer.weight_decay = ac.weight_decay
        disc.optimizer.end_learning_rate = min(disc.optimizer.end_learning_rate, ac.learning_rate)
    return disc


def clip_params(limit: float) -> optax.GradientTransformation:
    """An optax transformation whose updates keep every parameter in [-limit, limit]."""

    def update(updates, state, params):
        clipped = jax.tree.map(lambda p, u: jnp.clip(p + u, -limit, limit) - p, params, updates)
        return clipped, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def network_labels(params: dict) -> dict:
    """The `multi_transform` label of every parameter leaf: the network it belongs to."""
    return {name: jax.tree.map(lambda _, name=name: name, tree) for name, tree in params.items()}


def make_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """One `multi_transform` over both networks; the segmentor's schedule (for the logs)."""
    seg_tx, schedule = optim.make_optimizer(config, config.train.steps)
    disc_tx, _ = optim.make_optimizer(discriminator_optimizer_config(config), config.train.steps)
    clip = config.adversarial.get("critic_clip", 0.0)
    if config.adversarial.discriminator == "segan" and clip > 0:
        disc_tx = optax.chain(disc_tx, clip_params(clip))
    return optax.multi_transform(
        {"segmentor": seg_tx, second_network(config): disc_tx}, network_labels
    ), schedule


def init_variables(
    segmentor: nn.Module,
    discriminator: nn.Module,
    rng: Array,
    image_shape: tuple[int, ...],
    k,
    *,
    noise_dim: int = 0,
) -> base.Variables:
    """Fresh variables of both networks. The segmentor's are those the semantic task
    draws from the same key; the discriminator's come from `fold_in(rng, 1)`. With
    `noise_dim > 0` the second network is Souly et al.'s generator (`"generator"`)."""
    seg = semantic.init_variables(segmentor, rng, image_shape)
    if noise_dim:
        z = jnp.zeros((1, noise_dim), jnp.float32)
        second = {"generator": discriminator.init(jax.random.fold_in(rng, 1), z)["params"]}
    else:
        maps = jnp.zeros((*image_shape[:3], k), jnp.float32)
        disc = discriminator.init(jax.random.fold_in(rng, 1), maps, jnp.zeros(image_shape))
        second = {"discriminator": disc["params"]}
    return {
        "params": {"segmentor": seg["params"], **second},
        "batch_stats": {"segmentor": seg.get("batch_stats", {})},
    }


def build(config: ml_collections.ConfigDict, mesh=None) -> base.Task:
    """The adversarial task of `config` (evaluation sharded over `mesh`)."""
    souly = is_souly(config)
    num_classes = config.dataset.num_classes
    if souly:  # the segmentor is the discriminator too: K classes + "fake"
        with_fake = config.copy_and_resolve_references()
        with with_fake.unlocked():
            with_fake.dataset.num_classes = num_classes + 1
        segmentor = semantic.build_model(with_fake)
    else:
        segmentor = semantic.build_model(config)
    discriminator = build_discriminator(config)
    pair = AdversarialPair(
        segmentor=segmentor, discriminator=discriminator, num_classes=num_classes if souly else 0
    )
    plain = semantic.build(config, mesh, model=pair)
    tx, schedule = make_optimizer(config)
    loss_fn = losses.build_loss(
        config.loss.name,
        ignore_index=config.dataset.ignore_index,
        options=losses.loss_options(config),
    )
    describe = plain.describe
    h, w = config.input.crop_size
    ub = config.adversarial.unlabelled_batch_size if uses_unlabelled(config) else 0

    def batch_spec(batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        spec = plain.batch_spec(batch_size)
        if ub:
            # The unlabelled batch's share of this batch (batch_size is global or per process).
            u = ub * batch_size // config.input.batch_size
            spec["unlabelled_image"] = jax.ShapeDtypeStruct(
                (u, h, w, base.in_channels(config)), jnp.float32
            )
            spec["unlabelled_valid"] = jax.ShapeDtypeStruct((u, h, w), jnp.bool_)
            spec["unlabelled_gate"] = jax.ShapeDtypeStruct((u,), jnp.float32)
        return spec

    def example_batch(batch_size: int, seed: int = 0) -> dict:
        batch = plain.example_batch(batch_size, seed)
        if ub:
            u = ub * batch_size // config.input.batch_size
            rng = np.random.default_rng([seed, 1])
            batch["unlabelled_image"] = rng.standard_normal(
                (u, h, w, base.in_channels(config)), dtype=np.float32
            )
            batch["unlabelled_valid"] = np.ones((u, h, w), bool)
            batch["unlabelled_gate"] = np.ones((u,), np.float32)
        return batch

    return dataclasses.replace(
        plain,
        name="adversarial",
        tx=tx,
        schedule=schedule,
        init_variables=lambda rng, batch: init_variables(
            segmentor,
            discriminator,
            rng,
            batch["image"].shape,
            num_classes,
            noise_dim=config.adversarial.noise_dim if souly else 0,
        ),
        loss=(make_souly_loss if souly else make_loss)(segmentor, discriminator, loss_fn, config),
        batch_spec=batch_spec,
        example_batch=example_batch,
        train_batches=lambda source, per_process_batch, seed: train_batches(
            config, source, per_process_batch, seed
        ),
        describe=lambda: {**describe(), "discriminator": config.adversarial.discriminator},
    )
