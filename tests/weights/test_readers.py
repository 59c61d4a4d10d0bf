"""Reading PyTorch files without PyTorch: real files, and files that must be refused.

Real ``torch.save`` files (zip and legacy formats) and ``.safetensors`` come from the
PyTorch reference run of ``test_parity.py`` (its session fixture); the refusals are built
here byte by byte: pickles naming ``os.system``, truncated and corrupted archives.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import shutil
import sys
import types
import zipfile

import numpy as np
import pytest

from segjax.weights import ConversionError, WeightFileError, convert_file, read_tensors
from segjax.weights.readers import read_pth


class _Evil:
    """Unpickling this runs ``os.system(command)`` under a plain ``pickle.load``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _zip_pth(path: str, obj, extra: dict[str, bytes] | None = None) -> str:
    # A torch-style zip: archive/data.pkl (+ archive/data/<key> storages), stored uncompressed.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/version", b"3\n")
        for name, data in (extra or {}).items():
            z.writestr(f"archive/{name}", data)
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_pickled_code_is_never_run(tmp_path, nested):
    marker = tmp_path / "ran"
    evil = _Evil(f"touch {marker}")
    path = _zip_pth(str(tmp_path / "evil.pth"), {"weight": evil} if nested else evil)
    with pytest.raises(WeightFileError, match=r"evil\.pth.*(posix|os)\.system"):
        read_tensors(path)
    assert not marker.exists()


def test_pickled_code_in_a_legacy_file_is_never_run(tmp_path):
    # The legacy format is a stream of pickles: the first (the magic number) is read with
    # the same restricted unpickler as the others.
    marker = tmp_path / "ran"
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(pickle.dumps(_Evil(f"touch {marker}"), protocol=2))
    with pytest.raises(WeightFileError, match=r"evil_legacy\.pth"):
        read_tensors(str(path))
    assert not marker.exists()


def test_metadata_objects_beside_the_state_dict_are_inert(tmp_path):
    # mmengine checkpoints keep objects (message_hub, numpy scalars) beside the tensors: they
    # are stood in for, never constructed, and the state dict is still refused if it has one.
    marker = tmp_path / "ran"
    path = _zip_pth(
        str(tmp_path / "ckpt.pth"), {"meta": _Evil(f"touch {marker}"), "state_dict": {}}
    )
    with pytest.raises(WeightFileError, match=r"ckpt\.pth.*not a dict of tensors"):
        read_tensors(path)
    assert not marker.exists()
    assert isinstance(read_pth(path)["state_dict"], dict)


def test_not_a_weight_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(WeightFileError, match=r"notes\.pth"):
        read_tensors(str(text))
    with pytest.raises(WeightFileError, match="no such weight file"):
        read_tensors(str(tmp_path / "missing.pth"))
    with zipfile.ZipFile(tmp_path / "x.pth", "w") as z:
        z.writestr("readme.txt", "not torch")
    with pytest.raises(WeightFileError, match=r"x\.pth.*without data.pkl"):
        read_tensors(str(tmp_path / "x.pth"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightFileError, match=r"bad\.safetensors"):
        read_tensors(str(bad))


def _tensor_pickle(monkeypatch) -> bytes:
    """The pickle ``torch.save`` writes for ``{"w": tensor [2, 2] float32 on storage "0"}``.

    Written by a plain pickler through stand-ins registered as ``torch._utils`` and
    ``torch`` (only for this call), so that the bytes name the same globals as torch's.
    """
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
        "torch._utils",
        "_rebuild_tensor_v2",
    )
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    fake_torch.FloatStorage = FloatStorage
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 0, (2, 2), (2, 1), False, collections.OrderedDict())
            return (_rebuild_tensor_v2, args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, "0", "cpu", 4)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict(w=Tensor()))
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    return buffer.getvalue()


def test_storages_missing_or_short(tmp_path, monkeypatch):
    data_pkl = _tensor_pickle(monkeypatch)
    path = tmp_path / "lost.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
    with pytest.raises(WeightFileError, match=r"lost\.pth.*storage 0 is missing"):
        read_tensors(str(path))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(read_tensors(str(path))["w"], [[0, 1], [2, 3]])
    with zipfile.ZipFile(tmp_path / "short.pth", "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/data/0", np.arange(3, dtype="<f4").tobytes())
    with pytest.raises(WeightFileError, match=r"short\.pth.*truncated"):
        read_tensors(str(tmp_path / "short.pth"))


@pytest.fixture(scope="module")
def real_files(fast_references):
    return {
        "zip": os.path.join(fast_references, "tv_resnet18", "weights.pth"),
        "legacy": os.path.join(fast_references, "tv_mobilenet_v2", "weights.pth"),
        "safetensors": os.path.join(fast_references, "timm_resnet18", "weights.safetensors"),
    }


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_truncated_real_files(real_files, tmp_path, kind):
    src = real_files[kind]
    tensors = read_tensors(src)
    assert all(v.dtype in (np.float32, np.int64) for v in tensors.values())
    with open(src, "rb") as f:
        data = f.read()
    for cut in (len(data) // 2, len(data) - 100):
        short = tmp_path / f"cut{cut}{os.path.splitext(src)[1]}"
        short.write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=short.name):
            read_tensors(str(short))


def test_corrupted_pickle_in_a_real_file(real_files, tmp_path):
    src = real_files["zip"]
    out = tmp_path / "corrupt.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                data = data[: len(data) // 3] + b"\xff\xfe" + data[len(data) // 3 :]
            zout.writestr(item, data)
    with pytest.raises(WeightFileError, match=r"corrupt\.pth"):
        read_tensors(str(out))


def test_a_file_of_another_model(real_files, tmp_path):
    # ResNet-18 weights given as ResNet-50: named tensors, expected and found shapes.
    with pytest.raises(
        ConversionError, match=r"layer1\.0\.conv1\.weight.*\(64, 64, 3, 3\).*\(64, 64, 1, 1\)"
    ):
        convert_file("torchvision", "resnet50", real_files["zip"], tmp_path / "out.msgpack")
    assert not (tmp_path / "out.msgpack").exists()
    # MobileNetV2 weights given as ResNet-18: missing and unexpected tensors.
    with pytest.raises(
        ConversionError, match=r"missing tensor.*conv1\.weight.*unexpected tensor.*features\."
    ):
        convert_file("torchvision", "resnet18", real_files["legacy"])


def test_real_zip_and_legacy_files_read_the_same(real_files, tmp_path):
    tensors = read_tensors(real_files["zip"])
    shutil.copy(real_files["zip"], tmp_path / "copy.bin")  # any extension but .safetensors
    again = read_tensors(str(tmp_path / "copy.bin"))
    assert sorted(tensors) == sorted(again)
    for k, v in tensors.items():
        np.testing.assert_array_equal(v, again[k])
    assert read_tensors(real_files["legacy"])["features.0.0.weight"].shape == (32, 3, 3, 3)
