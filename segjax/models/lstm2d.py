"""2-D LSTM networks for scene labelling (Byeon, Breuel, Raue and Liwicki, CVPR 2015).

A 2-D LSTM cell at grid position (i, j) of a sweep takes the input there and the hidden
and cell states of its two predecessors along the sweep: the previous row (i - 1, j) and
the previous column (i, j - 1). It has an input gate, an output gate, a cell input and
two forget gates, one per predecessor::

    a = W x(i, j) + U_r h(i - 1, j) + U_c h(i, j - 1) + b           (5 H values)
    c(i, j) = f_r * c(i - 1, j) + f_c * c(i, j - 1) + i * tanh(g)
    h(i, j) = o * tanh(c(i, j))                       (i, f_r, f_c, o: sigmoids of a)

States outside the grid are zero. Four sweeps, one from each corner (top-left, top-right,
bottom-left, bottom-right; each with its own weights), see together the whole image from
every position; their hidden states are summed.

The network (`LSTM2DNet`): the image cut into non-overlapping `patch` blocks (the paper's
"input block", flattened RGB values, no convolution), then LSTM layers with, between two
of them, a feed-forward tanh layer on 2x2 blocks of the summed LSTM outputs (the paper's
"hidden block": patch merging, so each level halves the grid), then a 1x1 classifier and
the segmentor's bilinear resize to the input.

A sweep is one `lax.scan` over the anti-diagonals of its grid (`wavefront_scan`): every
cell of anti-diagonal d = i + j depends only on cells of diagonal d - 1, so all of them
are computed at once (`skew` makes a diagonal one column of an array), and the h x w
grid takes h + w - 1 sequential steps, not h * w. The four directions are flipped copies
of the grid run in the same scan, as a leading axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.reseg import to_patches
from segjax.models.segmentor import Segmentor

Array = jax.Array

# Gate order along the last axis of the 5 H pre-activations.
GATES = ("input", "forget_row", "forget_col", "output", "cell")
# The four sweep directions as (flip rows, flip columns): from the top-left, top-right,
# bottom-left and bottom-right corner.
DIRECTIONS = ((False, False), (False, True), (True, False), (True, True))


def _flip(x: Array, flips: tuple[bool, bool], row_axis: int) -> Array:
    axes = [a for a, f in zip((row_axis, row_axis + 1), flips, strict=True) if f]
    return jnp.flip(x, axes) if axes else x


def skew(z: Array) -> Array:
    """``[..., h, w, C]`` -> ``[..., h, h + w - 1, C]``: row i shifted right by i, zero-filled.

    Anti-diagonal d of the grid (cells (i, d - i)) becomes column d. Pads and reshapes only
    (no gather, whose gradient would be a scatter): each row padded by h, the rows laid end
    to end, the last h positions dropped, and the rest cut into rows of h + w - 1.
    """
    *lead, h, w, c = z.shape
    pad = [(0, 0)] * len(lead)
    flat = jnp.pad(z, [*pad, (0, 0), (0, h), (0, 0)]).reshape(*lead, h * (w + h), c)
    return flat[..., : h * (w + h - 1), :].reshape(*lead, h, h + w - 1, c)


def unskew(y: Array, w: int) -> Array:
    """The inverse of `skew`: ``[..., h, h + w - 1, C]`` -> ``[..., h, w, C]``."""
    *lead, h, d, c = y.shape
    pad = [(0, 0)] * len(lead)
    flat = jnp.pad(y.reshape(*lead, h * d, c), [*pad, (0, h), (0, 0)])
    return flat.reshape(*lead, h, d + 1, c)[..., :w, :]


def wavefront_scan(z: Array, recurrent: Array) -> Array:
    """2-D LSTM sweeps from the top-left corner, one anti-diagonal per scan step.

    Args:
        z: ``[K, B, h, w, 5 H]`` input pre-activations ``W x + b`` of K independent sweeps
            (gate order ``GATES``).
        recurrent: ``[K, 2 H, 5 H]`` recurrent weights of each sweep: rows ``:H`` act on
            the previous row's hidden state h(i - 1, j), rows ``H:`` on the previous
            column's h(i, j - 1).

    Returns:
        ``[K, B, h, w, H]`` hidden states, float32; ``h + w - 1`` sequential steps.
    """
    k, b, h, w, five_h = z.shape
    hidden = five_h // 5
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(h + w - 1)[None, :] - rows  # [h, D]: column of row i on diagonal d
    valid = (cols >= 0) & (cols < w)
    xs = (jnp.moveaxis(skew(z), 3, 0), valid.T)  # diagonal d: [K, B, h, 5H], [h]

    def step(carry, inputs):
        h_prev, c_prev = carry  # diagonal d - 1 by row: cell (i, d - 1 - i)
        x_d, valid_d = inputs
        # Row predecessor (i - 1, j) is row i - 1 of the last diagonal; column predecessor
        # (i, j - 1) is row i of it. Cells off the grid hold zeros, so edges read zeros.
        h_row = jnp.pad(h_prev[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))
        c_row = jnp.pad(c_prev[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))
        both = jnp.concatenate([h_row, h_prev], axis=-1).astype(recurrent.dtype)
        a = x_d.astype(jnp.float32) + jnp.einsum(
            "kbhi,kio->kbho", both, recurrent, preferred_element_type=jnp.float32
        )
        i_g, f_row, f_col, o_g, g = jnp.split(a, 5, axis=-1)
        c = (
            jax.nn.sigmoid(f_row) * c_row
            + jax.nn.sigmoid(f_col) * c_prev
            + jax.nn.sigmoid(i_g) * jnp.tanh(g)
        )
        out = jax.nn.sigmoid(o_g) * jnp.tanh(c)
        mask = valid_d[None, None, :, None]
        c = jnp.where(mask, c, 0.0)
        out = jnp.where(mask, out, 0.0)
        return (out, c), out

    zeros = jnp.zeros((k, b, h, hidden), jnp.float32)
    _, ys = jax.lax.scan(step, (zeros, zeros), xs)  # [D, K, B, h, H]
    return unskew(jnp.moveaxis(ys, 0, 3), w)


class LSTM2DLayer(nn.Module):
    """Four-direction 2-D LSTM on a grid; the four directions' hidden states summed.

    Parameters (K = 4 directions, in the order of ``DIRECTIONS``): ``input_kernel``
    ``[K, C, 5 H]``, ``recurrent_kernel`` ``[K, 2 H, 5 H]``, ``bias`` ``[K, 5 H]``.

    Attributes:
        hidden: H, LSTM units per direction (and the layer's output channels).
        dtype: compute dtype of the matrix products; states and gates are float32.
    """

    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[B, h, w, C]`` -> ``[B, h, w, hidden]`` (in ``dtype``)."""
        k, c, five_h = len(DIRECTIONS), x.shape[-1], 5 * self.hidden
        # Fan-in per direction: the direction axis is a batch of independent matrices.
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        w_in = self.param("input_kernel", init, (k, c, five_h), jnp.float32)
        w_rec = self.param("recurrent_kernel", init, (k, 2 * self.hidden, five_h), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (k, five_h), jnp.float32)
        grids = jnp.stack([_flip(x, d, row_axis=1) for d in DIRECTIONS]).astype(self.dtype)
        z = jnp.einsum(
            "kbhwc,kco->kbhwo", grids, w_in.astype(self.dtype), preferred_element_type=jnp.float32
        )
        z = z + bias[:, None, None, None, :]
        hs = wavefront_scan(z, w_rec.astype(self.dtype))
        out = sum(_flip(hs[i], d, row_axis=1) for i, d in enumerate(DIRECTIONS))
        return out.astype(self.dtype)


class LSTM2DNet(nn.Module):
    """The 2-D LSTM hierarchy as a backbone: patches, LSTM layers, tanh layers on 2x2 blocks.

    Attributes:
        patch: (ph, pw), the input block; the image is zero-padded to whole blocks.
        lstm: hidden units of each LSTM layer (per direction).
        feedforward: units of the tanh layer after each LSTM layer but the last, each on
            the 2x2 blocks (zero-padded to whole blocks) of that layer's output.
        dtype: compute dtype; parameters are float32.
    """

    patch: tuple[int, int]
    lstm: Sequence[int]
    feedforward: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    def feature_strides(self) -> dict[str, int]:
        """Feature key -> stride: one per LSTM layer."""
        return {k: s for k, s, _ in self._levels()}

    def feature_channels(self) -> dict[str, int]:
        """Feature key -> channels: each LSTM layer's hidden units."""
        return {k: c for k, _, c in self._levels()}

    def _levels(self) -> list[tuple[str, int, int]]:
        if len(self.feedforward) != len(self.lstm) - 1:
            raise ValueError(
                f"LSTM2DNet: {len(self.lstm)} LSTM layers need {len(self.lstm) - 1} "
                f"feed-forward layers between them, got feedforward={tuple(self.feedforward)}"
            )
        if self.patch[0] != self.patch[1]:
            raise ValueError(f"LSTM2DNet: square input blocks only, got patch={self.patch}")
        levels, stride = [], self.patch[0]
        for units in self.lstm:
            levels.append((f"s{stride}", stride, units))
            stride *= 2
        return levels

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"s{p}": [B, ceil(H / p), ceil(W / p), lstm[0]], ...}``."""
        del train
        levels = self._levels()
        x = to_patches(image.astype(self.dtype), tuple(self.patch))
        features = {}
        for i, (key, _, units) in enumerate(levels):
            x = LSTM2DLayer(units, dtype=self.dtype, name=f"lstm{i}")(x)
            features[key] = x
            if i < len(self.feedforward):
                x = to_patches(x, (2, 2))
                x = nn.Dense(self.feedforward[i], dtype=self.dtype, name=f"feedforward{i}")(x)
                x = jnp.tanh(x)
        return features


def lstm2d_builder(
    patch: int, lstm: Sequence[int], feedforward: Sequence[int]
) -> Callable[..., Segmentor]:
    """A 2-D LSTM segmentor builder: `patch` x `patch` input blocks, the given layer sizes."""
    stride = patch * 2 ** (len(lstm) - 1)

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> Segmentor:
        """2-D LSTM network (Byeon et al.): LSTM hierarchy, 1x1 classifier, bilinear resize.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params, LSTM states and gates are float32.
            output_stride: None or the model's fixed stride (patch x 2 per merge).
            aux_head: an auxiliary FCN head on the second LSTM layer's output (not in the
                paper).
        """
        check_fixed_stride("lstm2d", output_stride, stride)
        net = LSTM2DNet((patch, patch), tuple(lstm), tuple(feedforward), dtype=dtype)
        keys = list(net.feature_strides())
        aux = None
        if aux_head:
            c = lstm[1] if len(lstm) > 1 else lstm[0]
            key = keys[1] if len(keys) > 1 else keys[0]
            aux = FCNHead(num_classes, channels=max(4, c // 4), in_key=key, dtype=dtype)
        return Segmentor(
            backbone=net,
            neck=None,
            head=FCNHead(num_classes, num_convs=0, dropout=0.0, in_key=keys[-1], dtype=dtype),
            aux_head=aux,
        )

    return builder


MODELS: dict[str, Callable[..., nn.Module]] = {
    # Byeon et al.'s network: 3x3 input blocks, LSTM layers of 8, 50 and 50 units with
    # tanh layers of 20 and 50 units on 2x2 hidden blocks between them (stride 12).
    "lstm2d": lstm2d_builder(3, (8, 50, 50), (20, 50)),
    # The same three-level hierarchy, 4x4 blocks (stride 16, the default config's).
    "lstm2d_tiny": lstm2d_builder(4, (8, 16, 16), (16, 16)),
}
