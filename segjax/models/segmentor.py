"""Segmentor: backbone -> neck -> head (+ auxiliary head), logits resized to the input.

Every part is a Linen module passed as a field, so a model is assembled in one expression:

Example:
    >>> from segjax.models.backbones.resnet import ResNet50
    >>> from segjax.models.necks.aspp import ASPP
    >>> from segjax.models.heads.deeplab import DeepLabV3PlusHead
    >>> model = Segmentor(
    ...     backbone=ResNet50(output_stride=16),
    ...     neck=ASPP(rates=(6, 12, 18)),
    ...     head=DeepLabV3PlusHead(num_classes=21),
    ... )
    >>> variables = model.init(jax.random.key(0), jnp.zeros((2, 97, 131, 3)), train=False)
    >>> model.apply(variables, jnp.zeros((2, 97, 131, 3)), train=False)["logits"].shape
    (2, 97, 131, 21)

Variables are exactly the collections ``params`` (float32) and ``batch_stats``; training
applies with ``mutable=["batch_stats"]`` and ``rngs={"dropout": key}``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import resize_bilinear

Array = jax.Array


class Segmentor(nn.Module):
    """A semantic-segmentation model made of a backbone, an optional neck and heads.

    Data flow: ``features = backbone(image)`` (dict keyed by stride), then
    ``features = neck(features)`` (the same dict plus the neck's outputs), then
    ``head(features)`` and ``aux_head(features)`` give logits at feature resolution, which
    are resized bilinearly (half-pixel centres, in float32) to the input size.

    Attributes:
        backbone: ``__call__(x, *, train) -> dict[str, Array]``.
        neck: ``__call__(features, *, train) -> dict[str, Array]``, or None.
        head: ``__call__(features, *, train) -> Array [B, h, w, K]``, or a dict with those
            logits under ``"logits"`` and extra outputs for the loss (``"deep_supervision"``:
            a list of logits ``[B, h', w', K]``; ``"se_logits"``: ``[B, K]``), which the
            segmentor returns next to its logits, per-pixel ones resized to the input.
        aux_head: like ``head``, trained with an auxiliary loss; None for none.
    """

    backbone: nn.Module
    neck: nn.Module | None
    head: nn.Module
    aux_head: nn.Module | None = None

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """Segments a batch of images.

        Args:
            image: normalised images ``[B, H, W, 3]``, any H and W (odd sizes included).
            train: batch statistics and dropout when True (needs a ``"dropout"`` rng and
                ``mutable=["batch_stats"]``); deterministic when False.

        Returns:
            ``{"logits": float32 [B, H, W, K]}``, plus ``"aux_logits"`` (same shape) when the
            model has an auxiliary head, and the head's extra outputs (float32).
        """
        size = image.shape[1:3]
        features = self.backbone(image, train=train)
        if self.neck is not None:
            features = self.neck(features, train=train)
        head_out = self.head(features, train=train)
        extras = {}
        if isinstance(head_out, dict):
            extras = {k: v for k, v in head_out.items() if k != "logits"}
            head_out = head_out["logits"]
        # Resize in float32: bilinear weights in bfloat16 would band the upsampled logits.
        outputs = {"logits": resize_bilinear(head_out.astype(jnp.float32), size)}
        for key, value in extras.items():
            outputs[key] = jax.tree.map(lambda v: _to_output(v, size), value)
        if self.aux_head is not None:
            aux = self.aux_head(features, train=train).astype(jnp.float32)
            outputs["aux_logits"] = resize_bilinear(aux, size)
        return outputs


def _to_output(x: Array, size) -> Array:
    # A head's extra output in float32; per-pixel logits [B, h, w, K] resized to the input.
    x = x.astype(jnp.float32)
    return resize_bilinear(x, size) if x.ndim == 4 else x
