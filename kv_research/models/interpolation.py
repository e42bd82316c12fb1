"""FusionFrames' interpolation UNet (paper section 4.2) as Kandinsky Video 1.1 ships it, built from the T2I UNet.

One call predicts the three frames between each pair of neighbouring keyframes. A clip of ``G + 1`` keyframes has
``G`` *groups* (gaps); each group is one item of the folded batch and its input stacks five latents on channels::

    group g:  [ K_g (C) | z_{3g} z_{3g+1} z_{3g+2} (3C, frame-major "(k c)") | K_{g+1} (C) ]   -> (5C, H, W)
    output :  [ v_{3g} v_{3g+1} v_{3g+2} ] (3C, frame-major "(k c)")                          -> (3C, H, W)

(the release's order, C = 4: 20 input and 12 output channels; the paper writes ``[z_t, c]``). Every spatial layer
is the text-to-image model's, applied group by group. The groups of one clip meet only in

* a 3x1x1 temporal conv after *every* ``projection`` of every ``Kandinsky3Block`` (1x1 ones included, as the
  release), over the group axis: ``x = (1 - a m) x + a m conv(x)``;
* a temporal attention block after the self-attention of every self-attention level (down and up), attention of
  each pixel across the groups: ``x = (1 - a1 m) x + a1 m attn(norm(x))``, then the same with a feed-forward and
  ``a2``. Note the convex merge replaces, not adds to, ``x`` (no residual inside the branch).

``a`` are learned scalars (0 at initialisation, so the branches are off) and ``m = temporal_mask`` is 1 in the
conditional and 0 in the unconditional branch of context guidance, so the unconditional prediction never mixes
groups. The time embedding carries the perturbation level ``t_p`` of the keyframes and the skip-frame count ``s``::

    e = a_p * MLP_p(sin(t_p)) + (1 - a_p) * MLP(sin(t))  +  a_s * Embedding(20, E)[s]  +  AttnPool(text)

(``a_p``, ``a_s`` learned, 0 at initialisation; the pooled text is added last, as in Kandinsky 3.0). Kandinsky
Video 1.1 conditions on text again (the keyframe model's projection), 1.0 did not.

Two interfaces, same numbers:

* ``forward(x, t, text, text_mask, keyframes, ...)``: clips. ``x`` (B, C, 3G, H, W) noisy in-between frames,
  ``keyframes`` (B, C, G+1, H, W); returns (B, C, 3G, H, W). ``insert_between`` builds the (B, C, 4G+1, H, W) video.
* ``forward_folded(x, t, text, text_mask, groups, ...)``: the release's layout, ``x`` ((B G), 5C, H, W) with every
  condition per group item, returns ((B G), 3C, H, W); the release's ``unet(x, t, context, mask,
  num_predicted_groups=G, ...)`` is ``forward_folded(..., groups=G, text_projected=True)``.

``InterpolationUNet.from_image(image_unet)`` is the paper's recipe: the text-to-image weights everywhere; the input
conv zero-padded (the image conv's weights on the first noisy frame's channels, zeros on the keyframes and the two
other frames), the output conv replicated 3x; the new modules' merges at 0. At initialisation every output frame of
group g is therefore the image model's prediction for that group's first noisy frame (``noisy_init="mean"``: for
the mean of its three noisy frames), whatever the keyframes, text mask, ``t_p``, ``s`` and ``temporal_mask``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import UNetConfig
from .layers import Attention, ConditionalGroupNorm, Context, TimestepEmbedding, additive_mask, zero_init
from .temporal import temporal_conv
from .unet import KeyframeUNet

FRAMES_PER_GROUP = 3      # frames predicted between two keyframes
SKIP_CLASSES = 20         # rows of the release's skip-frame embedding (skip s in 1..12 in training)


@dataclass
class InterpolationContext(Context):
    """``Context`` plus the per-item temporal mask; ``frames`` is the number of groups G of a clip."""
    temporal_mask: torch.Tensor | None = None    # (b g,) 1 = temporal branches on, 0 = off


# ------------------------------------------------------------------------------------------ temporal layers
class MaskedTemporalConv(nn.Module):
    """3x1x1 conv over the group axis after a spatial projection: ``x = (1 - a m) x + a m conv(x)``.

    The conv and ``merge`` (a) start at zero (the release's ``TemporalConv3D``); keys ``merge``, ``conv.*``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.merge = nn.Parameter(torch.zeros(1))
        self.conv = zero_init(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: torch.Tensor, ctx: InterpolationContext) -> torch.Tensor:
        h = rearrange(x, "(b g) c h w -> b c g h w", g=ctx.frames)
        out = rearrange(temporal_conv(self.conv, h), "b c g h w -> (b g) c h w")
        a = self.merge * ctx.temporal_mask[:, None, None, None]               # (b g, 1, 1, 1)
        return (1 - a) * x + a * out


class MaskedTemporalAttentionBlock(nn.Module):
    """Attention of every pixel across the groups, then a feed-forward; each merged convexly by a masked scalar.

    ``x = (1 - a1 m) x + a1 m attn(in_norm(x))``; ``x = (1 - a2 m) x + a2 m ff(out_norm(x))``. The norms are
    conditioned on the time embedding (as the spatial ones); attention and feed-forward keep their random
    initialisation (the release's), the merges start at 0.
    """

    def __init__(self, channels: int, cond_dim: int, groups: int, head_dim: int):
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        self.attention = Attention(channels, channels, head_dim, channels)
        self.out_norm = ConditionalGroupNorm(groups, channels, cond_dim)
        self.feed_forward = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.SiLU(),
                                          nn.Conv2d(4 * channels, channels, 1, bias=False))
        self.attention_merge = nn.Parameter(torch.zeros(1))
        self.feed_forward_merge = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, ctx: InterpolationContext) -> torch.Tensor:
        H, W = x.shape[-2:]
        m = ctx.temporal_mask[:, None, None, None]                                     # (b g, 1, 1, 1)
        # (b g) c h w -> (b h w) g c : one sequence of G groups per pixel
        tokens = rearrange(self.in_norm(x, ctx.emb), "(b g) c h w -> (b h w) g c", g=ctx.frames)
        out = rearrange(self.attention(tokens), "(b h w) g c -> (b g) c h w", h=H, w=W)
        a = self.attention_merge * m
        x = (1 - a) * x + a * out
        a = self.feed_forward_merge * m
        return (1 - a) * x + a * self.feed_forward(self.out_norm(x, ctx.emb))


# --------------------------------------------------------------------------------------------------- UNet
class InterpolationUNet(KeyframeUNet):
    """The interpolation UNet: Kandinsky 3.0's spatial model (``KeyframeUNet``'s modules and keys) with a 5C-channel
    ``conv_in``, a 3C-channel ``conv_out``, ``MaskedTemporalConv`` as ``temporal_projection`` of every
    ``Kandinsky3Block``, ``temporal_attention_block`` at the self-attention levels, and the perturbation /
    skip-frame embeddings (``perturbation_embedding``, ``perturbation_merge``, ``skip_embedding``, ``skip_merge``).

    ``config`` is the text-to-image model's (``in_channels`` = latent channels C of one frame). The keyframe
    model's video options (first frame, motion score, noise augmentation, keyframe temporal variants) do not apply.
    """

    def __init__(self, config: UNetConfig, skip_classes: int = SKIP_CLASSES):
        config = dataclasses.replace(config, variant="Spatial", first_frame_cond=False, noise_augmentation=False,
                                     motion_conditioning=False)
        super().__init__(config)
        cfg, C, k = self.config, config.in_channels, FRAMES_PER_GROUP
        init, E = cfg.init_channels, cfg.time_embedding_dim
        self.conv_in = nn.Conv2d((k + 2) * C, init, 3, padding=1)                 # [K_g, 3 noisy frames, K_g+1]
        self.conv_out = nn.Conv2d(init, k * cfg.out_channels, 3, padding=1)       # 3 frames, frame-major
        self.perturbation_embedding = TimestepEmbedding(init, E, cfg.convention)
        self.perturbation_merge = nn.Parameter(torch.zeros(1))
        self.skip_embedding = nn.Embedding(skip_classes, E)
        self.skip_merge = nn.Parameter(torch.zeros(1))
        for blk in [*self.down_blocks, *self.up_blocks]:
            for res in [*blk.resnets_in, *blk.resnets_out]:
                for b in res.resnet_blocks:
                    b.temporal_projection = MaskedTemporalConv(b.projection.out_channels)
            width = blk.temporal_widths["attention"]          # the self-attention's width (down: in, up: out)
            blk.temporal_attention_block = (MaskedTemporalAttentionBlock(width, E, cfg.groups,
                                                                         cfg.attention_head_dim)
                                            if blk.self_attention else None)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_image(cls, image_unet: KeyframeUNet, seed: int = 0, noisy_init: str = "first",
                   skip_classes: int = SKIP_CLASSES) -> "InterpolationUNet":
        """The paper's initialisation from a text-to-image ``KeyframeUNet`` (variant ``Spatial``, not inflated).

        Spatial weights copied; ``conv_in`` zero-padded: the image conv's weights on the first noisy frame's
        channels (``noisy_init="first"``, the paper's zero padding) or a third of them on each noisy frame
        (``"mean"``), zeros on the keyframe channels; bias copied. ``conv_out`` replicated for the 3 frames. New
        modules drawn from ``seed`` (not the global RNG); every parameter trainable (the paper trains the whole
        model). Works on the meta device (nothing is copied there).
        """
        if image_unet.config.variant != "Spatial" or image_unet.video_in_conv is not None \
                or isinstance(image_unet, InterpolationUNet):
            raise ValueError("from_image() takes the text-to-image UNet (variant 'Spatial', not inflated); got "
                             f"{type(image_unet).__name__} with variant '{image_unet.config.variant}'")
        if noisy_init not in ("first", "mean"):
            raise ValueError(f"noisy_init must be 'first' or 'mean', got {noisy_init!r}")
        ref = image_unet.conv_in.weight
        with torch.random.fork_rng(devices=[]), torch.device(ref.device):
            torch.manual_seed(seed)
            model = cls(image_unet.config, skip_classes=skip_classes)
        model = model.to(ref.dtype)
        state = dict(image_unet.state_dict())
        C, k = image_unet.config.in_channels, FRAMES_PER_GROUP
        w = state["conv_in.weight"]                                          # (init, C, 3, 3)
        w_in = torch.zeros(w.shape[0], (k + 2) * C, *w.shape[2:], dtype=w.dtype, device=w.device)
        if noisy_init == "first":
            w_in[:, C:2 * C] = w
        else:
            w_in[:, C:(k + 1) * C] = repeat(w / k, "o c kh kw -> o (f c) kh kw", f=k)
        state["conv_in.weight"] = w_in
        # (out, init, 3, 3) -> (3 out, init, 3, 3): frame-major, three identical frames
        state["conv_out.weight"] = repeat(state["conv_out.weight"], "o i kh kw -> (f o) i kh kw", f=k)
        state["conv_out.bias"] = repeat(state["conv_out.bias"], "o -> (f o)", f=k)
        from ..loaders import load_strict            # the loaders import the models; import here, not at the top
        new = {n for n in model.state_dict() if n not in state}
        load_strict(model, state, f"{type(image_unet).__name__} (text-to-image) weights", allow_missing=new)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def add_temporal_modules(self) -> None:  # the keyframe model's inflation does not apply
        raise TypeError("InterpolationUNet has its own temporal layers; inflate() is for the keyframe model")

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                keyframes: torch.Tensor, perturbation_time: torch.Tensor | None = None,
                skip_frames: torch.Tensor | int | None = None, temporal_mask: torch.Tensor | None = None,
                keyframes_keep: torch.Tensor | None = None, text_projected: bool = False) -> torch.Tensor:
        """Predict the in-between frames of clips (v-prediction for the release's weights).

        x (B, C, 3G, H, W): the noisy frames, 3 per gap, in time order; keyframes (B, C, G+1, H, W) (already
        perturbed by ``perturbation_time`` steps if that is used). t (B,) diffusion steps; text (B, L, text_dim)
        raw tokens with text_mask (B, L), or projected tokens with ``text_projected=True``.
        perturbation_time (B,) default 0 (the paper's inference); skip_frames (B,) or an int, default 1 (1.1's
        pipeline: 3 in the first pass, 1 in the second).
        keyframes_keep (B,) 0/1, default 1: 0 replaces a clip's keyframes by zeros (the unconditional branch of
        context guidance / the 10 % dropped conditions of training); temporal_mask (B,) defaults to
        ``keyframes_keep`` (the release's pairing: the unconditional branch has no temporal layers).
        Returns (B, C, 3G, H, W).
        """
        B, C, n, H, W = x.shape
        k = FRAMES_PER_GROUP
        G = n // k
        if C != self.config.in_channels or n % k or n == 0:
            raise ValueError(f"x must be (B, {self.config.in_channels}, 3G, H, W) with three noisy frames per gap "
                             f"between keyframes, got {tuple(x.shape)}")
        if tuple(keyframes.shape) != (B, C, G + 1, H, W):
            raise ValueError(f"keyframes must be (B, C, G+1, H, W) = {(B, C, G + 1, H, W)} for x {tuple(x.shape)}, "
                             f"got {tuple(keyframes.shape)}")
        keep = self._per_clip(keyframes_keep, B, 1.0, x)
        tmask = keep if temporal_mask is None else self._per_clip(temporal_mask, B, 1.0, x)
        kf = keyframes * keep[:, None, None, None, None]
        # (b, c, g+1, h, w) -> left (b g) c h w, right (b g) c h w ; x (b, c, (g k), h, w) -> (b g) (k c) h w
        left = rearrange(kf[:, :, :-1], "b c g h w -> (b g) c h w")
        right = rearrange(kf[:, :, 1:], "b c g h w -> (b g) c h w")
        noisy = rearrange(x, "b c (g k) h w -> (b g) (k c) h w", k=k)
        inp = torch.cat([left, noisy, right], dim=1)                              # (b g, 5c, h, w)
        tokens = text if text_projected else self.project_text(text, text_mask)  # project once per clip

        def items(v):                                                             # (b, ...) -> (b g, ...)
            return repeat(v, "b ... -> (b g) ...", g=G)
        out = self.forward_folded(
            inp, items(self._per_clip(t, B, None, x)), items(tokens), items(text_mask), groups=G,
            perturbation_time=items(self._per_clip(perturbation_time, B, 0.0, x)),
            skip_frames=items(self._per_clip(skip_frames, B, 1.0, x)), temporal_mask=items(tmask),
            text_projected=True)
        return rearrange(out, "(b g) (k c) h w -> b c (g k) h w", g=G, k=k)       # (b, c, 3g, h, w)

    def forward_folded(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                       groups: int, perturbation_time: torch.Tensor | None = None,
                       skip_frames: torch.Tensor | None = None, temporal_mask: torch.Tensor | None = None,
                       text_projected: bool = False) -> torch.Tensor:
        """The release's layout: x ((B G), 5C, H, W), items ordered clip-major (``(b g)``), ``groups`` = G (the
        release's ``num_predicted_groups``); t, perturbation_time, skip_frames, temporal_mask (B G,) and text
        (B G, L, d) per item. Defaults: t_p 0, s 1, temporal_mask 1. Returns ((B G), 3C, H, W).
        """
        N, ch = x.shape[:2]
        if ch != (FRAMES_PER_GROUP + 2) * self.config.in_channels or groups < 1 or N % groups:
            raise ValueError(f"x must be ((B G), {(FRAMES_PER_GROUP + 2) * self.config.in_channels}, H, W) with "
                             f"B G divisible by groups={groups}, got {tuple(x.shape)}")
        tokens = text if text_projected else self.project_text(text, text_mask)
        tokens, text_mask = self._rows_without_tokens(tokens, text_mask)
        mask_add = additive_mask(text_mask, tokens.dtype)                         # (n, 1, 1, l)
        t = self._per_clip(t, N, None, x)
        tp = self._per_clip(perturbation_time, N, 0.0, x)
        s = self._per_clip(skip_frames, N, 1.0, x).long()
        if s.numel() and (int(s.min()) < 0 or int(s.max()) >= self.skip_embedding.num_embeddings):
            raise ValueError(f"skip_frames must lie in 0..{self.skip_embedding.num_embeddings - 1}, "
                             f"got {s.tolist()}")
        m = self._per_clip(temporal_mask, N, 1.0, x).to(x.dtype)
        emb = self.time_embedding(t)                                              # (n, e)
        a_p = self.perturbation_merge
        emb = a_p * self.perturbation_embedding(tp) + (1 - a_p) * emb
        emb = emb + self.skip_merge * self.skip_embedding(s)
        emb = self.add_time_condition(emb, tokens, mask_add)                     # + pooled text
        cond = F.silu(emb)
        # temb = emb: the temporal layers are conditioned on the time embedding, like the spatial ones
        ctx = InterpolationContext(emb=cond, text=tokens, text_mask=mask_add, frames=groups, temb=cond,
                                   temporal_mask=m)
        h = self.conv_in(x)
        skips = []
        for i, blk in enumerate(self.down_blocks):
            h = self._run_level(_down_level, blk, h, ctx)
            if i != len(self.down_blocks) - 1:
                skips.append(h)
        for k, blk in enumerate(self.up_blocks):
            if k:
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run_level(_up_level, blk, h, ctx)
        return self.conv_out(F.silu(self.conv_norm_out(h)))                      # (n, 3c, h, w)

    def _run_level(self, fn, blk: nn.Module, h: torch.Tensor, ctx: InterpolationContext) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, blk, h, ctx, use_reentrant=False)
        return fn(blk, h, ctx)

    def _rows_without_tokens(self, tokens: torch.Tensor, text_mask: torch.Tensor):
        """The release's attention masks with ``masked_fill(-max)``, so a row whose mask is all 0 attends uniformly
        to all its L tokens; an additive mask would keep the raw scores instead. Uniform attention over L tokens
        equals attention to one token holding their mean (keys/values are linear, no bias; the query no longer
        matters), so under the ``kandinsky_video`` convention such rows become ``[mean, 0, ...]`` with mask
        ``[1, 0, ...]``. (The fixture's unconditional rows are such rows; the pipeline's have mask 1 at token 0.)
        """
        mask = text_mask.bool()
        if self.config.convention != "kandinsky_video" or mask.any(-1).all():
            return tokens, mask
        empty = ~mask.any(-1)                                                     # (n,)
        single = torch.zeros_like(tokens)
        single[:, 0] = tokens.mean(dim=1)
        tokens = torch.where(empty[:, None, None], single, tokens)
        mask = mask.clone()
        mask[empty, 0] = True
        return tokens, mask

    @staticmethod
    def _per_clip(v, n: int, default: float | None, like: torch.Tensor) -> torch.Tensor:
        """None -> ``default``; a scalar or 1-element tensor -> repeated; otherwise must hold n values."""
        if v is None:
            if default is None:
                raise ValueError("t is required")
            return torch.full((n,), default, device=like.device)
        v = torch.as_tensor(v, device=like.device)
        if v.numel() == 1:
            return v.reshape(1).expand(n)
        if v.numel() != n:
            raise ValueError(f"expected one value per clip / item ({n}), got shape {tuple(v.shape)}")
        return v.reshape(n)

    # ------------------------------------------------------------------------------------------- accounting
    def parameter_counts(self) -> dict[str, int]:
        """``params_temporal``: names containing ``temporal`` (temporal convs + attention blocks, the release's
        ``temporal`` keys); ``params_conditioning``: perturbation and skip-frame embeddings and merges;
        ``params_release_layout``: as ``interpolation.pt`` holds them, i.e. without the text projection (which the
        release keeps in ``t5_projections.pt``)."""
        total = sum(p.numel() for p in self.parameters())
        named = dict(self.named_parameters())
        temporal = sum(p.numel() for n, p in named.items() if "temporal" in n)
        conditioning = sum(p.numel() for n, p in named.items()
                           if n.split(".")[0] in ("perturbation_embedding", "perturbation_merge", "skip_embedding",
                                                  "skip_merge"))
        release = total - sum(p.numel() for p in self.encoder_hid_proj.parameters())
        return {"params_total": total, "params_temporal": temporal, "params_conditioning": conditioning,
                "params_release_layout": release,
                "params_trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}


def _down_level(blk: nn.Module, h: torch.Tensor, ctx: InterpolationContext) -> torch.Tensor:
    """A down level in the release's order: self-attention -> temporal attention -> n x {ResNet, cross, ResNet}."""
    if blk.self_attention:
        h = blk.attentions[0](h, ctx)
        h = blk.temporal_attention_block(h, ctx)
    for res_in, attn, res_out in zip(blk.resnets_in, blk.attentions[1:], blk.resnets_out):
        h = res_in(h, ctx)                 # every Kandinsky3Block runs its temporal_projection (ctx.video)
        if blk.context_dim is not None:
            h = attn(h, ctx)
        h = res_out(h, ctx)
    return h


def _up_level(blk: nn.Module, h: torch.Tensor, ctx: InterpolationContext) -> torch.Tensor:
    """An up level: n x {ResNet, cross, ResNet} -> self-attention -> temporal attention (after it, unlike the
    keyframe model's temporal blocks, which run before it)."""
    for res_in, attn, res_out in zip(blk.resnets_in, blk.attentions[1:], blk.resnets_out):
        h = res_in(h, ctx)
        if blk.context_dim is not None:
            h = attn(h, ctx)
        h = res_out(h, ctx)
    if blk.self_attention:
        h = blk.attentions[0](h, ctx)
        h = blk.temporal_attention_block(h, ctx)
    return h


def insert_between(keyframes: torch.Tensor, inbetween: torch.Tensor) -> torch.Tensor:
    """keyframes (B, C, G+1, H, W) and the predicted frames (B, C, 3G, H, W) -> the video (B, C, 4G+1, H, W):
    K_0, 3 frames, K_1, 3 frames, ..., K_G."""
    B, C, n, H, W = inbetween.shape
    G = n // FRAMES_PER_GROUP
    if n % FRAMES_PER_GROUP or tuple(keyframes.shape) != (B, C, G + 1, H, W):
        raise ValueError(f"keyframes {tuple(keyframes.shape)} and in-between frames {tuple(inbetween.shape)} do "
                         "not fit (G+1 keyframes, 3G frames)")
    # each group = [K_g, f_3g, f_3g+1, f_3g+2] -> (b, c, g, 4, h, w), then the last keyframe
    body = torch.cat([keyframes[:, :, :-1, None],
                      rearrange(inbetween, "b c (g k) h w -> b c g k h w", k=FRAMES_PER_GROUP)], dim=3)
    return torch.cat([rearrange(body, "b c g k h w -> b c (g k) h w"), keyframes[:, :, -1:]], dim=2)


def inflate_interpolation(image_unet: KeyframeUNet, seed: int = 0, noisy_init: str = "first") -> InterpolationUNet:
    """``InterpolationUNet.from_image`` under the name of the keyframe model's ``inflate``."""
    return InterpolationUNet.from_image(image_unet, seed=seed, noisy_init=noisy_init)


__all__ = ["InterpolationUNet", "InterpolationContext", "MaskedTemporalConv", "MaskedTemporalAttentionBlock",
           "inflate_interpolation", "insert_between", "FRAMES_PER_GROUP", "SKIP_CLASSES"]
