"""CRF-as-RNN (Zheng et al., 2015): dense-CRF mean-field steps as a trainable layer.

`CRFasRNN` wraps any segmentor: the segmentor's logits are the unaries (U = -logits),
and `iterations` mean-field updates of the fully connected CRF (`segjax.crf.mean_field`:
the appearance and smoothness kernels, message passing, compatibility transform, unary
addition, softmax) follow, all differentiable, so the network and the CRF train end to
end. Learnable: the two kernel weights (initialised to w_a, w_s) and the [K, K]
compatibility matrix (initialised to Potts). The kernel widths are fixed, as in the
paper. The output `logits` are the last update's scores, whose softmax is the CRF's Q.

The image colours of the appearance kernel are the normalised input un-normalised with
`mean` and `std` (ImageNet statistics, 0-255, as configs/common.py's `input.mean/std`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax import crf
from segjax.models.fcn import MODELS as FCN_MODELS

Array = jax.Array
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class CRFasRNN(nn.Module):
    """A segmentor followed by mean-field CRF iterations with learnable weights.

    Attributes:
        segmentor: any model returning ``{"logits": [B, H, W, K], ...}``.
        num_classes: K.
        params: the CRF (kernel widths, initial weights, iterations, filtering).
        mean, std: the input normalisation, to recover 0-255 colours.
    """

    segmentor: nn.Module
    num_classes: int
    crf_params: crf.CRFParams
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @nn.compact
    def __call__(self, image: Array, *, train: bool) -> dict[str, Array]:
        """``image`` [B, H, W, 3] normalised -> the segmentor's outputs, CRF ``logits``."""
        if image.shape[-1] != len(self.mean):
            raise ValueError(
                f"CRF-as-RNN takes RGB images (its appearance kernel compares colours in "
                f"0-255): got {image.shape[-1]} input bands; use config.model.in_channels=3 "
                "or a model without the CRF (e.g. fcn8s_tiny)"
            )
        out = dict(self.segmentor(image, train=train))
        p = self.crf_params
        wa = self.param("bilateral_weight", nn.initializers.constant(p.bilateral_weight), ())
        ws = self.param("spatial_weight", nn.initializers.constant(p.spatial_weight), ())
        mu = self.param("compatibility", lambda _, k: jnp.asarray(crf.potts(k)), self.num_classes)
        rgb = image.astype(jnp.float32) * jnp.asarray(self.std) + jnp.asarray(self.mean)
        unary = -out["logits"].astype(jnp.float32)

        def one(args):
            u, im = args
            return crf.mean_field(
                u, im, p, mu, bilateral_weight=wa, spatial_weight=ws, return_logits=True
            )

        out["logits"] = jax.lax.map(one, (unary, rgb))
        return out


def crfrnn_builder(base: str, crf_params: crf.CRFParams) -> Callable[..., CRFasRNN]:
    """CRF-as-RNN on the registered FCN ``base`` with the CRF ``crf_params``."""

    def builder(
        *,
        num_classes: int,
        dtype: jnp.dtype = jnp.float32,
        output_stride: int | None = None,
        aux_head: bool = False,
        iterations: int = crf_params.iterations,
    ) -> CRFasRNN:
        """CRF-as-RNN (Zheng et al.) on an FCN.

        Args:
            num_classes: output classes.
            dtype: the FCN's compute dtype (the CRF runs in float32).
            output_stride: passed to the FCN (None or 32).
            aux_head: the FCN's auxiliary head on pool4 (its logits skip the CRF).
            iterations: mean-field iterations (the paper: 5 in training, 10 at test).
        """
        segmentor = FCN_MODELS[base](
            num_classes=num_classes, dtype=dtype, output_stride=output_stride, aux_head=aux_head
        )
        params = dataclasses.replace(crf_params, iterations=iterations)
        return CRFasRNN(segmentor, num_classes, params)

    return builder


# The paper's kernels (crfasrnn's defaults): theta_alpha 160, theta_beta 3, theta_gamma 3,
# weights 5 and 3, 5 iterations. theta_beta = 3 makes the bilateral grid large (see
# docs/crf.md); the VGG-16 variant keeps it, the tiny one uses wider colour kernels so
# that its grid stays small on 64x64 images.
PAPER_CRF = crf.CRFParams(
    iterations=5,
    bilateral_weight=5.0,
    theta_alpha=160.0,
    theta_beta=3.0,
    spatial_weight=3.0,
    theta_gamma=3.0,
    method="auto",
)
TINY_CRF = crf.CRFParams(
    iterations=3,
    bilateral_weight=3.0,
    theta_alpha=16.0,
    theta_beta=32.0,
    spatial_weight=3.0,
    theta_gamma=3.0,
    method="auto",
)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn8s_crfrnn_vgg16": crfrnn_builder("fcn8s_vgg16", PAPER_CRF),
    "fcn_crfrnn_tiny": crfrnn_builder("fcn8s_tiny", TINY_CRF),
}
