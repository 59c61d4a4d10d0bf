"""Labelled / unlabelled splits and the mixed stream of semi-supervised training."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from configs import default
from segjax.data import pipeline, unlabelled


class _IndexSource:
    """N records of `size`: image value = record index, label = index % 5 + 1."""

    def __init__(self, n: int, size: int = 8):
        self.n, self.size = n, size

    def __repr__(self) -> str:
        return f"_IndexSource({self.n}, {self.size})"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        s = self.size
        return {
            "image": np.full((s, s, 3), i, np.uint8),
            "label": np.full((s, s, 1), i % 5 + 1, np.uint8),
        }


def _config(crop=8):
    config = default.get_config("tiny")
    with config.unlocked():
        config.input.crop_size = (crop, crop)
        config.input.scale_range = (1.0, 1.0)
        config.input.mean = (0.0, 0.0, 0.0)
        config.input.std = (1.0, 1.0, 1.0)
    return config


def _ids(images: np.ndarray) -> list[int]:
    return [round(float(x)) for x in images[:, 0, 0, 0]]


def test_split_keeps_a_fraction_labelled_and_withholds_the_rest():
    source = _IndexSource(40)
    labelled, withheld = unlabelled.split_labelled(source, 1 / 8, seed=3)
    assert len(labelled) == 5 and len(withheld) == 35
    ids_l = [int(labelled[i]["image"][0, 0, 0]) for i in range(len(labelled))]
    ids_u = [int(withheld[i]["image"][0, 0, 0]) for i in range(len(withheld))]
    assert sorted(ids_l + ids_u) == list(range(40)) and ids_l == sorted(ids_l)
    assert all(int(labelled[i]["label"][0, 0, 0]) == ids_l[i] % 5 + 1 for i in range(5))
    assert all(np.all(withheld[i]["label"] == unlabelled.UNLABELLED_PIXEL) for i in range(35))
    again, _ = unlabelled.split_labelled(source, 1 / 8, seed=3)
    other, _ = unlabelled.split_labelled(source, 1 / 8, seed=4)
    assert list(again.indices) == list(labelled.indices) != list(other.indices)
    everything, none = unlabelled.split_labelled(source, 1.0, seed=3)
    assert list(everything.indices) == list(range(40)) and len(none) == 0
    with pytest.raises(ValueError, match="labelled fraction 0"):
        unlabelled.split_labelled(source, 0, seed=0)


def test_mixed_stream_resumes_exactly_and_gates_from_its_start():
    config = _config()

    def stream():
        # New source objects each time, as a restarted run has (grain checks their repr).
        labelled, withheld = unlabelled.split_labelled(_IndexSource(40), 0.25, seed=0)
        return unlabelled.MixedBatches(
            pipeline.train_loader(config, labelled, per_process_batch=2, seed=0),
            pipeline.train_loader(
                config,
                withheld,
                per_process_batch=3,
                seed=1,
                extra_operations=[unlabelled.ToUnlabelled(255)],
            ),
            gate_start=2,
        )

    it = iter(stream())
    labelled, _ = unlabelled.split_labelled(_IndexSource(40), 0.25, seed=0)
    first = [next(it) for _ in range(3)]
    assert set(first[0]) == {
        "image",
        "label",
        "unlabelled_image",
        "unlabelled_valid",
        "unlabelled_gate",
    }
    assert [b["unlabelled_gate"].tolist() for b in first] == [[0.0] * 3, [0.0] * 3, [1.0] * 3]
    for b in first:
        assert set(_ids(b["image"])) <= set(labelled.indices.tolist())
        assert set(_ids(b["unlabelled_image"])) <= set(range(40)) - set(labelled.indices.tolist())
        assert b["unlabelled_valid"].all()
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = iter(stream())
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(4)], strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_unlabelled_padding_is_not_valid_and_files_are_read(tmp_path):
    config = _config(crop=12)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((6, 10, 3), 7, np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "list.txt").write_text("# unlabelled\nimgs/a.png\n\nimgs/b.png  # big\n")
    files = unlabelled.ImageFiles(str(tmp_path / "list.txt"))
    assert len(files) == 2 and files[0]["image"].shape == (6, 10, 3)
    pool = unlabelled.Concatenated([unlabelled.WithheldLabels(_IndexSource(0)), files])
    assert len(pool) == 2
    loader = pipeline.train_loader(
        config,
        unlabelled.Subset(pool, [0]),
        per_process_batch=1,
        seed=0,
        extra_operations=[unlabelled.ToUnlabelled(255)],
    )
    batch = next(iter(loader))
    valid = batch["unlabelled_valid"][0]
    image = batch["unlabelled_image"][0]
    # The 6x10 image padded to 12x12 (bottom/right); with flips it may sit at any corner.
    assert valid.sum() == 60 and np.all(image[valid] == 7) and np.all(image[~valid] == 0)
    (tmp_path / "bad.txt").write_text("imgs/a.png\nimgs/missing.png\n")
    with pytest.raises(FileNotFoundError, match=r"1 files not found, e\.g\. .*missing\.png"):
        unlabelled.ImageFiles(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.txt not found"):
        unlabelled.ImageFiles(str(tmp_path / "nowhere.txt"))
