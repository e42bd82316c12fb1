"""Building blocks shared by the Kandinsky 3.0 UNet and the temporal modules.

Names follow diffusers' ``Kandinsky3UNet`` (``context_mlp``, ``to_q``/``to_k``/``to_v``/``to_out.0``,
``linear_1``/``linear_2``) so that its state dict loads key by key.

``zero_init`` lives here and only here: every module that must start as the identity (temporal outputs, the
conditional norms' scale/shift) calls it, so "identity at initialisation" is one policy, not a habit repeated in
many files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# The two released codes compute the same sinusoid with different float32 rounding (up to 1.5e-5 at t = 321):
# diffusers divides (-ln(1e4) * i) by (half - 1); the Kandinsky code multiplies i by -(ln(1e4) / (half - 1)).
SINUSOID_STYLES = ("diffusers", "kandinsky_video")


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero: a residual branch ending in it starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def channels_last_(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter (the 2-D convolution weights) channels-last, in place; returns ``module``.

    Why: on CPU, oneDNN's channels-last convolutions (forward and backward) are faster at the study's small widths:
    a quick fine-tuning step -9 to -15 %, a text-to-image step -10 %, a sampling step about -7 % on one thread
    (``benchmarks/bench_memory_format.py``). A 2-D conv with a channels-last weight returns a
    channels-last activation, so the layout then carries through the network by itself. Only the summation order
    inside the kernels changes: outputs agree with the default layout to float32 rounding
    (tests/test_channels_last.py). Conv3d weights (5-D) keep their layout. State dicts and checkpoints are
    unaffected (``save_checkpoint`` writes contiguous copies; ``load_state_dict`` copies into the strided weights).
    """
    for m in module.modules():
        for p in m.parameters(recurse=False):
            if p.ndim == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return module


def sinusoid(x: torch.Tensor, dim: int, style: str = "diffusers") -> torch.Tensor:
    """Kandinsky 3.0's sinusoid of a scalar per item: ``[sin, cos]`` at frequencies ``1e4 ** (-i / (half - 1))``.

    Always float32 (whatever the autocast dtype); ``style`` picks the rounding of the checkpoint's own code.
    """
    half = dim // 2
    if style == "diffusers":
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / (half - 1))
    elif style == "kandinsky_video":
        freqs = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000.0) / (half - 1)))
    else:
        raise ValueError(f"sinusoid style must be one of {SINUSOID_STYLES}, got {style!r}")
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear (diffusers' ``TimestepEmbedding`` keys: ``linear_1``, ``linear_2``).

    Used for the diffusion time and, in video mode, for frame position, noise-augmentation level and motion score.
    """

    def __init__(self, in_dim: int, out_dim: int, style: str = "diffusers"):
        super().__init__()
        self.in_dim, self.style = in_dim, style
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = sinusoid(x.reshape(-1), self.in_dim, self.style).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(h)))


class ConditionalGroupNorm(nn.Module):
    """GroupNorm without affine, modulated by a condition: ``norm(x) * (1 + scale) + shift``.

    ``context_mlp = [SiLU, Linear]`` as in Kandinsky 3.0; the Linear is zero-initialised, so a fresh norm is a plain
    GroupNorm and a new condition cannot change the output until training moves it. ``forward`` takes the condition
    *already passed through SiLU* (``Context`` computes it once per forward pass instead of once per norm).
    """

    def __init__(self, groups: int, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.context_mlp = nn.Sequential(nn.SiLU(), zero_init(nn.Linear(cond_dim, 2 * channels)))

    def forward(self, x: torch.Tensor, cond_act: torch.Tensor) -> torch.Tensor:
        # x (n, c, *spatial), cond_act (n, e) = silu(condition)
        ss = self.context_mlp[1](cond_act)
        ss = ss.reshape(ss.shape + (1,) * (x.ndim - 2))
        scale, shift = ss.chunk(2, dim=1)
        return self.norm(x) * (scale + 1.0) + shift


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
        m = mask if mask is None or mask.shape[0] == 1 else mask[i:i + step]     # broadcast masks stay whole
        outs.append(F.scaled_dot_product_attention(q[i:i + step], k[i:i + step], v[i:i + step], attn_mask=m))
    return torch.cat(outs)


class Attention(nn.Module):
    """Multi-head attention without biases (diffusers' ``Attention`` as Kandinsky 3.0 builds it).

    ``heads = out_dim // head_dim``; keys and values come from ``context`` (cross-attention) or from ``x``.
    ``mask_add`` is additive, ``(n, 1, 1, s)``: 0 for real tokens, -10000 for padding, so a row whose every token
    is masked stays finite (diffusers' convention; a boolean SDPA mask would give NaN there).
    """

    def __init__(self, query_dim: int, context_dim: int, head_dim: int, out_dim: int):
        super().__init__()
        if out_dim % head_dim:
            raise ValueError(f"attention width {out_dim} is not a multiple of the head dim {head_dim}")
        self.heads = out_dim // head_dim
        self.to_q = nn.Linear(query_dim, out_dim, bias=False)
        self.to_k = nn.Linear(context_dim, out_dim, bias=False)
        self.to_v = nn.Linear(context_dim, out_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(out_dim, out_dim, bias=False)])
        self.max_batch = 65535

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask_add: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "n l (h d) -> n h l d", h=self.heads)        # (n, l, c) -> (n, heads, l, d)
        k = rearrange(self.to_k(context), "n s (h d) -> n h s d", h=self.heads)
        v = rearrange(self.to_v(context), "n s (h d) -> n h s d", h=self.heads)
        if mask_add is not None:
            mask_add = mask_add.to(q.dtype)
        out = attention(q, k, v, mask_add, self.max_batch)
        return self.to_out[0](rearrange(out, "n h l d -> n l (h d)"))             # (n, heads, l, d) -> (n, l, c)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, s) bool/0-1 -> (n, 1, 1, s) additive: ``(1 - mask) * -10000`` exactly as diffusers' Kandinsky3UNet."""
    return ((1 - mask.to(dtype)) * -10000.0)[:, None, None, :]


@dataclass
class Context:
    """Everything a block needs besides its input; built once per forward pass by the UNet."""
    emb: torch.Tensor                    # (b t, e) silu(diffusion time + pooled text), per frame
    text: torch.Tensor | None            # (b, l, d) projected text tokens (once per clip, not per frame)
    text_mask: torch.Tensor | None       # (b, 1, 1, l) additive mask
    frames: int                          # t
    temb: torch.Tensor | None = None     # (b t, e) silu(time + pooled text + temporal embedding); video mode only

    @property
    def video(self) -> bool:
        return self.temb is not None
