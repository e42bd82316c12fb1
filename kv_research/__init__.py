"""kv-research: FusionFrames / Kandinsky Video temporal blocks, reproduced and evaluated."""
from . import metrics  # noqa: F401  (cheap: heavy detectors import lazily)
from .checkpoint import CheckpointError
from .config import PRESETS, get_preset
from .loaders import Conventions, load_kandinsky3, load_kandinsky_video, load_kandinsky_video_interpolation
from .models import DEFAULT_STUDY, VARIANTS, KeyframeUNet, TextEncoder, build_unet, get_variant, inflate
from .memory import estimate_training_memory
from .models.codec import MoVQCodec, PixelCodec, load_codec
from .models.interpolation import InterpolationUNet
from .models.text import CachedTextEncoder, T5TextEncoder, TextFeatureCache, cut_context

__all__ = ["VARIANTS", "DEFAULT_STUDY", "PRESETS", "get_preset", "build_unet", "inflate", "get_variant",
           "KeyframeUNet", "TextEncoder", "T5TextEncoder", "TextFeatureCache", "CachedTextEncoder", "cut_context",
           "load_kandinsky3", "load_kandinsky_video", "Conventions", "CheckpointError", "metrics", "load_codec",
           "PixelCodec", "MoVQCodec", "estimate_training_memory", "InterpolationUNet",
           "load_kandinsky_video_interpolation"]
__version__ = "0.1.0"
