"""One input check for the library-level feature extractors (I3D, CLIP, RAFT), run where the videos enter.

Why: each detector maps its input to its own range ([-1, 1] for I3D and torchvision RAFT, uint8 for CLIP's PIL
preprocessing) and used to clamp whatever it got. A uint8 tensor, a 0-255 float or a [-1, 1] tensor then gave a
plausible number instead of an error (issue 13, item 7). ``check_videos`` refuses anything outside the documented
layout -- (B,3,T,H,W) float in [0,1], or uint8 where the extractor says so -- with a ``VideoInputError`` that
names the tensor's shape, dtype and range and what would be accepted.
"""
from __future__ import annotations

import torch

__all__ = ["VideoInputError", "VideoDTypeError", "RANGE_TOLERANCE", "check_videos"]

RANGE_TOLERANCE = 1e-3   # floats may leave [0,1] by this much (rounding of resampled or decoded frames)


class VideoInputError(ValueError):
    """A video tensor outside a metric extractor's documented layout or range."""


class VideoDTypeError(VideoInputError, TypeError):
    """A video tensor of a dtype the extractor does not take (also a ``TypeError``, as before issue 13)."""


def _describe(x) -> str:
    if not isinstance(x, torch.Tensor):
        return type(x).__name__
    desc = f"shape {tuple(x.shape)}, dtype {str(x.dtype).removeprefix('torch.')}"
    if x.numel() and (x.is_floating_point() or x.dtype == torch.uint8):
        lo, hi = x.min().item(), x.max().item()
        desc += f", range [{lo:.4g}, {hi:.4g}]"
    return desc


def check_videos(videos, what: str, *, min_frames: int = 1, min_side: int = 2, allow_uint8: bool = False,
                 allow_single: bool = False) -> torch.Tensor:
    """Return ``videos`` as (B,3,T,H,W) float in [0,1] (uint8 divided by 255, if allowed), or raise.

    ``what`` names the extractor in the message; ``min_frames`` is what the metric needs (motion: 2 frames, one
    pair); ``allow_single`` also takes one video (3,T,H,W). Refused: not a tensor, wrong number of dims, channels
    != 3, an empty batch, T < ``min_frames``, H or W < ``min_side``, another dtype, NaN/inf, and floats outside
    [0,1] by more than ``RANGE_TOLERANCE`` (uint8-range or [-1,1] input).
    """
    layout = "(B,3,T,H,W)" + (" or (3,T,H,W)" if allow_single else "")
    kinds = "float in [0,1]" + (" or uint8" if allow_uint8 else "")
    accepted = f"{what} takes videos {layout}, {kinds}"
    if not isinstance(videos, torch.Tensor):
        raise VideoInputError(f"{accepted}; got a {type(videos).__name__}")
    if allow_single and videos.dim() == 4:
        videos = videos[None]
    if videos.dim() != 5:
        raise VideoInputError(f"{accepted}; got {videos.dim()} dims ({_describe(videos)})")
    b, c, t, h, w = videos.shape
    if c != 3:
        raise VideoInputError(f"{accepted}; got {c} channels in dim 1 ({_describe(videos)}; channels-last input? "
                              "use rearrange(v, 'b t h w c -> b c t h w'))")
    if b == 0:
        raise VideoInputError(f"{accepted}; got an empty batch ({_describe(videos)})")
    if t < min_frames:
        raise VideoInputError(f"{what} needs at least {min_frames} frames, got T={t} ({_describe(videos)})")
    if min(h, w) < min_side:
        raise VideoInputError(f"{what} needs frames of at least {min_side}x{min_side} px, got {h}x{w} "
                              f"({_describe(videos)})")
    if videos.dtype == torch.uint8 and allow_uint8:
        return videos.float() / 255.0
    if not videos.is_floating_point():
        hint = " (divide uint8 by 255)" if videos.dtype == torch.uint8 else ""
        raise VideoDTypeError(f"{accepted}; got dtype {str(videos.dtype).removeprefix('torch.')}{hint} "
                              f"({_describe(videos)})")
    finite = torch.isfinite(videos)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise VideoInputError(f"{accepted}; got {bad} NaN/inf values ({_describe(videos)})")
    lo, hi = videos.min().item(), videos.max().item()
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        guess = ""
        if hi > 2:
            guess = " (0-255 values? divide by 255)"
        elif lo < -RANGE_TOLERANCE:
            guess = " ([-1,1] values? map with (x + 1) / 2)"
        raise VideoInputError(f"{accepted}; expected values in [0,1] (tolerance {RANGE_TOLERANCE:g}), got "
                              f"[{lo:.4g}, {hi:.4g}]{guess} ({_describe(videos)})")
    return videos
