"""The Medical Segmentation Decathlon builder on small NIfTI files written here."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from segjax.data.builders import msd

AFFINE = np.diag([1.5, 0.8, 2.0, 1.0])  # x, y, z spacing in mm


def _write(path, array, affine=AFFINE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _task(root, cases=3, label_fn=None, affine_fn=None):
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        image = rng.normal(size=(6, 5, 4)).astype(np.float32) * 100
        label = (rng.random((6, 5, 4)) < 0.3).astype(np.uint8) * (1 + i % 2)
        if label_fn:
            label = label_fn(i, label)
        _write(f"{root}/imagesTr/case_{i}.nii.gz", image)
        _write(f"{root}/labelsTr/case_{i}.nii.gz", label, affine_fn(i) if affine_fn else AFFINE)
        training.append(
            {"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"}
        )
    meta = {"name": "Toy", "modality": {"0": "CT"}, "training": training,
            "labels": {"0": "background", "1": "liver", "2": "tumour"}}  # fmt: skip
    with open(f"{root}/dataset.json", "w") as f:
        json.dump(meta, f)
    return root


def test_prepares_zyx_volumes_with_spacing_and_a_deterministic_split(tmp_path):
    root = _task(str(tmp_path / "Task01_Toy"), cases=5)
    builder = msd.prepare(str(tmp_path / "data"), "toy", root)
    assert builder.info.metadata["class_names"] == ["background", "liver", "tumour"]
    sizes = {s: builder.info.splits[s].num_examples for s in ("train", "validation")}
    assert sizes == {"train": 4, "validation": 1}
    source = builder.as_data_source("train")
    record = source[0]
    original = nib.load(f"{root}/imagesTr/{record['id'].decode()}.nii.gz").get_fdata()
    assert record["image"].shape == (4, 5, 6, 1)  # (z, y, x, channel)
    np.testing.assert_allclose(record["image"][..., 0], original.transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(record["spacing"], [2.0, 0.8, 1.5])
    assert record["label"].shape == (4, 5, 6, 1) and record["label"].dtype == np.uint8


def test_a_label_whose_affine_differs_is_named(tmp_path):
    shifted = np.diag([1.5, 0.8, 2.0, 1.0])
    shifted[0, 3] = 10.0
    root = _task(str(tmp_path / "T"), affine_fn=lambda i: shifted if i == 1 else AFFINE)
    with pytest.raises(ValueError, match=r"labelsTr/case_1\.nii\.gz: affine"):
        msd.prepare(str(tmp_path / "data"), "toy", root)


def test_a_label_whose_spacing_differs_is_named(tmp_path):
    other = np.diag([1.5, 0.8, 2.5, 1.0])
    root = _task(str(tmp_path / "T"), affine_fn=lambda i: other if i == 2 else AFFINE)
    with pytest.raises(ValueError, match=r"labelsTr/case_2\.nii\.gz: (affine|voxel spacing)"):
        msd.prepare(str(tmp_path / "data"), "toy", root)


def test_a_label_value_outside_dataset_json_is_named(tmp_path):
    def bad(i, label):
        if i == 0:
            label[0, 0, 0] = 7
        return label

    root = _task(str(tmp_path / "T"), label_fn=bad)
    with pytest.raises(ValueError, match=r"labelsTr/case_0\.nii\.gz: label values \[7\]"):
        msd.prepare(str(tmp_path / "data"), "toy", root)


def test_records_go_through_the_volume_pipeline_with_ct_window_and_resampling(tmp_path):
    from segjax.data import volumes

    root = _task(str(tmp_path / "T"), cases=2)
    record = msd.prepare(str(tmp_path / "data"), "toy", root).as_data_source("train")[0]
    options = volumes.VolumeOptions("ct", (-100.0, 100.0), (1.0, 2.0, 3.0))
    sample = volumes.prepare_volume(record, options)
    # (4, 5, 6) voxels of (2.0, 0.8, 1.5) mm -> (8, 2, 3) voxels of (1, 2, 3) mm.
    assert sample["image"].shape == (8, 2, 3, 1) and sample["label"].shape == (8, 2, 3)
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    np.testing.assert_allclose(sample["spacing"], [1.0, 2.0, 3.0])
