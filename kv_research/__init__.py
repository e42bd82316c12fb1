"""kv-research: FusionFrames / Kandinsky Video temporal blocks, reproduced and evaluated."""
from . import metrics  # noqa: F401  (cheap: heavy detectors import lazily)
from .config import PRESETS, get_preset
from .models import DEFAULT_STUDY, VARIANTS, KeyframeUNet, TextEncoder, build_unet, get_variant, inflate

__all__ = ["VARIANTS", "DEFAULT_STUDY", "PRESETS", "get_preset", "build_unet", "inflate", "get_variant",
           "KeyframeUNet", "TextEncoder", "metrics"]
__version__ = "0.1.0"
