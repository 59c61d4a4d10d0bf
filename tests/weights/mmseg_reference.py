"""mmsegmentation's model layouts in plain PyTorch, with mmsegmentation's tensor names.

mmsegmentation needs mmcv (compiled ops), which is not installable here, so the parity
reference for its checkpoints is rebuilt from its source (``mmseg/models/...`` of
open-mmlab/mmsegmentation, 1.x): the module tree, and so every state-dict key, is
mmsegmentation's (``backbone.stem.0``, ``decode_head.psp_modules.0.1.conv``, ...), and the
computation is its forward code. The ResNet is timm's ``resnet50c`` / ``resnet101c`` (deep
stem 32-32-64, dilation with the first block of a stage at the previous rate = mmseg's
``ResNetV1c`` with ``contract_dilation=True``), its modules re-parented under mmseg's names:
the reference computation of the trunk is timm's, not ours. Likewise the HRNet is timm's
``hrnet_*`` module tree (its tensor names are mmseg's: both come from the HRNet
reference code) with mmseg's fusion (bilinear upsampling, then a resize to the target
branch) in place of timm's nearest one.

Run by ``torch_reference.py``; nothing here imports segjax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """mmseg's ``resize(..., mode="bilinear", align_corners=False)``."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """mmcv's ``ConvModule``: conv (bias only without norm) -> ``bn`` -> ReLU."""

    def __init__(self, cin, cout, k, padding=0, dilation=1, groups=1, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, padding, dilation, groups, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None
        self.activate = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.activate is None else self.activate(x)


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's: depthwise ``ConvModule`` then pointwise ``ConvModule`` (norm + ReLU each)."""

    def __init__(self, cin, cout, k, padding=0, dilation=1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, padding, dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class ResNetV1c(nn.Module):
    """mmseg's ``ResNetV1c`` names over timm's ``resnet*c`` modules; returns the 4 stages."""

    def __init__(self, depth: int, output_stride: int):
        super().__init__()
        import timm

        t = timm.create_model(f"resnet{depth}c", pretrained=False, output_stride=output_stride)
        c = t.conv1  # Sequential(conv, bn, act, conv, bn, act, conv); then bn1, act1
        self.stem = nn.Sequential(c[0], c[1], c[2], c[3], c[4], c[5], c[6], t.bn1, t.act1)
        self.maxpool = t.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = t.layer1, t.layer2, t.layer3, t.layer4

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


class DecodeHead(nn.Module):
    """mmseg's ``BaseDecodeHead``: ``conv_seg`` (1x1, with bias) after dropout.

    ``in_index`` an int: that input; ``"resize_concat"``: every input resized (bilinear) to
    the first one's size and concatenated (``input_transform="resize_concat"``).
    """

    def __init__(self, channels: int, num_classes: int, in_index):
        super().__init__()
        self.in_index = in_index
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def transform_inputs(self, inputs):
        if self.in_index == "resize_concat":
            return torch.cat([resize(x, inputs[0].shape[2:]) for x in inputs], dim=1)
        return inputs[self.in_index]

    def cls_seg(self, x):
        return self.conv_seg(self.dropout(x))


class FCNHead(DecodeHead):
    def __init__(
        self, cin, channels, num_classes, num_convs=2, concat_input=True, in_index=3, kernel=3
    ):
        super().__init__(channels, num_classes, in_index)
        self.convs = nn.Sequential(
            *[
                ConvModule(cin if i == 0 else channels, channels, kernel, kernel // 2)
                for i in range(num_convs)
            ]
        )
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(cin + channels, channels, 3, 1)

    def forward(self, inputs):
        x = self.transform_inputs(inputs)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)


class PSPHead(DecodeHead):
    def __init__(self, cin, channels, num_classes, bins=(1, 2, 3, 6)):
        super().__init__(channels, num_classes, 3)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvModule(cin, channels, 1)) for b in bins
        )
        self.bottleneck = ConvModule(cin + len(bins) * channels, channels, 3, 1)

    def forward(self, inputs):
        x = inputs[3]
        outs = [x] + [resize(m(x), x.shape[2:]) for m in self.psp_modules]
        return self.cls_seg(self.bottleneck(torch.cat(outs, dim=1)))


class DepthwiseSeparableASPPHead(DecodeHead):
    def __init__(self, cin, channels, num_classes, dilations=(1, 12, 24, 36), c1_in=256, c1=48):
        super().__init__(channels, num_classes, 3)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(cin, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, channels, 1)
            if d == 1
            else DepthwiseSeparableConvModule(cin, channels, 3, d, d)
            for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, 1)
        self.c1_bottleneck = ConvModule(c1_in, c1, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1, channels, 3, 1),
            DepthwiseSeparableConvModule(channels, channels, 3, 1),
        )

    def forward(self, inputs):
        x = inputs[3]
        outs = [resize(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        c1 = self.c1_bottleneck(inputs[0])
        out = torch.cat([resize(out, c1.shape[2:]), c1], dim=1)
        return self.cls_seg(self.sep_bottleneck(out))


class FPN(nn.Module):
    """mmseg's ``FPN`` neck (no norm: convs with bias), nearest top-down by size."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), out_channels=256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, 1, norm=False, act=False) for _ in in_channels
        )

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            size = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=size, mode="nearest"
            )
        return [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]


class Upsample(nn.Module):
    """mmseg's ``Upsample(scale_factor, mode="bilinear", align_corners=False)``: to
    ``int(size * scale_factor)``."""

    def __init__(self, scale_factor: int = 2):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return resize(x, [int(t * self.scale_factor) for t in x.shape[-2:]])


class FPNHead(DecodeHead):
    def __init__(self, channels, num_classes, cin=256, strides=(4, 8, 16, 32)):
        super().__init__(channels, num_classes, 0)
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            layers = []
            for k in range(max(1, int(math.log2(stride) - math.log2(strides[0])))):
                layers.append(ConvModule(cin if k == 0 else channels, channels, 3, 1))
                if stride != strides[0]:
                    layers.append(Upsample())
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, inputs):
        out = self.scale_heads[0](inputs[0])
        for i in range(1, len(self.scale_heads)):
            out = out + resize(self.scale_heads[i](inputs[i]), out.shape[2:])
        return self.cls_seg(out)


class BasicConvBlock(nn.Module):
    def __init__(self, cin, cout, num_convs=2):
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvModule(cin if i == 0 else cout, cout, 3, 1) for i in range(num_convs)]
        )

    def forward(self, x):
        return self.convs(x)


class InterpConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.interp_upsample = nn.Sequential(Upsample(), ConvModule(cin, cout, 1))

    def forward(self, x):
        return self.interp_upsample(x)


class UpConvBlock(nn.Module):
    def __init__(self, cin, skip, cout):
        super().__init__()
        self.conv_block = BasicConvBlock(2 * skip, cout)
        self.upsample = InterpConv(cin, skip)

    def forward(self, skip, x):
        return self.conv_block(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(nn.Module):
    """mmseg's ``UNet`` backbone (5 stages, max-pool downsampling, InterpConv upsampling)."""

    def __init__(self, base=64, num_stages=5):
        super().__init__()
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        cin = 3
        for i in range(num_stages):
            block = []
            if i != 0:
                block.append(nn.MaxPool2d(2))
                self.decoder.append(
                    UpConvBlock(base * 2**i, base * 2 ** (i - 1), base * 2 ** (i - 1))
                )
            block.append(BasicConvBlock(cin, base * 2**i))
            self.encoder.append(nn.Sequential(*block))
            cin = base * 2**i

    def forward(self, x):
        enc = []
        for stage in self.encoder:
            x = stage(x)
            enc.append(x)
        dec = [x]
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](enc[i], x)
            dec.append(x)
        return dec


class HRNet(nn.Module):
    """mmseg's ``HRNet``: timm's module tree, mmseg's ``HRModule`` fusion; the 4 branches.

    timm's ``HighResolutionNet(head="")`` has mmseg's modules and names (``conv1``, ``bn1``,
    ``conv2``, ``bn2``, ``layer1``, ``transition1-3``, ``stage2-4``); each ``j > i`` fusion
    path's ``nn.Upsample(nearest)`` becomes mmseg's bilinear ``Upsample(2 ** (j - i))`` and the
    forward is mmseg's, which resizes every upsampled path to the target branch's size.
    ``overrides``: timm config entries (a narrow variant's stages).
    """

    def __init__(self, variant: str, overrides: dict | None = None):
        super().__init__()
        import timm

        t = timm.create_model(variant, pretrained=False, head="", **(overrides or {}))
        self.conv1, self.bn1, self.conv2, self.bn2 = t.conv1, t.bn1, t.conv2, t.bn2
        self.layer1 = t.layer1
        self.transition1, self.transition2, self.transition3 = (
            t.transition1,
            t.transition2,
            t.transition3,
        )
        self.stage2, self.stage3, self.stage4 = t.stage2, t.stage3, t.stage4
        for stage in (self.stage2, self.stage3, self.stage4):
            for module in stage:
                for i, paths in enumerate(module.fuse_layers):
                    for j, path in enumerate(paths):
                        if j > i:
                            path[2] = Upsample(2 ** (j - i))

    @staticmethod
    def hr_module(module, xs):
        """mmseg's ``HRModule.forward``: branches, then the fusion with a ReLU."""
        xs = [branch(x) for branch, x in zip(module.branches, xs, strict=True)]
        out = []
        for i, paths in enumerate(module.fuse_layers):
            y = 0
            for j, path in enumerate(paths):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + resize(path(xs[j]), xs[i].shape[2:])
                else:
                    y = y + path(xs[j])
            out.append(F.relu(y))
        return out

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            xs = [
                ys[i] if isinstance(t, nn.Identity) else t(ys[-1]) for i, t in enumerate(transition)
            ]
            for module in stage:
                xs = self.hr_module(module, xs)
            ys = xs
        return ys


class ObjectAttentionBlock(nn.Module):
    """mmseg's OCR ``ObjectAttentionBlock`` (``SelfAttentionBlock`` + ``bottleneck``)."""

    def __init__(self, cin: int, channels: int):
        super().__init__()
        self.channels = channels
        self.key_project = nn.Sequential(
            ConvModule(cin, channels, 1), ConvModule(channels, channels, 1)
        )
        self.query_project = nn.Sequential(
            ConvModule(cin, channels, 1), ConvModule(channels, channels, 1)
        )
        self.value_project = ConvModule(cin, channels, 1)
        self.out_project = ConvModule(channels, cin, 1)
        self.bottleneck = ConvModule(2 * cin, cin, 1)

    def forward(self, query_feats, key_feats):
        b = query_feats.shape[0]
        query = self.query_project(query_feats).flatten(2).permute(0, 2, 1)
        key = self.key_project(key_feats).flatten(2)
        value = self.value_project(key_feats).flatten(2).permute(0, 2, 1)
        sim = F.softmax(torch.matmul(query, key) * self.channels**-0.5, dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1)
        context = self.out_project(context.reshape(b, -1, *query_feats.shape[2:]))
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


class OCRHead(DecodeHead):
    """mmseg's ``OCRHead``: 3x3 bottleneck, spatial gather (scale 1), object attention."""

    def __init__(self, cin, channels, ocr_channels, num_classes, in_index="resize_concat"):
        super().__init__(channels, num_classes, in_index)
        self.bottleneck = ConvModule(cin, channels, 3, 1)
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels)

    def forward(self, inputs, prev_output):
        feats = self.bottleneck(self.transform_inputs(inputs))
        b, k = prev_output.shape[:2]
        probs = F.softmax(prev_output.reshape(b, k, -1), dim=2)  # SpatialGatherModule
        context = torch.matmul(probs, feats.flatten(2).permute(0, 2, 1))  # [B, K, C]
        context = context.permute(0, 2, 1).unsqueeze(3)  # [B, C, K, 1]
        return self.cls_seg(self.object_context_block(feats, context))


class CascadeEncoderDecoder(nn.Module):
    """mmseg's ``CascadeEncoderDecoder`` of two heads; the first's logits as ``aux_logits``."""

    def __init__(self, backbone, decode_heads):
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.ModuleList(decode_heads)

    def forward(self, x):
        feats = self.backbone(x)
        regions = self.decode_head[0](feats)
        logits = self.decode_head[1](feats, regions)
        return {"logits": resize(logits, x.shape[2:]), "aux_logits": resize(regions, x.shape[2:])}


# mmseg's HRNet configs and the timm models with the same trunk.
HRNET_VARIANTS = {"hr18s": "hrnet_w18_small_v2", "hr18": "hrnet_w18", "hr48": "hrnet_w48"}


def build_hrnet(name: str, kwargs: dict):
    """(model, run) for ``fcn_hr18s`` ... ``ocrnet_hr48``; ``kwargs["timm"]``: the trunk's
    timm config overrides of a narrow variant, ``channels`` / ``ocr_channels`` its OCR."""
    arch, width = name.split("_")
    backbone = HRNet(HRNET_VARIANTS[width], kwargs.get("timm"))
    widths = [m[0].conv2.out_channels for m in backbone.stage4[-1].branches]
    k, cin = kwargs.get("num_classes", 5), sum(widths)
    fcn = FCNHead(cin, cin, k, num_convs=1, concat_input=False, in_index="resize_concat", kernel=1)
    if arch == "fcn":
        model = EncoderDecoder(backbone, fcn)
        return model, model
    ocr = OCRHead(cin, kwargs.get("channels", 512), kwargs.get("ocr_channels", 256), k)
    model = CascadeEncoderDecoder(backbone, [fcn, ocr])
    return model, model


class EncoderDecoder(nn.Module):
    """mmseg's ``EncoderDecoder``: logits resized (bilinear) to the input size."""

    def __init__(self, backbone, decode_head, neck=None, auxiliary_head=None, pad_to=1):
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.pad_to = pad_to

    def forward(self, x):
        h, w = x.shape[2:]
        # U-Net needs a multiple of 16: pad bottom/right with zeros and crop, as segjax does.
        x = F.pad(x, (0, -w % self.pad_to, 0, -h % self.pad_to))
        feats = self.backbone(x)
        if hasattr(self, "neck"):
            feats = self.neck(feats)
        out = {"logits": resize(self.decode_head(feats), x.shape[2:])[:, :, :h, :w]}
        if hasattr(self, "auxiliary_head"):
            out["aux_logits"] = resize(self.auxiliary_head(feats), x.shape[2:])[:, :, :h, :w]
        return out


def build(name: str, kwargs: dict):
    """(model, run) for an mmseg config name (``pspnet_r50-d8``, ``fpn_r50``, ...)."""
    if "_hr" in name:
        return build_hrnet(name, kwargs)
    k = kwargs.get("num_classes", 5)
    aux = kwargs.get("aux", True)
    depth = 101 if "r101" in name else 50
    arch = name.split("_")[0]
    if arch == "unet-s5-d16":
        base = kwargs.get("base", 64)
        model = EncoderDecoder(
            UNet(base),
            FCNHead(base, base, k, num_convs=1, concat_input=False, in_index=4),
            auxiliary_head=FCNHead(2 * base, base, k, 1, False, 3) if aux else None,
            pad_to=16,
        )
        return model, model
    aux_head = FCNHead(1024, 256, k, num_convs=1, concat_input=False, in_index=2) if aux else None
    if arch == "ocrnet":  # CascadeEncoderDecoder: that FCN head, then OCR on stage 4
        heads = [FCNHead(1024, 256, k, num_convs=1, concat_input=False, in_index=2)]
        heads.append(OCRHead(2048, 512, 256, k, in_index=3))
        model = CascadeEncoderDecoder(ResNetV1c(depth, 8), heads)
        return model, model
    if arch == "fpn":
        model = EncoderDecoder(ResNetV1c(depth, 32), FPNHead(128, k), neck=FPN())
        return model, model
    backbone = ResNetV1c(depth, 8)
    head = {
        "pspnet": lambda: PSPHead(2048, 512, k),
        "fcn": lambda: FCNHead(2048, 512, k),
        "deeplabv3plus": lambda: DepthwiseSeparableASPPHead(2048, 512, k),
    }[arch]()
    model = EncoderDecoder(backbone, head, auxiliary_head=aux_head)
    return model, model
