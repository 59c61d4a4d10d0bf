"""Read PyTorch weight files as ``{name: numpy array}`` without PyTorch.

Two formats:

- ``.safetensors`` (timm, Hugging Face): the ``safetensors`` package's numpy API.
- ``.pth`` / ``.pt`` / ``.bin`` written by ``torch.save``: the zip format (torch >= 1.6: a
  ``data.pkl`` pickle and one raw file per storage) and the legacy format (one stream of
  pickles followed by the raw storages). The pickle is read by a restricted unpickler that
  never executes pickled code: it resolves only the handful of globals that a tensor
  checkpoint needs (``OrderedDict``, the tensor/parameter rebuild functions, the storage
  dtypes) to local functions that build numpy arrays, and refuses every other global with
  an error naming the file and the global. Containers (dicts, lists, tuples) and plain
  values (str, int, float, bool, None) come from pickle opcodes, not globals.

A checkpoint that nests its tensors (mmsegmentation's ``{"meta": ..., "state_dict": ...}``,
``{"model": ...}``) is flattened by ``state_dict_of`` to the tensor dict.

Example:
    >>> tensors = read_tensors("resnet50.pth")   # doctest: +SKIP
    >>> tensors["conv1.weight"].shape             # doctest: +SKIP
    (64, 3, 7, 7)
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

# torch storage classes -> numpy dtypes (bfloat16 is read as its bits and widened below).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# The keys under which training frameworks nest a model's tensors.
STATE_DICT_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "ema")


class WeightFileError(ValueError):
    """A weight file that cannot be read as tensors; the message names the file."""


class _Storage:
    """A typed storage of a checkpoint, read lazily by key."""

    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _TensorRef:
    """A tensor as the pickle describes it: storage, offset, size, stride."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...)
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    # torch._utils._rebuild_parameter(data, requires_grad, backward_hooks[, state])
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


def _storage_class(name: str):
    def make():  # never called: the class object is only a dtype tag in persistent ids
        raise TypeError(name)

    make.dtype = _STORAGE_DTYPES[name]
    return make


# The only globals a tensor checkpoint may name, mapped to local, side-effect-free stand-ins.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _storage_class(name) for name in _STORAGE_DTYPES},
}


class Refused:
    """Stands for an object of a global that is not allowed; its own methods do nothing.

    Checkpoints keep metadata beside the tensors (mmengine's ``message_hub``, numpy scalars,
    optimizer objects): those parts unpickle to ``Refused`` instances, which record the
    global's name and accept the pickle opcodes that build an object (call, ``__new__``,
    ``__setstate__``, item and list appends) without running any of its code.
    ``state_dict_of`` refuses a tensor dict that contains one.
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __call__(self, *args, **kwargs):
        return Refused()

    def __repr__(self) -> str:
        return f"<refused {self.qualname}>"


class _TensorUnpickler(pickle.Unpickler):
    """Unpickler that builds tensors, containers and plain values, and ``Refused`` stand-ins."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        # Never import or call the named global: an inert class that only keeps its name.
        return type("Refused", (Refused,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightFileError(f"{self.path}: unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        dtype = getattr(storage_type, "dtype", None)
        if dtype is None:
            raise WeightFileError(f"{self.path}: unknown storage type {storage_type!r}")
        return _Storage(dtype, key, numel)


def _itemsize(dtype) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _as_array(raw: bytes, dtype, path: str, key: str, numel: int) -> np.ndarray:
    itemsize = _itemsize(dtype)
    if len(raw) < numel * itemsize:
        raise WeightFileError(
            f"{path}: storage {key} holds {len(raw)} bytes, {numel * itemsize} expected "
            "(truncated file?)"
        )
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, "<u2", numel).astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"), numel)


def _materialise(obj, storages: Mapping[str, np.ndarray], path: str):
    """Replaces every ``_TensorRef`` in ``obj`` by its numpy array (a copy, native order)."""
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key]
        if not obj.size:
            return np.array(flat[obj.offset])
        itemsize = flat.dtype.itemsize
        needed = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride, strict=True))
        if 0 in obj.size:
            return np.zeros(obj.size, flat.dtype)
        if needed >= flat.size:
            raise WeightFileError(
                f"{path}: a tensor reads past the end of storage {obj.storage.key}"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :], obj.size, [s * itemsize for s in obj.stride], writeable=False
        )
        return np.ascontiguousarray(view).astype(view.dtype.newbyteorder("="))
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, storages, path)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v, storages, path) for v in obj)
    return obj


def _collect_storages(obj, out: dict[str, _Storage]) -> None:
    if isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_storages(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _collect_storages(v, out)


def _load_zip(path: str) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightFileError(f"{path}: not a readable zip-format torch file ({e})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise WeightFileError(f"{path}: a zip file without data.pkl: not a torch checkpoint")
        root = pickles[0][: -len("data.pkl")]
        with _corruption_named(path):
            obj = _TensorUnpickler(io.BytesIO(archive.read(pickles[0])), path).load()
            byteorder = "little"
            if f"{root}byteorder" in names:
                byteorder = archive.read(f"{root}byteorder").decode().strip()
            if byteorder != "little":
                raise WeightFileError(f"{path}: big-endian checkpoints are not supported")
            refs: dict[str, _Storage] = {}
            _collect_storages(obj, refs)
            storages = {}
            for key, storage in refs.items():
                name = f"{root}data/{key}"
                if name not in names:
                    raise WeightFileError(f"{path}: storage {key} is missing from the archive")
                storages[key] = _as_array(
                    archive.read(name), storage.dtype, path, key, storage.numel
                )
    return _materialise(obj, storages, path)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@contextlib.contextmanager
def _corruption_named(path: str):
    """Any error of a corrupted file (a pickle raises almost any type) as a ``WeightFileError``."""
    try:
        yield
    except WeightFileError:
        raise
    except Exception as e:
        raise WeightFileError(
            f"{path}: corrupted torch checkpoint ({type(e).__name__}: {e})"
        ) from None


def _load_legacy(path: str) -> Any:
    # torch < 1.6: pickles of (magic, protocol, sys_info, object, storage keys), then per
    # storage key an int64 element count and the raw bytes.
    with open(path, "rb") as f, _corruption_named(path):
        if _TensorUnpickler(f, path).load() != _LEGACY_MAGIC:
            raise WeightFileError(f"{path}: not a torch checkpoint (bad magic number)")
        _TensorUnpickler(f, path).load()  # protocol version
        _TensorUnpickler(f, path).load()  # sys info
        obj = _TensorUnpickler(f, path).load()
        keys = _TensorUnpickler(f, path).load()
        refs: dict[str, _Storage] = {}
        _collect_storages(obj, refs)
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storage = refs.get(str(key))
            if storage is None:  # a storage no tensor of the object uses
                raise WeightFileError(f"{path}: storage {key} belongs to no tensor")
            raw = f.read(numel * _itemsize(storage.dtype))
            storages[str(key)] = _as_array(raw, storage.dtype, path, str(key), numel)
    missing = set(refs) - set(storages)
    if missing:
        raise WeightFileError(f"{path}: storages {sorted(missing)} are missing (truncated file?)")
    return _materialise(obj, storages, path)


def read_pth(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file (zip or legacy format) with numpy arrays for its tensors.

    Args:
        path: the file.

    Returns:
        The saved object (usually a dict) with every tensor a numpy array (bfloat16 widened
        to float32).

    Raises:
        WeightFileError: the file is missing, truncated, corrupted, not a torch file, or its
            pickle names anything but tensors, storages and containers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such weight file")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":
        raise WeightFileError(f"{path}: neither a zip-format nor a legacy torch checkpoint")
    return _load_legacy(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file with the ``safetensors`` package's numpy API."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such weight file")
    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise WeightFileError(f"{path}: not a readable .safetensors file ({e})") from None


def state_dict_of(obj: Any, path: str) -> dict[str, np.ndarray]:
    """The flat ``{name: array}`` tensor dict of a loaded checkpoint.

    A dict of arrays is returned as is; a dict with one of ``STATE_DICT_KEYS`` holding such a
    dict (mmsegmentation's ``state_dict``, ``model``, ...) gives that dict. A leading
    ``module.`` (DataParallel) is removed from every name.

    Raises:
        WeightFileError: no tensor dict in ``obj``, or a value that is not an array.
    """
    if isinstance(obj, Refused):
        raise WeightFileError(
            f"{path}: holds a pickled {obj.qualname} object, not tensors (save "
            "model.state_dict(), not the model); nothing pickled was executed"
        )
    if isinstance(obj, dict) and not all(isinstance(v, np.ndarray) for v in obj.values()):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return state_dict_of(obj[key], path)
        for key, value in obj.items():
            if isinstance(value, Refused):
                raise WeightFileError(
                    f"{path}: entry {key!r} is a pickled {value.qualname} object, not a tensor; "
                    "only tensors are read (nothing pickled was executed)"
                )
        raise WeightFileError(
            f"{path}: no tensor dict found; top-level keys: {sorted(map(str, obj))[:20]} "
            f"(a state dict is looked for under {list(STATE_DICT_KEYS)})"
        )
    if not isinstance(obj, dict) or not obj:
        raise WeightFileError(f"{path}: holds {type(obj).__name__}, not a dict of tensors")
    out = {}
    for name, value in obj.items():
        if isinstance(value, Refused):
            raise WeightFileError(
                f"{path}: entry {name!r} is a pickled {value.qualname} object, not a tensor; "
                "only tensors are read (nothing pickled was executed)"
            )
        if not isinstance(value, np.ndarray):
            raise WeightFileError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        out[name.removeprefix("module.")] = value
    return out


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a weight file (``.safetensors``, or anything ``torch.save`` wrote) as a state dict.

    Args:
        path: ``.safetensors`` (by extension), else a torch zip or legacy file.

    Returns:
        ``{tensor name: numpy array}`` (PyTorch layout, e.g. OIHW conv kernels).

    Raises:
        WeightFileError: a message naming the file (see ``read_pth``).
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return state_dict_of(read_pth(path), path)
