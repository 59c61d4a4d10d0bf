"""ENet (Paszke et al., 2016, "ENet: A Deep Neural Network Architecture for Real-Time
Semantic Segmentation"), a real-time encoder-decoder with bottleneck blocks.

Layout as the paper's Table 1 and the reference PyTorch port (davidtvs/PyTorch-ENet,
``models/enet.py``), with its defaults: PReLU in the encoder, ReLU in the decoder.

- initial block: a 3x3 stride-2 conv to 13 channels concatenated with a 3x3 stride-2 max
  pool of the image (3 channels), BN, PReLU (16 channels, stride 2); an image of C bands
  gets 16 - C conv channels, or (C >= 16) the conv's 16 channels alone;
- stage 1: a downsampling bottleneck to 64 channels, 4 regular ones (dropout 0.01);
- stages 2 and 3 (128 channels, stride 8, dropout 0.1): regular, dilated 2, asymmetric 5,
  dilated 4, regular, dilated 8, asymmetric 5, dilated 16; stage 2 starts with a
  downsampling bottleneck;
- stages 4 and 5 (decoder): an upsampling bottleneck (max-unpooling with the indices of the
  matching downsampling one) to 64 channels, 2 regular; to 16 channels, 1 regular;
- a 3x3 stride-2 transposed conv (no bias) to the classes at the input's size.

A bottleneck's extension branch is 1x1 projection (channels / 4; a 2x2 stride-2 conv in a
downsampling one) -> 3x3 conv (regular, dilated, or asymmetric 5x1 then 1x5; a 2x2 stride-2
transposed conv in an upsampling one) -> 1x1 expansion, each conv without bias and followed by
BN and the activation, then spatial dropout; the main branch (identity; 2x2 max pool with
zero-padded channels; 1x1 conv-BN and max-unpooling) is added and the activation applied.
PReLUs have one slope per channel (the paper's Torch code, ``nn.PReLU(channels)``; the port
shares one slope per block). Pools are ceil-mode (``segnet.max_pool_with_argmax``), so any
input size works; the port needs even sizes at every pooled level.

Parameter count: 357,895 for 19 classes, pinned in ``tests/models/test_realtime.py``: the
port's 351,590 (computed with PyTorch from its layer list) with one PReLU slope per channel
(6,328) instead of per block (23). The paper gives "0.37M parameters" without its class
count or a breakdown.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from segjax.models.builder_parts import check_fixed_stride
from segjax.models.heads.fcn import FCNHead
from segjax.models.layers import Conv2D, batch_norm, conv_kernel_init, max_pool, resize_bilinear
from segjax.models.segnet import max_pool_with_argmax, max_unpool

Array = jax.Array

# Stages 2 and 3 after their first block: (kind, dilation) of each bottleneck.
ENET_STAGE23 = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 1),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 1),
    ("dilated", 16),
)


class PReLU(nn.Module):
    """Per-channel PReLU, ``max(x, 0) + alpha * min(x, 0)``, ``alpha`` initialised at 0.25."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


class _Act(nn.Module):
    # BN then PReLU (encoder) or ReLU (decoder), the pair after every ENet conv.
    prelu: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, activate: bool = True) -> Array:
        x = batch_norm(train, self.dtype, name="bn", relu=activate and not self.prelu)(x)
        if activate and self.prelu:
            x = PReLU(name="prelu")(x)
        return x


class AsymConv(nn.Module):
    """A ``k x 1`` (``vertical``) or ``1 x k`` conv without bias, 'same' padding."""

    features: int
    kernel_size: int = 5
    vertical: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        shape = (k, 1) if self.vertical else (1, k)
        kernel = self.param("kernel", conv_kernel_init, (*shape, x.shape[-1], self.features))
        pad = ((k // 2, k // 2), (0, 0)) if self.vertical else ((0, 0), (k // 2, k // 2))
        return lax.conv_general_dilated(
            x,
            kernel.astype(self.dtype),
            (1, 1),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def _space_to_depth_conv(x: Array, kernel: Array) -> Array:
    # A 2x2 stride-2 conv, zero-padded to even sizes (ceil mode): a matrix product.
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h2, w2, 4 * c)
    return jnp.einsum("bhwc,cf->bhwf", x, kernel.reshape(4 * c, -1))


def _depth_to_space_tconv(x: Array, kernel: Array, size: Sequence[int]) -> Array:
    # A 2x2 stride-2 transposed conv, cropped to `size` (at most twice x's).
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    y = jnp.einsum("bhwc,ijcf->bhiwjf", x, kernel).reshape(b, 2 * h, 2 * w, cout)
    return y[:, : int(size[0]), : int(size[1])]


class Bottleneck(nn.Module):
    """ENet's regular, dilated, asymmetric, downsampling or upsampling bottleneck.

    Attributes:
        features: output channels.
        kind: ``"regular"``, ``"dilated"``, ``"asymmetric"``, ``"down"`` or ``"up"``.
        dilation: dilation of the 3x3 conv (``"dilated"``).
        dropout: spatial dropout rate of the extension branch.
        prelu: PReLU activations (encoder), else ReLU (decoder).
        internal_ratio: the extension branch has ``in_channels // internal_ratio`` channels.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    kind: str = "regular"
    dilation: int = 1
    dropout: float = 0.1
    prelu: bool = True
    internal_ratio: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool,
        indices: Array | None = None,
        size: Sequence[int] | None = None,
    ):
        """``x`` -> output; ``"down"``: ``(output, pool indices)``; ``"up"`` needs both args."""
        cin = x.shape[-1]
        inner = cin // self.internal_ratio
        act = functools.partial(_Act, self.prelu, self.dtype)
        conv = functools.partial(Conv2D, dtype=self.dtype)
        if self.kind == "down":
            kernel = self.param("conv1", conv_kernel_init, (2, 2, cin, inner), jnp.float32)
            y = _space_to_depth_conv(x, kernel.astype(self.dtype))
        else:
            y = conv(inner, 1, name="conv1")(x)
        y = act(name="act1")(y, train=train)
        if self.kind == "up":
            kernel = self.param("tconv", conv_kernel_init, (2, 2, inner, inner), jnp.float32)
            y = _depth_to_space_tconv(y, kernel.astype(self.dtype), size)
        elif self.kind == "asymmetric":
            y = AsymConv(inner, vertical=True, dtype=self.dtype, name="conv2a")(y)
            y = act(name="act2a")(y, train=train)
            y = AsymConv(inner, vertical=False, dtype=self.dtype, name="conv2")(y)
        else:
            y = conv(inner, 3, dilation=self.dilation, name="conv2")(y)
        y = act(name="act2")(y, train=train)
        y = conv(self.features, 1, name="conv3")(y)
        y = act(name="act3")(y, train=train)
        if self.dropout > 0:
            y = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)
        pool_indices = None
        if self.kind == "down":
            main, pool_indices = max_pool_with_argmax(x)
            main = jnp.pad(main, ((0, 0), (0, 0), (0, 0), (0, self.features - cin)))
        elif self.kind == "up":
            main = conv(self.features, 1, name="main_conv")(x)
            main = act(name="main_act")(main, train=train, activate=False)
            main = max_unpool(main, indices, size)
        else:
            main = x
        out = main + y
        out = PReLU(name="out_prelu")(out) if self.prelu else nn.relu(out)
        return (out, pool_indices) if self.kind == "down" else out


class ENet(nn.Module):
    """ENet: initial block, 3 encoder and 2 decoder stages, full-resolution transposed conv.

    Attributes:
        num_classes: output classes.
        widths: channels of the initial block, stage 1, stages 2-3 (paper: 16, 64, 128).
        stage1_blocks: regular bottlenecks of stage 1 after its downsampling one (paper: 4).
        stage23: ``(kind, dilation)`` of the bottlenecks of stages 2 and 3 after stage 2's
            downsampling one (paper: ``ENET_STAGE23``, each stage).
        decoder_blocks: regular bottlenecks after each upsampling one (paper: 2, 1).
        aux_head: an optional head on the encoder's output (``"s8"``, stride 8).
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    widths: Sequence[int] = (16, 64, 128)
    stage1_blocks: int = 4
    stage23: Sequence[tuple[str, int]] = ENET_STAGE23
    decoder_blocks: Sequence[int] = (2, 1)
    aux_head: nn.Module | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, C]`` -> ``{"logits"}`` float32 ``[B, H, W, K]`` (+ ``"aux_logits"``)."""
        w0, w1, w2 = self.widths
        dt = self.dtype
        x = image.astype(dt)
        bands = x.shape[-1]
        if bands < w0:  # the paper's: conv features beside the max-pooled image bands
            conv = Conv2D(w0 - bands, 3, strides=2, dtype=dt, name="initial_conv")(x)
            x = jnp.concatenate([conv, max_pool(x, 3, 2, ((1, 1), (1, 1)))], -1)
        else:  # as many bands as the block's width or more (multispectral): the conv alone
            x = Conv2D(w0, 3, strides=2, dtype=dt, name="initial_conv")(x)
        x = _Act(True, dt, name="initial_act")(x, train=train)
        block = functools.partial(Bottleneck, dtype=dt)
        sizes = [x.shape[1:3]]
        x, indices1 = block(w1, "down", dropout=0.01, name="bottleneck1_0")(x, train=train)
        for i in range(self.stage1_blocks):
            x = block(w1, dropout=0.01, name=f"bottleneck1_{i + 1}")(x, train=train)
        sizes.append(x.shape[1:3])
        x, indices2 = block(w2, "down", name="bottleneck2_0")(x, train=train)
        for stage in (2, 3):
            for i, (kind, rate) in enumerate(self.stage23):
                j = i + 1 if stage == 2 else i
                x = block(w2, kind, rate, name=f"bottleneck{stage}_{j}")(x, train=train)
        features = {"s8": x}
        for stage, (width, indices, size, n) in enumerate(
            zip((w1, w0), (indices2, indices1), sizes[::-1], self.decoder_blocks, strict=True),
            start=4,
        ):
            up = block(width, "up", prelu=False, name=f"bottleneck{stage}_0")
            x = up(x, train=train, indices=indices, size=size)
            for i in range(n):
                x = block(width, prelu=False, name=f"bottleneck{stage}_{i + 1}")(x, train=train)
        kernel = self.param("fullconv", conv_kernel_init, (3, 3, w0, self.num_classes))
        logits = _transposed_conv3x3(x, kernel.astype(dt), image.shape[1:3])
        outputs = {"logits": logits.astype(jnp.float32)}
        if self.aux_head is not None:
            aux = self.aux_head(features, train=train).astype(jnp.float32)
            outputs["aux_logits"] = resize_bilinear(aux, image.shape[1:3])
        return outputs


def _transposed_conv3x3(x: Array, kernel: Array, size: Sequence[int]) -> Array:
    """PyTorch's ``ConvTranspose2d(k=3, stride=2, padding=1)`` with ``output_size=size``.

    The input dilated by 2 and padded by ``(1, 1 + output_padding)``, convolved with the
    spatially flipped kernel; ``size`` is ``2 h - 1`` or ``2 h``.
    """
    h, w = x.shape[1:3]
    pads = []
    for n, out in ((h, int(size[0])), (w, int(size[1]))):
        extra = out - (2 * n - 1)
        if extra not in (0, 1):
            raise ValueError(f"cannot upsample {(h, w)} by 2 to {tuple(size)}")
        pads.append((1, 1 + extra))
    return lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        (1, 1),
        pads,
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def enet_builder(**enet_kwargs) -> Callable[..., ENet]:
    """An ENet builder (``enet_kwargs``: the tiny variant's widths and depths)."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> ENet:
        """ENet (Paszke et al., 2016); logits at input resolution.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 8 (the encoder's, undone by the decoder).
            aux_head: an FCN auxiliary head on the encoder's output (a segjax extension).
        """
        check_fixed_stride("ENet", output_stride, 8)
        width = enet_kwargs.get("widths", (16, 64, 128))[-1]
        aux = (
            FCNHead(num_classes, channels=width // 4, in_key="s8", dtype=dtype)
            if aux_head
            else None
        )
        return ENet(num_classes, aux_head=aux, dtype=dtype, **enet_kwargs)

    return builder


MODELS: dict[str, Callable[..., ENet]] = {
    "enet": enet_builder(),
    # Tests: 8-32 channels, one block of each kind.
    "enet_tiny": enet_builder(
        widths=(8, 16, 32),
        stage1_blocks=1,
        stage23=(("dilated", 2), ("asymmetric", 1)),
        decoder_blocks=(1, 0),
    ),
}
