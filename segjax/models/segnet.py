"""SegNet (Badrinarayanan et al., 2017) and DeconvNet (Noh et al., 2015): unpooling decoders.

Both encode with VGG-16-BN and remember, for every 2x2 max pool, WHERE each maximum came
from; the decoder's unpooling puts each value back at that position (zeros elsewhere), so
boundaries come back sharp without learning an upsampling.

- SegNet: the decoder mirrors the encoder (13 conv-BN-ReLU, the last of each stage reducing
  to the previous stage's width); the last conv (3x3) is the classifier. No fc layers.
- DeconvNet: the encoder is followed by fc6 (7x7, 4096) and fc7 (1x1, 4096) and a 7x7
  "deconvolution" back to 512 channels; the decoder mirrors the encoder with unpooling and
  3x3 "deconvolution" layers, then a 1x1 classifier. BN after every layer. A stride-1
  transposed convolution is a convolution with a flipped kernel (same parameters, same
  function class), so segjax uses plain convolutions for them. The original fc6 is VALID on
  a 224x224 crop (7x7 -> 1x1) and its deconvolution goes back to 7x7; segjax pads fc6
  'same' and keeps pool5's size, so that any input size works (same parameters).

Pooling with indices, with static shapes: ``max_pool_with_argmax`` pads an odd last
row/column with -inf (ceil mode, ``ceil(n / 2)`` outputs) and returns, per output cell and
channel, the position ``2 dy + dx`` of the maximum inside its 2x2 window; ``max_unpool``
scatters by a one-hot product and crops the padding, giving back exactly the pre-pool size.
The indices are local to the window, not PyTorch's flat ``h * W + w``: for non-overlapping
windows they hold the same information, and they keep every shape static.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import (
    FEATURE_KEYS,
    VGG16_STAGES,
    VGG_TINY_STAGES,
    VGGConv,
    VGGFullyConv,
)
from segjax.models.builder_parts import aux_fcn_head, check_fixed_stride
from segjax.models.layers import classifier_conv, resize_bilinear

Array = jax.Array


def max_pool_with_argmax(x: Array) -> tuple[Array, Array]:
    """2x2/2 max pool (ceil mode) that also returns the argmax position in each window.

    Args:
        x: ``[B, H, W, C]``, any H and W.

    Returns:
        ``(pooled, indices)``, both ``[B, ceil(H / 2), ceil(W / 2), C]``; ``indices`` int32
        in ``0..3`` is ``2 dy + dx`` of the maximum (the first one on ties).
    """
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    windows = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h2, w2, c, 4)
    indices = jnp.argmax(windows, axis=-1).astype(jnp.int32)
    # take_along_axis routes the gradient to the argmax only, as max-pooling's gradient.
    pooled = jnp.take_along_axis(windows, indices[..., None], axis=-1)[..., 0]
    return pooled, indices


def max_unpool(x: Array, indices: Array, size: Sequence[int]) -> Array:
    """Inverse of ``max_pool_with_argmax``: each value back at its argmax, zeros elsewhere.

    Args:
        x: ``[B, h, w, C]`` values to place.
        indices: ``[B, h, w, C]`` window positions from ``max_pool_with_argmax``.
        size: the pre-pool ``(H, W)``, with ``ceil(H / 2) == h`` and ``ceil(W / 2) == w``.

    Returns:
        ``[B, H, W, C]``.
    """
    b, h, w, c = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h + 1) // 2 != h or (out_w + 1) // 2 != w:
        raise ValueError(f"cannot unpool {(h, w)} cells to {(out_h, out_w)}")
    y = x[..., None] * jax.nn.one_hot(indices, 4, dtype=x.dtype)
    y = y.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)
    return y[:, :out_h, :out_w]


def mirrored_decoder_widths(stages: Sequence[Sequence[int]], last: int | None) -> list[list[int]]:
    """Mirrored decoder widths, deepest stage first.

    Each decoder stage has as many convs as its encoder stage; the last one outputs the
    width of the stage before it (``last`` for the first stage; None: its own width).
    """
    widths = []
    for i in reversed(range(len(stages))):
        stage = list(stages[i])
        out = stages[i - 1][-1] if i > 0 else (stage[-1] if last is None else last)
        widths.append([*stage[:-1], out])
    return widths


class IndexedVGGEncoder(nn.Module):
    """VGG(-BN) trunk whose 2x2 pools keep their argmax indices (SegNet, DeconvNet).

    Attributes:
        stages: conv widths of the five stages.
        batch_norm: BN after every conv.
        dtype: compute dtype; parameters are float32.
    """

    stages: Sequence[Sequence[int]] = VGG16_STAGES
    batch_norm: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool):
        """``[B, H, W, 3]`` -> ``(features, indices, sizes)``.

        ``features`` is keyed as ``VGG``'s (``"s2"`` = pool1 ... ``"s32"`` = pool5);
        ``indices[i]`` and ``sizes[i]`` are pool ``i + 1``'s argmax and pre-pool size.
        """
        conv = functools.partial(VGGConv, batch_norm=self.batch_norm, dtype=self.dtype)
        features, indices, sizes = {}, [], []
        for i, widths in enumerate(self.stages):
            for j, width in enumerate(widths):
                x = conv(width, name=f"conv{i + 1}_{j + 1}")(x, train=train)
            sizes.append(x.shape[1:3])
            x, idx = max_pool_with_argmax(x)
            indices.append(idx)
            features[FEATURE_KEYS[i]] = x
        return features, indices, sizes


class SegNet(nn.Module):
    """SegNet: VGG-16-BN encoder, mirrored decoder that unpools with the encoder's indices.

    Attributes:
        num_classes: number of classes ``K``.
        stages: encoder conv widths (VGG-16's by default).
        aux_head: a head on the encoder features (e.g. ``FCNHead(in_key="s16")``, pool4);
            its logits are resized bilinearly to the input as ``"aux_logits"``.
        dtype: compute dtype; parameters are float32, logits float32.
    """

    num_classes: int
    stages: Sequence[Sequence[int]] = VGG16_STAGES
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` (any size) -> ``{"logits": float32 [B, H, W, K]}`` (+ aux)."""
        features, indices, sizes = IndexedVGGEncoder(
            self.stages, batch_norm=True, dtype=self.dtype, name="encoder"
        )(image, train=train)
        x = features["s32"]
        n = len(self.stages)
        for d, widths in enumerate(mirrored_decoder_widths(self.stages, last=self.num_classes)):
            i = n - 1 - d  # Encoder stage this decoder stage mirrors.
            x = max_unpool(x, indices[i], sizes[i])
            for j, width in enumerate(widths):
                name = f"conv{i + 1}_{len(widths) - j}_D"  # SegNet's Caffe layer names.
                if i == 0 and j == len(widths) - 1:
                    # The classifier: a 3x3 conv to K, no BN, no ReLU.
                    x = classifier_conv(width, self.dtype, kernel_size=3, name=name)(x)
                else:
                    x = VGGConv(width, batch_norm=True, dtype=self.dtype, name=name)(x, train=train)
        return logits_and_aux(x, self.aux_head, features, image.shape[1:3], train)


class DeconvNet(nn.Module):
    """DeconvNet: VGG-16-BN encoder, fc6/fc7, deconv-fc6, mirrored unpooling decoder.

    Attributes:
        num_classes: number of classes ``K``.
        stages: encoder conv widths (VGG-16's by default).
        fc_channels: channels of fc6 and fc7 (4096).
        fc_kernel: fc6 and deconv-fc6 kernel size (7).
        aux_head: a head on the encoder features (e.g. ``FCNHead(in_key="s16")``, pool4).
        dtype: compute dtype; parameters are float32, logits float32.
    """

    num_classes: int
    stages: Sequence[Sequence[int]] = VGG16_STAGES
    fc_channels: int = 4096
    fc_kernel: int = 7
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` (any size) -> ``{"logits": float32 [B, H, W, K]}`` (+ aux)."""
        features, indices, sizes = IndexedVGGEncoder(
            self.stages, batch_norm=True, dtype=self.dtype, name="encoder"
        )(image, train=train)
        x = VGGFullyConv(
            self.fc_channels,
            self.fc_kernel,
            dropout=0.0,
            batch_norm=True,
            dtype=self.dtype,
            name="fc",
        )(features["s32"], train=train)
        x = VGGConv(
            self.stages[-1][-1],
            self.fc_kernel,
            batch_norm=True,
            dtype=self.dtype,
            name="deconv_fc6",
        )(x, train=train)
        n = len(self.stages)
        for d, widths in enumerate(mirrored_decoder_widths(self.stages, last=None)):
            i = n - 1 - d
            x = max_unpool(x, indices[i], sizes[i])
            for j, width in enumerate(widths):
                x = VGGConv(
                    width, batch_norm=True, dtype=self.dtype, name=f"deconv{i + 1}_{j + 1}"
                )(x, train=train)
        x = classifier_conv(self.num_classes, self.dtype, name="score")(x)
        return logits_and_aux(x, self.aux_head, features, image.shape[1:3], train)


def logits_and_aux(logits, aux_head, features, size, train) -> dict[str, Array]:
    """``{"logits"}`` in float32 plus the aux head's logits resized to ``size``."""
    outputs = {"logits": logits.astype(jnp.float32)}
    if aux_head is not None:
        outputs["aux_logits"] = resize_bilinear(
            aux_head(features, train=train).astype(jnp.float32), size
        )
    return outputs


def unpooling_builder(
    model_cls: type[SegNet] | type[DeconvNet],
    stages: Sequence[Sequence[int]] = VGG16_STAGES,
    **model_kwargs,
) -> Callable[..., SegNet | DeconvNet]:
    """A SegNet or DeconvNet builder (VGG-16-BN encoder, pooling-index decoder)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> SegNet | DeconvNet:
        """SegNet / DeconvNet; logits come back at input resolution through unpooling.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (five 2x2 pools, undone by five unpoolings).
            aux_head: add an FCN auxiliary head on the encoder's pool4 (``"s16"``).
        """
        check_fixed_stride(model_cls.__name__, output_stride, 32)
        aux = aux_fcn_head(stages[3][-1], num_classes, dtype) if aux_head else None
        return model_cls(
            num_classes,
            stages=tuple(map(tuple, stages)),
            aux_head=aux,
            dtype=dtype,
            **model_kwargs,
        )

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    "segnet_vgg16": unpooling_builder(SegNet),
    "segnet_tiny": unpooling_builder(SegNet, VGG_TINY_STAGES),
    "deconvnet_vgg16": unpooling_builder(DeconvNet),
    "deconvnet_tiny": unpooling_builder(DeconvNet, VGG_TINY_STAGES, fc_channels=32),
}
