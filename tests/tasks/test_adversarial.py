"""The adversarial task: two networks in one state, one guarded step, exact resume.

The step tests use a per-pixel MLP segmentor on 32x32 crops (the step's maths does not
depend on the segmentor, and its compile is short); the end-to-end run (slow) uses
configs/adversarial_shapes.py:tiny with the default model.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segjax import sharding, tasks, train_lib
from segjax.models import discriminators
from segjax.tasks import adversarial
from tests.tasks.resume import check_exact_resume

IGNORE = 255


def _config(shapes_data_dir, **adversarial_keys):
    from configs import adversarial_shapes

    config = adversarial_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
        config.model.name = "pixel_mlp"
        config.input.crop_size = (32, 32)
        config.input.batch_size = 4
        config.adversarial.features = 8
        config.optimizer.warmup_steps = 0
        for key, value in adversarial_keys.items():
            config.adversarial[key] = value
    return config


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, (h, w) = config.input.batch_size, config.input.crop_size
    label = rng.integers(0, config.dataset.num_classes, (b, h, w)).astype(np.int32)
    label[:, :2] = IGNORE
    return {"image": rng.normal(size=(b, h, w, 3)).astype(np.float32), "label": label}


@pytest.fixture(scope="module")
def luc(shapes_data_dir):
    """(config, run) of Luc et al.'s "basic" discriminator, adversarial weight 0.5."""
    config = _config(shapes_data_dir, adv_weight=0.5)
    return config, train_lib.setup(config, sharding.make_mesh(jax.devices()[:1]))


def _adam_mu(opt_state):
    # The first moment of the (first) Adam state found in an optax state.
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    return next(s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)).mu


def _step(run, state, batch, seed=1):
    return run.train_step(state, batch, jax.random.key(seed))


def test_scaling_encoding_equals_its_definition():
    # Luc et al. 3.2, written per pixel with Python loops.
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=(2, 3, 5)).astype(np.float32)
    label = rng.integers(0, 4, (2, 3, 5)).astype(np.int32)
    label[0, 0, 0] = IGNORE
    probs[1, 2, 4] = [0.0, 1.0, 0.0, 0.0]
    label[1, 2, 4] = 1  # s_l = 1: stays one-hot
    tau = 0.8
    expected = np.zeros_like(probs)
    for idx in np.ndindex(label.shape):
        true = label[idx]
        if true == IGNORE:
            continue
        s = probs[idx]
        y_true = max(tau, s[true])
        for c in range(4):
            if c == true:
                expected[(*idx, c)] = y_true
            elif s[true] < 1:
                expected[(*idx, c)] = s[c] * (1 - y_true) / (1 - s[true])
    got = adversarial.encode_ground_truth(
        jnp.asarray(label), jnp.asarray(probs), ignore_index=IGNORE, encoding="scaling", tau=tau
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(-1)[label != IGNORE], 1.0, rtol=1e-5)
    onehot = adversarial.encode_ground_truth(
        jnp.asarray(label), jnp.asarray(probs), ignore_index=IGNORE, encoding="onehot"
    )
    assert float(onehot[0, 0, 0].sum()) == 0.0  # void: zero
    assert float(onehot[1, 2, 4, 1]) == 1.0


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_product_discriminator_sees_label_times_colour():
    # "product": the first conv's input is label_map[..., k] * image[..., c], k-major.
    disc = discriminators.LabelMapDiscriminator(variant="product", features=4)
    label_map = jax.random.uniform(jax.random.key(0), (1, 16, 16, 2))
    image = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    variables = jax.jit(disc.init)(jax.random.key(2), label_map, image)
    kernel = variables["params"]["product_conv"]["kernel"]
    assert kernel.shape == (5, 5, 6, 4)
    conv = discriminators.Conv2D(4, 5, use_bias=True)

    @jax.jit
    def first_layer(variables, label_map, image):
        _, inter = disc.apply(
            variables, label_map, image, capture_intermediates=True, mutable=["intermediates"]
        )
        products = jnp.concatenate([label_map[..., k : k + 1] * image for k in range(2)], -1)
        expected = conv.apply({"params": variables["params"]["product_conv"]}, products)
        return inter["intermediates"]["product_conv"]["__call__"][0], expected

    got, expected = first_layer(variables, label_map, image)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert jax.eval_shape(disc.apply, variables, label_map, image).shape == (1,)
    fcn = discriminators.ConfidenceDiscriminator(features=4)
    big = jnp.zeros((1, 32, 40, 2))
    fcn_vars = jax.eval_shape(fcn.init, jax.random.key(0), big)
    assert jax.eval_shape(fcn.apply, fcn_vars, big).shape == (1, 32, 40)
    with pytest.raises(ValueError, match="at least 32x32"):
        jax.eval_shape(fcn.init, jax.random.key(0), label_map)


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_state_holds_both_networks_and_one_partitioned_optimizer(luc):
    _, run = luc
    state = run.new_state(jax.random.key(0))
    assert set(state.params) == {"segmentor", "discriminator"}
    assert set(state.batch_stats) == {"segmentor"}
    inner = state.opt_state.inner_states
    assert set(inner) == {"segmentor", "discriminator"}
    # The evaluation's model is the segmentor: applying the pair with the task's
    # variables gives the segmentor's logits.
    image = jnp.asarray(_batch(luc[0])["image"])
    seg_vars = {"params": state.params["segmentor"], "batch_stats": state.batch_stats["segmentor"]}
    np.testing.assert_array_equal(
        run.task.model.apply(tasks.base.variables(state), image, train=False)["logits"],
        run.task.model.segmentor.apply(seg_vars, image, train=False)["logits"],
    )


def test_critic_clipping_keeps_parameters_in_range():
    tx = adversarial.clip_params(0.05)
    params = {"a": jnp.array([0.04, -0.04, 0.0, 0.3])}
    updates = {"a": jnp.array([0.03, -0.03, 0.01, -0.1])}
    clipped, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_allclose(params["a"] + clipped["a"], [0.05, -0.05, 0.01, 0.05], atol=1e-7)


@pytest.mark.slow  # compiles; `pytest -m slow`
@pytest.mark.parametrize("disc", ["basic", "segan"])
def test_each_network_gets_the_gradient_of_its_own_loss_only(shapes_data_dir, disc):
    config = _config(shapes_data_dir, adv_weight=0.5, discriminator=disc)
    run = train_lib.setup(config, sharding.make_mesh(jax.devices()[:1]))
    state = run.new_state(jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(config).items()}
    rng = jax.random.key(3)

    def both_losses(params):  # [L_S, L_D]; total = L_S + L_D
        _, (_, terms) = run.task.loss(params, state.batch_stats, batch, rng)
        return jnp.stack([terms["total"] - terms["discriminator"], terms["discriminator"]])

    # One reverse pass per row: the gradients of L_S and of L_D, for every parameter.
    jacobian = jax.jit(jax.jacrev(both_losses))(state.params)
    grads_s = jax.tree.map(lambda j: j[0], jacobian)
    grads_d = jax.tree.map(lambda j: j[1], jacobian)
    zero = lambda tree: all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))
    # So the gradient of the total is, for each network, that of its own loss alone.
    assert zero(grads_s["discriminator"]) and zero(grads_d["segmentor"])
    assert not zero(grads_s["segmentor"]) and not zero(grads_d["discriminator"])
    # And the partitioned optimizer sends each network's gradient to its own optimizer:
    # a gradient of the discriminator alone leaves the segmentor's Adam moments at 0.
    only_d = {**grads_d, "segmentor": jax.tree.map(jnp.zeros_like, grads_d["segmentor"])}
    _, opt_state = jax.jit(run.task.tx.update)(only_d, state.opt_state, state.params)
    assert zero(_adam_mu(opt_state.inner_states["segmentor"])["segmentor"])
    assert not zero(_adam_mu(opt_state.inner_states["discriminator"])["discriminator"])


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_zero_adversarial_weight_is_the_semantic_step(shapes_data_dir):
    config = _config(shapes_data_dir, adv_weight=0.0)
    plain = config.copy_and_resolve_references()
    plain.task = "semantic"
    mesh = sharding.make_mesh(jax.devices()[:1])
    adv_run, sem_run = train_lib.setup(config, mesh), train_lib.setup(plain, mesh)
    adv, sem = adv_run.new_state(jax.random.key(0)), sem_run.new_state(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, adv.params["segmentor"], sem.params)
    for seed in range(2):
        batch = sharding.shard_batch(_batch(config, seed), mesh)
        adv, adv_metrics = _step(adv_run, adv, batch)
        sem, sem_metrics = _step(sem_run, sem, batch)
        np.testing.assert_allclose(adv_metrics["loss/main"], sem_metrics["loss"], rtol=1e-6)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    jax.tree.map(close, adv.params["segmentor"], sem.params)
    jax.tree.map(close, adv.batch_stats["segmentor"], sem.batch_stats)
    jax.tree.map(
        close,
        _adam_mu(adv.opt_state.inner_states["segmentor"])["segmentor"],
        _adam_mu(sem.opt_state),
    )


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_nonfinite_step_changes_neither_network(luc):
    config, run = luc
    mesh = sharding.make_mesh(jax.devices()[:1])
    good = _batch(config)
    state, _ = _step(run, run.new_state(jax.random.key(0)), sharding.shard_batch(good, mesh))
    before = jax.device_get(state)
    bad = dict(good, image=np.full_like(good["image"], np.nan))
    state, metrics = _step(run, state, sharding.shard_batch(bad, mesh))
    after = jax.device_get(state)
    assert not np.isfinite(metrics["loss"])
    assert int(after.step) == 2 and int(after.nonfinite_total) == 1
    jax.tree.map(
        np.testing.assert_array_equal,
        (before.params, before.batch_stats, before.opt_state),
        (after.params, after.batch_stats, after.opt_state),
    )
    state, metrics = _step(run, state, sharding.shard_batch(good, mesh))
    assert int(state.nonfinite_in_a_row) == 0 and np.isfinite(metrics["loss"])
    moved = jax.device_get(state.params)
    for name in adversarial.NETWORKS:  # both networks learn from a good step
        assert any(
            np.any(a != b)
            for a, b in zip(
                jax.tree.leaves(moved[name]), jax.tree.leaves(after.params[name]), strict=True
            )
        )


@pytest.mark.slow  # runs the training loop twice; `pytest -m slow`
def test_train_resume_exactly_and_evaluate(shapes_data_dir, tmp_path):
    from configs import adversarial_shapes

    config = adversarial_shapes.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    mesh = sharding.make_mesh(jax.devices()[:2])
    final, state = check_exact_resume(config, str(tmp_path / "run"), mesh)
    assert 0.0 <= final["miou"] <= 1.0
    assert set(state.params) == {"segmentor", "discriminator"}


def _semi_config(shapes_data_dir, arg="tiny"):
    from configs import adversarial_semi_shapes

    config = adversarial_semi_shapes.get_config(arg)
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    return config


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_semi_supervised_terms_equal_their_definition(shapes_data_dir):
    config = _semi_config(shapes_data_dir)
    with config.unlocked():
        config.model.name = "pixel_mlp"
        config.adversarial.features = 4
        config.adversarial.semi_threshold = 0.5
    task = tasks.build_task(config)
    state = jax.jit(lambda key: tasks.base.init_train_state(task, key))(jax.random.key(0))
    batch = task.example_batch(4, 0)
    batch["unlabelled_valid"][0, :10] = False
    batch["unlabelled_gate"][1] = 0.0  # image 1: before the semi-supervised start
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    _, (_, terms) = jax.jit(task.loss)(state.params, state.batch_stats, batch, jax.random.key(1))

    pair = task.model

    @jax.jit
    def forward(params, batch_stats):
        outputs, _ = tasks.base.train_apply(
            pair.segmentor,
            params["segmentor"],
            batch_stats["segmentor"],
            batch["unlabelled_image"],
            jax.random.key(0),
        )
        probs = jax.nn.softmax(outputs["logits"], -1) * batch["unlabelled_valid"][..., None]
        d = pair.discriminator.apply({"params": params["discriminator"]}, probs)
        return outputs["logits"], d

    logits, d = (np.asarray(x, np.float64) for x in forward(state.params, state.batch_stats))
    valid = np.asarray(batch["unlabelled_valid"])
    gate = np.asarray(batch["unlabelled_gate"])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    adv, semi, n_adv, n_semi = 0.0, 0.0, 0, 0
    for b, i, j in np.ndindex(valid.shape):
        if not valid[b, i, j]:
            continue
        adv += np.log1p(np.exp(-d[b, i, j]))  # bce(d, 1)
        n_adv += 1
        if gate[b] > 0 and 1 / (1 + np.exp(-d[b, i, j])) > 0.5:
            semi += -log_p[b, i, j].max()  # the argmax's own log-probability
            n_semi += 1
    assert 0 < n_semi < n_adv
    np.testing.assert_allclose(terms["adversarial_unlabelled"], adv / n_adv, rtol=1e-4)
    np.testing.assert_allclose(terms["semi"], semi / n_semi, rtol=1e-4)
    np.testing.assert_allclose(terms["semi_pixel_share"], n_semi / n_adv, rtol=1e-6)


@pytest.mark.slow  # runs the training loop twice; `pytest -m slow`
def test_semi_supervised_run_resumes_exactly(shapes_data_dir, tmp_path):
    config = _semi_config(shapes_data_dir)
    workdir = str(tmp_path / "run")
    check_exact_resume(config, workdir, sharding.make_mesh(jax.devices()[:2]))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    semi = [m["loss/semi"] for m in logged if "loss/semi" in m]
    assert semi and all(np.isfinite(semi))


def _souly_config(shapes_data_dir, arg="tiny", **adversarial_keys):
    from configs import adversarial_souly_shapes

    config = adversarial_souly_shapes.get_config(arg)
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
        for key, value in adversarial_keys.items():
            config.adversarial[key] = value
    return config


def _small_souly(shapes_data_dir, adv_weight):
    # (config, task, fresh state, batch, rng): a per-pixel MLP segmentor on 32x32 crops,
    # 4 labelled + 4 unlabelled + 4 generated images, a 4-wide generator.
    config = _souly_config(shapes_data_dir, adv_weight=adv_weight, features=4, noise_dim=8)
    with config.unlocked():
        config.model.name = "pixel_mlp"
        config.input.crop_size = (32, 32)
        config.input.batch_size = 4
        config.adversarial.unlabelled_batch_size = 4
        config.adversarial.generated_batch_size = 4
    task = tasks.build_task(config)
    state = jax.jit(lambda key: tasks.base.init_train_state(task, key))(jax.random.key(0))
    batch = task.example_batch(4, 0)
    batch["label"][:, :3] = IGNORE
    batch["unlabelled_valid"][0, :10] = False
    batch = {key: jnp.asarray(v) for key, v in batch.items()}
    return config, task, state, batch, jax.random.key(1)


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_souly_terms_equal_their_definition_and_each_network_gets_its_own(shapes_data_dir):
    config, task, state, batch, rng = _small_souly(shapes_data_dir, 0.5)
    k = config.dataset.num_classes
    assert set(state.params) == {"segmentor", "generator"}
    _, (_, terms) = jax.jit(task.loss)(state.params, state.batch_stats, batch, rng)

    pair = task.model

    @jax.jit
    def forward(params, batch_stats):
        def seg(images):
            outputs, _ = tasks.base.train_apply(
                pair.segmentor, params["segmentor"], batch_stats["segmentor"], images, rng
            )
            return outputs["logits"]

        z = adversarial.souly_noise(jax.random.fold_in(rng, 2), config)
        generated = pair.discriminator.apply({"params": params["generator"]}, z)
        return seg(batch["unlabelled_image"]), seg(generated), generated

    real_logits, fake_logits, generated = (
        np.asarray(x, np.float64) for x in forward(state.params, state.batch_stats)
    )
    assert real_logits.shape[-1] == k + 1 and generated.shape == (4, 32, 32, 3)
    valid = np.asarray(batch["unlabelled_valid"])
    real, n_real, fake, gen, n_fake, correct = 0.0, 0, 0.0, 0.0, 0, 0
    for idx in np.ndindex(valid.shape):
        p = np.exp(real_logits[idx] - real_logits[idx].max())
        p_fake = p[k] / p.sum()
        if valid[idx]:
            real += -np.log(1 - p_fake)
            n_real += 1
            correct += p_fake < 0.5
        p = np.exp(fake_logits[idx] - fake_logits[idx].max())
        p_fake = p[k] / p.sum()
        fake += -np.log(p_fake)
        gen += -np.log(1 - p_fake)
        n_fake += 1
        correct += p_fake > 0.5
    np.testing.assert_allclose(terms["real"], real / n_real, rtol=1e-4)
    np.testing.assert_allclose(terms["fake"], fake / n_fake, rtol=1e-4)
    np.testing.assert_allclose(terms["generator"], gen / n_fake, rtol=1e-4)
    np.testing.assert_allclose(terms["disc_accuracy"], correct / (n_real + n_fake), rtol=1e-6)
    # Evaluation sees the K classes only.
    logits = pair.apply(tasks.base.variables(state), batch["image"], train=False)["logits"]
    assert logits.shape == (4, 32, 32, k)

    def both_losses(params):  # [L_S, L_G]; total = L_S + L_G
        _, (_, terms) = task.loss(params, state.batch_stats, batch, rng)
        return jnp.stack([terms["total"] - terms["generator"], terms["generator"]])

    jacobian = jax.jit(jax.jacrev(both_losses))(state.params)
    grads_s = jax.tree.map(lambda j: j[0], jacobian)
    grads_g = jax.tree.map(lambda j: j[1], jacobian)
    zero = lambda tree: all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))
    assert zero(grads_s["generator"]) and zero(grads_g["segmentor"])
    assert not zero(grads_s["segmentor"]) and not zero(grads_g["generator"])


@pytest.mark.slow  # compiles; `pytest -m slow`
def test_souly_with_zero_weight_is_cross_entropy_on_the_first_k_logits(shapes_data_dir):
    # adv_weight = 0: the segmentor's gradient is that of the plain loss on its K class
    # logits (its "fake" logit gets none), whatever the unlabelled and generated images.
    config, task, state, batch, rng = _small_souly(shapes_data_dir, 0.0)
    k = config.dataset.num_classes
    segmentor = task.model.segmentor

    def plain(seg_params):  # cross-entropy over the first K logits, mean over valid pixels
        outputs, _ = tasks.base.train_apply(
            segmentor, seg_params, state.batch_stats["segmentor"], batch["image"], rng
        )
        log_p = jax.nn.log_softmax(outputs["logits"][..., :k], axis=-1)
        label = batch["label"]
        valid = label != IGNORE
        nll = -jnp.take_along_axis(log_p, jnp.where(valid, label, 0)[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)

    def task_loss(params):
        return task.loss(params, state.batch_stats, batch, rng)[0]

    got = jax.jit(jax.grad(task_loss))(state.params)
    expected = jax.jit(jax.grad(plain))(state.params["segmentor"])
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    jax.tree.map(close, got["segmentor"], expected)
    # The "fake" channel of the classifier gets no gradient.
    last = [x for x in jax.tree.leaves(got["segmentor"]) if x.shape and x.shape[-1] == k + 1]
    assert last and all(not np.any(np.asarray(x)[..., k]) for x in last)


@pytest.mark.slow  # runs the training loop twice; `pytest -m slow`
def test_souly_run_resumes_exactly(shapes_data_dir, tmp_path):
    config = _souly_config(shapes_data_dir)
    _, state = check_exact_resume(
        config, str(tmp_path / "run"), sharding.make_mesh(jax.devices()[:2])
    )
    assert set(state.params) == {"segmentor", "generator"}
