"""HRNet (Sun et al., CVPR 2019; Wang et al., TPAMI 2020), mmsegmentation's layout.

A stem of two stride-2 3x3 conv-BN-ReLUs (64 channels), stage 1 of ``Bottleneck`` blocks at
stride 4 (64 -> 256 channels), then stages 2-4 with 2, 3 and 4 parallel branches at strides
4, 8, 16, 32 and widths ``W, 2W, 4W, 8W``. Each stage is a sequence of ``HRModule``s:
``BasicBlock``s on every branch, then a fusion in which output branch ``i`` sums every input
branch ``j`` brought to its resolution and width (``j > i``: 1x1 conv-BN, upsampling by
``2 ** (j - i)``; ``j < i``: ``i - j`` stride-2 3x3 conv-BNs, ReLU between them) and applies a
ReLU. A transition before each stage adds the new, coarser branch with a stride-2
3x3 conv-BN-ReLU from the previous coarsest one (before stage 2: a 3x3 conv-BN-ReLU from
stage 1's 256 channels to ``W`` and a stride-2 one to ``2W``).

This is mmsegmentation's ``HRNet`` (``mmseg/models/backbones/hrnet.py``) with its
``hrnetv2_w{18,32,48}`` / ``hr18s`` configs (``multiscale_output=True``, all four branches
out of the last module). Outputs are keyed by stride, ``{"s4", "s8", "s16", "s32"}``;
``necks.resize_concat.ResizeConcat`` makes the HRNetV2 representation from them.

Odd sizes: every stride-2 conv maps ``n`` to ``ceil(n / 2)``, so branch ``k`` is
``ceil``-halved ``k`` times from stride 4 and the downsampling fusion paths reproduce exactly
those sizes. The upsampling paths (``fuse_upsample``):

- ``"bilinear"`` (default; mmsegmentation's ``HRModule``): bilinear upsampling by
  ``2 ** (j - i)`` (half-pixel centres), then a bilinear resize to the target branch's size,
  which is a no-op where the size is already right (inputs divisible by 32);
- ``"nearest"`` (timm's ``HighResolutionModule`` and the HRNet-Image-Classification code that
  its ImageNet weights come from): each pixel repeated ``2 ** (j - i)`` times, cropped to the
  target branch's size (bottom / right). timm adds without cropping, so it only runs where
  every branch is exactly twice the next (``ceil(H / 4)`` and ``ceil(W / 4)`` divisible by
  8, e.g. 61x93); there the two are equal.

Example:
    >>> model = HRNetW18Small()
    >>> x = jnp.zeros((1, 65, 65, 3))
    >>> feats = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
    >>> {k: v.shape for k, v in feats.items()}
    {'s4': (1, 17, 17, 18), 's8': (1, 9, 9, 36), 's16': (1, 5, 5, 72), 's32': (1, 3, 3, 144)}
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import BasicBlock, Bottleneck
from segjax.models.layers import ConvBNReLU, resize_bilinear

Array = jax.Array

BRANCH_KEYS = ("s4", "s8", "s16", "s32")
FUSE_UPSAMPLES = ("bilinear", "nearest")


def upsample_fused(x: Array, factor: int, size: Sequence[int], mode: str) -> Array:
    """A fusion path's upsampling: ``[B, h, w, C]`` by ``factor``, to ``[B, *size, C]``.

    ``size`` is at most ``factor`` times ``(h, w)`` (branches are ceil-halved); see the
    module docstring for the two modes.
    """
    h, w = int(size[0]), int(size[1])
    if mode == "nearest":
        x = jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
        return x[:, :h, :w]
    # Resize in float32: bilinear weights in bf16 band the result.
    y = resize_bilinear(x.astype(jnp.float32), (x.shape[1] * factor, x.shape[2] * factor))
    return resize_bilinear(y, (h, w)).astype(x.dtype)


class HRModule(nn.Module):
    """Parallel branches of ``BasicBlock``s, then the all-to-all multi-resolution fusion.

    Attributes:
        widths: channels of each branch, finest first.
        num_blocks: ``BasicBlock``s per branch.
        fuse_upsample: ``"bilinear"`` (mmseg) or ``"nearest"`` (timm); module docstring.
        dtype: compute dtype; parameters are float32.
    """

    widths: Sequence[int]
    num_blocks: int
    fuse_upsample: str = "bilinear"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], *, train: bool) -> list[Array]:
        """``xs[i]`` ``[B, h_i, w_i, widths[i]]`` -> the fused branches, same shapes."""
        conv = functools.partial(ConvBNReLU, dtype=self.dtype)
        xs = list(xs)
        for i, width in enumerate(self.widths):
            for b in range(self.num_blocks):
                xs[i] = BasicBlock(width, dtype=self.dtype, name=f"branch{i}_block{b}")(
                    xs[i], train=train
                )
        fused = []
        for i, width in enumerate(self.widths):
            y = xs[i]
            for j, x in enumerate(xs):
                if j > i:
                    z = conv(width, 1, act=None, name=f"fuse{i}_from{j}")(x, train=train)
                    z = upsample_fused(z, 2 ** (j - i), y.shape[1:3], self.fuse_upsample)
                elif j < i:
                    z = x
                    for k in range(i - j):
                        last = k == i - j - 1
                        z = conv(
                            width if last else self.widths[j],
                            3,
                            2,
                            act=None if last else nn.relu,
                            name=f"fuse{i}_from{j}_down{k}",
                        )(z, train=train)
                else:
                    continue
                y = y + z.astype(y.dtype)
            fused.append(nn.relu(y))
        return fused


class HRNet(nn.Module):
    """HRNet trunk: stem, stage 1 (bottlenecks), stages 2-4 of ``HRModule``s.

    Attributes:
        widths: branch widths ``(W, 2W, 4W, 8W)`` (W18: 18, 36, 72, 144).
        stage_modules: ``HRModule``s in stages 2, 3, 4 (mmseg: 1, 4, 3; W18-small: 1, 3, 2).
        stage_blocks: ``BasicBlock``s per branch in stages 2, 3, 4 (4, 4, 4; small: 2, 2, 2).
        stage1_blocks: ``Bottleneck``s of stage 1 (4; small: 2).
        stage1_width: the bottlenecks' inner width (64; output ``4 * stage1_width``).
        stem_width: channels of the two stem convs (64).
        fuse_upsample: the fusions' upsampling, ``"bilinear"`` (mmseg, the default) or
            ``"nearest"`` (timm's ImageNet models); see the module docstring.
        dtype: compute dtype; parameters are float32.
    """

    widths: Sequence[int] = (18, 36, 72, 144)
    stage_modules: Sequence[int] = (1, 4, 3)
    stage_blocks: Sequence[int] = (4, 4, 4)
    stage1_blocks: int = 4
    stage1_width: int = 64
    stem_width: int = 64
    fuse_upsample: str = "bilinear"
    dtype: jnp.dtype = jnp.float32

    def feature_channels(self) -> dict[str, int]:
        """Channels of each output key: the branch widths."""
        return dict(zip(BRANCH_KEYS, self.widths, strict=True))

    def feature_strides(self) -> dict[str, int]:
        """Spatial stride of each output key."""
        return {k: 4 * 2**i for i, k in enumerate(BRANCH_KEYS)}

    def _check(self) -> None:
        if len(self.widths) != 4:
            raise ValueError(f"HRNet widths must have 4 branches, got {tuple(self.widths)}")
        for field in ("stage_modules", "stage_blocks"):
            if len(getattr(self, field)) != 3:
                raise ValueError(
                    f"HRNet {field} must have one entry per stage 2-4, got "
                    f"{tuple(getattr(self, field))}"
                )
        if self.fuse_upsample not in FUSE_UPSAMPLES:
            raise ValueError(
                f"HRNet fuse_upsample must be one of {FUSE_UPSAMPLES}, got {self.fuse_upsample!r}"
            )

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` -> ``{"s4": [B, ceil(H/4), ceil(W/4), widths[0]], ..., "s32"}``."""
        self._check()
        conv = functools.partial(ConvBNReLU, dtype=self.dtype)
        x = conv(self.stem_width, 3, 2, name="stem_conv1")(x, train=train)
        x = conv(self.stem_width, 3, 2, name="stem_conv2")(x, train=train)
        for b in range(self.stage1_blocks):
            x = Bottleneck(self.stage1_width, dtype=self.dtype, name=f"layer1_block{b}")(
                x, train=train
            )
        xs = [x]
        for s, (modules, blocks) in enumerate(
            zip(self.stage_modules, self.stage_blocks, strict=True)
        ):
            n = s + 2  # branches in this stage
            widths = self.widths[:n]
            # Transition: the existing branches change width only before stage 2 (256 -> W);
            # the new branch comes from the previous coarsest one by a stride-2 conv.
            if xs[0].shape[-1] != widths[0]:
                xs[0] = conv(widths[0], 3, name=f"transition{s + 1}_branch0")(xs[0], train=train)
            xs.append(
                conv(widths[-1], 3, 2, name=f"transition{s + 1}_branch{n - 1}")(
                    xs[-1] if s else x, train=train
                )
            )
            for m in range(modules):
                xs = HRModule(
                    widths,
                    blocks,
                    fuse_upsample=self.fuse_upsample,
                    dtype=self.dtype,
                    name=f"stage{s + 2}_module{m}",
                )(xs, train=train)
        return dict(zip(BRANCH_KEYS, xs, strict=True))


# mmsegmentation's configs (configs/_base_/models/fcn_hr18.py and fcn_hr18s / hr48 overrides).
HRNetW18 = functools.partial(HRNet, widths=(18, 36, 72, 144))
HRNetW32 = functools.partial(HRNet, widths=(32, 64, 128, 256))
HRNetW48 = functools.partial(HRNet, widths=(48, 96, 192, 384))
# HRNetV2-W18-Small-v2 of the HRNet-Semantic-Segmentation repo (mmseg's ``fcn_hr18s``).
HRNetW18Small = functools.partial(
    HRNet,
    widths=(18, 36, 72, 144),
    stage_modules=(1, 3, 2),
    stage_blocks=(2, 2, 2),
    stage1_blocks=2,
)
# Tests and the tiny registered models: one module of one block per branch, 8-64 channels.
HRNetTiny = functools.partial(
    HRNet,
    widths=(8, 16, 32, 64),
    stage_modules=(1, 1, 1),
    stage_blocks=(1, 1, 1),
    stage1_blocks=1,
    stage1_width=8,
    stem_width=16,
)
