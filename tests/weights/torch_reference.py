"""PyTorch reference outputs for the parity tests (runs in a PyTorch environment, not segjax's).

    $SEGJAX_TORCH_PYTHON tests/weights/torch_reference.py JOBS.json OUT_DIR

``JOBS.json`` is a list of ``{"id", "source", "name", "size": [H, W], "seed", "kwargs",
"format"}``. For each job this builds the PyTorch model with random weights (nothing is
downloaded), randomises every BatchNorm's affine parameters and running statistics (so
that the statistics, their epsilon and their order matter), runs it in eval mode on a
random ``[1, 3, H, W]`` input, and writes into ``OUT_DIR/<id>/``:

- ``weights.pth`` (``torch.save`` of the state dict; ``format: "legacy"`` uses the pre-1.6
  format) or ``weights.safetensors``;
- ``input.npy``: the input, NHWC float32;
- ``outputs.npz``: the reference outputs, NHWC float32 (``logits``, ``aux_logits`` of
  segmentation models; ``s4`` ... ``s32`` features of backbones).

Sources: ``torchvision`` and ``timm`` models as their libraries build them; ``mmseg``
layouts from ``mmseg_reference.py`` (PyTorch modules with mmsegmentation's structure and
tensor names, on timm's ResNet, since mmsegmentation itself needs mmcv).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Affine parameters and running statistics of every BatchNorm drawn at random."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(100)


def _hooked(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> dict:
    # Runs `model(x)` and returns the outputs of `modules` (forward hooks), cloned.
    out, handles = {}, []
    for key, module in modules.items():

        def hook(_m, _i, y, key=key):
            out[key] = y.detach().clone()

        handles.append(module.register_forward_hook(hook))
    model(x)
    for h in handles:
        h.remove()
    return out


def torchvision_model(name: str, kwargs: dict):
    """(model, run) for a torchvision classifier (backbone features) or segmentation model."""
    import torchvision

    seg = torchvision.models.segmentation
    if name.startswith(("deeplabv3_", "fcn_", "lraspp_")):
        # LR-ASPP has no auxiliary head (aux_loss=True is an error there).
        aux = {} if name.startswith("lraspp_") else {"aux_loss": kwargs.get("aux_loss", True)}
        model = getattr(seg, name)(
            weights=None, weights_backbone=None, num_classes=kwargs.get("num_classes", 5), **aux
        )

        def run(x):
            y = model(x)
            out = {"logits": y["out"]}
            if "aux" in y:
                out["aux_logits"] = y["aux"]
            return out

        return model, run
    if name.startswith("resnet"):
        model = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=kwargs.get("dilation", [False] * 3)
        )
        layers = {f"s{4 * 2**i}": getattr(model, f"layer{i + 1}") for i in range(4)}
        return model, lambda x: _hooked(model, layers, x)
    if name.startswith("vgg"):
        model = getattr(torchvision.models, name)(weights=None)
        pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
        layers = {f"s{2 ** (i + 1)}": p for i, p in enumerate(pools)}
        return model, lambda x: _hooked(model.features, layers, x)
    if name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(weights=None)
        f = model.features
        layers = {"s4": f[3], "s8": f[6], "s16": f[13], "s32": f[17]}
        return model, lambda x: _hooked(model.features, layers, x)
    if name == "mobilenet_v3_large":
        model = torchvision.models.mobilenet_v3_large(weights=None, **kwargs)
        f = model.features
        layers = {"s4": f[3], "c2": f[4], "s8": f[6], "s16": f[12], "s32": f[16]}
        return model, lambda x: _hooked(model.features, layers, x)
    raise KeyError(f"no torchvision reference for {name!r}")


def timm_model(name: str, kwargs: dict):
    """(model, run) for a timm classifier: its backbone features.

    ``kwargs`` go to ``timm.create_model``: options, or an HRNet's stage configs (a narrow
    variant for the fast suite).
    """
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs)
    if name.startswith("hrnet"):
        # The trunk's four branches (timm's own modules), not the classification head.
        def run(x):
            x = model.act1(model.bn1(model.conv1(x)))
            x = model.act2(model.bn2(model.conv2(x)))
            return dict(zip(("s4", "s8", "s16", "s32"), model.stages(x), strict=True))

        return model, run
    if name.startswith("xception"):
        b = model.blocks
        layers = {
            "s4": b[1].stack.act3,
            "s8": b[2].stack.act3,
            "s16": b[19].stack.act3,
            "s32": b[20],
        }
    else:
        layers = {f"s{4 * 2**i}": getattr(model, f"layer{i + 1}") for i in range(4)}
    return model, lambda x: _hooked(model, layers, x)


def build(job: dict):
    if job["source"] == "torchvision":
        return torchvision_model(job["name"], job.get("kwargs", {}))
    if job["source"] == "timm":
        return timm_model(job["name"], job.get("kwargs", {}))
    if job["source"] == "mmseg":
        import mmseg_reference

        return mmseg_reference.build(job["name"], job.get("kwargs", {}))
    raise KeyError(job["source"])


def main(jobs_file: str, out_dir: str) -> None:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with open(jobs_file) as f:
        jobs = json.load(f)
    for job in jobs:
        torch.manual_seed(job.get("seed", 0))
        generator = torch.Generator().manual_seed(job.get("seed", 0))
        model, run = build(job)
        randomise_batchnorm(model, generator)
        model.eval()
        h, w = job["size"]
        x = torch.randn(1, 3, h, w, generator=generator)
        with torch.no_grad():
            outputs = run(x)
        path = os.path.join(out_dir, job["id"])
        os.makedirs(path, exist_ok=True)
        state = model.state_dict()
        fmt = job.get("format", "zip")
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, f"{path}/weights.safetensors")
        else:
            torch.save(state, f"{path}/weights.pth", _use_new_zipfile_serialization=fmt == "zip")
        np.save(f"{path}/input.npy", x.permute(0, 2, 3, 1).numpy())
        np.savez(
            f"{path}/outputs.npz",
            **{k: v.permute(0, 2, 3, 1).float().numpy() for k, v in outputs.items()},
        )
        print(f"{job['id']}: {sorted(outputs)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
