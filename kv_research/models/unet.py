"""KeyframeUNet: a Kandinsky-3.0-style text-to-image UNet that is inflated into a video (keyframe) model.

Image mode (T = 1, no first frame) is the text-to-image model. Video mode folds frames into the batch,
``b c t h w -> (b t) c h w``, so every spatial layer is the image model's layer applied frame by frame; the
temporal modules (models/temporal.py) are the only places where frames meet. In video mode the input also carries
the Kandinsky Video 1.1 first-frame condition: ``[x_t, first-frame latent in slot 0, mask]`` on channels.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import UNetConfig, get_preset
from .layers import AdaGN, Context, MultiHeadAttention, ScalarEmbedding, norm_groups
from .temporal import TemporalConvLayers, get_variant, make_attn_module, make_conv_module


class ResBlock(nn.Module):
    """GN(time) -> SiLU -> Conv3x3 -> GN(time) -> SiLU -> Conv3x3, plus skip. ``temporal_layers`` (Layers
    variants) adds a temporal conv after each spatial conv, inside the residual branch."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = AdaGN(cin, emb_dim, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = AdaGN(cout, emb_dim, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.channels = cout
        self.temporal_layers: TemporalConvLayers | None = None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, ctx.emb)))
        if self.temporal_layers is not None and ctx.video:
            h = self.temporal_layers.apply_layer(0, h, ctx)
        h = self.conv2(F.silu(self.norm2(h, ctx.emb)))
        if self.temporal_layers is not None and ctx.video:
            h = self.temporal_layers.apply_layer(1, h, ctx)
        return self.skip(x) + h


class SpatialTransformer(nn.Module):
    """Self-attention, cross-attention to text, feed-forward (pre-LayerNorm, residual). ``temporal_attn``
    (Layers variants) sits between the attentions and the feed-forward, as in the paper's Figure 3."""

    def __init__(self, channels: int, text_dim: int, head_dim: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(channels) for _ in range(3))
        self.self_attn = MultiHeadAttention(channels, head_dim)
        self.cross_attn = MultiHeadAttention(channels, head_dim, context_dim=text_dim)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.channels = channels
        self.temporal_attn: nn.Module | None = None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = x.shape[-2]
        tok = rearrange(x, "n c h w -> n (h w) c")
        tok = tok + self.self_attn(self.norm1(tok))
        tok = tok + self.cross_attn(self.norm2(tok), ctx.text, ctx.text_mask)
        if self.temporal_attn is not None and ctx.video:
            x = self.temporal_attn(rearrange(tok, "n (h w) c -> n c h w", h=h), ctx)
            tok = rearrange(x, "n c h w -> n (h w) c")
        tok = tok + self.ff(self.norm3(tok))
        return rearrange(tok, "n (h w) c -> n c h w", h=h)


class Unit(nn.Module):
    """A spatial block and, for Blocks variants, the temporal block appended after it."""

    def __init__(self, spatial: nn.Module):
        super().__init__()
        self.spatial = spatial
        self.temporal: nn.Module | None = None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = self.spatial(x, ctx)
        if self.temporal is not None and ctx.video:
            x = self.temporal(x, ctx)
        return x


class Stage(nn.Module):
    """A sequence of units; up-path stages first concatenate the matching skip connection."""

    def __init__(self, units: list[nn.Module], takes_skip: bool = False):
        super().__init__()
        self.units = nn.ModuleList(units)
        self.takes_skip = takes_skip

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        for u in self.units:
            x = u(x, ctx)
        return x


class Resample(nn.Module):
    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, stride=1 if up else 2)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class AttentionPooling(nn.Module):
    """Pool text tokens with attention from their mean (Kandinsky 3.0 adds this to the time embedding)."""

    def __init__(self, text_dim: int, out_dim: int, head_dim: int):
        super().__init__()
        self.attn = MultiHeadAttention(text_dim, min(head_dim, text_dim))
        self.proj = nn.Linear(text_dim, out_dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(text.dtype)[..., None]
        query = (text * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (b, 1, d)
        pooled = self.attn(query, text, mask)[:, 0] + query[:, 0]
        return self.proj(pooled)


class TemporalEmbedding(nn.Module):
    """Frame position + motion score + noise-augmentation level, each sinusoid -> MLP, summed (KV 1.1)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.position = ScalarEmbedding(dim, out_dim)
        self.motion = ScalarEmbedding(dim, out_dim)
        self.noise_level = ScalarEmbedding(dim, out_dim)

    def forward(self, b: int, t: int, motion: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        pos = repeat(torch.arange(t, device=motion.device), "t -> (b t)", b=b)
        per_clip = self.motion(motion) + self.noise_level(noise_level)           # (b, e)
        return self.position(pos) + repeat(per_clip, "b e -> (b t) e", t=t)     # (b t, e)


class KeyframeUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch, E, g = cfg.model_channels, cfg.time_embed_dim, cfg.groups
        self.time_embed = ScalarEmbedding(ch, E)
        self.text_pool = AttentionPooling(cfg.text_dim, E, cfg.head_dim)
        self.in_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def units(cin: int, cout: int, attn: bool) -> list[Unit]:
            us = [Unit(ResBlock(cin, cout, E, g))]
            if attn:
                us.append(Unit(SpatialTransformer(cout, cfg.text_dim, cfg.head_dim)))
            return us

        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Stage(units(cur, ch * mult, level in cfg.attention_levels)))
                cur = ch * mult
                skips.append(cur)
            if level != last:
                self.down.append(Stage([Resample(cur, up=False)]))
                skips.append(cur)
        self.mid = Stage(units(cur, cur, True) + [Unit(ResBlock(cur, cur, E, g))])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(Stage(units(cur + skips.pop(), ch * mult, level in cfg.attention_levels),
                                     takes_skip=True))
                cur = ch * mult
            if level != 0:
                self.up.append(Stage([Resample(cur, up=True)]))
        self.out = nn.Sequential(nn.GroupNorm(norm_groups(ch, g), ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        # created by inflate(): the video-mode input layer and the temporal embedding
        self.video_in_conv: nn.Conv2d | None = None
        self.temporal_embed: TemporalEmbedding | None = None

    # ------------------------------------------------------------------------------------------ inflation
    def add_temporal_modules(self) -> None:
        """Insert the temporal modules of ``self.config.variant`` (their outputs start at zero)."""
        with torch.device(self.in_conv.weight.device):  # new modules where the model lives (meta for 'paper')
            self._add_temporal_modules()

    def _add_temporal_modules(self) -> None:
        cfg, spec = self.config, get_variant(self.config.variant)
        E = cfg.time_embed_dim
        if cfg.first_frame_cond:
            conv = nn.Conv2d(2 * cfg.in_channels + 1, cfg.model_channels, 3, padding=1)
            with torch.no_grad():  # the x_t channels copy the image input conv; condition + mask start at zero
                conv.weight.zero_()
                conv.weight[:, : cfg.in_channels] = self.in_conv.weight
                conv.bias.copy_(self.in_conv.bias)
            self.video_in_conv = conv
        if not spec.temporal:
            return
        self.temporal_embed = TemporalEmbedding(cfg.model_channels, E)
        for unit in self.modules():
            if not isinstance(unit, Unit):
                continue
            block = unit.spatial
            if isinstance(block, ResBlock):
                mod = make_conv_module(spec, block.channels, E, cfg.groups)
                if spec.placement == "Blocks":
                    unit.temporal = mod
                else:
                    block.temporal_layers = mod
            elif isinstance(block, SpatialTransformer):
                mod = make_attn_module(spec, block.channels, E, cfg.groups, cfg.head_dim)
                if spec.placement == "Blocks":
                    unit.temporal = mod
                else:
                    block.temporal_attn = mod

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                first_frame: torch.Tensor | None = None, motion_score: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W); t (B,) diffusion steps; text (B, L, D) tokens with text_mask (B, L).

        first_frame (B, C, H, W) (already noise-augmented), motion_score (B,), noise_level (B,) are used in video
        mode only. Video mode = an inflated model called with T > 1 or with a first frame; otherwise every frame
        goes through the text-to-image model independently.
        """
        B, C, T, H, W = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} input channels, got x of shape {tuple(x.shape)}")
        video = self.video_in_conv is not None and (T > 1 or first_frame is not None)
        emb = self.time_embed(t) + self.text_pool(text, text_mask)                     # (b, e)
        ctx = Context(emb=repeat(emb, "b e -> (b t) e", t=T),
                      text=repeat(text, "b l d -> (b t) l d", t=T),
                      text_mask=repeat(text_mask, "b l -> (b t) l", t=T), frames=T)
        h = rearrange(x, "b c t h w -> (b t) c h w")
        if video:
            cond = torch.zeros_like(x)
            mask = torch.zeros_like(x[:, :1])
            if first_frame is not None:
                cond[:, :, 0] = first_frame
                mask[:, :, 0] = 1.0
            # [x_t, first frame in slot 0, mask] on channels: (b, 2c+1, t, h, w) -> (b t) (2c+1) h w
            h = torch.cat([h, rearrange(torch.cat([cond, mask], 1), "b c t h w -> (b t) c h w")], dim=1)
            h = self.video_in_conv(h)
            if self.temporal_embed is not None:
                zeros = torch.zeros(B, device=x.device)
                ms = zeros if motion_score is None else motion_score.to(x.device, torch.float32).reshape(B)
                nl = zeros if noise_level is None else noise_level.to(x.device, torch.float32).reshape(B)
                ctx.temb = ctx.emb + self.temporal_embed(B, T, ms, nl)
        else:
            h = self.in_conv(h)
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, ctx)
            hs.append(h)
        h = self._run(self.mid, h, ctx)
        for stage in self.up:
            if stage.takes_skip:
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(stage, h, ctx)
        out = self.out(h)
        return rearrange(out, "(b t) c h w -> b c t h w", t=T)

    def _run(self, stage: Stage, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, ctx, use_reentrant=False)
        return stage(h, ctx)

    # ------------------------------------------------------------------------------------------- accounting
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        temporal = sum(p.numel() for n, p in self.named_parameters() if is_inflation_param(n))
        return {"params_total": total, "params_temporal": temporal,
                "params_trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}


def is_inflation_param(name: str) -> bool:
    """Parameters that inflation adds (temporal modules, temporal embedding, video input conv)."""
    return "temporal" in name or name.startswith("video_in_conv")


def build_unet(variant: str = "Spatial", preset: str = "smoke", config: UNetConfig | None = None) -> KeyframeUNet:
    """A freshly initialised UNet. ``Spatial`` is the text-to-image model; any other variant is that model,
    randomly initialised, then inflated (so the same code path builds every row of the study)."""
    spec = get_variant(variant)
    cfg = dataclasses.replace(config or get_preset(preset).unet, variant="Spatial")
    img = KeyframeUNet(cfg)
    return img if spec.name == "Spatial" else inflate(img, variant)


def inflate(image_unet: KeyframeUNet, variant: str, train_spatial: bool = False, seed: int = 0) -> KeyframeUNet:
    """Copy the text-to-image UNet and insert the temporal modules of ``variant``.

    The result equals ``image_unet`` frame by frame at initialisation (every temporal branch ends in a
    zero-initialised layer, the video input conv copies the image one). Spatial weights are frozen unless
    ``train_spatial``: the paper trains only temporal components. The new modules' random initialisation is
    drawn from ``seed`` (not the global RNG), so inflating twice gives the same model.
    """
    spec = get_variant(variant)
    if image_unet.config.variant != "Spatial" or image_unet.video_in_conv is not None:
        raise ValueError(f"inflate() takes the text-to-image UNet (variant 'Spatial'); got a model already "
                         f"inflated as '{image_unet.config.variant}'")
    vid = copy.deepcopy(image_unet)
    vid.config = dataclasses.replace(image_unet.config, variant=spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vid.add_temporal_modules()
    for name, p in vid.named_parameters():
        p.requires_grad_(train_spatial or is_inflation_param(name))
    return vid
