"""python -m segjax.data.audit: class counts, ignored share and label problems of a dataset."""

import io

import numpy as np
import pytest
from PIL import Image

from segjax.data import audit
from segjax.data.builders import folder, segjax_shapes
from tests.data.test_builders import H, W, _folder_files, _jpg, _png, _write


def _faulty_folder(tmp_path):
    # Seven images: three good, and one of each fault the audit must name without stopping.
    rng = np.random.default_rng(0)
    files = _folder_files(rng, ["good1", "good2", "good3"])
    files["train.txt"] = b"good1\ngood2\nbad_values\nbad_size\nbad_image\nbad_mask\n"
    files["val.txt"] = b"good3\n"
    values = np.zeros((H, W), np.uint8)
    values[:2, :3] = 7  # 6 pixels of a class that does not exist (3 classes)
    values[5, 5] = 9
    values[6:8, :] = 255
    files["images/bad_values.jpg"] = _jpg(rng)
    files["masks/bad_values.png"] = _png(values)
    files["images/bad_size.jpg"] = _jpg(rng)
    files["masks/bad_size.png"] = _png(np.ones((H, W - 8)))
    files["images/bad_image.jpg"] = b"this is not a jpeg"
    files["masks/bad_image.png"] = _png(np.ones((H, W)))
    files["images/bad_mask.jpg"] = _jpg(rng)
    files["masks/bad_mask.png"] = b"\x89PNG truncated"
    return _write(files, tmp_path / "my_data"), files


def test_folder_with_planted_faults_names_each_and_counts_the_rest(tmp_path, capsys):
    manual, files = _faulty_folder(tmp_path)
    assert audit.main(["--dataset", "folder", "--manual_dir", manual]) == 1
    out, err = capsys.readouterr()
    assert "4 problems found" in err
    assert "(not prepared)" in out
    assert "bad_values.png: values outside [0, 3) and 255: 7 (6 px), 9 (1 px)" in out
    assert f"bad_size.png: label is {H}x{W - 8} but its image" in out
    assert f"bad_size.jpg is {H}x{W}" in out
    assert "bad_image.jpg: cannot decode image" in out
    assert "bad_mask.png: cannot decode label image" in out
    # Nothing was prepared.
    assert not (tmp_path / "my_data" / "downloads").exists()

    (train, val) = audit.audit_folder(manual)
    assert (train.split, val.split, train.images, val.images) == ("train", "validation", 6, 1)
    assert len(train.problems) == 4 and not val.problems
    # The good images and the decodable faults are counted, value by value.
    names = ("masks/good1.png", "masks/good2.png", "masks/bad_values.png", "masks/bad_size.png")
    labels = [np.asarray(Image.open(io.BytesIO(files[n]))) for n in names]
    stacked = np.concatenate([x.ravel() for x in labels])
    np.testing.assert_array_equal(train.pixels, [np.sum(stacked == k) for k in range(3)])
    assert train.ignored == np.sum(stacked == 255)
    assert train.outside == 7
    assert train.total == stacked.size
    assert train.images_with.tolist() == [
        sum(bool(np.any(x == k)) for x in labels) for k in range(3)
    ]


def test_clean_folder_passes_and_split_choice(tmp_path, capsys):
    rng = np.random.default_rng(1)
    manual = _write(_folder_files(rng, [f"im{k}" for k in range(5)]), tmp_path / "clean")
    assert audit.main(["--dataset", "folder", "--manual_dir", manual, "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "split train: 4 images" in out and "split validation" not in out
    assert "no problems" in out


def test_folder_that_does_not_pair_up_or_unknown_split_cannot_be_audited(tmp_path, capsys):
    rng = np.random.default_rng(2)
    files = _folder_files(rng, ["a", "b"])
    del files["masks/b.png"]
    manual = _write(files, tmp_path / "m")
    assert audit.main(["--dataset", "folder", "--manual_dir", manual]) == 2
    assert "no mask masks/b.png" in capsys.readouterr().err
    manual = _write(_folder_files(rng, ["a", "b"]), tmp_path / "m2")
    assert audit.main(["--dataset", "folder", "--manual_dir", manual, "--split", "test"]) == 2
    assert "Split 'test' not in" in capsys.readouterr().err


def test_prepared_builtin_dataset(shapes_data_dir, capsys):
    args = ["--dataset", "segjax_shapes", "--config", "tiny", "--data_dir", shapes_data_dir]
    code = audit.main(args)
    assert code == 0
    out = capsys.readouterr().out
    assert "segjax_shapes/tiny prepared in" in out and "6 classes" in out
    (val,) = audit.audit_prepared("segjax_shapes", "tiny", shapes_data_dir, ["validation"])
    builder = segjax_shapes.prepare(shapes_data_dir, "tiny")
    source = builder.as_data_source("validation")
    labels = np.stack([np.asarray(source[i]["label"])[..., 0] for i in range(len(source))])
    np.testing.assert_array_equal(val.pixels, np.bincount(labels.ravel(), minlength=6))
    assert val.images == len(source) and val.ignored == 0 and not val.problems
    assert f"split validation: {len(source)} images" in out


def test_unprepared_real_dataset_says_how_to_prepare(tmp_path, capsys):
    assert audit.main(["--dataset", "voc", "--data_dir", str(tmp_path)]) == 2
    assert "python -m segjax.data.prepare --dataset voc" in capsys.readouterr().err


def test_manual_dir_is_for_folders_only(tmp_path):
    with pytest.raises(SystemExit):
        audit.main(["--dataset", "voc", "--manual_dir", str(tmp_path)])


def test_prepared_folder_audits_the_same_as_its_files(tmp_path):
    rng = np.random.default_rng(3)
    manual = _write(_folder_files(rng, [f"im{k}" for k in range(4)]), tmp_path / "f")
    folder.prepare(tmp_path / "data", "mine", manual)
    prepared = audit.audit_prepared("folder", "mine", str(tmp_path / "data"))
    files = audit.audit_folder(manual)
    for a, b in zip(prepared, files, strict=True):
        assert a.split == b.split and a.images == b.images
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert a.ignored == b.ignored and not a.problems and not b.problems
