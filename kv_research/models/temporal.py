"""Temporal modules of FusionFrames (paper section 4.1) and the registry of variants named as in its tables.

Grammar: ``Conv{1d,3d}Attn{1d,3d}{Blocks,Layers}`` plus the control ``Spatial`` (no temporal modules).

* Conv1d: temporal convolution with kernel 3x1x1 (mixes frames only, never pixels).
* Conv3d: kernel 3x3x3 between linear (1x1) down/up projections of the channels; the hidden width is chosen so
  the module's parameters match the Conv1d module's as closely as possible (the paper: "to maintain a comparable
  number of parameters").
* Attn1d: each position attends to itself across the T frames.
* Attn3d: attention inside windows of 2x2xT positions (MaxViT-style block attention); the same weights as Attn1d,
  only the sequence length changes.
* Blocks: whole new residual blocks after each spatial ResNet block (conv) and each spatial attention block
  (attention). Layers: temporal sub-layers inside those blocks (after each spatial conv; between spatial
  attention and feed-forward).

Every temporal module reads and returns the UNet's folded layout ``(b t) c h w`` and is conditioned, through AdaGN,
on ``ctx.temb`` = time embedding + temporal embedding (frame position + motion score + noise level), as in the
Kandinsky Video 1.1 code. The residual branch of every module ends in a zero-initialised layer, so an inflated
model equals its image model at initialisation.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import AdaGN, Context, attention, norm_groups, zero_init

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


# --------------------------------------------------------------------------------------------- convolutions
KERNELS = {"1d": (3, 1, 1), "3d": (3, 3, 3)}


class TemporalConv(nn.Module):
    """Pre-norm + activation (the paper's "NA") then a Conv3d over ``b c t h w`` with kernel 3x1x1 or 3x3x3."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, zero_out: bool = False):
        super().__init__()
        if kind not in KERNELS:
            raise ValueError(f"temporal conv kind must be '1d' or '3d', got {kind!r}")
        k = KERNELS[kind]
        self.norm = AdaGN(channels, cond_dim, groups)
        self.conv = nn.Conv3d(channels, channels, k, padding=tuple(s // 2 for s in k))
        if zero_out:
            zero_init(self.conv)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = F.silu(self.norm(x, ctx.temb))
        h = rearrange(h, "(b t) c h w -> b c t h w", t=ctx.frames)
        h = self.conv(h)
        return rearrange(h, "b c t h w -> (b t) c h w")


class ProjectedTemporalConv(nn.Module):
    """Linear Down -> Conv3d (3x3x3) [-> Conv3d] -> Linear Up: 3x3x3 kernels in a narrower channel space, so the
    Conv3d module costs about what the Conv1d module costs. The up projection is zero-initialised."""

    def __init__(self, channels: int, hidden: int, cond_dim: int, groups: int, depth: int):
        super().__init__()
        self.norm = AdaGN(channels, cond_dim, groups)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.convs = nn.ModuleList([TemporalConv("3d", hidden, cond_dim, groups) for _ in range(depth)])
        self.up = zero_init(nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = self.down(F.silu(self.norm(x, ctx.temb)))
        for conv in self.convs:
            h = conv(h, ctx)
        return self.up(h)


class TemporalConvBlock(nn.Module):
    """Temporal Conv1D / Conv3D Block: a new residual block appended after a spatial ResNet block.

    Conv1D: [Conv 3x1x1 (NA) -> Conv 3x1x1 (NA)] + skip.
    Conv3D: [Linear Down (NA) -> Conv 3x3x3 (NA) -> Conv 3x3x3 (NA) -> Linear Up] + skip.
    """

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, hidden: int | None = None):
        super().__init__()
        if kind == "1d":
            self.branch = nn.ModuleList([TemporalConv("1d", channels, cond_dim, groups),
                                         TemporalConv("1d", channels, cond_dim, groups, zero_out=True)])
        elif kind == "3d":
            hidden = hidden or conv3d_hidden(channels, cond_dim, groups)
            self.branch = nn.ModuleList([ProjectedTemporalConv(channels, hidden, cond_dim, groups, depth=2)])
        else:
            raise ValueError(f"temporal conv kind must be '1d' or '3d', got {kind!r}")

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = x
        for op in self.branch:
            h = op(h, ctx)
        return x + h


class TemporalConvLayers(nn.Module):
    """Temporal Conv1D / Conv3D Layers: one temporal conv after each of the two spatial convs of a ResNet block,
    inside its residual branch. The ResNet block calls ``apply(i, h, ctx)`` after its i-th spatial conv."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int):
        super().__init__()
        if kind == "1d":
            self.layers = nn.ModuleList([TemporalConv("1d", channels, cond_dim, groups, zero_out=True)
                                         for _ in range(2)])
        else:
            hidden = conv3d_layer_hidden(channels, cond_dim, groups)
            self.layers = nn.ModuleList([ProjectedTemporalConv(channels, hidden, cond_dim, groups, depth=1)
                                         for _ in range(2)])

    def apply_layer(self, i: int, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        return h + self.layers[i](h, ctx)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _closest_width(make, target: int, channels: int) -> int:
    """Smallest-error hidden width: parameter counts grow with the width, so bisect, then compare neighbours."""
    lo, hi = 1, channels
    with torch.device("meta"):
        while lo < hi:
            mid = (lo + hi) // 2
            if _count(make(mid)) < target:
                lo = mid + 1
            else:
                hi = mid
        cands = [r for r in (lo - 1, lo) if r >= 1]
        return min(cands, key=lambda r: abs(_count(make(r)) - target))


@functools.lru_cache(maxsize=None)
def conv3d_hidden(channels: int, cond_dim: int, groups: int) -> int:
    """Hidden width of the Conv3D block whose parameter count is closest to the Conv1D block's (same C)."""
    with torch.device("meta"):
        target = _count(TemporalConvBlock("1d", channels, cond_dim, groups))
    return _closest_width(lambda r: TemporalConvBlock("3d", channels, cond_dim, groups, hidden=r), target, channels)


@functools.lru_cache(maxsize=None)
def conv3d_layer_hidden(channels: int, cond_dim: int, groups: int) -> int:
    """Hidden width of one Conv3D layer matching one Conv1D layer's parameters."""
    with torch.device("meta"):
        target = _count(TemporalConv("1d", channels, cond_dim, groups))
    return _closest_width(lambda r: ProjectedTemporalConv(channels, r, cond_dim, groups, 1), target, channels)


# ------------------------------------------------------------------------------------------------ attention
class TemporalAttention(nn.Module):
    """Attention across frames, per position (window 1 = Attn1d) or per 2x2 window of positions (Attn3d).

    Same parameters for both: only how tokens are grouped into sequences changes.
    """

    def __init__(self, channels: int, cond_dim: int, groups: int, head_dim: int, window: int):
        super().__init__()
        self.window = window
        self.heads = max(1, channels // head_dim)
        self.norm = AdaGN(channels, cond_dim, groups)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.to_out = zero_init(nn.Linear(channels, channels))
        self.max_batch = 65535

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = self.norm(x, ctx.temb)
        H, W, p = h.shape[-2], h.shape[-1], self.window
        if p > 1 and (H % p or W % p):  # odd maps: pad to whole windows, crop afterwards
            h = F.pad(h, (0, (-W) % p, 0, (-H) % p))
        hp, wp = h.shape[-2] // p, h.shape[-1] // p
        # (b t) c (h p) (w q) -> (b h w) (t p q) c : one sequence per window, frames x window positions long
        tokens = rearrange(h, "(b t) c (h p) (w q) -> (b h w) (t p q) c", t=ctx.frames, p=p, q=p)
        q, k, v = rearrange(self.to_qkv(tokens), "n l (three heads d) -> three n heads l d", three=3,
                            heads=self.heads)
        out = attention(q, k, v, None, self.max_batch)
        out = self.to_out(rearrange(out, "n heads l d -> n l (heads d)"))
        # (b h w) (t p q) c -> (b t) c (h p) (w q)
        out = rearrange(out, "(b h w) (t p q) c -> (b t) c (h p) (w q)", t=ctx.frames, h=hp, w=wp, p=p, q=p)
        return out[..., :H, :W]


class TemporalAttentionBlock(nn.Module):
    """Temporal Attn1D/Attn3D Block: temporal attention + skip, then a feed-forward + skip (both zero-initialised;
    the released code leaves the FF random, which would break identity at initialisation)."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, head_dim: int):
        super().__init__()
        self.attn = TemporalAttention(channels, cond_dim, groups, head_dim, window=1 if kind == "1d" else 2)
        self.ff_norm = AdaGN(channels, cond_dim, groups)
        self.ff = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1), nn.GELU(),
                                zero_init(nn.Conv2d(4 * channels, channels, 1)))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.attn(x, ctx)
        return x + self.ff(self.ff_norm(x, ctx.temb))


class TemporalAttentionLayer(nn.Module):
    """Temporal Attn1D/Attn3D Layer: attention + skip inserted inside the spatial transformer block."""

    def __init__(self, kind: str, channels: int, cond_dim: int, groups: int, head_dim: int):
        super().__init__()
        self.attn = TemporalAttention(channels, cond_dim, groups, head_dim, window=1 if kind == "1d" else 2)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return x + self.attn(x, ctx)


def make_conv_module(spec: VariantSpec, channels: int, cond_dim: int, groups: int) -> nn.Module:
    """The conv part of a variant at one ResNet block: a block after it, or layers inside it."""
    if spec.placement == "Blocks":
        return TemporalConvBlock(spec.conv, channels, cond_dim, groups)
    return TemporalConvLayers(spec.conv, channels, cond_dim, groups)


def make_attn_module(spec: VariantSpec, channels: int, cond_dim: int, groups: int, head_dim: int) -> nn.Module:
    """The attention part of a variant at one spatial attention block: a block after it, or a layer inside it."""
    cls = TemporalAttentionBlock if spec.placement == "Blocks" else TemporalAttentionLayer
    return cls(spec.attn, channels, cond_dim, groups, head_dim)
