"""Training from a converted file: `--config.model.pretrained` in the shared loop."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest

from segjax import sharding, train_lib
from segjax.checkpoint import Checkpointer
from segjax.models import build_model
from segjax.weights import PretrainedError, save_pretrained
from segjax.weights.convert import abstract_variables

META = {"source": "test", "name": "random", "file": "random.pth", "model": "", "scope": "backbone"}


def _random_tree(tree, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.1, tree)


def _frozen(config, workdir: str, **model):
    # One step at learning rate 0: the checkpoint's parameters are the initial ones.
    config = config.copy_and_resolve_references()
    config.train.steps = config.train.eval_every = config.train.checkpoint_every = 1
    config.optimizer.learning_rate = 0.0
    config.optimizer.warmup_steps = 0
    for key, value in model.items():
        config.model[key] = value
    return config, workdir


def test_backbone_from_a_file_the_rest_initialised(tiny_config, tmp_path, caplog):
    mesh = sharding.make_mesh(jax.devices()[:1])
    model = build_model(tiny_config.model.name, num_classes=tiny_config.dataset.num_classes)
    shapes = abstract_variables(model)
    backbone = {k: {"backbone": _random_tree(v["backbone"], 1)} for k, v in shapes.items()}
    path = str(tmp_path / "backbone.msgpack")
    save_pretrained(path, backbone, {**META, "model_kwargs": "{}"})

    config, workdir = _frozen(tiny_config, str(tmp_path / "tuned"), pretrained=path)
    # The absl logger's own level: absl's flag parsing (an earlier test running an entry
    # point) sets it to WARNING, above the root level that a plain at_level would set.
    with caplog.at_level(logging.INFO, logger="absl"):
        train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert "tensors from the file" in caplog.text
    run = train_lib.setup(config, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    loaded = jax.device_get(ckpt.restore(1, run.abstract_state).params)
    ckpt.close()
    # The loop's own initialisation (its rng: the first half of the seed's split).
    fresh = jax.device_get(run.new_state(jax.random.split(jax.random.key(config.seed))[0]).params)
    jax.tree.map(np.testing.assert_array_equal, loaded["backbone"], backbone["params"]["backbone"])
    for part in ("neck", "head"):
        jax.tree.map(np.testing.assert_array_equal, loaded[part], fresh[part])
    assert not np.array_equal(
        fresh["backbone"]["stem_conv1"]["conv"]["kernel"],
        loaded["backbone"]["stem_conv1"]["conv"]["kernel"],
    )


def test_a_file_that_does_not_fit_writes_nothing(tiny_config, tmp_path):
    mesh = sharding.make_mesh(jax.devices()[:1])
    other = abstract_variables(build_model("deeplabv3plus_mobilenetv2_tiny", num_classes=6))
    path = str(tmp_path / "mobilenet.msgpack")
    save_pretrained(
        path,
        {k: {"backbone": _random_tree(v["backbone"], 2)} for k, v in other.items()},
        {**META, "model_kwargs": "{}"},
    )
    config, workdir = _frozen(tiny_config, str(tmp_path / "run"), pretrained=path)
    with pytest.raises(PretrainedError, match=r"mobilenet\.msgpack.*does not fit the model"):
        train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert not os.path.exists(workdir)
    config.model.pretrained = str(tmp_path / "missing.msgpack")
    with pytest.raises(ValueError, match="no such pretrained file"):
        train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    assert not os.path.exists(workdir)
