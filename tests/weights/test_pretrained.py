"""Layout conversions, converted files, ``load_pretrained`` and the command line."""

from __future__ import annotations

import json
import logging
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models import build_model
from segjax.models.layers import ConvBNReLU
from segjax.weights import (
    ConversionError,
    PretrainedError,
    WeightFileError,
    load_pretrained,
    read_pretrained,
    save_pretrained,
)
from segjax.weights.__main__ import main
from segjax.weights.convert import Layout, Rule, abstract_variables, convert_state_dict

RNG = np.random.default_rng(0)


def _naive_conv(x: np.ndarray, w_oihw: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """PyTorch's conv2d (NCHW input, OIHW kernel, symmetric padding) in loops; NHWC out."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, _, k, _ = w_oihw.shape
    out_h = (x.shape[2] - k) // stride + 1
    out_w = (x.shape[3] - k) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, o), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            y[:, i, j] = np.einsum("bchw,ochw->bo", patch, w_oihw)
    return y


@pytest.mark.parametrize("torch_eps", [1e-5, 1e-3])
def test_conv_and_batchnorm_conversion(torch_eps):
    # OIHW -> HWIO, symmetric padding of a stride-2 conv (PyTorch's, not "SAME"), BN
    # weight/bias/running stats, and another epsilon folded into the variance.
    cin, cout = 3, 4
    state = {
        "c.weight": RNG.normal(size=(cout, cin, 3, 3)).astype(np.float32),
        "b.weight": RNG.uniform(0.5, 1.5, cout).astype(np.float32),
        "b.bias": RNG.normal(size=cout).astype(np.float32),
        "b.running_mean": RNG.normal(size=cout).astype(np.float32),
        "b.running_var": RNG.uniform(0.5, 2.0, cout).astype(np.float32),
        "b.num_batches_tracked": np.array(7),
    }
    module = ConvBNReLU(cout, 3, strides=2, act=None)
    layout = Layout([Rule("conv", "c"), Rule("bn", "b")], bn_eps=torch_eps)
    variables = convert_state_dict(state, layout, abstract_variables(module, size=9))
    x = RNG.normal(size=(2, cin, 9, 8)).astype(np.float32)
    y = module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    conv = _naive_conv(x.astype(np.float64), state["c.weight"].astype(np.float64), 2, 1)
    expected = (conv - state["b.running_mean"]) / np.sqrt(state["b.running_var"] + torch_eps)
    expected = expected * state["b.weight"] + state["b.bias"]
    assert y.shape == expected.shape == (2, 5, 4, cout)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)


def test_input_channel_permutation():
    state = {"c.weight": RNG.normal(size=(2, 10, 1, 1)).astype(np.float32)}
    module = flax.linen.Conv(2, (1, 1), use_bias=False, name="conv")
    layout = Layout([Rule("", "c", permute_in=lambda n: np.roll(np.arange(n), -2))])
    x = jnp.zeros((1, 4, 4, 10))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
    variables = convert_state_dict(state, layout, shapes)
    kernel = variables["params"]["kernel"]
    # segjax channel c reads PyTorch channel (c + 2) mod 10.
    np.testing.assert_array_equal(kernel[0, 0, 0], state["c.weight"][:, 2, 0, 0])
    np.testing.assert_array_equal(kernel[0, 0, 9], state["c.weight"][:, 1, 0, 0])


def test_conversion_errors_name_the_tensor():
    module = ConvBNReLU(4, 3)
    shapes = abstract_variables(module, size=8)
    layout = Layout([Rule("conv", "c"), Rule("bn", "b")])
    good = {
        "c.weight": np.zeros((4, 3, 3, 3), np.float32),
        "b.weight": np.ones(4, np.float32),
        "b.bias": np.zeros(4, np.float32),
        "b.running_mean": np.zeros(4, np.float32),
        "b.running_var": np.ones(4, np.float32),
    }
    convert_state_dict(good, layout, shapes)
    with pytest.raises(
        ConversionError,
        match=r"f\.pth: tensor 'c\.weight' has shape \(4, 3, 5, 5\), expected \(4, 3, 3, 3\)",
    ):
        convert_state_dict(
            {**good, "c.weight": np.zeros((4, 3, 5, 5))}, layout, shapes, source="f.pth"
        )
    with pytest.raises(ConversionError, match=r"1 missing tensor\(s\): b\.running_var \(4,\)"):
        convert_state_dict({k: v for k, v in good.items() if k != "b.running_var"}, layout, shapes)
    with pytest.raises(ConversionError, match=r"1 unexpected tensor\(s\): extra\.weight \(2,\)"):
        convert_state_dict({**good, "extra.weight": np.zeros(2)}, layout, shapes)
    ignoring = Layout(layout.rules, ignore=(r"extra\..*",))
    convert_state_dict({**good, "extra.weight": np.zeros(2)}, ignoring, shapes)


def _variables(name: str, num_classes: int, seed: int, **kwargs):
    """Random variables with the structure of a model (nothing compiled: shapes by tracing)."""
    model = build_model(name, num_classes=num_classes, **kwargs)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract_variables(model, size=33)
    )


def _save(path, variables, **meta):
    base = {
        "source": "test",
        "name": "x",
        "file": "x.pth",
        "model": "",
        "model_kwargs": "{}",
        "scope": "all",
    }
    save_pretrained(path, variables, {**base, **meta})
    return str(path)


def _equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_backbone_scope_takes_only_the_backbone(tmp_path):
    fresh = _variables("deeplabv3plus_tiny", 6, seed=0)
    other = _variables("deeplabv3plus_tiny", 6, seed=1)
    backbone_only = {k: {"backbone": v["backbone"]} for k, v in other.items()}
    path = _save(tmp_path / "b.msgpack", backbone_only, scope="backbone")
    loaded = load_pretrained(path, fresh, scope="backbone")
    assert _equal(loaded["params"]["backbone"], other["params"]["backbone"])
    assert _equal(loaded["batch_stats"]["backbone"], other["batch_stats"]["backbone"])
    for part in ("neck", "head"):
        assert _equal(loaded["params"][part], fresh["params"][part])
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
    # A whole-model file gives its backbone too; a model without a "backbone" subtree cannot.
    whole = _save(tmp_path / "w.msgpack", other)
    assert _equal(load_pretrained(whole, fresh)["params"]["backbone"], other["params"]["backbone"])
    with pytest.raises(PretrainedError, match="the model has no backbone subtree"):
        load_pretrained(whole, _variables("unet_tiny", 6, seed=0), scope="backbone")
    # SegNet's VGG-BN encoder is its backbone.
    segnet, other = _variables("segnet_tiny", 6, seed=0), _variables("segnet_tiny", 6, seed=2)
    vgg = {k: {"backbone": v["encoder"]} for k, v in other.items()}
    loaded = load_pretrained(_save(tmp_path / "vgg.msgpack", vgg), segnet, scope="backbone")
    assert _equal(loaded["params"]["encoder"], other["params"]["encoder"])
    assert _equal(loaded["batch_stats"]["encoder"], other["batch_stats"]["encoder"])


def test_all_scope_reinitialises_a_classifier_of_another_class_count(tmp_path, caplog):
    fresh = _variables("deeplabv3plus_tiny", 3, seed=0, aux_head=True)
    other = _variables("deeplabv3plus_tiny", 21, seed=1, aux_head=True)
    path = _save(tmp_path / "w.msgpack", other, model_kwargs=json.dumps({"num_classes": 21}))
    with caplog.at_level(logging.WARNING):
        loaded = load_pretrained(path, fresh, scope="all")
    classifiers = [("head", "classifier"), ("aux_head", "classifier")]
    for part, name in classifiers:
        assert _equal(loaded["params"][part][name], fresh["params"][part][name])
    assert _equal(loaded["params"]["neck"], other["params"]["neck"])
    assert "head/classifier/conv/kernel (1, 1, 64, 21) -> (1, 1, 64, 3)" in caplog.text
    assert "class count differs" in caplog.text


def test_all_scope_refuses_what_does_not_fit(tmp_path):
    fresh = _variables("deeplabv3plus_tiny", 6, seed=0)
    with_aux = _variables("deeplabv3plus_tiny", 6, seed=1, aux_head=True)
    path = _save(tmp_path / "aux.msgpack", with_aux)
    with pytest.raises(PretrainedError, match=r"not in the model: params/aux_head/"):
        load_pretrained(path, fresh, scope="all")
    with pytest.raises(PretrainedError, match=r"missing from the file: params/aux_head/"):
        load_pretrained(_save(tmp_path / "plain.msgpack", fresh), with_aux, scope="all")
    narrow = jax.tree.map(np.asarray, fresh)
    kernel = narrow["params"]["backbone"]["layer1_block0"]["conv1"]["conv"]
    kernel["kernel"] = kernel["kernel"][..., :8]
    expected = (
        r"params/backbone/layer1_block0/conv1/conv/kernel has shape \(3, 3, 16, 8\) in the "
        r"file, the model expects \(3, 3, 16, 16\)"
    )
    with pytest.raises(PretrainedError, match=expected):
        load_pretrained(_save(tmp_path / "narrow.msgpack", narrow), fresh, scope="backbone")
    with pytest.raises(PretrainedError, match="pretrained_scope must be one of"):
        load_pretrained(path, fresh, scope="head")


def test_unreadable_pretrained_files(tmp_path):
    fresh = _variables("deeplabv3plus_tiny", 6, seed=0)
    with pytest.raises(WeightFileError, match="no such pretrained file"):
        load_pretrained(str(tmp_path / "none.msgpack"), fresh)
    torch_file = tmp_path / "resnet50.pth"
    torch_file.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WeightFileError, match=r"resnet50\.pth.*convert it first"):
        load_pretrained(str(torch_file), fresh)
    path = _save(tmp_path / "ok.msgpack", fresh)
    with open(path, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"truncated\.msgpack"):
        read_pretrained(str(truncated))


def test_command_line(fast_references, tmp_path, capsys):
    src = os.path.join(fast_references, "tv_resnet18", "weights.pth")
    out = tmp_path / "resnet18.msgpack"
    assert main(["convert", "--from", "torchvision", "--model", "resnet18", src, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "11,176,512 parameters" in printed  # torchvision resnet18 without its fc layer
    assert "--config.model.pretrained_scope=backbone" in printed
    variables, meta = read_pretrained(str(out))
    assert meta["scope"] == "backbone" and meta["name"] == "resnet18"
    # Shapes are all load_pretrained reads of the model's variables.
    fresh = abstract_variables(build_model("deeplabv3plus_resnet18", num_classes=6))
    loaded = load_pretrained(str(out), fresh, scope="backbone")
    assert _equal(loaded["params"]["backbone"], variables["params"]["backbone"])
    bad = tmp_path / "bad.msgpack"
    assert main(["convert", "--from", "torchvision", "--model", "resnet34", src, str(bad)]) == 2
    assert "missing tensor" in capsys.readouterr().err and not bad.exists()
    assert main(["convert", "--from", "timm", "--model", "resnet9000", src, str(bad)]) == 2
    assert "unknown timm model 'resnet9000'" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    assert main(["list"]) == 0
