"""ReSeg (Visin et al., 2016): ReNet layers, recurrent sweeps over rows then columns.

A ReNet layer cuts its input into non-overlapping `patch` blocks (flattened), sweeps a
bidirectional recurrent network (GRU or LSTM, `flax.linen.RNN`, i.e. one `lax.scan`
per direction) along every row, concatenates both directions, then sweeps the result
along every column the same way: each output sees the whole image. ReSeg puts ReNet
layers on VGG-16 features and upsamples the class scores to the input.

segjax's layout: VGG-16's first three stages (to pool3: stride 8, 256 channels;
max pools round up, so odd sizes work), ReNet layers of (hidden units per direction,
patch) = (100, 2x2) then (100, 1x1) (stride 16, 200 channels), a 1x1 classifier, and
the segmentor's bilinear resize to the input (the paper upsamples with transposed
convolutions; bilinear here keeps the model to the segmentor contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.vgg import VGG16_STAGES, VGG_TINY_STAGES
from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.segmentor import Segmentor

Array = jax.Array
CELLS = ("gru", "lstm")


class VGGStages(nn.Module):
    """The first `len(stages)` VGG stages (3x3 conv + ReLU, 2x2 max pool rounding up)."""

    stages: Sequence[Sequence[int]]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """[B, H, W, 3] -> {"s2": ..., "s{2^n}": [B, ceil(H / 2^n), ceil(W / 2^n), C_n]}."""
        del train
        features = {}
        for i, stage in enumerate(self.stages):
            for channels in stage:
                x = nn.relu(nn.Conv(channels, (3, 3), padding=1, dtype=self.dtype)(x))
            x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
            features[f"s{2 ** (i + 1)}"] = x
        return features


def to_patches(x: Array, patch: tuple[int, int]) -> Array:
    """[B, H, W, C] -> [B, ceil(H / ph), ceil(W / pw), ph * pw * C]: flattened patches.

    The input is zero-padded at the bottom and right to whole patches; a patch's vector is
    its pixels in row-major order, channels innermost.
    """
    ph, pw = patch
    b, h, w, c = x.shape
    hp, wp = -(-h // ph), -(-w // pw)
    x = jnp.pad(x, ((0, 0), (0, hp * ph - h), (0, wp * pw - w), (0, 0)))
    x = x.reshape(b, hp, ph, wp, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, ph * pw * c)


def _cell(kind: str, hidden: int, dtype, name: str) -> nn.Module:
    if kind == "gru":
        return nn.GRUCell(hidden, dtype=dtype, param_dtype=jnp.float32, name=name)
    return nn.OptimizedLSTMCell(hidden, dtype=dtype, param_dtype=jnp.float32, name=name)


class ReNetLayer(nn.Module):
    """Patches, a bidirectional sweep along rows, then one along columns.

    Attributes:
        hidden: units per direction (the output has 2 * hidden channels).
        patch: (ph, pw) non-overlapping patches (the input is zero-padded to multiples).
        cell: "gru" or "lstm".
    """

    hidden: int
    patch: tuple[int, int] = (1, 1)
    cell: str = "gru"
    dtype: jnp.dtype = jnp.float32

    def _sweep(self, x: Array, name: str) -> Array:
        # Bidirectional recurrence along axis 2 of [B, H, W, C], every row independently.
        b, h, w, c = x.shape
        seq = x.reshape(b * h, w, c)
        fwd = nn.RNN(_cell(self.cell, self.hidden, self.dtype, f"{name}_fwd_cell"))(seq)
        bwd = nn.RNN(
            _cell(self.cell, self.hidden, self.dtype, f"{name}_bwd_cell"),
            reverse=True,
            keep_order=True,
        )(seq)
        return jnp.concatenate([fwd, bwd], axis=-1).reshape(b, h, w, 2 * self.hidden)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """[B, H, W, C] -> [B, ceil(H / ph), ceil(W / pw), 2 * hidden]."""
        if self.cell not in CELLS:
            raise ValueError(f"ReNet cell {self.cell!r}; expected one of {CELLS}")
        x = to_patches(x, self.patch)
        x = self._sweep(x, "rows")
        x = self._sweep(x.transpose(0, 2, 1, 3), "cols").transpose(0, 2, 1, 3)
        return x


class ReNetNeck(nn.Module):
    """ReNet layers on `features[in_key]`, written to `features["renet"]`."""

    layers: Sequence[tuple[int, tuple[int, int]]]
    in_key: str = "s8"
    cell: str = "gru"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, Array], *, train: bool) -> dict[str, Array]:
        """Adds "renet": [B, h', w', 2 * hidden of the last layer]."""
        del train
        x = features[self.in_key]
        for hidden, patch in self.layers:
            x = ReNetLayer(hidden, tuple(patch), self.cell, dtype=self.dtype)(x)
        return {**features, "renet": x}


def reseg_builder(
    stages: Sequence[Sequence[int]], layers: Sequence[tuple[int, tuple[int, int]]]
) -> Callable[..., Segmentor]:
    """A ReSeg builder on the first three of VGG `stages` with ReNet `layers`."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        cell: str = "gru",
    ) -> Segmentor:
        """ReSeg: VGG stages 1-3, ReNet layers, 1x1 classifier, bilinear to the input.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or the model's fixed stride (8 x the ReNet patches).
            aux_head: an auxiliary FCN head on the pool3 features (``"s8"``), not in the paper.
            cell: "gru" (the paper's) or "lstm".
        """
        stride = 8
        for _, (ph, _pw) in layers:
            stride *= ph
        check_fixed_stride("reseg", output_stride, stride)
        c3 = stages[2][-1]
        aux = None
        if aux_head:
            aux = FCNHead(num_classes, channels=min(256, c3 // 4), in_key="s8", dtype=dtype)
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r}; expected one of {CELLS}")
        return Segmentor(
            backbone=VGGStages(tuple(tuple(s) for s in stages[:3]), dtype=dtype),
            neck=ReNetNeck(tuple(layers), cell=cell, dtype=dtype),
            head=FCNHead(num_classes, num_convs=0, dropout=0.0, in_key="renet", dtype=dtype),
            aux_head=aux,
        )

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    "reseg_vgg16": reseg_builder(VGG16_STAGES, ((100, (2, 2)), (100, (1, 1)))),
    "reseg_tiny": reseg_builder(VGG_TINY_STAGES, ((8, (2, 2)), (8, (1, 1)))),
}
