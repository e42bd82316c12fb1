"""Temporal modules of FusionFrames (paper section 4.1) and the registry of variants named as in its tables.

Grammar: ``Conv{1d,3d}Attn{1d,3d}{Blocks,Layers}`` plus the control ``Spatial`` (no temporal modules).

* Conv1d: temporal convolution with kernel 3x1x1 (mixes frames only, never pixels).
* Conv3d: kernel 3x3x3 between linear (1x1) down/up projections of the channels, at the hidden width whose
  parameter count matches the Conv1d module's (the paper: "to maintain a comparable number of parameters").
* Attn1d: each position attends to itself across the T frames.
* Attn3d: attention inside windows of 2x2xT positions (MaxViT-style block attention); the same weights as Attn1d,
  only the sequence length changes.
* Blocks: whole new residual blocks beside the spatial ones, placed as the released Kandinsky Video 1.1 code places
  them (``TemporalResNetBlock``: after each spatial ResNet on the way down, before it on the way up, at its input
  width; ``TemporalAttentionBlock``: beside the self-attention, only at the self-attention levels).
  ``Conv1dAttn1dBlocks`` *is* the released keyframe UNet's temporal part, so its checkpoint loads into it.
* Layers: temporal sub-layers inside the spatial blocks: a temporal conv after each 3x3 projection of the Kandinsky
  3.0 ResNet block, and temporal attention inside its self-attention block, between attention and feed-forward.

Every temporal module reads and returns the UNet's folded layout ``(b t) c h w`` and is conditioned, through a
conditional GroupNorm, on ``ctx.temb`` = time embedding + temporal embedding (frame position + noise-augmentation
level + motion score), as in the Kandinsky Video 1.1 code. The residual branch of every module ends in a
zero-initialised layer, so an inflated model equals its image model at initialisation. (The release leaves its
attention blocks' feed-forward random; we zero it for that identity; a loaded checkpoint overwrites it.)
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import Attention, ConditionalGroupNorm, Context, attention, zero_init

CONV_KINDS = ("1d", "3d")
ATTN_KINDS = ("1d", "3d")
PLACEMENTS = ("Blocks", "Layers")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    conv: str | None       # "1d" | "3d" | None (Spatial)
    attn: str | None       # "1d" | "3d" | None
    placement: str | None  # "Blocks" | "Layers" | None
    in_paper: bool         # reported in the paper's Table 1

    @property
    def temporal(self) -> bool:
        return self.conv is not None


_PAPER = {"Conv1dAttn1dLayers", "Conv1dAttn1dBlocks", "Conv1dAttn3dBlocks", "Conv3dAttn1dBlocks"}


def _build_registry() -> dict[str, VariantSpec]:
    reg = {"Spatial": VariantSpec("Spatial", None, None, None, False)}
    for c in CONV_KINDS:
        for a in ATTN_KINDS:
            for p in PLACEMENTS:
                name = f"Conv{c}Attn{a}{p}"
                reg[name] = VariantSpec(name, c, a, p, name in _PAPER)
    return reg


VARIANTS: dict[str, VariantSpec] = _build_registry()
# The study's default rows: the control, the paper's four variants, and the Conv3d "layers" variant of the brief.
DEFAULT_STUDY = ("Spatial", "Conv1dAttn1dLayers", "Conv1dAttn1dBlocks", "Conv1dAttn3dBlocks",
                 "Conv3dAttn1dBlocks", "Conv3dAttn1dLayers")


def get_variant(name: str) -> VariantSpec:
    if name not in VARIANTS:
        close = [k for k in VARIANTS if k.lower() == name.lower()]
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown variant '{name}'.{hint} Known variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def parse_variant(name: str) -> VariantSpec:
    m = re.fullmatch(r"Conv(1d|3d)Attn(1d|3d)(Blocks|Layers)", name)
    if name != "Spatial" and not m:
        raise KeyError(f"'{name}' does not follow Conv{{1d,3d}}Attn{{1d,3d}}{{Blocks,Layers}}")
    return get_variant(name)


def temporal_conv(conv: nn.Conv3d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)`` on ``b c t h w``; kernels (k, 1, 1) run as a 2-D conv over ``(t, h*w)``.

    Why: PyTorch's CPU Conv3d falls back to a slow unfolded kernel for these shapes (11 % of a quick forward pass);
    a (k, 1) Conv2d on the same numbers uses oneDNN. The weights keep their Conv3d shape, so checkpoints load as is.
    """
    if conv.kernel_size[1:] != (1, 1):
        return conv(h)
    b, c, t, hh, ww = h.shape
    out = F.conv2d(h.reshape(b, c, t, hh * ww), conv.weight[..., 0], conv.bias, padding=(conv.padding[0], 0))
    return out.reshape(b, -1, t, hh, ww)


def _fold_conv3d(conv: nn.Conv3d, x: torch.Tensor, frames: int) -> torch.Tensor:
    h = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
    return rearrange(temporal_conv(conv, h), "b c t h w -> (b t) c h w")


# --------------------------------------------------------------------------------------------- convolutions
class TemporalResNetBlock(nn.Module):
    """Temporal Conv1D / Conv3D Block: a 1-3-3-1 bottleneck residual block, each step CGN -> SiLU -> Conv3d.

    Conv1D (the released code exactly): ``C -> C/2 -> C/2 -> C/2 -> C`` with kernels 1, 3x1x1, 3x1x1, 1.
    Conv3D: the two middle kernels are 3x3x3; the 1x1 convs are the paper's Linear Down / Up, and the hidden width
    is the one (a multiple of the norm groups) whose parameter count is closest to the Conv1D block's.
    Keys: ``temporal_resnet_blocks.k.{0: norm, 1: SiLU, 2: conv}`` as in the release.
    """

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, hidden: int | None = None):
        super().__init__()
        if kind not in CONV_KINDS:
            raise ValueError(f"temporal conv kind must be '1d' or '3d', got {kind!r}")
        if hidden is None:
            hidden = channels // 2 if kind == "1d" else conv3d_hidden(channels, cond_dim, groups)
        mid = (3, 1, 1) if kind == "1d" else (3, 3, 3)
        kernels = [(1, 1, 1), mid, mid, (1, 1, 1)]
        widths = [(channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, channels)]
        self.temporal_resnet_blocks = nn.ModuleList([
            nn.ModuleList([ConditionalGroupNorm(groups, cin, cond_dim), nn.SiLU(),
                           nn.Conv3d(cin, cout, k, padding=tuple(s // 2 for s in k))])
            for (cin, cout), k in zip(widths, kernels)])
        zero_init(self.temporal_resnet_blocks[-1][2])

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        out = x
        for norm, _, conv in self.temporal_resnet_blocks:
            out = _fold_conv3d(conv, F.silu(norm(out, ctx.temb)), ctx.frames)
        return x + out


class TemporalConvLayer(nn.Module):
    """Temporal Conv1D / Conv3D Layer: inside a spatial block, after a 3x3 projection; CGN -> SiLU -> conv + skip.

    Conv1D: one 3x1x1 conv at the block's width. Conv3D: Linear Down -> 3x3x3 -> Linear Up at the hidden width that
    matches the Conv1D layer's parameters. The last conv is zero-initialised.
    """

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int):
        super().__init__()
        self.temporal_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        if kind == "1d":
            self.temporal_convs = nn.ModuleList([zero_init(nn.Conv3d(channels, channels, (3, 1, 1),
                                                                     padding=(1, 0, 0)))])
        elif kind == "3d":
            h = conv3d_layer_hidden(channels, cond_dim, groups)
            self.temporal_convs = nn.ModuleList([nn.Conv3d(channels, h, 1), nn.Conv3d(h, h, 3, padding=1),
                                                 zero_init(nn.Conv3d(h, channels, 1))])
        else:
            raise ValueError(f"temporal conv kind must be '1d' or '3d', got {kind!r}")

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = rearrange(F.silu(self.temporal_norm(x, ctx.temb)), "(b t) c h w -> b c t h w", t=ctx.frames)
        for conv in self.temporal_convs:
            h = temporal_conv(conv, h)
        return x + rearrange(h, "b c t h w -> (b t) c h w")


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _closest(make, target: int, candidates: list[int]) -> int:
    with torch.device("meta"):
        return min(candidates, key=lambda r: (abs(_count(make(r)) - target), r))


@functools.lru_cache(maxsize=None)
def conv3d_hidden(channels: int, cond_dim: int, groups: int) -> int:
    """Hidden width of the Conv3D block whose parameter count is closest to the Conv1D block's (same C).

    Candidates are multiples of ``groups`` (each conv of the bottleneck starts with a GroupNorm). The count grows
    with the width, so the answer is found among the first few candidates past the target.
    """
    with torch.device("meta"):
        target = _count(TemporalResNetBlock("1d", channels, cond_dim, groups))
    cands = list(range(groups, max(channels, groups) + 1, groups))
    return _closest(lambda r: TemporalResNetBlock("3d", channels, cond_dim, groups, hidden=r), target, cands)


@functools.lru_cache(maxsize=None)
def conv3d_layer_hidden(channels: int, cond_dim: int, groups: int) -> int:
    """Hidden width of one Conv3D layer matching one Conv1D layer's parameters: 2Ch + 27h^2 + ... = 3C^2 + ..."""
    def conv_params(kind, h=None):
        if kind == "1d":
            return 3 * channels * channels + channels
        return channels * h + h + 27 * h * h + h + h * channels + channels
    target = conv_params("1d")
    return min(range(1, channels + 1), key=lambda h: (abs(conv_params("3d", h) - target), h))


# ------------------------------------------------------------------------------------------------ attention
class TemporalAttention(Attention):
    """Attention across frames, per position (window 1 = Attn1d) or per 2x2 window of positions (Attn3d).

    Same parameters for both (the release's ``to_query/to_key/to_value/output_layer`` = our ``to_q/to_k/to_v/
    to_out.0``): only how tokens are grouped into sequences changes. No mask, no positional bias: frame order
    reaches attention through the conditional norm (frame position embedding) and the temporal convs.
    """

    def __init__(self, channels: int, head_dim: int, window: int):
        super().__init__(channels, channels, head_dim, channels)
        self.window = window
        zero_init(self.to_out[0])

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:  # type: ignore[override]
        H, W, p = x.shape[-2], x.shape[-1], self.window
        if p > 1 and (H % p or W % p):  # odd maps: pad to whole windows, crop afterwards
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        hp, wp = x.shape[-2] // p, x.shape[-1] // p
        # (b t) c (h p) (w q) -> (b h w) (t p q) c : one sequence per window, frames x window positions long
        tokens = rearrange(x, "(b t) c (h p) (w q) -> (b h w) (t p q) c", t=ctx.frames, p=p, q=p)
        out = super().forward(tokens)
        # (b h w) (t p q) c -> (b t) c (h p) (w q)
        out = rearrange(out, "(b h w) (t p q) c -> (b t) c (h p) (w q)", t=ctx.frames, h=hp, w=wp, p=p, q=p)
        return out[..., :H, :W]


class TemporalAttentionBlock(nn.Module):
    """Temporal Attn1D/Attn3D Block (the release's ``TemporalAttentionBlock``): CGN -> temporal attention + skip,
    then CGN -> feed-forward (1x1 convs, SiLU, no biases) + skip."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, head_dim: int):
        super().__init__()
        self.temporal_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        self.temporal_attention = TemporalAttention(channels, head_dim, window=1 if kind == "1d" else 2)
        self.ff_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        self.feed_forward = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.SiLU(),
                                          zero_init(nn.Conv2d(4 * channels, channels, 1, bias=False)))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.temporal_attention(self.temporal_norm(x, ctx.temb), ctx)
        return x + self.feed_forward(self.ff_norm(x, ctx.temb))


class TemporalAttentionLayer(nn.Module):
    """Temporal Attn1D/Attn3D Layer: CGN -> temporal attention + skip, inside the spatial attention block."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, head_dim: int):
        super().__init__()
        self.temporal_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        self.temporal_attention = TemporalAttention(channels, head_dim, window=1 if kind == "1d" else 2)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return x + self.temporal_attention(self.temporal_norm(x, ctx.temb), ctx)


__all__ = ["VARIANTS", "DEFAULT_STUDY", "VariantSpec", "get_variant", "parse_variant", "TemporalResNetBlock",
           "TemporalConvLayer", "TemporalAttention", "TemporalAttentionBlock", "TemporalAttentionLayer",
           "conv3d_hidden", "conv3d_layer_hidden", "attention"]
