from .temporal import DEFAULT_STUDY, VARIANTS, get_variant
from .text import TextConfig, TextEncoder, tokenize
from .unet import KeyframeUNet, build_unet, inflate, is_inflation_param

__all__ = ["VARIANTS", "DEFAULT_STUDY", "get_variant", "TextConfig", "TextEncoder", "tokenize", "KeyframeUNet",
           "build_unet", "inflate", "is_inflation_param"]
