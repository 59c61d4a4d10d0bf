"""Tests of the synthetic ``segjax_shapes`` dataset (``tiny`` config, prepared once)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segjax.data.builders import segjax_shapes as ss

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tiny"


def _no_network(*args, **kwargs):
    raise AssertionError("segjax_shapes tried to open a network connection")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[str, str]:
    """Two independent preparations of the tiny config (network forbidden)."""
    dirs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        for name in ("a", "b"):
            data_dir = str(tmp_path_factory.mktemp(name))
            ss.prepare(data_dir, CONFIG)
            dirs.append(data_dir)
    return dirs[0], dirs[1]


def _source(data_dir: str, split: str):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(ss.dataset_dir(data_dir, CONFIG)).as_data_source(split)


def _cfg() -> ss.SegjaxShapesConfig:
    return next(c for c in ss.SegjaxShapes.BUILDER_CONFIGS if c.name == CONFIG)


def _split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    src = _source(data_dir, split)
    records = [src[i] for i in range(len(src))]
    images = np.stack([r["image"] for r in records])
    labels = np.stack([r["label"][..., 0] for r in records])
    return images, labels


def test_constants_consistent():
    assert len(ss.CLASS_NAMES) == ss.NUM_CLASSES == len(ss.PALETTE)
    assert 5 <= ss.NUM_CLASSES <= 8
    assert ss.CLASS_NAMES[0] == "background"
    assert len(set(ss.PALETTE)) == ss.NUM_CLASSES
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ss.PALETTE)


def test_render_sample_deterministic_and_typed():
    a = ss.render_sample(np.random.default_rng([3, 0, 5]), 48)
    b = ss.render_sample(np.random.default_rng([3, 0, 5]), 48)
    c = ss.render_sample(np.random.default_rng([3, 0, 6]), 48)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    image, label = a
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert label.shape == (48, 48) and label.dtype == np.uint8
    assert label.max() < ss.NUM_CLASSES


def test_records_match_render_and_copies_identical(prepared):
    a_dir, b_dir = prepared
    cfg = _cfg()
    size = cfg.image_size
    for split, n in (("train", cfg.num_train), ("validation", cfg.num_val)):
        a, b = _source(a_dir, split), _source(b_dir, split)
        assert len(a) == len(b) == n
        for i in (0, 5, n - 1):
            ra, rb = a[i], b[i]
            assert int(ra["id"]) == i
            image, label = ss.render_sample(
                np.random.default_rng([cfg.seed, ss.SPLIT_IDS[split], i]), size
            )
            assert ra["image"].shape == (size, size, 3) and ra["image"].dtype == np.uint8
            assert ra["label"].shape == (size, size, 1) and ra["label"].dtype == np.uint8
            np.testing.assert_array_equal(ra["image"], image)  # Lossless, RGB order kept.
            np.testing.assert_array_equal(ra["label"][..., 0], label)
            for key in ("image", "label"):
                np.testing.assert_array_equal(ra[key], rb[key])


def test_metadata_in_prepared_files(prepared):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(ss.dataset_dir(prepared[0], CONFIG))
    meta = builder.info.metadata
    assert meta["num_classes"] == ss.NUM_CLASSES
    assert list(meta["class_names"]) == list(ss.CLASS_NAMES)
    assert [tuple(c) for c in meta["palette"]] == list(ss.PALETTE)
    assert builder.info.file_format.value == "array_record"
    assert set(builder.info.splits) == {"train", "validation"}


def test_label_range_and_every_class_present(prepared):
    _, labels = _split(prepared[0], "train")
    assert labels.min() >= 0 and labels.max() < ss.NUM_CLASSES
    counts = np.bincount(labels.ravel(), minlength=ss.NUM_CLASSES)
    assert (counts > 0).all(), counts
    # No class is vanishingly rare: every object class has >= 2% of the pixels.
    assert (counts[1:] / counts.sum() > 0.02).all(), counts


def _colour_bayes_miou(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> float:
    """mIoU on test of the best per-pixel colour classifier fitted on train.

    Colours are quantised to 8x8x8 bins; each bin predicts its most frequent train
    class, which is the Bayes-optimal per-pixel colour classifier at that resolution.
    """
    n = ss.NUM_CLASSES

    def bins(images):
        q = images.astype(np.int64) // 32
        return (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel()

    table = np.zeros((512, n), np.int64)
    np.add.at(table, (bins(train_images), train_labels.ravel()), 1)
    pred = table.argmax(-1)[bins(test_images)]
    conf = np.bincount(test_labels.ravel() * n + pred, minlength=n * n).reshape(n, n)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_colour_is_not_predictive_of_class(prepared):
    train_images, train_labels = _split(prepared[0], "train")
    val_images, val_labels = _split(prepared[0], "validation")
    miou = _colour_bayes_miou(train_images, train_labels, val_images, val_labels)
    assert miou < 0.3, miou

    # Control: the same classifier on a colour-coded variant of the same labels
    # (class = colour) is near perfect, so the bound above is not vacuous.
    rng = np.random.default_rng(0)
    palette = np.array(ss.PALETTE, np.float64)

    def coded(labels):
        noisy = palette[labels] + rng.normal(0.0, 4.0, (*labels.shape, 3))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    control = _colour_bayes_miou(coded(train_labels), train_labels, coded(val_labels), val_labels)
    assert control > 0.9, control

    # Mean colour of each class is close to the overall mean colour.
    overall = train_images.reshape(-1, 3).mean(0)
    for k in range(ss.NUM_CLASSES):
        mean_k = train_images[train_labels == k].mean(0)
        assert np.abs(mean_k - overall).max() < 40.0, (k, mean_k, overall)


_NO_TF_READER = textwrap.dedent(
    """
    import importlib.util, json, sys

    class _HideTF:
        # Wraps a meta-path finder so that TensorFlow looks NOT INSTALLED.
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return None
            return self.inner.find_spec(name, path, target)
        def invalidate_caches(self):
            self.inner.invalidate_caches()

    sys.meta_path[:] = [_HideTF(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
    assert importlib.util.find_spec("tensorflow") is None

    import tensorflow_datasets as tfds
    from segjax.data.builders import segjax_shapes

    data_dir, config = sys.argv[1], sys.argv[2]
    out = {}
    source = tfds.builder_from_directory(
        segjax_shapes.dataset_dir(data_dir, config)
    ).as_data_source("train")
    rec = source[3]
    out["len"] = len(source)
    out["id"] = int(rec["id"])
    out["image"] = [list(rec["image"].shape), str(rec["image"].dtype), int(rec["image"].sum())]
    out["label"] = [list(rec["label"].shape), str(rec["label"].dtype), int(rec["label"].sum())]
    # prepare() on an already prepared dir must also work without TF.
    builder = segjax_shapes.prepare(data_dir, config)
    out["val_len"] = len(builder.as_data_source("validation"))
    out["tf_modules"] = sorted(
        m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")
    )
    print("RESULT " + json.dumps(out))
    """
)


def test_read_without_tensorflow(prepared):
    """Reads a prepared split in a subprocess where TensorFlow cannot be imported.

    Note: ``sys.modules["tensorflow"] = None`` is not a usable way to hide TF from
    tfds 4.9: tfds/etils treat ``"tensorflow" in sys.modules`` as "TF is loaded"
    and crash on import. Hiding TF from the import system (as if not installed)
    is the faithful simulation.
    """
    data_dir = prepared[0]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TF_READER, data_dir, CONFIG],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    rec = _source(data_dir, "train")[3]
    cfg = _cfg()
    assert out["tf_modules"] == []
    assert out["len"] == cfg.num_train and out["val_len"] == cfg.num_val
    assert out["id"] == 3
    assert out["image"] == [list(rec["image"].shape), "uint8", int(rec["image"].sum())]
    assert out["label"] == [list(rec["label"].shape), "uint8", int(rec["label"].sum())]


def test_prepare_is_noop_when_prepared(prepared):
    path = Path(ss.dataset_dir(prepared[1], CONFIG))
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    builder = ss.prepare(prepared[1], CONFIG)
    assert builder.is_prepared()
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_half_prepared_dir_is_completed(tmp_path):
    data_dir = str(tmp_path)
    final = Path(ss.dataset_dir(data_dir, CONFIG))
    # What a killed run can leave: tfds' temporary dir, and (simulated) a final dir
    # with a truncated record file but no dataset_info.json / features.json.
    stale_tmp = final.parent / "incomplete.ABC123_1.0.0"
    stale_tmp.mkdir(parents=True)
    (stale_tmp / "segjax_shapes-train.array_record-00000-of-00001").write_bytes(b"x" * 10)
    final.mkdir(parents=True)
    (final / "segjax_shapes-train.array_record-00000-of-00001").write_bytes(b"partial")

    assert not ss.is_prepared(data_dir, CONFIG)
    assert not ss.SegjaxShapes(config=CONFIG, data_dir=data_dir).is_prepared()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        builder = ss.prepare(data_dir, CONFIG)
    assert ss.is_prepared(data_dir, CONFIG) and builder.is_prepared()
    cfg = _cfg()
    rec = builder.as_data_source("validation")[1]
    _, label = ss.render_sample(np.random.default_rng([cfg.seed, 1, 1]), cfg.image_size)
    np.testing.assert_array_equal(rec["label"][..., 0], label)
    assert len(builder.as_data_source("train")) == cfg.num_train


def test_two_runs_preparing_at_once_both_succeed(tmp_path):
    # Two `python train.py` started together on a fresh data dir: the second used to
    # fail renaming its copy onto the first's (FileExistsError); now it waits for the lock.
    script = textwrap.dedent(
        f"""
        import ml_collections
        from segjax.data import datasets
        config = ml_collections.ConfigDict(dict(name="segjax_shapes", config="{CONFIG}",
            data_dir={str(tmp_path)!r}, num_classes=6, manual_dir=""))
        print(len(datasets.prepared_builder(config).as_data_source("train")))
        """
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            cwd=root,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-2000:]
        assert out.split()[-1] == str(_cfg().num_train)
