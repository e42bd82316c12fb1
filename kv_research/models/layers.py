"""Building blocks shared by the spatial UNet and the temporal modules.

``zero_init`` lives here and only here: every module that must start as the identity (temporal outputs, AdaGN
scale/shift) calls it, so "identity at initialisation" is one policy, not a habit repeated in many files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero: a residual branch ending in it starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm_groups(channels: int, groups: int) -> int:
    """Largest divisor of ``channels`` not above ``groups`` (GroupNorm needs an exact split)."""
    for g in range(min(groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoid of a scalar per item, computed in float32 whatever the autocast dtype."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class ScalarEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear, as Kandinsky uses for time, frame position, motion and noise level."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(x, self.dim).to(self.mlp[0].weight.dtype))


class AdaGN(nn.Module):
    """GroupNorm without affine, modulated by a condition: ``norm(x) * (1 + scale) + shift``.

    The scale/shift projection is zero-initialised, so a fresh AdaGN is a plain GroupNorm and a new condition
    (frame position, motion score, noise level) cannot change the output until training moves it.
    """

    def __init__(self, channels: int, cond_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(channels, groups), channels, affine=False)
        self.to_scale_shift = zero_init(nn.Linear(cond_dim, 2 * channels))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x (n, c, h, w), cond (n, e)
        scale, shift = self.to_scale_shift(F.silu(cond)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              max_batch: int = 65535) -> torch.Tensor:
    """SDPA on ``(n, heads, l, d)``, chunked over ``n`` so ``n * heads`` never exceeds ``max_batch``.

    Why: temporal attention has a tiny sequence (frames) and a huge batch (b * h * w); CUDA kernels fail when the
    batch grid passes 65,535 (pytorch#142228), so large batches are split instead of crashing.
    """
    n, heads = q.shape[:2]
    step = max(1, max_batch // heads)
    if n <= step:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    outs = []
    for i in range(0, n, step):
        m = None if mask is None else mask[i:i + step]
        outs.append(F.scaled_dot_product_attention(q[i:i + step], k[i:i + step], v[i:i + step], attn_mask=m))
    return torch.cat(outs)


class MultiHeadAttention(nn.Module):
    """Plain multi-head attention on token sequences ``(n, l, c)``; keys may come from a context (cross-attention)."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        if zero_out:
            zero_init(self.to_out)
        self.max_batch = 65535

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "n l (h d) -> n h l d", h=self.heads)  # (n, l, c) -> (n, heads, l, d)
        k, v = rearrange(self.to_kv(context), "n s (two h d) -> two n h s d", two=2, h=self.heads)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (n, s) -> (n, 1, 1, s)
        out = attention(q, k, v, mask, self.max_batch)
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))  # (n, heads, l, d) -> (n, l, c)


@dataclass
class Context:
    """Everything a block needs besides its input; built once per forward pass by the UNet."""
    emb: torch.Tensor                    # (b t, e) diffusion time + pooled text, per frame
    text: torch.Tensor                   # (b t, l, d) text tokens, repeated per frame
    text_mask: torch.Tensor              # (b t, l) bool, True = real token
    frames: int                          # t
    temb: torch.Tensor | None = None     # (b t, e) emb + temporal embedding (video mode only)

    @property
    def video(self) -> bool:
        return self.temb is not None
