"""Discriminators of adversarial segmentation: they look at label maps, not images alone.

A discriminator takes a *label map* `[B, H, W, K]` (a one-hot ground truth, or a
segmentor's class probabilities) and, for some variants, the image `[B, H, W, 3]`, and
returns logits of "this label map is the ground truth":

- `LabelMapDiscriminator` (Luc et al., "Semantic Segmentation using Adversarial
  Networks", 2016): one logit per image `[B]`. Variants of its input, as in the paper:
  `"labels"` (the label map alone), `"basic"` (the label map and the image, each through
  its own convolutions, concatenated) and `"product"` (the label map multiplied with each
  colour channel of the image: `3K` input channels).
- `ConfidenceDiscriminator` (Hung et al., "Adversarial Learning for Semi-Supervised
  Semantic Segmentation", 2018): fully convolutional, one logit per pixel `[B, H, W]`
  (the confidence map that selects pixels for the semi-supervised loss).

They have no normalisation layers (a batch holds only real or only predicted maps, whose
statistics would give the answer away) and use leaky ReLUs (slope 0.2), as both papers.
They are not segmentors, so they are not in `segjax.models.MODELS`; the adversarial task
(`segjax/tasks/adversarial.py`) builds them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import Conv2D, max_pool, resize_bilinear

Array = jax.Array

LABEL_MAP_VARIANTS = ("labels", "basic", "product")


def _leaky(x: Array) -> Array:
    return nn.leaky_relu(x, 0.2)


# LeCun-normal (variance 1 / fan_in), as PyTorch's default conv init that both papers
# used: without normalisation layers, He init makes the first logits large (|logit| ~ 10).
_disc_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class LabelMapDiscriminator(nn.Module):
    """Luc et al.'s discriminator: is this label map (with this image) the ground truth?

    Layers (width `w = features`): input branch(es) -> conv3x3 2w -> max pool 2 ->
    conv3x3 4w -> max pool 2 -> conv3x3 4w -> conv3x3 1 -> mean over space. Input
    branches: the label map through a 5x5 conv to `w` channels; `"basic"` adds the image
    through 5x5 convs to `w / 4`, then `w` channels, concatenated; `"product"` replaces
    both by one 5x5 conv over the `3K` products `label_map[..., k] * image[..., c]`.
    (The paper's Pascal VOC model: `w = 64`, a 2-way softmax output, which is one logit.)

    Luc et al. show the discriminator the label maps at the segmentor's output resolution
    (1/8 of the image's for Pascal VOC) and the image downsampled to it: `input_stride`
    average-pools both by that factor first (1: full resolution; 8 costs 1/64 of it).

    Attributes:
        variant: `"labels"`, `"basic"` or `"product"`.
        features: `w`.
        input_stride: the inputs are average-pooled by this factor first.
        dtype: compute dtype; parameters float32, logits float32.
    """

    variant: str = "basic"
    features: int = 64
    input_stride: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, label_map: Array, image: Array, *, train: bool = False) -> Array:
        """`label_map` [B, H, W, K], `image` [B, H, W, 3] -> float32 logits [B]."""
        del train  # no dropout, no normalisation
        if self.variant not in LABEL_MAP_VARIANTS:
            raise ValueError(
                f"discriminator variant {self.variant!r}; expected one of {LABEL_MAP_VARIANTS}"
            )
        w = self.features

        def conv(features: int, k: int, name: str):
            return Conv2D(
                features, k, use_bias=True, dtype=self.dtype, kernel_init=_disc_init, name=name
            )

        label_map = label_map.astype(self.dtype)
        image = image.astype(self.dtype)
        if self.input_stride > 1:
            s = (self.input_stride, self.input_stride)
            label_map, image = (
                nn.avg_pool(x, s, strides=s, padding="SAME", count_include_pad=False)
                for x in (label_map, image)
            )
        if self.variant == "product":
            b, h, wd, k = label_map.shape
            products = (label_map[..., :, None] * image[..., None, :]).reshape(b, h, wd, 3 * k)
            x = _leaky(conv(w, 5, "product_conv")(products))
        else:
            x = _leaky(conv(w, 5, "label_conv")(label_map))
            if self.variant == "basic":
                y = _leaky(conv(max(w // 4, 1), 5, "image_conv1")(image))
                y = _leaky(conv(w, 5, "image_conv2")(y))
                x = jnp.concatenate([x, y], axis=-1)
        x = _leaky(conv(2 * w, 3, "conv1")(x))
        x = max_pool(x, 2, 2)
        x = _leaky(conv(4 * w, 3, "conv2")(x))
        x = max_pool(x, 2, 2)
        x = _leaky(conv(4 * w, 3, "conv3")(x))
        x = conv(1, 3, "logit")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))


class ConfidenceDiscriminator(nn.Module):
    """Hung et al.'s fully convolutional discriminator: a confidence logit per pixel.

    Five 4x4 convolutions of stride 2 (widths `w, 2w, 4w, 8w, 1`, leaky ReLU between
    them), the logit map upsampled bilinearly to the input size (inputs of at least
    32x32). The paper uses `w = 64`; it does not look at the image.

    Attributes:
        features: `w`.
        dtype: compute dtype; parameters float32, logits float32.
    """

    features: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, label_map: Array, image: Array | None = None, *, train=False) -> Array:
        """`label_map` [B, H, W, K] (`image` unused) -> float32 logits [B, H, W]."""
        del image, train
        if min(label_map.shape[1:3]) < 32:
            raise ValueError(
                f"ConfidenceDiscriminator: label map {label_map.shape[1:3]} is too small for "
                "its five stride-2 convolutions; it needs at least 32x32"
            )
        w = self.features
        x = label_map.astype(self.dtype)
        for i, features in enumerate((w, 2 * w, 4 * w, 8 * w, 1)):
            x = nn.Conv(
                features,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                name=f"conv{i + 1}" if features != 1 else "logit",
            )(x)
            if features != 1:
                x = _leaky(x)
        return resize_bilinear(x.astype(jnp.float32), label_map.shape[1:3])[..., 0]


class SeganCritic(nn.Module):
    """SegAN's critic (Xue et al., "SegAN: Adversarial Network with Multi-scale L1 Loss
    for Medical Image Segmentation", 2018): hierarchical features of a masked image.

    Input: the image masked by each channel of the label map, `label_map[..., k] *
    image[..., c]` (`3K` channels; for binary segmentation the paper's `x * mask` is the
    foreground part of it). Layers: 4x4 convolutions of stride 2, widths `w, 2w, 4w`,
    leaky ReLU (the paper's critic mirrors its segmentor's encoder, with BatchNorm after
    the first layer; none here, as the other discriminators). Returns every level's
    features, the input first: the multi-scale L1 loss compares them all.

    Attributes:
        features: `w`.
        num_layers: convolutions (each halves the size).
        dtype: compute dtype; parameters float32, features float32.
    """

    features: int = 64
    num_layers: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, label_map: Array, image: Array, *, train: bool = False) -> list[Array]:
        """`label_map` [B, H, W, K], `image` [B, H, W, 3] -> [input, level 1, ...]."""
        del train
        b, h, w, k = label_map.shape
        x = (label_map[..., :, None] * image[..., None, :]).reshape(b, h, w, 3 * k)
        x = x.astype(self.dtype)
        levels = [x.astype(jnp.float32)]
        for i in range(self.num_layers):
            x = nn.Conv(
                self.features * 2**i,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                name=f"conv{i + 1}",
            )(x)
            x = _leaky(x)
            levels.append(x.astype(jnp.float32))
        return levels


def multiscale_l1(real: list[Array], fake: list[Array]) -> Array:
    """SegAN's loss: the mean over levels of the mean absolute difference of features."""
    return sum(jnp.mean(jnp.abs(r - f)) for r, f in zip(real, fake, strict=True)) / len(real)


class ImageGenerator(nn.Module):
    """A small DCGAN-style generator for Souly et al.'s GAN classifier: noise -> images.

    `z` [B, noise_dim] -> dense to [B, H/8, W/8, 4w] -> three 4x4 transposed
    convolutions of stride 2 (widths `2w, w, 3`, ReLU between them) -> tanh, read as
    pixels `(tanh + 1) * 127.5` in 0-255 units and normalised with `mean` / `std` (the
    input pipeline's), so that generated images live where the real ones do. No
    normalisation layers (a generated batch is never mixed with a real one, and the
    state keeps BatchNorm statistics for the segmentor only).

    Attributes:
        size: (H, W) of the images, multiples of 8.
        features: `w`.
        mean, std: per-channel pixel statistics (0-255 units) of the input pipeline.
        dtype: compute dtype; parameters float32, images float32.
    """

    size: tuple[int, int]
    features: int = 64
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        """`z` [B, noise_dim] -> normalised images float32 [B, H, W, 3]."""
        h, w = self.size
        if h % 8 or w % 8:
            raise ValueError(f"ImageGenerator: size {self.size} must be multiples of 8")
        f = self.features
        x = nn.Dense((h // 8) * (w // 8) * 4 * f, dtype=self.dtype, name="project")(z)
        x = nn.relu(x.reshape(z.shape[0], h // 8, w // 8, 4 * f))
        for i, features in enumerate((2 * f, f, 3)):
            x = nn.ConvTranspose(
                features,
                (4, 4),
                strides=(2, 2),
                padding="SAME",
                dtype=self.dtype,
                name=f"up{i + 1}",
            )(x)
            if features != 3:
                x = nn.relu(x)
        pixels = (jnp.tanh(x.astype(jnp.float32)) + 1.0) * 127.5
        return (pixels - jnp.asarray(self.mean)) / jnp.asarray(self.std)
