"""LinkNet (Chaurasia and Culurciello, 2017): a ResNet-18 encoder whose stage outputs are
added to the decoder ("links"), as one Linen module with the ``Segmentor`` contract.

Decoder block ``(m, n)`` (the paper's Fig. 3): 1x1 conv ``m -> m/4``, 3x3 full (transposed)
conv stride 2 ``m/4 -> m/4``, 1x1 conv ``m/4 -> n``, each followed by BN and ReLU. Decoder
blocks 4, 3, 2 output the channels of encoder stages 3, 2, 1 and are added to them; block 1
(64 -> 64) brings stride 4 to 2. The final block is a 3x3 full conv stride 2 (64 -> 32),
a 3x3 conv (32 -> 32), then the classifier.

Differences from the paper, with the reason: (1) The encoder is torchvision's ResNet-18,
whose first stage does not downsample, so the total stride is 32 and after the final
3x3 full conv the features are already at input resolution; the paper's last layer, a 2x2
full conv with stride 2, would then overshoot, so the classifier is a 1x1 conv (``32 * K +
K`` parameters instead of ``4 * 32 * K + K``). (2) Convs followed by BN have no bias.

Odd sizes: zero-padded at the bottom and right to a multiple of 32, cropped back.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.backbones.resnet import ResNet, ResNet18, ResNetMicro
from segjax.models.builder_parts import check_fixed_stride
from segjax.models.layers import ConvBNReLU, batch_norm, classifier_conv
from segjax.models.unet import _aux_logits, pad_to_multiple

Array = jax.Array


class FullConvBNReLU(nn.Module):
    """PyTorch ``ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1)`` -> BN -> ReLU.

    The output is exactly twice the input size. Lowered as XLA's input-dilated convolution.

    Attributes:
        features: output channels.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, Cin] -> [B, 2H, 2W, features]``."""
        # lax pads the stride-dilated input: (k - 1 - p, k - 1 - p + output_padding) = (1, 2).
        x = nn.ConvTranspose(
            self.features,
            (3, 3),
            strides=(2, 2),
            padding=((1, 2), (1, 2)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv",
        )(x)
        return batch_norm(train, self.dtype, name="bn", relu=True)(x)


class LinkNetDecoderBlock(nn.Module):
    """1x1 ``m -> m/4``, 3x3 full conv x2, 1x1 ``m/4 -> features``; each + BN + ReLU.

    Attributes:
        features: output channels ``n``.
        dtype: compute dtype; parameters are float32.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        """``[B, H, W, m] -> [B, 2H, 2W, features]``."""
        mid = x.shape[-1] // 4
        x = ConvBNReLU(mid, 1, dtype=self.dtype, name="reduce")(x, train=train)
        x = FullConvBNReLU(mid, dtype=self.dtype, name="upsample")(x, train=train)
        return ConvBNReLU(self.features, 1, dtype=self.dtype, name="expand")(x, train=train)


class LinkNet(nn.Module):
    """LinkNet on a ResNet encoder (``"s4"`` ... ``"s32"`` stage outputs, stride 32).

    Attributes:
        num_classes: output classes ``K``.
        encoder: a ``ResNet`` at output stride 32 (ResNet-18 in the paper).
        final_width: channels of the final full conv and conv (32 in the paper).
        aux_head: add ``"aux_logits"`` from an FCN head on the encoder's ``"s16"``.
        dtype: compute dtype; parameters are float32.
    """

    num_classes: int
    encoder: ResNet
    final_width: int = 32
    aux_head: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``[B, H, W, 3]`` (any H, W) -> ``{"logits": float32 [B, H, W, K]}`` (+ aux)."""
        if self.encoder.output_stride != 32:
            raise ValueError("LinkNet's encoder must have output_stride 32")
        h, w = image.shape[1:3]
        x = pad_to_multiple(image, 32)
        feats = self.encoder(x, train=train)
        keys = ("s4", "s8", "s16", "s32")
        d = feats["s32"]
        for i in (3, 2, 1):
            d = LinkNetDecoderBlock(
                feats[keys[i - 1]].shape[-1], dtype=self.dtype, name=f"decoder{i + 1}"
            )(d, train=train)
            d = d + feats[keys[i - 1]]
        d = LinkNetDecoderBlock(d.shape[-1], dtype=self.dtype, name="decoder1")(d, train=train)
        d = FullConvBNReLU(self.final_width, dtype=self.dtype, name="final_fullconv")(
            d, train=train
        )
        d = ConvBNReLU(self.final_width, 3, dtype=self.dtype, name="final_conv")(d, train=train)
        logits = classifier_conv(self.num_classes, self.dtype, name="classifier")(d)
        outputs = {"logits": logits[:, :h, :w].astype(jnp.float32)}
        if self.aux_head:
            aux = _aux_logits(feats["s16"], self.num_classes, self.dtype, train, d.shape[1:3])
            outputs["aux_logits"] = aux[:, :h, :w]
        return outputs


def linknet_builder(encoder_cls: Callable[..., ResNet]) -> Callable[..., LinkNet]:
    """A LinkNet builder on the given ResNet encoder."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
    ) -> LinkNet:
        """LinkNet on a ResNet encoder; see ``segjax.models.linknet``.

        Args:
            num_classes: output classes.
            dtype: compute dtype; params are float32.
            output_stride: None or 32 (the decoder undoes the encoder's five strides).
            aux_head: add an FCN auxiliary head on the encoder's ``"s16"``.
        """
        check_fixed_stride("LinkNet", output_stride, 32)
        return LinkNet(num_classes, encoder_cls(dtype=dtype), aux_head=aux_head, dtype=dtype)

    return builder


MODELS: dict[str, Callable[..., LinkNet]] = {
    "linknet_resnet18": linknet_builder(ResNet18),
    "linknet_tiny": linknet_builder(ResNetMicro),
}
