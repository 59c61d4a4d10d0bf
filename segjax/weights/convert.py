"""PyTorch state dicts -> segjax variables: the layout conversions and the checks.

A ``Layout`` says how one PyTorch architecture's tensor names map onto one segjax module:
an ordered list of ``Rule``s from a segjax module path (``"backbone/layer1_block0/conv1/conv"``)
to a PyTorch module prefix (``"layer1.0.conv1"``), the PyTorch names that have no
counterpart (an ImageNet classifier, ``num_batches_tracked``), and the BatchNorm epsilon of
the PyTorch model.

The conversions, each tested in ``tests/weights/test_convert.py``:

- convolution kernels ``[O, I / groups, kh, kw]`` (OIHW) -> ``[kh, kw, I / groups, O]`` (HWIO);
  biases as they are;
- BatchNorm ``weight, bias`` -> params ``scale, bias``; ``running_mean, running_var`` ->
  ``batch_stats`` ``mean, var``; ``num_batches_tracked`` dropped. Momentum needs no
  conversion of the tensors (segjax's decay 0.9 is PyTorch's momentum 0.1, the default of
  every layout here). segjax's BatchNorm adds ``eps = 1e-5``; a model trained with another
  ``eps`` (timm's Xception, torchvision's MobileNetV3: 1e-3; a layout's ``bn_eps``, or a
  rule's for some of its modules) gets ``running_var + eps - 1e-5``, the same normalisation
  in eval mode, exactly;
- a rule may permute a kernel's input channels (mmsegmentation's ASPP concatenates the
  image-pooling branch first, segjax last).

Padding (symmetric ``k // 2 * dilation`` for every conv, stride 2 included), ceil vs floor
pooling and the dilation of a stage's first block are properties of the segjax modules,
checked by the parity tests (``tests/weights/test_parity.py``), not by the names.

Every segjax tensor must be found (else "missing tensor"), every PyTorch tensor used or
ignored by the layout (else "unexpected tensor"), and every shape must match (else the
tensor's name, the shape expected and the shape found): each is a ``ConversionError``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SEGJAX_BN_EPS = 1e-5


class ConversionError(ValueError):
    """A state dict that does not fit the layout; the message names the tensor(s)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Segjax module paths matching ``pattern`` come from the PyTorch module ``target``.

    Attributes:
        pattern: a regular expression that must match a whole segjax module path
            (``/``-separated, e.g. ``"backbone/layer(\\d+)_block(\\d+)/conv(\\d)/conv"``).
        target: the PyTorch module prefix, a ``re`` template (``"layer\\1.\\2.conv\\3"``) or a
            function of the match.
        permute_in: for a conv: a function ``(in_channels) -> index array`` that reorders
            the kernel's input channels (segjax channel ``c`` = PyTorch channel ``p[c]``).
        bn_eps: for a BatchNorm: the PyTorch epsilon of the modules this rule matches, when
            it differs from the layout's (torchvision's MobileNetV3 trunk: 1e-3, its
            segmentation heads: 1e-5).
    """

    pattern: str
    target: str | Callable[[re.Match], str]
    permute_in: Callable[[int], np.ndarray] | None = None
    bn_eps: float | None = None

    def apply(self, path: str) -> str | None:
        match = re.fullmatch(self.pattern, path)
        if match is None:
            return None
        if callable(self.target):
            return self.target(match)
        return match.expand(self.target)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one PyTorch architecture's state dict maps onto a segjax module.

    Attributes:
        rules: tried in order; the first that matches a module path gives its PyTorch prefix.
        ignore: regular expressions of PyTorch names without a segjax counterpart.
        bn_eps: the PyTorch model's BatchNorm epsilon.
    """

    rules: Sequence[Rule]
    ignore: Sequence[str] = ()
    bn_eps: float = 1e-5

    def torch_prefix(self, path: str) -> tuple[str, Rule]:
        for rule in self.rules:
            target = rule.apply(path)
            if target is not None:
                return target, rule
        raise ConversionError(f"segjax module {path!r} has no PyTorch counterpart in the layout")


def scoped(rules: Sequence[Rule], flax_prefix: str, torch_prefix: str) -> list[Rule]:
    """The same rules for a module placed under ``flax_prefix`` / ``torch_prefix``."""
    out = []
    for rule in rules:
        target = rule.target
        if callable(target):
            target = _prefixed(target, torch_prefix)
        else:
            target = torch_prefix.replace("\\", "\\\\") + target
        out.append(
            dataclasses.replace(rule, pattern=re.escape(flax_prefix) + rule.pattern, target=target)
        )
    return out


def _prefixed(fn: Callable[[re.Match], str], prefix: str) -> Callable[[re.Match], str]:
    return lambda match: prefix + fn(match)


def conv_bn(flax_path: str, torch_conv: str, torch_bn: str) -> list[Rule]:
    """Rules for a segjax ``ConvBNReLU`` (``<path>/conv``, ``<path>/bn``)."""
    return [Rule(flax_path + "/conv", torch_conv), Rule(flax_path + "/bn", torch_bn)]


def abstract_variables(module: nn.Module, size: int = 64) -> dict[str, Any]:
    """``jax.eval_shape`` of ``module.init`` on a ``[1, size, size, 3]`` image: shapes only."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))


def _modules(variables: Mapping[str, Any]) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    # {module path: {leaf name: (collection, shape)}} over params and batch_stats.
    modules: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for collection in ("params", "batch_stats"):
        flat = flax.traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for path, leaf in flat.items():
            modules.setdefault("/".join(path[:-1]), {})[path[-1]] = (collection, tuple(leaf.shape))
    return modules


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    return shape


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    layout: Layout,
    variables: Mapping[str, Any],
    *,
    source: str = "state dict",
) -> dict[str, dict]:
    """Fills segjax ``variables``' structure with the tensors of a PyTorch state dict.

    Args:
        state_dict: ``{name: array}`` in PyTorch layout (``readers.read_tensors``).
        layout: the name mapping and conversions of the architecture.
        variables: the segjax module's variables (arrays or ``jax.ShapeDtypeStruct``; only
            structure and shapes are used), ``{"params": ..., "batch_stats": ...}``.
        source: the file name, for error messages.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` nested dicts of float32 numpy arrays with
        ``variables``' structure.

    Raises:
        ConversionError: a missing or unexpected tensor, or a shape mismatch (each named).
    """
    out: dict[tuple[str, ...], np.ndarray] = {}
    used: set[str] = set()
    missing: list[str] = []
    for path, leaves in sorted(_modules(variables).items()):
        prefix, rule = layout.torch_prefix(path)
        is_bn = "mean" in leaves and "var" in leaves
        names = (
            {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
            if is_bn
            else {"kernel": "weight", "bias": "bias"}
        )
        for leaf, (collection, shape) in leaves.items():
            if leaf not in names:
                raise ConversionError(f"segjax {collection}/{path}/{leaf}: no conversion for it")
            name = f"{prefix}.{names[leaf]}"
            if name not in state_dict:
                expected = _torch_shape(leaf, shape)
                missing.append(f"{name} {expected} (for segjax {collection}/{path}/{leaf})")
                continue
            used.add(name)
            value = np.asarray(state_dict[name], np.float32)
            expected = _torch_shape(leaf, shape)
            if value.shape != expected:
                raise ConversionError(
                    f"{source}: tensor {name!r} has shape {value.shape}, expected {expected} "
                    f"(segjax {collection}/{path}/{leaf})"
                )
            if leaf == "kernel" and value.ndim == 4:
                if rule.permute_in is not None:
                    value = value[:, rule.permute_in(value.shape[1])]
                value = value.transpose(2, 3, 1, 0)
            if leaf == "var":
                eps = layout.bn_eps if rule.bn_eps is None else rule.bn_eps
                value = value + np.float32(eps - SEGJAX_BN_EPS)
            parts = path.split("/") if path else []
            out[(collection, *parts, leaf)] = np.ascontiguousarray(value)
        if is_bn:
            used.add(f"{prefix}.num_batches_tracked")
    ignore = [re.compile(p) for p in (*layout.ignore, r"(.*\.)?num_batches_tracked")]
    unexpected = sorted(
        f"{k} {tuple(np.shape(v))}"
        for k, v in state_dict.items()
        if k not in used and not any(p.fullmatch(k) for p in ignore)
    )
    if missing or unexpected:
        parts = []
        for what, names in (("missing", missing), ("unexpected", unexpected)):
            if names:
                more = f" (and {len(names) - 8} more)" if len(names) > 8 else ""
                parts.append(f"{len(names)} {what} tensor(s): " + "; ".join(names[:8]) + more)
        raise ConversionError(
            f"{source}: does not fit the layout (a file of another model?): " + " | ".join(parts)
        )
    tree = flax.traverse_util.unflatten_dict(out)
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
