"""Weights from PyTorch zoos (torchvision, timm, mmsegmentation) without PyTorch.

``read_tensors`` reads ``.pth`` / ``.safetensors`` files as numpy arrays;
``convert_file`` maps one onto a segjax model (``python -m segjax.weights convert``);
``load_pretrained`` applies a converted file to a model's fresh variables.
"""

from segjax.weights.convert import ConversionError
from segjax.weights.pretrained import (
    PretrainedError,
    adapt_input_conv,
    convert_file,
    load_pretrained,
    match_pretrained,
    merge_pretrained,
    read_pretrained,
    save_pretrained,
)
from segjax.weights.readers import WeightFileError, read_tensors
from segjax.weights.zoo import CONVERSIONS, get_conversion

__all__ = [
    "CONVERSIONS",
    "ConversionError",
    "PretrainedError",
    "WeightFileError",
    "adapt_input_conv",
    "convert_file",
    "get_conversion",
    "load_pretrained",
    "match_pretrained",
    "merge_pretrained",
    "read_pretrained",
    "read_tensors",
    "save_pretrained",
]
