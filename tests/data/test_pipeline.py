"""The training input pipeline and dataset lookup: sharding over hosts, exact resume,
worker processes, and what happens when a dataset is not prepared."""

from __future__ import annotations

import numpy as np
import pytest

from configs import default
from segjax.data import datasets, pipeline, prepare


class _IndexSource:
    """N records whose image value is the record index (so batches reveal their records)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {
            "image": np.full((8, 8, 3), i, np.uint8),
            "label": np.zeros((8, 8, 1), np.uint8),
        }


def _config(**input_overrides):
    config = default.get_config("tiny")
    with config.unlocked():
        config.input.crop_size = (8, 8)
        config.input.scale_range = (1.0, 1.0)
        config.input.mean = (0.0, 0.0, 0.0)
        config.input.std = (1.0, 1.0, 1.0)
        for k, v in input_overrides.items():
            config.input[k] = v
    return config


def _ids(batch) -> list[int]:
    return [round(float(v)) for v in batch["image"][:, 0, 0, 0]]


@pytest.mark.parametrize("num_records", [12, 13])
def test_two_hosts_get_disjoint_equal_shards(monkeypatch, num_records):
    from grain._src.core import sharding

    per_host = {}
    for host in range(2):
        monkeypatch.setattr(sharding, "get_process_index_and_count", lambda h=host: (h, 2))
        loader = pipeline.train_loader(
            _config(), _IndexSource(num_records), per_process_batch=2, seed=0
        )
        it = iter(loader)
        # One epoch of this host's shard (6 records = 3 batches), then the next epoch.
        epoch1 = [i for _ in range(3) for i in _ids(next(it))]
        epoch2 = [i for _ in range(3) for i in _ids(next(it))]
        assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2  # reshuffled
        per_host[host] = set(epoch1)
        assert len(epoch1) == len(set(epoch1)) == 6
    assert not per_host[0] & per_host[1]
    covered = per_host[0] | per_host[1]
    # Equal shards: an odd record out is dropped so that every host has as many batches.
    assert covered == set(range(12))


def test_resume_replays_the_same_batches(tiny_config):
    with tiny_config.unlocked():
        tiny_config.input.photometric = True
        tiny_config.input.cat_max_ratio = 0.75
    source = pipeline.load_split(tiny_config, "train")
    it = iter(pipeline.train_loader(tiny_config, source, per_process_batch=4, seed=1))
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(pipeline.train_loader(tiny_config, source, per_process_batch=4, seed=1))
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(2)], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = next(iter(pipeline.train_loader(tiny_config, source, per_process_batch=4, seed=2)))
    assert not np.array_equal(other["image"], expected[0]["image"])


def test_workers_yield_the_same_samples(tiny_config):
    """grain gives each record its own Generator, so samples do not depend on workers;
    with W workers, worker i batches records i, i+W, ...: every W batches hold the same
    samples as W batches of the in-process loader."""
    # No absl app here: train_loader readies the absl flags that grain's workers read.
    with tiny_config.unlocked():
        tiny_config.input.photometric = True
    source = pipeline.load_split(tiny_config, "train")
    samples = {}
    for workers in (0, 2):
        with tiny_config.unlocked():
            tiny_config.input.worker_count = workers
        it = iter(pipeline.train_loader(tiny_config, source, per_process_batch=2, seed=0))
        batches = [next(it) for _ in range(4)]
        samples[workers] = [
            sorted(
                b["image"][i].tobytes() + b["label"][i].tobytes() for b in pair for i in range(2)
            )
            for pair in (batches[:2], batches[2:])
        ]
    assert samples[0] == samples[2]


def test_unprepared_dataset_names_files_and_command(tmp_path):
    config = default.get_config("tiny")
    with config.unlocked():
        config.dataset.name = "cityscapes"
        config.dataset.num_classes = 19
        config.dataset.config = "default"
        config.dataset.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        datasets.data_source(config.dataset, "train")
    message = str(e.value)
    assert "'cityscapes'" in message and "gtFine_trainvaltest.zip" in message
    assert (
        f"python -m segjax.data.prepare --dataset cityscapes --manual_dir DIR --data_dir {tmp_path}"
        in message
    )
    with config.unlocked():
        config.dataset.config = "nope"
    with pytest.raises(KeyError, match="no config 'nope'"):
        datasets.data_source(config.dataset, "train")


def _folder(root, n=4):
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky\nground\n")
    rng = np.random.default_rng(0)
    for k in range(n):
        cv2.imwrite(str(root / "images" / f"p{k}.png"), rng.integers(0, 256, (12, 16, 3), np.uint8))
        cv2.imwrite(str(root / "masks" / f"p{k}.png"), rng.integers(0, 2, (12, 16), np.uint8))
    return root


def test_prepare_cli_and_first_use_preparation(tmp_path, capsys):
    manual = _folder(tmp_path / "mine")
    rc = prepare.main(
        ["--dataset", "folder", "--manual_dir", str(manual), "--config", "mine",
         "--data_dir", str(tmp_path / "data"), "--val_fraction", "0.25"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "train: 3 examples" in out and "validation: 1 examples" in out
    assert "--config.dataset.name=folder --config.dataset.num_classes=2" in out
    assert "--config.dataset.config=mine" in out
    config = _config()
    with config.unlocked():
        config.dataset.name = "folder"
        config.dataset.config = "mine"
        config.dataset.num_classes = 2
        config.dataset.data_dir = str(tmp_path / "data")
    assert datasets.class_names(config.dataset) == ("sky", "ground")
    assert len(pipeline.load_split(config, "validation")) == 1
    # Not prepared, but config.dataset.manual_dir given: prepared on first use.
    with config.unlocked():
        config.dataset.config = "other"
        config.dataset.data_dir = str(tmp_path / "data2")
        config.dataset.manual_dir = str(manual)
    batch = next(iter(pipeline.train_loader(
        config, pipeline.load_split(config, "train"), per_process_batch=2, seed=0
    )))  # fmt: skip
    assert batch["image"].shape == (2, 8, 8, 3) and set(np.unique(batch["label"])) <= {0, 1}
    with config.unlocked():
        config.dataset.num_classes = 3
    with pytest.raises(ValueError, match=r"num_classes=3 .* has 2 classes"):
        datasets.data_source(config.dataset, "train")
    # The CLI without files for an unprepared dataset: exit code 2 and the instructions.
    assert prepare.main(["--dataset", "ade20k", "--data_dir", str(tmp_path / "x")]) == 2
    assert "ADEChallengeData2016.zip" in capsys.readouterr().err
