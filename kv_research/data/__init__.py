"""Data: the embedded synthetic text-to-video benchmark (``synthetic``), real-video loading (``video``, PyAV) and
captioned real video sets with a resumable latent cache for training (``real``).

Names are resolved lazily (PEP 562): ``from kv_research.data import make_clip`` does not import PyAV, and
``python -m kv_research.data.synthetic`` runs without the package having imported the module first.
"""
from __future__ import annotations

import importlib

_EXPORTS = {name: "synthetic" for name in (
    "SyntheticConfig", "SyntheticClip", "SyntheticVideoDataset", "RENDER_VERSION", "SHAPES", "COLORS", "SIZES",
    "DIRECTIONS", "SPEEDS", "BACKGROUNDS", "sample_attrs", "caption_from_attrs", "parse_caption", "render_clip",
    "make_clip", "clip_id", "nominal_motion_score", "prompt_motion_score", "collate_clips", "build_benchmark", "load_prompts")}
_EXPORTS.update({name: "video" for name in (
    "read_video", "sample_indices", "save_video", "to_uint8", "VideoDecodeError", "VideoTooShortError",
    "VideoFolderDataset", "UCF101Dataset", "camel_to_words", "parse_seconds", "VIDEO_EXTENSIONS")})
_EXPORTS.update({name: "real" for name in (
    "CaptionedClip", "ClipList", "list_captioned_videos", "make_clip_id", "KeyframeConfig", "read_keyframes",
    "build_latent_cache", "open_latent_cache", "LatentClipSet", "CacheMismatchError")})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
