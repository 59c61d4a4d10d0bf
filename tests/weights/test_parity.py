"""Logits parity: segjax with converted weights == the PyTorch model, for every mapping.

PyTorch builds each reference model with random weights and random BatchNorm statistics
(``torch_reference.py``, in ``$SEGJAX_TORCH_PYTHON``), writes its state dict and its
outputs at an odd input size (37x45; timm's HRNets 61x93) in eval mode; segjax converts
the file without PyTorch (``segjax.weights``), runs the same input, and must agree to
``1e-4`` of the outputs' largest magnitude, in float32. Backbones compare all four (five
for VGG) feature maps, segmentation models their logits and auxiliary logits.

The default suite runs a cheap representative of each reader and layout family (a
torchvision ResNet-18 backbone from a zip ``.pth``, a timm ResNet-18 from ``.safetensors``,
MobileNetV2 from a legacy-format ``.pth``, torchvision's FCN-ResNet-50 with its auxiliary
head and its LR-ASPP on MobileNetV3-Large, mmsegmentation's U-Net layout at 8 channels,
timm's HRNet trunk and mmsegmentation's OCRNet-HRNet at 8-64 channels);
``-m slow`` runs every other mapping at full size
(``test_every_conversion_has_a_parity_case`` keeps the list complete).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from collections.abc import Callable

import jax
import numpy as np
import pytest

from segjax.models import build_model
from segjax.models.backbones.hrnet import HRNetTiny, HRNetW18, HRNetW18Small, HRNetW32, HRNetW48
from segjax.models.backbones.mobilenet import MobileNetV2
from segjax.models.backbones.mobilenet_v3 import MobileNetV3Large
from segjax.models.backbones.resnet import ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from segjax.models.backbones.vgg import VGG
from segjax.models.backbones.xception import Xception65
from segjax.models.ocrnet import ocrnet_hrnet_builder
from segjax.weights import CONVERSIONS, convert_file, get_conversion
from segjax.weights.convert import abstract_variables, convert_state_dict
from segjax.weights.readers import read_tensors

SIZE = (37, 45)
TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Case:
    """One reference model: the PyTorch job and how segjax runs the converted file.

    ``backbone``: the segjax backbone to run the file's ``backbone`` subtree with (stride
    options matching the PyTorch model's); None: the conversion's own segjax model, or
    ``model`` (a registered name, or a builder) with the conversion's layout for a narrow
    variant (``narrow=True``: ``backbone`` is one, the layout applied to it directly).
    ``size``: the input (timm's HRNet only runs where each branch is twice the next).
    """

    id: str
    source: str
    name: str
    torch_kwargs: dict = dataclasses.field(default_factory=dict)
    backbone: Callable | None = None
    model: str | Callable | None = None
    format: str = "zip"
    slow: bool = True
    narrow: bool = False
    size: tuple[int, int] = SIZE

    def job(self) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "name": self.name,
            "size": list(self.size),
            "kwargs": self.torch_kwargs,
            "format": self.format,
            "seed": zlib.crc32(self.id.encode()) % 1000,
        }


_DILATED = {"dilation": [False, True, True]}
# An odd size at which every HRNet branch is exactly twice the next (ceil(H / 4) and
# ceil(W / 4) divisible by 8): timm's nearest fusion adds without resizing.
HRNET_TIMM_SIZE = (61, 93)
# HRNet-tiny with timm's 64-channel stem (timm's second stem conv is always 64 wide).
HRNET_NARROW = functools.partial(HRNetTiny, stem_width=64)


def _hrnet_stage(branches: int, block: str, blocks: int, widths) -> dict:
    return {
        "num_modules": 1,
        "num_branches": branches,
        "block_type": block,
        "num_blocks": [blocks] * branches,
        "num_channels": list(widths),
        "fuse_method": "SUM",
    }


# timm's config of HRNET_NARROW (its stem is 64 channels whatever stem_width says).
_HRNET_NARROW_TIMM = {
    "stem_width": 64,
    "stage1": _hrnet_stage(1, "BOTTLENECK", 1, [8]),
    "stage2": _hrnet_stage(2, "BASIC", 1, [8, 16]),
    "stage3": _hrnet_stage(3, "BASIC", 1, [8, 16, 32]),
    "stage4": _hrnet_stage(4, "BASIC", 1, [8, 16, 32, 64]),
}
CASES = [
    # Default suite: one of each reader and layout family.
    Case("tv_resnet18", "torchvision", "resnet18", backbone=ResNet18, slow=False),
    Case("timm_resnet18", "timm", "resnet18", backbone=ResNet18, format="safetensors", slow=False),
    Case(
        "tv_mobilenet_v2",
        "torchvision",
        "mobilenet_v2",
        backbone=MobileNetV2,
        format="legacy",
        slow=False,
    ),
    Case("tv_fcn_resnet50", "torchvision", "fcn_resnet50", slow=False),
    # MobileNetV3's trunk (BN eps 1e-3) under LR-ASPP's head (eps 1e-5), dilated.
    Case("tv_lraspp_mobilenet_v3_large", "torchvision", "lraspp_mobilenet_v3_large", slow=False),
    Case(
        "mmseg_unet_tiny", "mmseg", "unet-s5-d16", {"base": 8}, model="mmseg_unet_tiny", slow=False
    ),
    # HRNet at 8-64 channels, one module of one block per stage (timm's stem: 64 channels):
    # timm's trunk (nearest fusion); mmseg's OCRNet (bilinear fusion; its first head is
    # fcn_hr's FCN head).
    Case(
        "timm_hrnet_narrow",
        "timm",
        "hrnet_w18_small_v2",
        _HRNET_NARROW_TIMM,
        functools.partial(HRNET_NARROW, fuse_upsample="nearest"),
        narrow=True,
        size=HRNET_TIMM_SIZE,
        slow=False,
    ),
    Case(
        "mmseg_ocrnet_hr_narrow",
        "mmseg",
        "ocrnet_hr18s",
        {"timm": _HRNET_NARROW_TIMM, "channels": 16, "ocr_channels": 8},
        model=ocrnet_hrnet_builder(HRNET_NARROW, channels=16, ocr_channels=8),
        slow=False,
    ),
    # torchvision backbones (dilated ones as the segmentation models use them).
    Case("tv_resnet34", "torchvision", "resnet34", backbone=ResNet34),
    Case(
        "tv_resnet50_os8",
        "torchvision",
        "resnet50",
        _DILATED,
        functools.partial(ResNet50, output_stride=8),
    ),
    Case(
        "tv_resnet101_os16",
        "torchvision",
        "resnet101",
        {"dilation": [False, False, True]},
        functools.partial(ResNet101, output_stride=16),
    ),
    Case("tv_resnet152", "torchvision", "resnet152", backbone=ResNet152),
    Case("tv_vgg16", "torchvision", "vgg16", backbone=functools.partial(VGG, ceil_mode=False)),
    Case(
        "tv_vgg16_bn",
        "torchvision",
        "vgg16_bn",
        backbone=functools.partial(VGG, batch_norm=True, ceil_mode=False),
    ),
    Case(
        "tv_mobilenet_v3_large_os16",
        "torchvision",
        "mobilenet_v3_large",
        {"dilated": True},
        functools.partial(MobileNetV3Large, output_stride=16),
    ),
    # torchvision segmentation models (with aux_classifier).
    Case("tv_deeplabv3_mobilenet_v3_large", "torchvision", "deeplabv3_mobilenet_v3_large"),
    Case("tv_fcn_resnet101", "torchvision", "fcn_resnet101"),
    Case("tv_deeplabv3_resnet50", "torchvision", "deeplabv3_resnet50"),
    Case("tv_deeplabv3_resnet101", "torchvision", "deeplabv3_resnet101"),
    # timm.
    Case("timm_resnet34", "timm", "resnet34", backbone=ResNet34),
    Case("timm_resnet50", "timm", "resnet50", backbone=ResNet50, format="safetensors"),
    Case("timm_resnet101", "timm", "resnet101", backbone=ResNet101),
    Case("timm_resnet152", "timm", "resnet152", backbone=ResNet152),
    Case(
        "timm_resnet50c_os8",
        "timm",
        "resnet50c",
        {"output_stride": 8},
        functools.partial(ResNet50, deep_stem=True, output_stride=8),
    ),
    Case(
        "timm_resnet101c",
        "timm",
        "resnet101c",
        backbone=functools.partial(ResNet101, deep_stem=True),
    ),
    Case(
        "timm_resnet152c",
        "timm",
        "resnet152c",
        backbone=functools.partial(ResNet152, deep_stem=True),
    ),
    Case(
        "timm_xception65_os16",
        "timm",
        "xception65",
        {"output_stride": 16},
        functools.partial(Xception65, output_stride=16),
    ),
    *[
        Case(
            f"timm_{n}",
            "timm",
            n,
            backbone=functools.partial(cls, fuse_upsample="nearest"),
            size=HRNET_TIMM_SIZE,
        )
        for n, cls in (
            ("hrnet_w18_small_v2", HRNetW18Small),
            ("hrnet_w18", HRNetW18),
            ("hrnet_w32", HRNetW32),
            ("hrnet_w48", HRNetW48),
        )
    ],
    # mmsegmentation checkpoints (layouts rebuilt in mmseg_reference.py).
    *[
        Case(f"mmseg_{n}", "mmseg", n)
        for n in (
            "pspnet_r50-d8",
            "pspnet_r101-d8",
            "fcn_r50-d8",
            "fcn_r101-d8",
            "deeplabv3plus_r50-d8",
            "deeplabv3plus_r101-d8",
            "fpn_r50",
            "unet-s5-d16",
            "fcn_hr18s",
            "fcn_hr18",
            "fcn_hr48",
            "ocrnet_hr18s",
            "ocrnet_hr18",
            "ocrnet_hr48",
            "ocrnet_r50-d8",
            "ocrnet_r101-d8",
        )
    ],
]


def _segjax_outputs(case: Case, folder: str) -> dict[str, np.ndarray]:
    weights = os.path.join(
        folder, "weights.safetensors" if case.format == "safetensors" else "weights.pth"
    )
    x = np.load(os.path.join(folder, "input.npy"))
    if case.model is not None or case.narrow:  # a narrow variant of the conversion's model
        state_dict = read_tensors(weights)
        conversion = get_conversion(case.source, case.name)
        if case.model is None:
            model = case.backbone()
        else:
            build = (
                case.model if callable(case.model) else functools.partial(build_model, case.model)
            )
            model = build(**conversion.target(state_dict)[1])
        variables = convert_state_dict(state_dict, conversion.layout, abstract_variables(model))
    else:
        variables, meta = convert_file(case.source, case.name, weights)
        if case.backbone is not None:
            assert meta["scope"] == "backbone"
            model = case.backbone()
            variables = {k: v["backbone"] for k, v in variables.items()}
        else:
            assert meta["scope"] == "all"
            model = build_model(meta["model"], **json.loads(meta["model_kwargs"]))
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return {k: np.asarray(v) for k, v in outputs.items()}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_parity(case: Case, request):
    folder = request.getfixturevalue("slow_references" if case.slow else "fast_references")
    folder = os.path.join(folder, case.id)
    reference = dict(np.load(os.path.join(folder, "outputs.npz")))
    outputs = _segjax_outputs(case, folder)
    assert set(reference) <= set(outputs), (sorted(reference), sorted(outputs))
    for key, ref in reference.items():
        out = outputs[key]
        assert out.shape == ref.shape, (key, out.shape, ref.shape)
        scale = float(np.abs(ref).max())
        error = float(np.abs(out - ref).max())
        assert scale > 0, key
        assert error <= TOLERANCE * scale, (
            f"{case.id} {key}: max |diff| {error:.3g}, scale {scale:.3g}"
        )


def test_every_conversion_has_a_parity_case():
    covered = {(c.source, c.name) for c in CASES}
    assert set(CONVERSIONS) <= covered, sorted(set(CONVERSIONS) - covered)
