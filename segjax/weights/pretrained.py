"""Converted weight files: write them, read them, apply them to a model's fresh variables.

A converted file is one msgpack blob (``flax.serialization``) holding::

    {"format": "segjax-pretrained-1",
     "meta": {"source": "torchvision", "name": "resnet50", "file": "<input file name>",
              "model": segjax model name or "", "model_kwargs": JSON, "scope": "backbone"|"all"},
     "params": {...}, "batch_stats": {...}}

with float32 numpy arrays in segjax layout. ``load_pretrained`` applies it to the variables
of a freshly initialised model: ``scope="backbone"`` takes the file's ``backbone`` subtree
(parameters and BatchNorm statistics) and keeps the model's own initialisation for
everything else; ``scope="all"`` takes every tensor, except those of a classifier whose
class count differs, which keep their fresh initialisation (logged). Anything else that does
not fit (a missing or unexpected tensor, a shape) is a ``PretrainedError`` naming the tensor,
its expected and its found shape.

A model of other than 3 input bands (``config.model.in_channels``, multispectral or RGB-D
input) takes an RGB file's first convolution adapted to its bands (``adapt_input_conv``,
timm's rule), logged; every other tensor is taken as it is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np

from segjax.weights.convert import ConversionError, abstract_variables, convert_state_dict
from segjax.weights.readers import WeightFileError, read_tensors
from segjax.weights.zoo import get_conversion

FORMAT = "segjax-pretrained-1"
SCOPES = ("backbone", "all")
# The subtree that a backbone file fills: Segmentor's "backbone", or the "encoder" of
# SegNet, DeconvNet and LinkNet.
BACKBONE_KEYS = ("backbone", "encoder")


class PretrainedError(ValueError):
    """A converted file that does not fit the model; the message names the file and tensor."""


def _build(conversion, state_dict, source: str):
    """The segjax module a conversion fills, with its builder name and arguments."""
    from segjax.models import build_model

    name, kwargs = conversion.target(state_dict)
    if name is None:
        return conversion.backbone(), None, {}
    return build_model(name, **kwargs), name, kwargs


def convert_file(
    source: str, name: str, src: str | os.PathLike, out: str | os.PathLike | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Converts a PyTorch weight file into segjax variables (and writes them to ``out``).

    Args:
        source: ``"torchvision"``, ``"timm"`` or ``"mmseg"``.
        name: the architecture in that source (``python -m segjax.weights list``).
        src: the ``.pth`` / ``.safetensors`` file.
        out: where to write the converted file; None: do not write.

    Returns:
        ``(variables, meta)``: ``{"params", "batch_stats"}`` numpy trees (a backbone's
        under ``"backbone"``) and the file's metadata.

    Raises:
        WeightFileError: ``src`` is unreadable, truncated, or holds something else than tensors.
        ConversionError: ``src`` does not fit the architecture (tensor names and shapes).
        KeyError: an unknown source or name.
    """
    src = os.fspath(src)
    conversion = get_conversion(source, name)
    state_dict = read_tensors(src)
    try:
        module, model, kwargs = _build(conversion, state_dict, src)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    variables = convert_state_dict(
        state_dict, conversion.layout, abstract_variables(module), source=src
    )
    scope = "all"
    if conversion.backbone is not None:
        variables = {k: {"backbone": v} for k, v in variables.items()}
        scope = "backbone"
    meta = {
        "source": source,
        "name": name,
        "file": os.path.basename(src),
        "model": model or "",
        "model_kwargs": json.dumps(kwargs, sort_keys=True),
        "scope": scope,
    }
    if out is not None:
        save_pretrained(out, variables, meta)
    return variables, meta


def save_pretrained(path: str | os.PathLike, variables: Mapping, meta: Mapping[str, str]) -> None:
    """Writes ``variables`` and ``meta`` as a converted file (atomically: a temporary, renamed)."""
    path = os.fspath(path)
    blob = {
        "format": FORMAT,
        "meta": dict(meta),
        "params": jax.tree.map(np.asarray, dict(variables["params"])),
        "batch_stats": jax.tree.map(np.asarray, dict(variables.get("batch_stats", {}))),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(blob))
    os.replace(tmp, path)


def read_pretrained(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a converted file: ``({"params", "batch_stats"}, meta)``.

    Raises:
        WeightFileError: no such file, or not a (complete) converted file: a PyTorch file
            given where a converted one is expected gets the ``convert`` command to run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such pretrained file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        blob = flax.serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        hint = ""
        if data[:2] == b"PK" or data[:1] == b"\x80" or path.endswith(".safetensors"):
            hint = (
                " It looks like a PyTorch file: convert it first with `python -m "
                "segjax.weights convert --from SOURCE --model NAME SRC OUT`."
            )
        raise WeightFileError(
            f"{path}: not a segjax pretrained file ({type(e).__name__}: {e}).{hint}"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "params" not in blob:
        raise WeightFileError(f"{path}: not a segjax pretrained file (no {FORMAT!r} header)")
    variables = {"params": blob["params"], "batch_stats": blob.get("batch_stats", {})}
    return variables, dict(blob.get("meta", {}))


def adapt_input_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """An RGB input convolution's kernel [..., 3, O] (HWIO) adapted to `in_channels` bands.

    timm's rule (`timm.models._manipulate.adapt_input_conv`), which
    segmentation_models_pytorch follows: one band gets the sum of the R, G and B kernels;
    three keep them; any other count C repeats R, G, B cyclically over the C bands (band
    c takes RGB kernel c mod 3) and scales all by 3 / C, so that bands of RGB-like
    statistics give activations of the RGB model's scale.

    Raises:
      ValueError: the kernel's input axis is not 3, or `in_channels` < 1.
    """
    kernel = np.asarray(kernel)
    if kernel.shape[-2] != 3:
        raise ValueError(
            f"an input convolution of {kernel.shape[-2]} input channels (shape "
            f"{kernel.shape}); only an RGB (3-channel) one can be adapted"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels}; expected >= 1")
    dtype = kernel.dtype
    k = kernel.astype(np.float32)
    if in_channels == 1:
        return k.sum(axis=-2, keepdims=True).astype(dtype)
    if in_channels == 3:
        return kernel
    repeats = -(-in_channels // 3)
    tiled = np.concatenate([k] * repeats, axis=-2)[..., :in_channels, :]
    return (tiled * (3.0 / in_channels)).astype(dtype)


def _is_input_conv_change(key: tuple[str, ...], found: tuple, expected: tuple, bands: int) -> bool:
    # A kernel [..., 3, O] in the file where the model, of `bands` input bands, has
    # [..., bands, O]: a convolution that reads the image.
    return (
        bands != 3
        and key[-1] == "kernel"
        and len(found) == len(expected) >= 2
        and found[-2] == 3
        and expected[-2] == bands
        and found[:-2] == tuple(expected[:-2])
        and found[-1] == expected[-1]
    )


def _flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
    return flax.traverse_util.flatten_dict(dict(tree)) if tree else {}


def match_pretrained(
    path: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    scope: str = "backbone",
    logger: logging.Logger | None = None,
    in_channels: int = 3,
) -> dict[str, dict[tuple[str, ...], np.ndarray]]:
    """Checks a converted file against a model's variables: the tensors it will replace.

    Args:
        path: a file written by ``convert_file`` / ``python -m segjax.weights convert``.
        variables: the model's variables ``{"params": ..., "batch_stats": ...}``; only
            structure, shapes and dtypes are read (``jax.ShapeDtypeStruct`` leaves will do).
        scope: ``"backbone"``: the file's ``backbone`` subtree replaces the model's
            (SegNet, DeconvNet and LinkNet: their ``encoder``), the rest keeps its
            initialisation; ``"all"``: every tensor of the model comes from the file, except
            a classifier whose class count differs (it keeps its initialisation; logged).
        logger: where the re-initialisations are logged (default: this module's logger).
        in_channels: the model's input bands; when not 3, an RGB kernel of the file that
            the model has with `in_channels` input channels is adapted to them
            (`adapt_input_conv`, logged).

    Returns:
        ``{collection: {path tuple: numpy array (the model's dtype)}}``: what to replace.

    Raises:
        WeightFileError: the file is unreadable.
        PretrainedError: the file does not fit the model: a missing or unexpected tensor, or
            a shape mismatch (named, with the expected and found shapes); a file without a
            backbone for ``scope="backbone"``; an unknown scope.
    """
    logger = logger or logging.getLogger(__name__)
    if scope not in SCOPES:
        raise PretrainedError(f"pretrained_scope must be one of {SCOPES}, got {scope!r}")
    path = os.fspath(path)
    loaded, meta = read_pretrained(path)
    file_classes = json.loads(meta.get("model_kwargs") or "{}").get("num_classes")
    params = variables.get("params", {})
    backbone_key = next((k for k in BACKBONE_KEYS if k in params), None)
    replacements: dict[str, dict[tuple[str, ...], np.ndarray]] = {}
    for collection in ("params", "batch_stats"):
        model_tree = dict(variables.get(collection, {}))
        file_tree = dict(loaded.get(collection, {}))
        if scope == "backbone":
            if collection == "params" and "backbone" not in file_tree:
                raise PretrainedError(
                    f"{path}: has no backbone subtree (top-level: {sorted(file_tree)}); use "
                    "pretrained_scope=all for a whole-model file"
                )
            if backbone_key is None:
                raise PretrainedError(
                    f"{path}: the model has no backbone subtree ({' or '.join(BACKBONE_KEYS)}; "
                    f"top-level: {sorted(model_tree)}); use pretrained_scope=all"
                )
            model_tree = {backbone_key: model_tree.get(backbone_key, {})}
            file_tree = {backbone_key: file_tree.get("backbone", {})}
        model_flat, file_flat = _flat(model_tree), _flat(file_tree)
        _check_names(path, meta, collection, model_flat, file_flat)
        replacements[collection] = {}
        for key, target in model_flat.items():
            value = np.asarray(file_flat[key])
            name = f"{collection}/{'/'.join(key)}"
            if value.shape != tuple(target.shape):
                if scope == "all" and _is_class_dim_change(
                    key, value.shape, target.shape, file_classes
                ):
                    logger.warning(
                        "pretrained %s: the class count differs; %s %s -> %s keeps its "
                        "fresh initialisation",
                        path,
                        name,
                        value.shape,
                        tuple(target.shape),
                    )
                    continue
                if _is_input_conv_change(key, value.shape, target.shape, in_channels):
                    logger.warning(
                        "pretrained %s: %s %s adapted to %d input bands -> %s (RGB kernels "
                        "repeated over the bands%s)",
                        path,
                        name,
                        value.shape,
                        in_channels,
                        tuple(target.shape),
                        ", summed" if in_channels == 1 else f", scaled by 3/{in_channels}",
                    )
                    adapted = adapt_input_conv(value, in_channels)
                    replacements[collection][key] = adapted.astype(target.dtype)
                    continue
                raise PretrainedError(
                    f"{path}: tensor {name} has shape {value.shape} in the file, the model "
                    f"expects {tuple(target.shape)}"
                )
            replacements[collection][key] = value.astype(target.dtype)
    return replacements


def _check_names(path: str, meta: Mapping, collection: str, model_flat, file_flat) -> None:
    """A ``PretrainedError`` listing the tensors missing from the file or not in the model."""
    missing = sorted(set(model_flat) - set(file_flat))
    unexpected = sorted(set(file_flat) - set(model_flat))
    if not (missing or unexpected):
        return
    parts = []
    for what, keys, tree in (
        ("missing from the file", missing, model_flat),
        ("not in the model", unexpected, file_flat),
    ):
        if keys:
            listed = ", ".join(
                f"{collection}/{'/'.join(k)} {tuple(np.shape(tree[k]))}" for k in keys[:8]
            )
            more = f" (and {len(keys) - 8} more)" if len(keys) > 8 else ""
            parts.append(f"{what}: {listed}{more}")
    raise PretrainedError(
        f"{path} ({meta.get('source', '?')} {meta.get('name', '?')}) does not fit the model: "
        + "; ".join(parts)
    )


def merge_pretrained(
    variables: Mapping[str, Any], replacements: Mapping[str, Mapping[tuple[str, ...], Any]]
) -> dict[str, Any]:
    """``variables`` with the leaves of ``replacements`` (``match_pretrained``) swapped in.

    Traceable: under ``jit`` the replacements may be arrays of any placement.
    """
    out = {}
    for collection, tree in variables.items():
        flat = _flat(tree)
        flat.update(replacements.get(collection, {}))
        out[collection] = flax.traverse_util.unflatten_dict(flat) if flat else {}
    return out


def load_pretrained(
    path: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    scope: str = "backbone",
    logger: logging.Logger | None = None,
    in_channels: int = 3,
) -> dict[str, Any]:
    """Applies a converted file to a model's freshly initialised variables.

    ``merge_pretrained(variables, match_pretrained(path, variables, ...))`` with the
    replaced leaves as jax arrays; see ``match_pretrained`` for the arguments and errors.

    Example:
        >>> model = build_model("deeplabv3plus_resnet50", num_classes=21)  # doctest: +SKIP
        >>> variables = model.init(key, jnp.zeros((1, 65, 65, 3)), train=False)
        >>> variables = load_pretrained("r50.msgpack", variables, scope="backbone")
    """
    replacements = match_pretrained(
        path, variables, scope=scope, logger=logger, in_channels=in_channels
    )
    as_jax = {c: {k: jax.numpy.asarray(v) for k, v in r.items()} for c, r in replacements.items()}
    return merge_pretrained(variables, as_jax)


def _is_class_dim_change(
    key: tuple[str, ...], found: tuple, expected: tuple, num_classes: int | None
) -> bool:
    # A classifier conv (kernel [..., K] or bias [K], in a module named classifier*/score*)
    # whose only differing dim is the last, the file's class count.
    if len(found) != len(expected) or key[-1] not in ("kernel", "bias"):
        return False
    if not any(part.startswith(("classifier", "score")) for part in key[:-1]):
        return False
    if num_classes is not None and found[-1] != num_classes:
        return False
    return found[:-1] == tuple(expected[:-1]) and found[-1] != expected[-1]
