"""The PyTorch architectures segjax reads: torchvision, timm and mmsegmentation layouts.

Each entry of ``CONVERSIONS`` (keyed ``(source, name)``) pairs a PyTorch architecture with
the segjax module whose variables it fills:

- ImageNet classifiers (torchvision ``resnet50``, ``vgg16_bn``, ``mobilenet_v2``; timm
  ``resnet50``, ``xception65``, ...) fill a *backbone*: the converted file holds
  ``{"backbone": ...}`` and is applied with ``pretrained_scope="backbone"`` to any segjax
  model on that backbone (``deeplabv3plus_resnet50``, ``pspnet_resnet50``, ...);
- segmentation models (torchvision ``deeplabv3_resnet50``; mmsegmentation ``pspnet_r50-d8``
  checkpoints, ...) fill a whole registered segjax model, whose name and arguments
  (class count from the classifier's shape, ``aux_head`` when the file has one) the file
  records.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from segjax.models.backbones.hrnet import HRNetW18, HRNetW18Small, HRNetW32, HRNetW48
from segjax.models.backbones.mobilenet import MOBILENET_V2_SETTING, MobileNetV2
from segjax.models.backbones.mobilenet_v3 import MOBILENET_V3_LARGE, MobileNetV3Large
from segjax.models.backbones.resnet import (
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
)
from segjax.models.backbones.vgg import VGG, VGG16_STAGES
from segjax.models.backbones.xception import Xception65
from segjax.weights.convert import ConversionError, Layout, Rule, conv_bn, scoped

SOURCES = ("torchvision", "timm", "mmseg")


@dataclasses.dataclass(frozen=True)
class Conversion:
    """One PyTorch architecture and the segjax module it fills.

    Attributes:
        source: ``"torchvision"``, ``"timm"`` or ``"mmseg"``.
        name: the architecture's name in its source (``"resnet50"``, ``"pspnet_r50-d8"``).
        layout: the name mapping.
        backbone: for an ImageNet classifier, a function that builds the segjax backbone
            (the file then holds ``{"backbone": ...}``); None for a segmentation model.
        model: for a segmentation model, the registered segjax model name.
        model_kwargs: the builder arguments that give the reference layout.
        classifier: PyTorch name of the classifier weight (its first dim is the class count).
        aux_prefix: PyTorch prefix of the auxiliary head; the file has one when a tensor
            starts with it.
        description: one line for ``convert --list`` and the docs.
    """

    source: str
    name: str
    layout: Layout
    backbone: Callable[[], nn.Module] | None = None
    model: str | None = None
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classifier: str | None = None
    aux_prefix: str | None = None
    description: str = ""

    def target(self, state_dict: Mapping[str, np.ndarray]) -> tuple[str | None, dict[str, Any]]:
        """The segjax model name and builder arguments (``None, {}`` for a backbone)."""
        if self.model is None:
            return None, {}
        if self.classifier not in state_dict:
            raise ConversionError(
                f"no classifier tensor {self.classifier!r}: not a {self.source} {self.name} "
                "state dict"
            )
        kwargs = dict(self.model_kwargs)
        kwargs["num_classes"] = int(np.shape(state_dict[self.classifier])[0])
        kwargs["aux_head"] = any(k.startswith(self.aux_prefix) for k in state_dict)
        return self.model, kwargs


CONVERSIONS: dict[tuple[str, str], Conversion] = {}


def _add(conversion: Conversion) -> None:
    CONVERSIONS[(conversion.source, conversion.name)] = conversion


def get_conversion(source: str, name: str) -> Conversion:
    """The conversion of ``name`` from ``source``; an unknown one lists the known ones."""
    if (source, name) not in CONVERSIONS:
        known = sorted(n for s, n in CONVERSIONS if s == source)
        if source not in SOURCES:
            raise KeyError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")
        raise KeyError(f"unknown {source} model {name!r}; known: {', '.join(known)}")
    return CONVERSIONS[(source, name)]


# --- backbones -------------------------------------------------------------------------------

_RESNET_BLOCKS = [
    Rule(r"layer(\d)_block(\d+)/conv(\d)/conv", r"layer\1.\2.conv\3"),
    Rule(r"layer(\d)_block(\d+)/conv(\d)/bn", r"layer\1.\2.bn\3"),
    *conv_bn(
        r"layer(\d)_block(\d+)/downsample", r"layer\1.\2.downsample.0", r"layer\1.\2.downsample.1"
    ),
]
# torchvision and timm ResNets: a 7x7 stem conv1/bn1.
RESNET_RULES = [*conv_bn("stem_conv1", "conv1", "bn1"), *_RESNET_BLOCKS]
# timm's deep stem (resnet*c): conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv), bn1.
RESNET_DEEP_STEM_TIMM_RULES = [
    *conv_bn("stem_conv1", "conv1.0", "conv1.1"),
    *conv_bn("stem_conv2", "conv1.3", "conv1.4"),
    *conv_bn("stem_conv3", "conv1.6", "bn1"),
    *_RESNET_BLOCKS,
]
# mmsegmentation's ResNetV1c: stem = Sequential(conv, bn, relu) x 3.
RESNET_V1C_MMSEG_RULES = [
    *conv_bn("stem_conv1", "stem.0", "stem.1"),
    *conv_bn("stem_conv2", "stem.3", "stem.4"),
    *conv_bn("stem_conv3", "stem.6", "stem.7"),
    *_RESNET_BLOCKS,
]


def _vgg_index(batch_norm: bool) -> dict[str, int]:
    # torchvision's `features` index of each conv: cfg "D" with an "M" (pool) after a stage.
    index, i = {}, 0
    for s, stage in enumerate(VGG16_STAGES):
        for c in range(len(stage)):
            index[f"{s + 1}_{c + 1}"] = i
            i += 3 if batch_norm else 2
        i += 1
    return index


def vgg_rules(batch_norm: bool) -> list[Rule]:
    """torchvision ``vgg16`` / ``vgg16_bn`` ``features.<i>`` for segjax ``conv<s>_<c>``."""
    index = _vgg_index(batch_norm)
    rules = [Rule(r"conv(\d_\d)/conv", lambda m: f"features.{index[m[1]]}")]
    if batch_norm:
        rules.append(Rule(r"conv(\d_\d)/bn", lambda m: f"features.{index[m[1]] + 1}"))
    return rules


def _mobilenet_v2_block(match: re.Match) -> str:
    stage, block = int(match[1]), int(match[2])
    index = 1 + sum(n for _, _, n, _ in MOBILENET_V2_SETTING[: stage - 1]) + block
    expand = MOBILENET_V2_SETTING[stage - 1][0] != 1
    part = {"expand": "0", "depthwise": "1" if expand else "0"}.get(match[3])
    if part is not None:  # Conv2dNormActivation: .0 conv, .1 bn
        return f"features.{index}.conv.{part}.{'0' if match[4] == 'conv' else '1'}"
    # project: a bare conv then a BN
    first = 2 if expand else 1
    return f"features.{index}.conv.{first if match[4] == 'conv' else first + 1}"


MOBILENET_V2_RULES = [
    *conv_bn("stem", "features.0.0", "features.0.1"),
    Rule(r"stage(\d)_block(\d+)/(expand|depthwise|project)/(conv|bn)", _mobilenet_v2_block),
]


def _mobilenet_v3_block(match: re.Match) -> str:
    # torchvision's features[i + 1].block: [expand], depthwise, [se], project; expand only
    # where the expanded width differs from the input's (block 0: 16 -> 16).
    i, part = int(match[1]), match[2]
    cin = MOBILENET_V3_LARGE[i - 1][2] if i else 16
    _, expanded, _, use_se, _, _ = MOBILENET_V3_LARGE[i]
    parts = ["expand"] if expanded != cin else []
    parts += ["depthwise", "se"] if use_se else ["depthwise"]
    parts.append("project")
    prefix = f"features.{i + 1}.block.{parts.index(part)}"
    if part == "se":
        return f"{prefix}.{match[3]}"
    return f"{prefix}.{'0' if match[3] == 'conv' else '1'}"  # Conv2dNormActivation


_MOBILENET_V3_LAST = len(MOBILENET_V3_LARGE) + 1


def mobilenet_v3_rules(features: str = "features.") -> list[Rule]:
    """torchvision ``mobilenet_v3_large().features`` (``features.<i>``, or ``backbone.<i>``
    in its segmentation models) for segjax ``MobileNetV3Large``; BatchNorm eps 1e-3."""
    rules = [
        *conv_bn("stem", "features.0.0", "features.0.1"),
        Rule(r"block(\d+)/(expand|depthwise|se|project)/(conv|bn|fc1|fc2)", _mobilenet_v3_block),
        *conv_bn(
            "last_conv", f"features.{_MOBILENET_V3_LAST}.0", f"features.{_MOBILENET_V3_LAST}.1"
        ),
    ]
    rules = [dataclasses.replace(r, bn_eps=1e-3) for r in rules]
    if features == "features.":
        return rules
    return [dataclasses.replace(r, target=_renamed(r.target, "features.", features)) for r in rules]


def _renamed(target, old: str, new: str):
    if callable(target):
        return lambda m: new + target(m).removeprefix(old)
    return new + target.removeprefix(old)


def _xception_block(match: re.Match) -> str:
    flow, i = match[1], int(match[2])
    return str({"entry": i - 1, "middle": 2 + i, "exit": 18 + i}[flow])


_XCEPTION_PARTS = {
    "depthwise/conv": "conv_dw",
    "depthwise/bn": "bn_dw",
    "pointwise/conv": "conv_pw",
    "pointwise/bn": "bn_pw",
}
XCEPTION_TIMM_RULES = [
    *conv_bn("stem_conv1", "stem.0.conv", "stem.0.bn"),
    *conv_bn("stem_conv2", "stem.1.conv", "stem.1.bn"),
    Rule(
        r"(entry|middle|exit)(\d+)/sepconv(\d)/(depthwise/conv|depthwise/bn|pointwise/conv|pointwise/bn)",
        lambda m: f"blocks.{_xception_block(m)}.stack.conv{m[3]}.{_XCEPTION_PARTS[m[4]]}",
    ),
    Rule(
        r"(entry|middle|exit)(\d+)/shortcut/(conv|bn)",
        lambda m: f"blocks.{_xception_block(m)}.shortcut.{m[3]}",
    ),
]

# HRNet: timm's HighResolutionNet and mmseg's HRNet share the names of the original code
# (HRNet-Image-Classification): conv1/bn1, conv2/bn2, layer1 (bottlenecks), transition<s>
# (`.0` = the 3x3 conv-BN-ReLU to W before stage 2, `.<b>.0` a new branch's stride-2 one),
# stage<s>.<m>.branches.<b>.<k> (BasicBlocks), stage<s>.<m>.fuse_layers.<i>.<j>
# (`.0`/`.1` 1x1 conv-BN for j > i, `.<k>.0`/`.<k>.1` the k-th stride-2 conv for j < i).
HRNET_RULES = [
    *conv_bn("stem_conv1", "conv1", "bn1"),
    *conv_bn("stem_conv2", "conv2", "bn2"),
    *_RESNET_BLOCKS,  # layer1_block<k>
    Rule(
        r"stage(\d)_module(\d+)/branch(\d)_block(\d+)/conv(\d)/conv",
        r"stage\1.\2.branches.\3.\4.conv\5",
    ),
    Rule(
        r"stage(\d)_module(\d+)/branch(\d)_block(\d+)/conv(\d)/bn",
        r"stage\1.\2.branches.\3.\4.bn\5",
    ),
    *conv_bn(
        r"stage(\d)_module(\d+)/fuse(\d)_from(\d)",
        r"stage\1.\2.fuse_layers.\3.\4.0",
        r"stage\1.\2.fuse_layers.\3.\4.1",
    ),
    *conv_bn(
        r"stage(\d)_module(\d+)/fuse(\d)_from(\d)_down(\d)",
        r"stage\1.\2.fuse_layers.\3.\4.\5.0",
        r"stage\1.\2.fuse_layers.\3.\4.\5.1",
    ),
    *conv_bn("transition1_branch0", "transition1.0.0", "transition1.0.1"),
    *conv_bn(r"transition(\d)_branch(\d)", r"transition\1.\2.0.0", r"transition\1.\2.0.1"),
]

_TORCHVISION_RESNETS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
}
_RESNET_SOURCES = {
    "torchvision": "(ImageNet classifier) -> segjax ResNet backbone",
    # timm's resnet* (a1/a2/a3, tv, gluon weights) share torchvision's names.
    "timm": "(any of its weights: a1, tv, gluon, ...) -> segjax ResNet backbone",
}
for _name, _cls in _TORCHVISION_RESNETS.items():
    for _source, _what in _RESNET_SOURCES.items():
        _add(
            Conversion(
                _source,
                _name,
                Layout(RESNET_RULES, ignore=(r"fc\..*",)),
                backbone=_cls,
                description=f"{_source} {_name} {_what}",
            )
        )
    # timm's resnet*c: the deep (v1c) stem, stem width 64 (32, 32, 64).
    if _name in ("resnet50", "resnet101", "resnet152"):
        _add(
            Conversion(
                "timm",
                _name + "c",
                Layout(RESNET_DEEP_STEM_TIMM_RULES, ignore=(r"fc\..*",)),
                backbone=functools.partial(_cls, deep_stem=True),
                description=f"timm {_name}c (deep stem) -> segjax ResNet with deep_stem=True",
            )
        )

for _bn in (False, True):
    _name = "vgg16_bn" if _bn else "vgg16"
    _add(
        Conversion(
            "torchvision",
            _name,
            # classifier.0/3 are fc6/fc7 of a 224x224 classifier (25088 inputs), not segjax's.
            Layout(vgg_rules(_bn), ignore=(r"classifier\..*",)),
            backbone=functools.partial(VGG, batch_norm=_bn),
            description=f"torchvision {_name} features -> segjax VGG backbone (batch_norm={_bn})",
        )
    )

_add(
    Conversion(
        "torchvision",
        "mobilenet_v2",
        # features.18 is the 1x1 conv to 1280 channels of the classifier; the segmentation
        # models read the 320-channel features (as mmseg), MobileNetV2(last_conv=False).
        Layout(MOBILENET_V2_RULES, ignore=(r"classifier\..*", r"features\.18\..*")),
        backbone=MobileNetV2,
        description="torchvision mobilenet_v2 features (not the classifier's 1280-channel conv)",
    )
)
_add(
    Conversion(
        "torchvision",
        "mobilenet_v3_large",
        # classifier.* is the ImageNet classifier (Linear 960 -> 1280 -> 1000).
        Layout(mobilenet_v3_rules(), ignore=(r"classifier\..*",), bn_eps=1e-3),
        backbone=MobileNetV3Large,
        description="torchvision mobilenet_v3_large features (with the 960-channel conv) -> "
        "segjax MobileNetV3Large (output_stride 16 for dilated=True)",
    )
)
_add(
    Conversion(
        "timm",
        "xception65",
        # timm builds Xception's BatchNorms with eps=1e-3.
        Layout(XCEPTION_TIMM_RULES, ignore=(r"head\..*",), bn_eps=1e-3),
        backbone=Xception65,
        description="timm xception65 (aligned Xception, DeepLabv3+) -> segjax AlignedXception",
    )
)


# timm's HRNets: the trunk (stem, stage 1, transitions, stages 2-4), whose four branches are
# segjax's s4-s32. Its ImageNet head (incre_modules: bottlenecks to 128-1024 channels,
# downsamp_modules, final_layer to 2048, classifier) only serves classification, as timm's
# classifier does for its ResNets: ignored. timm fuses with nearest upsampling, so the
# backbone it converts into (and its parity) is HRNet(fuse_upsample="nearest"); applied to
# fcn_hr* / ocrnet_hr* (bilinear, mmseg's fine-tuning of the same ImageNet weights) the
# tensors fit either way.
_TIMM_HRNETS = {
    "hrnet_w18_small_v2": ("W18-small-v2", HRNetW18Small),
    "hrnet_w18": ("W18", HRNetW18),
    "hrnet_w32": ("W32", HRNetW32),
    "hrnet_w48": ("W48", HRNetW48),
}
for _name, (_what, _cls) in _TIMM_HRNETS.items():
    _add(
        Conversion(
            "timm",
            _name,
            Layout(
                HRNET_RULES,
                ignore=(r"(incre_modules|downsamp_modules|final_layer|classifier)\..*",),
            ),
            backbone=functools.partial(_cls, fuse_upsample="nearest"),
            description=f"timm {_name} trunk (not its classification head) -> segjax HRNet "
            f"{_what} with fuse_upsample='nearest'",
        )
    )

# --- torchvision segmentation models --------------------------------------------------------

_TV_RESNET_BACKBONE = scoped(RESNET_RULES, "backbone/", "backbone.")
_TV_AUX = [
    *conv_bn("aux_head/conv0", "aux_classifier.0", "aux_classifier.1"),
    Rule("aux_head/classifier/conv", "aux_classifier.4"),
]
# DeepLabHead = Sequential(ASPP, conv3x3, BN, ReLU, conv1x1); ASPP.convs: 1x1, 3 rates, pooling.
_TV_DEEPLABV3_HEAD = [
    *conv_bn("neck/branch0", "classifier.0.convs.0.0", "classifier.0.convs.0.1"),
    *conv_bn(r"neck/branch([123])", r"classifier.0.convs.\1.0", r"classifier.0.convs.\1.1"),
    *conv_bn("neck/image_pool", "classifier.0.convs.4.1", "classifier.0.convs.4.2"),
    *conv_bn("neck/project", "classifier.0.project.0", "classifier.0.project.1"),
    *conv_bn("head/conv", "classifier.1", "classifier.2"),
    Rule("head/classifier/conv", "classifier.4"),
]
# FCNHead = Sequential(conv3x3, BN, ReLU, Dropout, conv1x1).
_TV_FCN_HEAD = [
    *conv_bn("head/conv0", "classifier.0", "classifier.1"),
    Rule("head/classifier/conv", "classifier.4"),
]
for _depth in (50, 101):
    for _arch, _head in (("deeplabv3", _TV_DEEPLABV3_HEAD), ("fcn", _TV_FCN_HEAD)):
        _add(
            Conversion(
                "torchvision",
                f"{_arch}_resnet{_depth}",
                Layout([*_TV_RESNET_BACKBONE, *_head, *_TV_AUX]),
                model=f"{_arch}_resnet{_depth}",
                classifier="classifier.4.weight",
                aux_prefix="aux_classifier.",
                description=f"torchvision {_arch}_resnet{_depth} (+ aux_classifier) -> segjax "
                f"{_arch}_resnet{_depth}",
            )
        )


# torchvision's MobileNetV3 segmentation models: the trunk as IntermediateLayerGetter over
# `features` (`backbone.<i>`, eps 1e-3), heads with eps 1e-5; the aux FCNHead on the C2 tap.
_TV_MOBILENET_V3_BACKBONE = scoped(mobilenet_v3_rules("backbone."), "backbone/", "")
_TV_LRASPP_HEAD = [
    *conv_bn("head/cbr", "classifier.cbr.0", "classifier.cbr.1"),
    Rule("head/scale", "classifier.scale.1"),
    Rule("head/(low|high)_classifier", r"classifier.\1_classifier"),
]
for _arch, _head, _classifier in (
    ("lraspp", _TV_LRASPP_HEAD, "classifier.low_classifier.weight"),
    ("deeplabv3", _TV_DEEPLABV3_HEAD, "classifier.4.weight"),
):
    _add(
        Conversion(
            "torchvision",
            f"{_arch}_mobilenet_v3_large",
            Layout([*_TV_MOBILENET_V3_BACKBONE, *_head, *_TV_AUX]),
            model=f"{_arch}_mobilenet_v3_large",
            classifier=_classifier,
            aux_prefix="aux_classifier.",
            description=f"torchvision {_arch}_mobilenet_v3_large (+ aux_classifier) -> segjax "
            f"{_arch}_mobilenet_v3_large",
        )
    )


# --- mmsegmentation checkpoints (segjax.models.mmseg_layouts) ---------------------------------


def _module(flax_path: str, torch_prefix: str | Callable[[re.Match], str]) -> Rule:
    """An mmcv ``ConvModule`` (``.conv``, ``.bn``) for a segjax ``ConvBNReLU`` at ``flax_path``.

    ``torch_prefix`` is a template over ``flax_path``'s groups, or a function of the match.
    """
    pattern = flax_path + "/(?P<part>conv|bn)"
    if callable(torch_prefix):
        return Rule(pattern, lambda m, f=torch_prefix: f"{f(m)}.{m['part']}")
    return Rule(pattern, torch_prefix + r".\g<part>")


def _separable(flax_path: str, torch_prefix: str) -> list[Rule]:
    """An mmcv ``DepthwiseSeparableConvModule`` for a segjax ``SeparableConvBNReLU``."""
    return [
        _module(flax_path + "/depthwise", torch_prefix + ".depthwise_conv"),
        _module(flax_path + "/pointwise", torch_prefix + ".pointwise_conv"),
    ]


def _pooled_last(channels: int) -> np.ndarray:
    # mmseg concatenates [image pool, 1x1, rates...], segjax [1x1, rates..., image pool]:
    # segjax input channel c is mmseg's (c + C) mod 5C, with C = channels / 5.
    return np.roll(np.arange(channels), -(channels // 5))


_PSP_BINS = (1, 2, 3, 6)
_FPN_LEVELS = {"4": 0, "8": 1, "16": 2, "32": 3}
_MMSEG_CLASSIFIER = Rule("head/classifier/conv", "decode_head.conv_seg")
_MMSEG_AUX = [
    _module("aux_head/conv0", "auxiliary_head.convs.0"),
    Rule("aux_head/classifier/conv", "auxiliary_head.conv_seg"),
]
_MMSEG_HEADS = {
    "pspnet": [
        _module(
            r"neck/bin(\d)", lambda m: f"decode_head.psp_modules.{_PSP_BINS.index(int(m[1]))}.1"
        ),
        _module("head/conv0", "decode_head.bottleneck"),
    ],
    "fcn": [
        _module(r"head/conv(\d)", r"decode_head.convs.\1"),
        _module("head/conv_cat", "decode_head.conv_cat"),
    ],
    "deeplabv3plus": [
        _module("neck/image_pool", "decode_head.image_pool.1"),
        _module("neck/branch0", "decode_head.aspp_modules.0"),
        *_separable(r"neck/branch(\d)", r"decode_head.aspp_modules.\1"),
        Rule("neck/project/conv", "decode_head.bottleneck.conv", permute_in=_pooled_last),
        Rule("neck/project/bn", "decode_head.bottleneck.bn"),
        _module("head/low_level", "decode_head.c1_bottleneck"),
        *_separable(r"head/fuse(\d)", r"decode_head.sep_bottleneck.\1"),
    ],
    # FPNHead.scale_heads[i]: Sequential(ConvModule, Upsample, ConvModule, Upsample, ...).
    "fpn": [
        Rule(r"neck/lateral_s(\d+)", lambda m: f"neck.lateral_convs.{_FPN_LEVELS[m[1]]}.conv"),
        Rule(r"neck/output_s(\d+)", lambda m: f"neck.fpn_convs.{_FPN_LEVELS[m[1]]}.conv"),
        _module(
            r"head/level(\d)_conv(\d)", lambda m: f"decode_head.scale_heads.{m[1]}.{2 * int(m[2])}"
        ),
    ],
}
# mmseg's UNet: encoder[0] = BasicConvBlock, encoder[i] = (MaxPool, BasicConvBlock);
# decoder[i - 1] = UpConvBlock(upsample=InterpConv(upsample, ConvModule), conv_block).
MMSEG_UNET_RULES = [
    _module(r"inc/conv(\d)", lambda m: f"backbone.encoder.0.0.convs.{int(m[1]) - 1}"),
    _module(r"down(\d)/conv(\d)", lambda m: f"backbone.encoder.{m[1]}.1.convs.{int(m[2]) - 1}"),
    _module(
        r"up(\d)_upconv", lambda m: f"backbone.decoder.{int(m[1]) - 1}.upsample.interp_upsample.1"
    ),
    _module(
        r"up(\d)/conv(\d)",
        lambda m: f"backbone.decoder.{int(m[1]) - 1}.conv_block.convs.{int(m[2]) - 1}",
    ),
    _module("head/conv0", "decode_head.convs.0"),
    _MMSEG_CLASSIFIER,
    *_MMSEG_AUX,
]

_MMSEG_MODELS = {
    "pspnet_r50-d8": ("pspnet", "pspnet_resnet50"),
    "pspnet_r101-d8": ("pspnet", "pspnet_resnet101"),
    "fcn_r50-d8": ("fcn", "mmseg_fcn_r50_d8"),
    "fcn_r101-d8": ("fcn", "mmseg_fcn_r101_d8"),
    "deeplabv3plus_r50-d8": ("deeplabv3plus", "mmseg_deeplabv3plus_r50_d8"),
    "deeplabv3plus_r101-d8": ("deeplabv3plus", "mmseg_deeplabv3plus_r101_d8"),
    "fpn_r50": ("fpn", "mmseg_fpn_r50"),
}
for _name, (_head, _model) in _MMSEG_MODELS.items():
    _add(
        Conversion(
            "mmseg",
            _name,
            Layout(
                [
                    *scoped(RESNET_V1C_MMSEG_RULES, "backbone/", "backbone."),
                    *_MMSEG_HEADS[_head],
                    _MMSEG_CLASSIFIER,
                    *_MMSEG_AUX,
                ]
            ),
            model=_model,
            classifier="decode_head.conv_seg.weight",
            aux_prefix="auxiliary_head.",
            description=f"mmsegmentation {_name} checkpoint (auxiliary_head too, when it has "
            f"one) -> segjax {_model}",
        )
    )
_add(
    Conversion(
        "mmseg",
        "unet-s5-d16",
        Layout(MMSEG_UNET_RULES),
        model="mmseg_unet_s5_d16",
        classifier="decode_head.conv_seg.weight",
        aux_prefix="auxiliary_head.",
        description="mmsegmentation unet-s5-d16 (fcn_unet_s5-d16) checkpoint -> segjax "
        "mmseg_unet_s5_d16",
    )
)


# mmseg's fcn_hr*: EncoderDecoder(HRNet, FCNHead(kernel_size=1, num_convs=1, no concat)) on
# the resized, concatenated branches; ocrnet_hr*: CascadeEncoderDecoder whose decode_head is
# a list, [0] that FCN head (the soft object regions), [1] the OCRHead (bottleneck, the
# ObjectAttentionBlock's query/key projections of two ConvModules, value/out projections of
# one, its `bottleneck` = segjax's `fuse`). Neither config has an auxiliary_head; segjax's
# aux_logits of OCRNet are decode_head.0's logits (no tensors of their own).
_MMSEG_HRNET_BACKBONE = scoped(HRNET_RULES, "backbone/", "backbone.")
_OCR = "decode_head.1.object_context_block"
MMSEG_OCR_HEAD_RULES = [
    _module("neck/fcn/conv0", "decode_head.0.convs.0"),
    Rule("neck/fcn/classifier/conv", "decode_head.0.conv_seg"),
    _module("head/bottleneck", "decode_head.1.bottleneck"),
    _module(r"head/(query|key)_project(\d)", _OCR + r".\1_project.\2"),
    _module(r"head/(value|out)_project", _OCR + r".\1_project"),
    _module("head/fuse", _OCR + ".bottleneck"),
    Rule("head/classifier/conv", "decode_head.1.conv_seg"),
]
# mmseg's ocrnet_r*-d8: the same cascade on ResNetV1c at output stride 8, decode_head.0 a 3x3
# FCN head (1024 -> 256) on stage 3, decode_head.1 the OCR head on stage 4.
for _depth in (50, 101):
    _add(
        Conversion(
            "mmseg",
            f"ocrnet_r{_depth}-d8",
            Layout(
                [
                    *scoped(RESNET_V1C_MMSEG_RULES, "backbone/", "backbone."),
                    *MMSEG_OCR_HEAD_RULES,
                ]
            ),
            model=f"ocrnet_r{_depth}_d8",
            classifier="decode_head.1.conv_seg.weight",
            aux_prefix="decode_head.0.",
            description=f"mmsegmentation ocrnet_r{_depth}-d8 checkpoint (both cascaded heads) -> "
            f"segjax ocrnet_r{_depth}_d8 with aux_head (the soft object regions)",
        )
    )
for _width in ("18s", "18", "48"):
    _add(
        Conversion(
            "mmseg",
            f"fcn_hr{_width}",
            Layout(
                [
                    *_MMSEG_HRNET_BACKBONE,
                    _module("head/conv0", "decode_head.convs.0"),
                    _MMSEG_CLASSIFIER,
                ]
            ),
            model=f"fcn_hr{_width}",
            classifier="decode_head.conv_seg.weight",
            aux_prefix="auxiliary_head.",
            description=f"mmsegmentation fcn_hr{_width} checkpoint -> segjax fcn_hr{_width}",
        )
    )
    _add(
        Conversion(
            "mmseg",
            f"ocrnet_hr{_width}",
            Layout([*_MMSEG_HRNET_BACKBONE, *MMSEG_OCR_HEAD_RULES]),
            model=f"ocrnet_hr{_width}",
            classifier="decode_head.1.conv_seg.weight",
            aux_prefix="decode_head.0.",
            description=f"mmsegmentation ocrnet_hr{_width} checkpoint (both cascaded heads) -> "
            f"segjax ocrnet_hr{_width} with aux_head (the soft object regions)",
        )
    )
