"""An RGB file's first convolution adapted to a model of other input bands (timm's rule)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model
from segjax.weights import PretrainedError, adapt_input_conv, match_pretrained, save_pretrained


def _expected(kernel: np.ndarray, bands: int) -> np.ndarray:
    # timm's adapt_input_conv written out band by band, independently of the code.
    h, w, _, o = kernel.shape
    out = np.zeros((h, w, bands, o), np.float64)
    if bands == 1:
        for c in range(3):
            out[:, :, 0] += kernel[:, :, c]
        return out
    if bands == 3:
        return kernel.astype(np.float64)
    for c in range(bands):
        out[:, :, c] = kernel[:, :, c % 3] * 3.0 / bands
    return out


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5, 12])
def test_adapt_input_conv_follows_timm(bands):
    kernel = np.random.default_rng(bands).standard_normal((7, 7, 3, 8)).astype(np.float32)
    got = adapt_input_conv(kernel, bands)
    assert got.shape == (7, 7, bands, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, _expected(kernel, bands), rtol=1e-5, atol=1e-6)
    # Bands that all equal one grey image see the RGB model's response to it (C >= 3
    # a multiple of 3, or C == 1).
    if bands % 3 == 0 or bands == 1:
        grey = np.random.default_rng(0).standard_normal((1, 9, 9, 1)).astype(np.float32)
        conv = lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        rgb = conv(np.repeat(grey, 3, -1), kernel)
        np.testing.assert_allclose(conv(np.repeat(grey, bands, -1), got), rgb, atol=1e-4)
    with pytest.raises(ValueError, match="only an RGB"):
        adapt_input_conv(np.zeros((3, 3, 4, 8), np.float32), bands)


@pytest.mark.parametrize("bands", [4, pytest.param(12, marks=pytest.mark.slow)])
def test_rgb_file_loads_into_a_model_of_more_bands(tmp_path, bands, caplog):
    model = build_model("deeplabv3plus_tiny", num_classes=3)
    key = jax.random.key(0)
    rgb = jax.jit(lambda x: model.init(key, x, train=False))(jnp.zeros((1, 32, 32, 3)))
    path = str(tmp_path / "rgb.msgpack")
    meta = {"source": "test", "name": "t", "file": "", "model": "", "scope": "all"}
    save_pretrained(path, jax.device_get(rgb), {**meta, "model_kwargs": "{}"})
    target = jax.eval_shape(lambda: model.init(key, jnp.zeros((1, 32, 32, bands)), train=False))
    with pytest.raises(PretrainedError, match=r"has shape \(\d+, \d+, 3, \d+\) in the file"):
        match_pretrained(path, target, scope="all")  # in_channels not given: 3
    with caplog.at_level(logging.WARNING):
        got = match_pretrained(path, target, scope="all", in_channels=bands)
    flat_rgb = {
        c: jax.tree_util.tree_flatten_with_path(rgb[c])[0] for c in ("params", "batch_stats")
    }
    adapted = []
    for collection, leaves in flat_rgb.items():
        for path_keys, value in leaves:
            key_tuple = tuple(k.key for k in path_keys)
            value = np.asarray(value)
            if got[collection][key_tuple].shape != value.shape:
                adapted.append(key_tuple)
                np.testing.assert_allclose(
                    got[collection][key_tuple], _expected(value, bands), rtol=1e-5, atol=1e-6
                )
            else:
                np.testing.assert_array_equal(got[collection][key_tuple], value)
    assert len(adapted) == 1 and adapted[0][-1] == "kernel"  # only the stem reads the image
    assert f"adapted to {bands} input bands" in caplog.text
