"""Every 2-D model takes any number of input bands (multispectral, RGB-D): forward passes
at 4 or 12 bands, whose logits depend on every band.

A representative subset (a plain conv stem, ResNet's, ENet's initial block) runs by
default; max-unpooling (SegNet), BiSeNet's two paths, HRNet and every registered
``*_tiny`` 2-D model run under ``-m slow``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import MODELS, build_model
from tests.models.rng import rbg_key

NUM_CLASSES = 3
# CRF-as-RNN compares RGB colours: it refuses other bands (test below).
RGB_ONLY = {"fcn_crfrnn_tiny"}
ALL_TINY = sorted(m for m in MODELS if m.endswith("_tiny") and m not in RGB_ONLY)
SUBSET = [
    ("unet_tiny", 4),
    pytest.param("deeplabv3plus_tiny", 12, marks=pytest.mark.slow),
    ("enet_tiny", 12),
    pytest.param("segnet_tiny", 4, marks=pytest.mark.slow),
    pytest.param("bisenetv1_tiny", 4, marks=pytest.mark.slow),
    pytest.param("fcn_hr_tiny", 4, marks=pytest.mark.slow),
]


def _leaves(outputs) -> list[np.ndarray]:
    return [np.asarray(x, np.float32) for x in jax.tree.leaves(outputs)]


def _check_bands(name: str, bands: int) -> None:
    model = build_model(name, num_classes=NUM_CLASSES)
    x = np.random.default_rng(bands).standard_normal((1, 32, 32, bands)).astype(np.float32)
    variables = jax.jit(lambda x: model.init(rbg_key(0), x, train=False))(x)
    # The image is read by kernels of `bands` input channels (the 2-D LSTM, which has no
    # convolution on its input, by `input_kernel`s over blocks of `bands`-value pixels).
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    assert any(k.ndim == 4 and k.shape[-2] == bands for _, k in leaves) or any(
        "input_kernel" in jax.tree_util.keystr(p) and k.shape[-2] % bands == 0 for p, k in leaves
    )
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, x)
    assert out["logits"].shape == (1, 32, 32, NUM_CLASSES)
    assert all(np.isfinite(a).all() for a in _leaves(out))
    # Changing only the last band changes the logits: no band is dropped on the way in.
    moved = x.copy()
    moved[..., -1] += 3.0
    assert not np.allclose(np.asarray(apply(variables, moved)["logits"]), out["logits"])


@pytest.mark.parametrize(("name", "bands"), SUBSET)
def test_models_take_any_number_of_bands(name, bands):
    _check_bands(name, bands)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_TINY)
def test_every_tiny_model_takes_4_bands(name):
    _check_bands(name, 4)


def test_crf_rnn_refuses_other_bands():
    model = build_model("fcn_crfrnn_tiny", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"CRF-as-RNN takes RGB images.*got 4 input bands"):
        jax.eval_shape(lambda: model.init(rbg_key(0), jnp.zeros((1, 32, 32, 4)), train=False))
