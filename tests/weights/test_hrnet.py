"""HRNet / OCRNet files end to end: `convert` on full-size timm and mmseg files, then the
converted trees applied to the registered models in both scopes (what
`--config.model.pretrained` checks before a run starts; `-m slow`: a frozen training step
from each, through the loop).

The PyTorch side (`torch_reference.py`) writes a timm `hrnet_w18_small_v2` (`.safetensors`,
with its ImageNet head) and an mmseg `ocrnet_hr18s` checkpoint layout (19 classes); their
logits parity is `test_parity.py`'s. Only shapes are traced here, nothing is compiled.
"""

from __future__ import annotations

import json
import logging
import os

import flax
import jax
import numpy as np
import pytest

from segjax import sharding, train_lib
from segjax.checkpoint import Checkpointer
from segjax.models import build_model
from segjax.weights import match_pretrained, read_pretrained
from segjax.weights.__main__ import main
from segjax.weights.convert import abstract_variables
from tests.weights.test_finetune import _frozen
from tests.weights.torch_env import run_reference

# timm's hrnet_w18_small_v2 trunk (stem, stages 1-4; not incre/downsamp/final/classifier),
# the sum of its p.numel() in timm 1.0 (as pinned in tests/models/test_zoo_hrnet_ocr.py).
TIMM_W18_SMALL_TRUNK = 3_860_720


@pytest.fixture(scope="module")
def hrnet_files(tmp_path_factory) -> dict[str, str]:
    jobs = [
        {
            "id": "timm_w18s",
            "source": "timm",
            "name": "hrnet_w18_small_v2",
            "size": [29, 29],
            "kwargs": {},
            "format": "safetensors",
            "seed": 3,
        },
        {
            "id": "mmseg_ocr18s",
            "source": "mmseg",
            "name": "ocrnet_hr18s",
            "size": [29, 29],
            "kwargs": {"num_classes": 19},
            "format": "zip",
            "seed": 4,
        },
    ]
    out = run_reference(jobs, str(tmp_path_factory.mktemp("torch_hrnet")))
    return {
        "timm": os.path.join(out, "timm_w18s", "weights.safetensors"),
        "mmseg": os.path.join(out, "mmseg_ocr18s", "weights.pth"),
    }


def _flat_names(replacements: dict) -> set[str]:
    return {f"{c}/{'/'.join(k)}" for c, tree in replacements.items() for k in tree}


def _flatten(tree) -> list[tuple[str, ...]]:
    return list(flax.traverse_util.flatten_dict(dict(tree)))


def test_timm_hrnet_backbone_file(hrnet_files, tmp_path, capsys):
    out = str(tmp_path / "w18s.msgpack")
    argv = ["convert", "--from", "timm", "--model", "hrnet_w18_small_v2", hrnet_files["timm"]]
    assert main([*argv, out]) == 0
    printed = capsys.readouterr().out
    assert f"{TIMM_W18_SMALL_TRUNK:,} parameters" in printed  # the head's tensors ignored
    assert "--config.model.pretrained_scope=backbone" in printed
    variables, meta = read_pretrained(out)
    assert meta["scope"] == "backbone" and set(variables["params"]) == {"backbone"}
    # The trunk of the registered W18-small models, whichever fusion they use.
    fresh = abstract_variables(build_model("ocrnet_hr18s", num_classes=7, fuse_upsample="nearest"))
    replaced = match_pretrained(out, fresh, scope="backbone")
    backbone = {
        f"{c}/backbone/{'/'.join(k)}"
        for c in ("params", "batch_stats")
        for k in _flatten(fresh[c]["backbone"])
    }
    assert _flat_names(replaced) == backbone
    # A timm file is not an mmseg checkpoint: named, nothing written.
    bad = tmp_path / "bad.msgpack"
    assert main(["convert", "--from", "mmseg", "--model", "fcn_hr18s", argv[5], str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no classifier tensor 'decode_head.conv_seg.weight'" in err and not bad.exists()


def test_mmseg_ocrnet_whole_model_file(hrnet_files, tmp_path, capsys, caplog):
    out = str(tmp_path / "ocr18s.msgpack")
    argv = ["convert", "--from", "mmseg", "--model", "ocrnet_hr18s", hrnet_files["mmseg"], out]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "--config.model.name=ocrnet_hr18s" in printed
    assert "--config.model.aux_head=true" in printed
    _, meta = read_pretrained(out)
    assert meta["scope"] == "all"
    assert json.loads(meta["model_kwargs"]) == {"num_classes": 19, "aux_head": True}
    # Fine-tuning on 3 classes: both classifiers (the OCR head's and the soft regions')
    # keep their initialisation, every other tensor comes from the file.
    fresh = abstract_variables(build_model("ocrnet_hr18s", num_classes=3, aux_head=True))
    with caplog.at_level(logging.WARNING):
        replaced = match_pretrained(out, fresh, scope="all")
    every = {f"{c}/{'/'.join(k)}" for c in ("params", "batch_stats") for k in _flatten(fresh[c])}
    kept = every - _flat_names(replaced)
    assert kept == {
        f"params/{m}/classifier/conv/{leaf}"
        for m in ("head", "neck/fcn")
        for leaf in ("kernel", "bias")
    }
    assert caplog.text.count("class count differs") == 4
    kernel = replaced["params"][("head", "bottleneck", "conv", "kernel")]
    assert kernel.shape == (3, 3, 270, 512) and np.isfinite(kernel).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, source, scope",
    [("fcn_hr18s", "timm", "backbone"), ("ocrnet_hr18s", "mmseg", "all")],
)
def test_training_starts_from_the_file(hrnet_files, tiny_config, tmp_path, model, source, scope):
    """`--config.model.pretrained` in the loop: one frozen step, the checkpoint is the file's."""
    name = {"timm": "hrnet_w18_small_v2", "mmseg": "ocrnet_hr18s"}[source]
    path = str(tmp_path / f"{name}.msgpack")
    assert main(["convert", "--from", source, "--model", name, hrnet_files[source], path]) == 0
    extra = {"aux_head": True} if model.startswith("ocrnet") else {}
    config, workdir = _frozen(
        tiny_config, str(tmp_path / "run"), name=model, pretrained=path, pretrained_scope=scope
    )
    config.model.output_stride = None
    config.model.update(extra)
    mesh = sharding.make_mesh(jax.devices()[:1])
    train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    run = train_lib.setup(config, mesh)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    loaded = jax.device_get(ckpt.restore(1, run.abstract_state))
    ckpt.close()
    variables, _ = read_pretrained(path)
    file_params = flax.traverse_util.flatten_dict(variables["params"])
    got = flax.traverse_util.flatten_dict(loaded.params)
    compared = 0
    for key, value in got.items():
        if key[0] == "backbone" or (scope == "all" and "classifier" not in key):
            np.testing.assert_array_equal(value, file_params[key], err_msg="/".join(key))
            compared += 1
    assert compared >= len([k for k in file_params if k[0] == "backbone"])
