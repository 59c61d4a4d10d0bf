"""One flat registry: config name -> builder of a model, merged from the family modules.

Every builder has the signature::

    builder(*, num_classes: int, dtype=jnp.float32, output_stride: int | None = None,
            aux_head: bool = False, **model_specific_kwargs) -> nn.Module

``output_stride=None`` picks the model's default. An argument that a builder does not
accept is an error that names it and lists the accepted ones; nothing is silently ignored.

A new model is one file plus one line:

1. Write ``segjax/models/<family>.py`` (its modules, or imports of them from
   ``backbones/``, ``necks/``, ``heads/``, and its builders, with the signature above;
   shared pieces such as the auxiliary FCN head and the output-stride checks are in
   ``segjax.models.builder_parts``). At its bottom, a plain dict
   ``MODELS: dict[str, Callable[..., nn.Module]]`` maps its config names to builders,
   with a tiny variant for tests.
2. Add ``"segjax.models.<family>"`` to ``FAMILIES`` below.

A name that two families define is an error at import time that names both modules.
Family modules never import this one.

Example:
    >>> model = build_model("deeplabv3plus_resnet50", num_classes=21, output_stride=8)
    >>> sorted(MODELS)[:2]
    ['deconvnet_tiny', 'deconvnet_vgg16']
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable
from types import ModuleType

import flax.linen as nn
import jax.numpy as jnp

# The family modules, each with a ``MODELS`` dict at its bottom.
FAMILIES: tuple[str, ...] = (
    "segjax.models.attention",
    "segjax.models.bisenet",
    "segjax.models.context",
    "segjax.models.crfrnn",
    "segjax.models.deeplab",
    "segjax.models.enet",
    "segjax.models.fcn",
    "segjax.models.hrnet",
    "segjax.models.linknet",
    "segjax.models.lraspp",
    "segjax.models.lstm2d",
    "segjax.models.mmseg_layouts",
    "segjax.models.ocrnet",
    "segjax.models.panoptic_deeplab",
    "segjax.models.pyramid",
    "segjax.models.reseg",
    "segjax.models.segnet",
    "segjax.models.unet",
)


class UnknownModelError(KeyError, ValueError):
    """An unknown model name; a ``KeyError`` and a ``ValueError``, so either catch works."""

    def __str__(self) -> str:
        # KeyError's __str__ shows the repr of its argument; show the message as written.
        return str(self.args[0])


def _checked(name: str, fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``fn``, wrapped so that an unknown keyword argument is an error naming it."""
    accepted = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def builder(**kwargs) -> nn.Module:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"model {name!r} got unknown arguments {unknown}; it accepts {sorted(accepted)}"
            )
        return fn(**kwargs)

    builder.__name__ = builder.__qualname__ = name
    return builder


def merge_families(modules: Iterable[ModuleType]) -> dict[str, Callable[..., nn.Module]]:
    """The flat, checked ``MODELS`` of ``modules``; a name defined twice names both modules."""
    models: dict[str, Callable[..., nn.Module]] = {}
    owner: dict[str, str] = {}
    for module in modules:
        for name, fn in module.MODELS.items():
            if name in owner:
                raise ValueError(
                    f"model {name!r} is defined by both {owner[name]} and {module.__name__}"
                )
            owner[name] = module.__name__
            models[name] = _checked(name, fn)
    return models


MODELS: dict[str, Callable[..., nn.Module]] = merge_families(
    importlib.import_module(family) for family in FAMILIES
)

# Volumetric families: their models take NDHWC volumes [B, D, H, W, C] (the volume task,
# ``segjax.tasks.volume``), so they are kept apart from the image models of ``MODELS``
# and their contract tests; ``build_model`` builds either kind.
VOLUME_FAMILIES: tuple[str, ...] = ("segjax.models.volumetric",)
VOLUME_MODELS: dict[str, Callable[..., nn.Module]] = merge_families(
    importlib.import_module(family) for family in VOLUME_FAMILIES
)
for _name in set(MODELS) & set(VOLUME_MODELS):
    raise ValueError(f"model {_name!r} is both an image and a volume model")

# RGB-D families: two-stream models that split their input [B, H, W, 3 + D] into RGB and
# depth (FuseNet), so they need depth bands (``config.input.depth``) and are kept apart
# from the RGB contract tests of ``MODELS``; ``build_model`` builds them too. (Early
# fusion is any model of ``MODELS`` on the 4-band image.)
RGBD_FAMILIES: tuple[str, ...] = ("segjax.models.fusenet",)
RGBD_MODELS: dict[str, Callable[..., nn.Module]] = merge_families(
    importlib.import_module(family) for family in RGBD_FAMILIES
)
for _name in set(RGBD_MODELS) & (set(MODELS) | set(VOLUME_MODELS)):
    raise ValueError(f"model {_name!r} is both an RGB-D model and another kind")


def build_model(name: str, *, num_classes: int, dtype: jnp.dtype = jnp.float32, **kwargs):
    """Builds the registered model ``name``.

    Args:
        name: a key of ``MODELS`` (or of ``VOLUME_MODELS``: logits ``[B, D, H, W, K]``; or
            of ``RGBD_MODELS``: images ``[B, H, W, 3 + D]``).
        num_classes: number of output classes ``K`` (logits are ``[B, H, W, K]``).
        dtype: compute dtype (``jnp.bfloat16`` for mixed precision); params stay float32.
        **kwargs: the builder's other arguments (``output_stride``, ``aux_head``, ...).

    Returns:
        An unbound model (a ``Segmentor``, or a module with the same call contract).

    Raises:
        UnknownModelError: (a ``KeyError`` and ``ValueError``) for an unknown name; the
            message lists the known names.
        TypeError: for an argument that the builder does not accept.
    """
    if name in VOLUME_MODELS:
        return VOLUME_MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
    if name in RGBD_MODELS:
        return RGBD_MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
    if name not in MODELS:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}; "
            f"volume models: {', '.join(sorted(VOLUME_MODELS))}; "
            f"RGB-D models: {', '.join(sorted(RGBD_MODELS))}"
        )
    return MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
