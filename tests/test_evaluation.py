"""Evaluator: every image scored exactly once at original size, one compilation."""

import jax
import jax.numpy as jnp
import numpy as np

from segjax import metrics, sharding, train_lib
from segjax.data import eval_pipeline


def _records(num, sizes, num_classes, seed=0):
    # Records as tfds stores them: uint8 image, label [H, W, 1] with some void pixels.
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        h, w = sizes[i % len(sizes)]
        label = rng.integers(0, num_classes, (h, w, 1)).astype(np.uint8)
        label[0, :] = 255
        out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": label})
    return out


def _config(tiny_config):
    config = tiny_config.copy_and_resolve_references()
    config.model.name = "pixel_mlp"
    config.model.output_stride = None
    return config


def test_every_image_scored_once_at_original_size_and_compiled_once(tiny_config):
    config = _config(tiny_config)
    mesh = sharding.make_mesh()  # 8 devices; batch 8; 11 images -> 2 batches, 5 padding
    run = train_lib.setup(config, mesh)
    config = run.config  # resolved: the dataset's band count and statistics
    state = run.new_state(jax.random.key(0))
    k, ignore = config.dataset.num_classes, config.dataset.ignore_index
    records = _records(11, [(64, 64), (40, 52)], k)
    per_process = sharding.local_batch_size(config.input.eval_batch_size, mesh)

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    evaluator = run.evaluator
    cm = evaluator.accumulate(
        state, eval_pipeline.eval_batches(config, records, per_process_batch=per_process)
    )
    assert evaluator.last_pass["images"] == 11 and evaluator.last_pass["batches"] == 2

    # Reference: each image alone at its own size, numpy confusion matrix.
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    ref = np.zeros((k, k), np.int64)
    mean, std = np.asarray(config.input.mean), np.asarray(config.input.std)
    for r in records:
        image = ((r["image"] - mean) / std).astype(np.float32)[None]
        logits = run.model.apply(variables, jnp.asarray(image), train=False)["logits"]
        pred = np.asarray(logits.argmax(-1))[0]
        label = r["label"][..., 0].astype(np.int64)
        keep = label != ignore
        ref += np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    np.testing.assert_array_equal(cm, ref)
    assert cm.sum() == sum(int((r["label"] != ignore).sum()) for r in records)

    # A second evaluation of other data with other padding compiles nothing.
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        more = _records(5, [(33, 64)], k, seed=1)
        cm2 = evaluator.accumulate(
            state, eval_pipeline.eval_batches(config, more, per_process_batch=per_process)
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert cm2.sum() == sum(int((r["label"] != ignore).sum()) for r in more)
    assert set(evaluator._compiled) == {"eval_step"}
    assert evaluator.memory["eval_step"]["peak_estimate_bytes"] > 0


def test_resized_evaluation_scores_labels_at_original_size(tiny_config):
    # Images resized to fit 32x32 for the model; labels never resized. A perfect
    # predictor is not available, so check the counts: all original pixels, once each.
    config = _config(tiny_config)
    config.eval.resize = (32, 32)
    config.eval.flip = True
    mesh = sharding.make_mesh(jax.devices()[:4])
    config.input.eval_batch_size = 4
    run = train_lib.setup(config, mesh)
    config = run.config  # resolved: the dataset's band count and statistics
    state = run.new_state(jax.random.key(0))
    k = config.dataset.num_classes
    records = _records(5, [(64, 48), (20, 60)], k)
    batches = list(eval_pipeline.eval_batches(config, records, per_process_batch=4))
    assert batches[0]["image"].shape == (4, 64, 64, 3)  # model canvas: eval_pad_size
    assert batches[0]["label"].shape == (4, 64, 64)  # labels: original size, padded
    np.testing.assert_array_equal(batches[0]["resized_hw"][:2], [[32, 24], [11, 32]])
    np.testing.assert_array_equal(batches[0]["original_hw"][:2], [[64, 48], [20, 60]])
    np.testing.assert_array_equal(batches[0]["label"][1, :20, :60], records[1]["label"][..., 0])
    cm = run.evaluator.accumulate(state, batches)
    assert cm.sum() == sum(int((r["label"] != 255).sum()) for r in records)
    scores = metrics.segmentation_scores(cm)
    assert 0.0 <= scores["pixel_accuracy"] <= 1.0
