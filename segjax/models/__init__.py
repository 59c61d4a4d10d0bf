"""segjax models: backbones, necks, heads, composed by ``Segmentor``; built by name."""

from segjax.models.registry import MODELS, UnknownModelError, build_model
from segjax.models.segmentor import Segmentor

__all__ = ["MODELS", "Segmentor", "UnknownModelError", "build_model"]
