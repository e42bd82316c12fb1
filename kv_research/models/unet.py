"""KeyframeUNet: Kandinsky 3.0's text-to-image UNet at any size, inflated into a video (keyframe) model.

The spatial model is diffusers' ``Kandinsky3UNet`` module for module and key for key (its state dict loads with
strict checking): 4 levels, no mid block, one skip per level; 1-3-3-1 ResNet blocks with conditional GroupNorm,
down/upsampling inside them; self-attention once per level, cross-attention after every ``resnets_in``; attention
and feed-forward without biases; the text projection (``encoder_hid_proj``) inside the UNet; attention pooling of
the projected text added to the time embedding; additive attention masks.

Image mode (T = 1, no first frame) is the text-to-image model. Video mode folds frames into the batch,
``b c t h w -> (b t) c h w``, so every spatial layer is the image model's layer applied frame by frame; the temporal
modules (models/temporal.py) hang beside the spatial ones under names containing ``temporal`` and are the only
places where frames meet. Video mode also carries the Kandinsky Video 1.1 conditions: the input
``[x_t, first frame in slot 0, mask]`` through ``video_in_conv``, and frame position + noise-augmentation level +
motion score embedded (192-d sinusoid + MLP each, as the release) and added to the condition of every temporal
module.
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
from .layers import Attention, ConditionalGroupNorm, Context, TimestepEmbedding, additive_mask
from .temporal import (TemporalAttentionBlock, TemporalAttentionLayer, TemporalConvLayer, TemporalResNetBlock,
                       get_variant)


# ------------------------------------------------------------------------------------------ spatial blocks
class Kandinsky3Block(nn.Module):
    """CGN -> SiLU -> [ConvTranspose 2x2 up] -> projection (k x k) -> [Conv 2x2 stride 2 down].

    Layers variants put ``temporal_projection`` right after the 3x3 projection (before any downsampling)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, kernel: int, groups: int, up_resolution=None):
        super().__init__()
        self.group_norm = ConditionalGroupNorm(groups, cin, emb_dim)
        self.up_sample = nn.ConvTranspose2d(cin, cin, 2, stride=2) if up_resolution is True else nn.Identity()
        self.projection = nn.Conv2d(cin, cout, kernel, padding=int(kernel > 1))
        self.down_sample = nn.Conv2d(cout, cout, 2, stride=2) if up_resolution is False else nn.Identity()
        self.temporal_projection: nn.Module | None = None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = self.projection(self.up_sample(F.silu(self.group_norm(x, ctx.emb))))
        if self.temporal_projection is not None and ctx.video:
            x = self.temporal_projection(x, ctx)
        return self.down_sample(x)


class Kandinsky3ResNetBlock(nn.Module):
    """1-3-3-1 bottleneck (hidden = max(in, out) / 2) plus a shortcut that resamples and projects like the branch."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, up_resolutions=(None,) * 4):
        super().__init__()
        hidden = max(cin, cout) // 2
        widths = [(cin, hidden), (hidden, hidden), (hidden, hidden), (hidden, cout)]
        self.resnet_blocks = nn.ModuleList([Kandinsky3Block(i, o, emb_dim, k, groups, u)
                                            for (i, o), k, u in zip(widths, (1, 3, 3, 1), up_resolutions)])
        self.shortcut_up_sample = (nn.ConvTranspose2d(cin, cin, 2, stride=2) if True in up_resolutions
                                   else nn.Identity())
        self.shortcut_projection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.shortcut_down_sample = (nn.Conv2d(cout, cout, 2, stride=2) if False in up_resolutions
                                     else nn.Identity())

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        out = x
        for block in self.resnet_blocks:
            out = block(out, ctx)
        return self.shortcut_down_sample(self.shortcut_projection(self.shortcut_up_sample(x))) + out


class Kandinsky3AttentionBlock(nn.Module):
    """CGN -> attention (self, or cross to the text) + skip, then CGN -> feed-forward (1x1, SiLU, no bias) + skip.

    Layers variants put ``temporal_attention`` between the attention and the feed-forward (self-attention blocks).
    """

    def __init__(self, channels: int, emb_dim: int, context_dim: int | None, groups: int, head_dim: int):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, emb_dim)
        self.attention = Attention(channels, context_dim or channels, head_dim, channels)
        self.out_norm = ConditionalGroupNorm(groups, channels, emb_dim)
        self.feed_forward = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.SiLU(),
                                          nn.Conv2d(4 * channels, channels, 1, bias=False))
        self.cross = context_dim is not None
        self.temporal_attention: nn.Module | None = None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = rearrange(self.in_norm(x, ctx.emb), "n c h w -> n (h w) c")
        if self.cross:
            b = ctx.text.shape[0]
            # queries of all t frames of a clip attend to that clip's text at once: (b t) (h w) c -> b (t h w) c
            q = rearrange(tokens, "(b t) l c -> b (t l) c", b=b)
            out = rearrange(self.attention(q, ctx.text, ctx.text_mask), "b (t l) c -> (b t) l c", l=h * w)
        else:
            out = self.attention(tokens)
        x = x + rearrange(out, "n (h w) c -> n c h w", h=h)
        if self.temporal_attention is not None and ctx.video:
            x = self.temporal_attention(x, ctx)
        return x + self.feed_forward(self.out_norm(x, ctx.emb))


def _maybe(mods: nn.ModuleList | None, j: int, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    return mods[j](x, ctx) if mods is not None and ctx.video else x


class Kandinsky3DownSampleBlock(nn.Module):
    """[self-attention] -> n x {resnets_in, cross-attention, resnets_out}; the last resnets_out downsamples.

    Blocks variants: ``temporal_attention`` after the self-attention; ``temporal_resnets_in/out`` after each ResNet.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, context_dim: int | None, n: int, groups: int,
                 head_dim: int, down_sample: bool, self_attention: bool):
        super().__init__()
        self.self_attention, self.context_dim = self_attention, context_dim
        attns = [Kandinsky3AttentionBlock(cin, emb_dim, None, groups, head_dim) if self_attention else nn.Identity()]
        ups = [(None,) * 4] * (n - 1) + [(None, None, False if down_sample else None, None)]
        ios = [(cin, cout)] + [(cout, cout)] * (n - 1)
        self.resnets_in = nn.ModuleList([Kandinsky3ResNetBlock(i, o, emb_dim, groups) for i, o in ios])
        attns += [Kandinsky3AttentionBlock(o, emb_dim, context_dim, groups, head_dim) if context_dim else
                  nn.Identity() for _, o in ios]
        self.attentions = nn.ModuleList(attns)
        self.resnets_out = nn.ModuleList([Kandinsky3ResNetBlock(o, o, emb_dim, groups, u) for (_, o), u in zip(ios, ups)])
        self.temporal_attention: nn.Module | None = None
        self.temporal_resnets_in: nn.ModuleList | None = None
        self.temporal_resnets_out: nn.ModuleList | None = None
        # widths the temporal blocks see (the release: after each ResNet, at its output width)
        self.temporal_widths = {"attention": cin, "resnets_in": [o for _, o in ios], "resnets_out": [o for _, o in ios]}

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.self_attention:
            x = self.attentions[0](x, ctx)
        if self.temporal_attention is not None and ctx.video:
            x = self.temporal_attention(x, ctx)
        for j, (res_in, attn, res_out) in enumerate(zip(self.resnets_in, self.attentions[1:], self.resnets_out)):
            x = _maybe(self.temporal_resnets_in, j, res_in(x, ctx), ctx)
            if self.context_dim is not None:
                x = attn(x, ctx)
            x = _maybe(self.temporal_resnets_out, j, res_out(x, ctx), ctx)
        return x


class Kandinsky3UpSampleBlock(nn.Module):
    """n x {resnets_in (the first upsamples), cross-attention, resnets_out} -> [self-attention].

    Blocks variants (the release's order): ``temporal_resnets_in/out`` *before* each ResNet at its input width,
    ``temporal_attention`` before the self-attention.
    """

    def __init__(self, cin: int, cat: int, cout: int, emb_dim: int, context_dim: int | None, n: int, groups: int,
                 head_dim: int, up_sample: bool, self_attention: bool):
        super().__init__()
        self.self_attention, self.context_dim = self_attention, context_dim
        ups = [(None, True if up_sample else None, None, None)] + [(None,) * 4] * (n - 1)
        ios = [(cin + cat, cin)] + [(cin, cin)] * (n - 2) + [(cin, cout)]     # n >= 2 (UNetConfig checks)
        attns = [Kandinsky3AttentionBlock(cout, emb_dim, None, groups, head_dim) if self_attention else nn.Identity()]
        self.resnets_in = nn.ModuleList([Kandinsky3ResNetBlock(i, i, emb_dim, groups, u) for (i, _), u in zip(ios, ups)])
        attns += [Kandinsky3AttentionBlock(i, emb_dim, context_dim, groups, head_dim) if context_dim else
                  nn.Identity() for i, _ in ios]
        self.attentions = nn.ModuleList(attns)
        self.resnets_out = nn.ModuleList([Kandinsky3ResNetBlock(i, o, emb_dim, groups) for i, o in ios])
        self.temporal_attention: nn.Module | None = None
        self.temporal_resnets_in: nn.ModuleList | None = None
        self.temporal_resnets_out: nn.ModuleList | None = None
        self.temporal_widths = {"attention": cout, "resnets_in": [i for i, _ in ios], "resnets_out": [i for i, _ in ios]}

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        for j, (res_in, attn, res_out) in enumerate(zip(self.resnets_in, self.attentions[1:], self.resnets_out)):
            x = res_in(_maybe(self.temporal_resnets_in, j, x, ctx), ctx)
            if self.context_dim is not None:
                x = attn(x, ctx)
            x = res_out(_maybe(self.temporal_resnets_out, j, x, ctx), ctx)
        if self.temporal_attention is not None and ctx.video:
            x = self.temporal_attention(x, ctx)
        if self.self_attention:
            x = self.attentions[0](x, ctx)
        return x


class Kandinsky3AttentionPooling(nn.Module):
    """Attention from the (unmasked) mean of the projected text tokens to the tokens, added to the time embedding."""

    def __init__(self, emb_dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.attention = Attention(context_dim, context_dim, head_dim, emb_dim)

    def forward(self, emb: torch.Tensor, text: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        return emb + self.attention(text.mean(dim=1, keepdim=True), text, mask_add)[:, 0]


class Kandinsky3EncoderProj(nn.Module):
    """Linear (no bias) + LayerNorm from the text encoder's width to the cross-attention width."""

    def __init__(self, encoder_hid_dim: int, cross_attention_dim: int):
        super().__init__()
        self.projection_linear = nn.Linear(encoder_hid_dim, cross_attention_dim, bias=False)
        self.projection_norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_norm(self.projection_linear(x))


class TemporalEmbedding(nn.Module):
    """Frame position + noise-augmentation level + motion score, each sinusoid -> MLP, summed (KV 1.1)."""

    def __init__(self, dim: int, out_dim: int, style: str, noise_level: bool, motion: bool):
        super().__init__()
        self.position = TimestepEmbedding(dim, out_dim, style)
        self.noise_level = TimestepEmbedding(dim, out_dim, style) if noise_level else None
        self.motion = TimestepEmbedding(dim, out_dim, style) if motion else None

    def forward(self, b: int, t: int, noise_level: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        pos = repeat(torch.arange(t, device=motion.device), "t -> (b t)", b=b)
        out = self.position(pos)                                                  # (b t, e)
        per_clip = 0
        if self.noise_level is not None:
            per_clip = per_clip + self.noise_level(noise_level)                   # (b, e)
        if self.motion is not None:
            per_clip = per_clip + self.motion(motion)
        if torch.is_tensor(per_clip):
            out = out + repeat(per_clip, "b e -> (b t) e", t=t)
        return out


# --------------------------------------------------------------------------------------------------- UNet
class KeyframeUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        init, E, g, hd = cfg.init_channels, cfg.time_embedding_dim, cfg.groups, cfg.attention_head_dim
        self.time_embedding = TimestepEmbedding(init, E, cfg.convention)
        self.add_time_condition = Kandinsky3AttentionPooling(E, cfg.cross_attention_dim, hd)
        self.conv_in = nn.Conv2d(cfg.in_channels, init, 3, padding=1)
        self.encoder_hid_proj = Kandinsky3EncoderProj(cfg.encoder_hid_dim, cfg.cross_attention_dim)
        dims = [init, *cfg.block_out_channels]
        n_lv = len(cfg.block_out_channels)
        n = cfg.layers_per_block
        ctx_dim = cfg.cross_attention_dim
        self.down_blocks = nn.ModuleList([
            Kandinsky3DownSampleBlock(dims[i], dims[i + 1], E, ctx_dim if a else None, n, g, hd,
                                      down_sample=i != n_lv - 1, self_attention=a)
            for i, a in enumerate(cfg.down_attention())])
        cats = [dims[i + 1] if i != n_lv - 1 else 0 for i in range(n_lv)]
        self.up_blocks = nn.ModuleList()
        for k, a in enumerate(cfg.up_attention()):
            cout, cin = dims[n_lv - 1 - k], dims[n_lv - k]
            self.up_blocks.append(Kandinsky3UpSampleBlock(cin, cats.pop(), cout, E, ctx_dim if a else None, n, g, hd,
                                                          up_sample=k != 0, self_attention=a))
        self.conv_norm_out = nn.GroupNorm(g, init)
        self.conv_out = nn.Conv2d(init, cfg.out_channels, 3, padding=1)
        # created by inflate(): the video-mode input layer and the temporal embedding
        self.video_in_conv: nn.Conv2d | None = None
        self.temporal_embed: TemporalEmbedding | None = None

    # ------------------------------------------------------------------------------------------ inflation
    def add_temporal_modules(self) -> None:
        """Insert the video input conv and the temporal modules of ``self.config.variant`` (outputs start at 0)."""
        with torch.device(self.conv_in.weight.device):  # new modules where the model lives (meta for 'paper')
            self._add_temporal_modules()

    def _add_temporal_modules(self) -> None:
        cfg, spec = self.config, get_variant(self.config.variant)
        E, g, hd = cfg.time_embedding_dim, cfg.groups, cfg.attention_head_dim
        if cfg.first_frame_cond:
            conv = nn.Conv2d(2 * cfg.in_channels + 1, cfg.init_channels, 3, padding=1)
            with torch.no_grad():  # the x_t channels copy the image input conv; condition + mask start at zero
                conv.weight.zero_()
                conv.weight[:, : cfg.in_channels] = self.conv_in.weight
                conv.bias.copy_(self.conv_in.bias)
            self.video_in_conv = conv
        if not spec.temporal:
            return
        self.temporal_embed = TemporalEmbedding(cfg.init_channels, E, cfg.convention, cfg.noise_augmentation,
                                                cfg.motion_conditioning)
        for blk in [*self.down_blocks, *self.up_blocks]:
            w = blk.temporal_widths
            if spec.placement == "Blocks":
                blk.temporal_resnets_in = nn.ModuleList([TemporalResNetBlock(spec.conv, c, E, g)
                                                         for c in w["resnets_in"]])
                blk.temporal_resnets_out = nn.ModuleList([TemporalResNetBlock(spec.conv, c, E, g)
                                                          for c in w["resnets_out"]])
                if blk.self_attention:
                    blk.temporal_attention = TemporalAttentionBlock(spec.attn, w["attention"], E, g, hd)
            else:
                for res in [*blk.resnets_in, *blk.resnets_out]:
                    for b in res.resnet_blocks:
                        if b.projection.kernel_size == (3, 3):
                            b.temporal_projection = TemporalConvLayer(spec.conv, b.projection.out_channels, E, g)
                if blk.self_attention:
                    sa = blk.attentions[0]
                    sa.temporal_attention = TemporalAttentionLayer(spec.attn, sa.in_norm.norm.num_channels, E, g, hd)

    # --------------------------------------------------------------------------------------------- forward
    def project_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Raw encoder tokens (B, L, text_dim) -> the tokens cross-attention sees (B, L, cross_attention_dim).

        ``convention == "kandinsky_video"`` zeroes the padded tokens *after* the projection (the release); under
        diffusers' convention the pipeline has zeroed the raw padded tokens before (so they become LayerNorm's bias).
        """
        ctx = self.encoder_hid_proj(text)
        if self.config.convention == "kandinsky_video":
            ctx = ctx * text_mask[..., None].to(ctx.dtype)
        return ctx

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                first_frame: torch.Tensor | None = None, motion_score: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None, text_projected: bool = False,
                first_frame_keep: torch.Tensor | None = None,
                frame_cond: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, C, T, H, W); t (B,) diffusion steps; text (B, L, text_dim) raw tokens with text_mask (B, L).

        ``text_projected=True``: ``text`` already went through ``project_text`` (or is a stored null embedding).
        ``first_frame_keep`` (B,) 0/1: per clip, whether the first frame is given (0 = the "no image" branch of
        guidance training: zero condition and zero mask, exactly as ``first_frame=None``), so one call serves both.
        first_frame (B, C, H, W) (already noise-augmented), motion_score (B,), noise_level (B,) are used in video
        mode only. Video mode = an inflated model called with T > 1 or with a first frame; otherwise every frame
        goes through the text-to-image model independently.
        ``frame_cond = (frames (B, C, T, H, W), mask (B, T))`` replaces the first-frame slot by known frames at any
        positions (masked frame interpolation, ``models/mfi.py``): the same ``[x_t, known frames, mask]`` input.
        """
        B, C, T, H, W = x.shape
        cfg = self.config
        if C != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} input channels, got x of shape {tuple(x.shape)}")
        video = self.video_in_conv is not None and (T > 1 or first_frame is not None or frame_cond is not None)
        tokens = text if text_projected else self.project_text(text, text_mask)
        mask_add = additive_mask(text_mask, tokens.dtype)                             # (b, 1, 1, l)
        emb = self.time_embedding(t.reshape(-1).expand(B) if t.numel() == 1 else t)
        emb = self.add_time_condition(emb, tokens, mask_add)                          # (b, e)
        emb_t = repeat(emb, "b e -> (b t) e", t=T)
        ctx = Context(emb=F.silu(emb_t), text=tokens, text_mask=mask_add, frames=T)
        h = rearrange(x, "b c t h w -> (b t) c h w").contiguous()   # one memory layout on every path
        if video:
            cond = torch.zeros_like(x)
            mask = torch.zeros_like(x[:, :1])
            if frame_cond is not None:
                known, known_mask = frame_cond                                        # (b, c, t, h, w), (b, t)
                mask = known_mask.to(x.device, x.dtype).reshape(B, 1, T, 1, 1).expand_as(mask).contiguous()
                cond = known.to(x.dtype) * mask
            elif first_frame is not None:
                keep = (torch.ones(B, device=x.device, dtype=x.dtype) if first_frame_keep is None
                        else first_frame_keep.to(x.device, x.dtype).reshape(B))
                cond[:, :, 0] = first_frame * keep[:, None, None, None]
                mask[:, 0, 0] = keep[:, None, None]
            # [x_t, first frame in slot 0, mask] on channels: (b, 2c+1, t, h, w) -> (b t) (2c+1) h w
            h = torch.cat([h, rearrange(torch.cat([cond, mask], 1), "b c t h w -> (b t) c h w")], dim=1)
            h = self.video_in_conv(h)
            if self.temporal_embed is not None:
                zeros = torch.zeros(B, device=x.device)
                ms = zeros if motion_score is None else motion_score.to(x.device, torch.float32).reshape(B)
                nl = zeros if noise_level is None else noise_level.to(x.device, torch.float32).reshape(B)
                ctx.temb = F.silu(emb_t + self.temporal_embed(B, T, nl, ms))
        else:
            h = self.conv_in(h)
        skips = []
        for i, blk in enumerate(self.down_blocks):
            h = self._run(blk, h, ctx)
            if i != len(self.down_blocks) - 1:
                skips.append(h)
        for k, blk in enumerate(self.up_blocks):
            if k:
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(blk, h, ctx)
        out = self.conv_out(F.silu(self.conv_norm_out(h)))
        return rearrange(out, "(b t) c h w -> b c t h w", t=T)

    def _run(self, blk: nn.Module, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, h, ctx, use_reentrant=False)
        return blk(h, ctx)

    # ------------------------------------------------------------------------------------------- accounting
    def parameter_counts(self) -> dict[str, int]:
        """``params_release_layout``: the same weights counted as the released Kandinsky Video files hold them,
        without the text projection (kept in ``t5_projections.pt``) and with the image-mode input conv at the
        video conv's 2C+1 input channels (``image_in_layer``)."""
        total = sum(p.numel() for p in self.parameters())
        temporal = sum(p.numel() for n, p in self.named_parameters() if is_inflation_param(n))
        release = total - sum(p.numel() for p in self.encoder_hid_proj.parameters())
        if self.video_in_conv is not None:
            release += self.video_in_conv.weight[:, self.config.in_channels:].numel()
        return {"params_total": total, "params_temporal": temporal, "params_release_layout": release,
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
