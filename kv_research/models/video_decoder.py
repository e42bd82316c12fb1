"""The temporal MoVQ decoder of FusionFrames (paper Table 3; Kandinsky Video 1.1's ``video_movq``).

What it is: the image MoVQ decoder (diffusers' ``VQModel.decoder``, reused as is) with temporal layers added as
children of diffusers' own blocks, under names containing ``temporal``, and run by forward hooks on the spatial
modules they follow. The spatial network, its forward code and its parameter names stay diffusers'; the hooks only
add what the released ``kandinsky_video/movq.py`` adds, at the same places:

* ``temporal_conv`` "3x1x1" / "3x3x3": after ``conv1`` and after ``conv2`` of every decoder ResNet block,
  ``h <- (1 - a) h + a conv3d(h)`` with a learned scalar ``a`` (``temporal_merge{1,2}``, 0 at init) and a
  zero-initialised Conv3d (``temporal_projection{1,2}``) over the frames of a window.
* ``temporal_attention``: after every spatial attention (mid block, and the levels in ``attn_resolutions``),
  single-head attention over the window's frames at each pixel, scale C^-1/2, residual.
* ``temporal_resnets``: a ``TemporalResnet`` (GN -> SiLU -> Conv3d(3,1,1) -> GN -> SiLU -> Conv3d(3,1,1) + skip,
  norms conditioned on the latent like every decoder norm) after each up-block ResNet; in the mid block after the
  attention (+ temporal attention) and after the second ResNet, as the release orders them.
* ``conv3d`` (2D -> 3D): ``conv1`` and ``conv2`` of every decoder ResNet block become 3x3x3 Conv3d over the window.

Decoding is windowed along T: the temporal layers see only the frames of their window, with zero padding at its
ends, exactly as the release decodes a window as one batch. ``VideoDecoderConfig.window`` sets the size; ``chunking``
says how a clip is cut (see ``window_size``). Windows never overlap, so frames in different windows are decoded
independently and a window of 1 frame is a single-frame decode.

Init: every new layer's output is zero at construction (merge scalars and temporal convs 0, temporal attention's
``proj_out`` 0, ``TemporalResnet.conv2`` 0, 3D convs = the 2D kernel in the middle temporal tap), so a decoder
inflated from an image ``VQModel`` equals it frame by frame. The release initialises only the temporal convs and
merges to zero (its attention / ResNet blocks / 3D convs start random); a loaded checkpoint overwrites either.

Two release behaviours, kept or optional:
* The temporal attention's norm is a ``SpatialNorm`` with ``conv_y`` / ``conv_b``, but the release calls it without
  the latent, so only its GroupNorm acts. Trained weights were trained that way, so we do the same; the two convs
  are held only for the state dict and the parameter counts.
* ``release_attention_quirk``: the release's spatial ``AttnBlock`` normalises each item with ``SpatialNorm(h[i],
  zq)``, whose per-item loop then reads ``zq[0]``: in a batch, every frame's *spatial* attention norm is
  conditioned on the first frame's latent. The release decodes each window as one batch, so its outputs carry this
  (the fixture's ``video_decoded`` does). Off (default): each frame's own latent, the intended behaviour. On: each
  frame uses the first frame *of its window*, which reproduces the release.

Not supported: the release's ``flicker_augmentation`` (a training-time input, unused at inference) and diffusers'
gradient checkpointing (recomputation would run outside the window that sets the frame count).
"""
from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import SpatialNorm
from einops import rearrange
from torch import nn

from ..checkpoint import CheckpointError
from .codec import release_movq_key, release_vq_config

__all__ = ["VideoDecoderConfig", "DECODER_VARIANTS", "Table3Row", "TABLE3_ROWS", "FINETUNE", "variant_config",
           "VideoMoVQDecoder", "TemporalAttention", "TemporalResnet", "InflatedConv3d", "release_video_config",
           "release_video_movq_key"]

KERNELS = {"3x1x1": (3, 1, 1), "3x3x3": (3, 3, 3)}
CHUNKING = ("split", "release")


# ---------------------------------------------------------------------------------------------- config, registry
@dataclass(frozen=True)
class VideoDecoderConfig:
    """One row of Table 3 (which temporal layers) plus how a clip is decoded (window, chunking, quirk)."""

    temporal_conv: str | None = None   # "3x1x1" | "3x3x3" | None: merged temporal convs in every ResNet block
    temporal_mid_blocks: bool = True   # the release's option: temporal convs in the mid block's ResNets too
    temporal_attention: bool = False   # temporal attention after every spatial attention
    temporal_resnets: bool = False     # TemporalResnet blocks after the ResNet blocks
    conv3d: bool = False               # 2D -> 3D: conv1/conv2 of every ResNet block become 3x3x3 Conv3d
    window: int = 4                    # frames decoded together (the release: 4, see chunking)
    chunking: str = "split"            # "split": windows of `window` frames; "release": torch.chunk(T // window)
    release_attention_quirk: bool = False

    def __post_init__(self):
        if self.temporal_conv is not None and self.temporal_conv not in KERNELS:
            raise ValueError(f"temporal_conv must be one of {sorted(KERNELS)} or None, got {self.temporal_conv!r}")
        if self.chunking not in CHUNKING:
            raise ValueError(f"chunking must be one of {CHUNKING}, got {self.chunking!r}")
        if int(self.window) < 1:
            raise ValueError(f"window must be >= 1 frame, got {self.window}")

    @property
    def temporal(self) -> bool:
        """Whether any layer mixes frames (the "Image" row has none)."""
        return bool(self.temporal_conv or self.temporal_attention or self.temporal_resnets or self.conv3d)

    def window_size(self, frames: int) -> int:
        """Frames per window for a clip of ``frames`` frames; the last window holds the rest (may be shorter).

        * "split": ``window`` frames (``latents.split(window)``).
        * "release": the 1.1 pipeline's ``video.chunk(N // window)``, i.e. ``ceil(N / max(1, N // window))`` frames:
          12 -> 3 x 4, 45 -> 9 x 5, 177 -> 35 x 5 + 2 (``max(1, .)``: the release fails below ``window`` frames).
        """
        if self.chunking == "split":
            return min(int(self.window), frames)
        return math.ceil(frames / max(1, frames // int(self.window)))


# Table 3's decoders, by the names of its "Temporal Layers" column ("Image" = the image decoder itself).
DECODER_VARIANTS: dict[str, VideoDecoderConfig] = {
    "Image": VideoDecoderConfig(),
    "3x1x1 Conv": VideoDecoderConfig(temporal_conv="3x1x1"),
    "3x3x3 Conv": VideoDecoderConfig(temporal_conv="3x3x3"),
    "3x1x1 Conv + Attn": VideoDecoderConfig(temporal_conv="3x1x1", temporal_attention=True),
    "3x3x3 Conv + Attn": VideoDecoderConfig(temporal_conv="3x3x3", temporal_attention=True),
    "ResNet Block + Attn": VideoDecoderConfig(temporal_resnets=True, temporal_attention=True),
    "2D -> 3D Conv": VideoDecoderConfig(conv3d=True),
}

# What each "Finetune" setting trains. The encoder (not part of this module) is always frozen; post_quant_conv (20
# parameters at width 4, outside the decoder that Table 3's "# Params" counts) stays frozen with it.
FINETUNE = {"Temporal": "only the new layers: every parameter named 'temporal', and the 2D -> 3D convs",
            "Decoder": "every parameter of the decoder"}


@dataclass(frozen=True)
class Table3Row:
    decoder: str            # a key of DECODER_VARIANTS
    finetune: str | None    # a key of FINETUNE; None for the image decoder
    paper_params: str       # the "# Params" column

    @property
    def name(self) -> str:
        return self.decoder if self.finetune is None else f"{self.decoder} ({self.finetune})"


TABLE3_ROWS = (Table3Row("Image", None, "161 M"), Table3Row("3x1x1 Conv", "Temporal", "203 M"),
               Table3Row("3x3x3 Conv", "Temporal", "539 M"), Table3Row("3x1x1 Conv", "Decoder", "203 M"),
               Table3Row("3x3x3 Conv", "Decoder", "539 M"), Table3Row("3x1x1 Conv + Attn", "Decoder", "220 M"),
               Table3Row("3x3x3 Conv + Attn", "Decoder", "556 M"), Table3Row("ResNet Block + Attn", "Decoder", "220 M"),
               Table3Row("2D -> 3D Conv", "Decoder", "419 M"))


def variant_config(name: str, **options) -> VideoDecoderConfig:
    """A Table 3 decoder by name, with decode options (``window``, ``chunking``, ``release_attention_quirk``)."""
    if name not in DECODER_VARIANTS:
        raise KeyError(f"unknown decoder variant {name!r}; known: {', '.join(DECODER_VARIANTS)}")
    return replace(DECODER_VARIANTS[name], **options)


# ------------------------------------------------------------------------------------------------ new layers
class _Frames:
    """Frames per window of the decode in progress, shared by all temporal layers of one decoder: diffusers calls
    its modules with (N,C,H,W) frames only, so the window length travels beside them. None outside a decode, so a
    temporal layer run any other way fails loudly instead of guessing."""

    def __init__(self):
        self.t: int | None = None

    def get(self) -> int:
        if self.t is None:
            raise RuntimeError("a temporal decoder layer ran outside VideoMoVQDecoder.decode (no window length)")
        return self.t


def _to_video(x: torch.Tensor, t: int) -> torch.Tensor:
    return rearrange(x, "(b t) c h w -> b c t h w", t=t)  # (B*T,C,H,W) -> (B,C,T,H,W), one window per b


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b c t h w -> (b t) c h w")  # (B,C,T,H,W) -> (B*T,C,H,W)


class TemporalAttention(nn.Module):
    """Single-head self-attention over the frames of a window, at each pixel on its own; residual. The norm is a
    SpatialNorm for the release's key names and parameter counts, but only its GroupNorm is applied (see module
    docstring). ``proj_out`` starts at zero, so the block starts as the identity."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm = SpatialNorm(channels, zq_channels)
        self.q, self.k, self.v, self.proj_out = (nn.Linear(channels, channels) for _ in range(4))
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, t: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = rearrange(self.norm.norm_layer(x), "(b t) c h w -> (b h w) t c", t=t)  # one length-t sequence per pixel
        y = F.scaled_dot_product_attention(self.q(y), self.k(y), self.v(y))  # scale C^-1/2, one head
        return x + rearrange(self.proj_out(y), "(b h w) t c -> (b t) c h w", h=h, w=w)  # back to (B*T,C,H,W)


class TemporalResnet(nn.Module):
    """The release's ``TemporalResnetBlock``: GN -> SiLU -> Conv3d(3,1,1) -> GN -> SiLU -> Conv3d(3,1,1), plus the
    input; its norms are conditioned on the latent. ``conv2`` starts at zero (the release: default init)."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm1, self.norm2 = SpatialNorm(channels, zq_channels), SpatialNorm(channels, zq_channels)
        self.conv1, self.conv2 = (nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)) for _ in range(2))
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, zq: torch.Tensor, t: int) -> torch.Tensor:
        h = _to_frames(self.conv1(_to_video(F.silu(self.norm1(x, zq)), t)))
        h = _to_frames(self.conv2(_to_video(F.silu(self.norm2(h, zq)), t)))
        return x + h


class InflatedConv3d(nn.Conv3d):
    """A 3x3x3 Conv3d standing in for a ResNet block's 3x3 Conv2d (the 2D -> 3D decoder): called like the Conv2d on
    (B*T,C,H,W) frames, it convolves over each window. ``from_2d`` puts the 2D kernel in the middle temporal tap and
    zeros in the others, which equals the Conv2d frame by frame."""

    def __init__(self, in_channels: int, out_channels: int, frames: _Frames):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.frames = frames

    @classmethod
    def from_2d(cls, conv: nn.Conv2d, frames: _Frames) -> "InflatedConv3d":
        new = cls(conv.in_channels, conv.out_channels, frames).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :, 1] = conv.weight
            new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_frames(super().forward(_to_video(x, self.frames.get())))


# Forward hooks. They are module-level functions bound with functools.partial (not closures), so that
# copy.deepcopy of a decoder (an EMA copy, say) re-binds them to the copy's own modules.
def _zq(args, kwargs):
    """The latent diffusers passes to a decoder ResNet / attention: ``resnet(h, temb)`` or ``(h, temb=temb)``."""
    return kwargs["temb"] if "temb" in kwargs else args[1]


def _merge_temporal_conv(resnet, i: int, frames: _Frames, conv, args, out):
    """After ``conv{i}``: (1 - a) h + a conv3d(h) over each window."""
    a, proj = getattr(resnet, f"temporal_merge{i}"), getattr(resnet, f"temporal_projection{i}")
    return (1 - a) * out + a * _to_frames(proj(_to_video(out, frames.get())))


def _run_after(layers: list, frames: _Frames, module, args, kwargs, out):
    """After a spatial module: the temporal layers that follow it, in order."""
    for layer in layers:
        out = layer(out, _zq(args, kwargs), frames.get())
    return out


def _first_frame_zq(frames: _Frames, norm, args):
    """Pre-hook of a spatial attention's SpatialNorm: the release's quirk, each frame's latent -> its window's first."""
    f, zq = args
    first = rearrange(zq, "(b t) c h w -> b t c h w", t=frames.get())[:, :1]  # (B,1,C,h,w): each window's frame 0
    return f, rearrange(first.expand(-1, frames.get(), -1, -1, -1), "b t c h w -> (b t) c h w")  # (B*T,C,h,w)


# ---------------------------------------------------------------------------------------------------- decoder
class VideoMoVQDecoder(nn.Module):
    """``post_quant_conv`` + the MoVQ ``decoder`` (diffusers modules, taken over as given) + the temporal layers of
    ``config``. ``decode((B,C,T,h,w) latents) -> (B,3,T,H,W)``; see the module docstring for layers and windows.

    Build with ``from_image`` (inflate an image ``VQModel``), ``from_release`` (the release's ``video_movq.pt``) or
    ``from_vq_config`` (fresh weights; under ``torch.device("meta")`` for parameter counts).
    """

    def __init__(self, decoder: nn.Module, post_quant_conv: nn.Conv2d, config: VideoDecoderConfig):
        super().__init__()
        if getattr(decoder, "conv_norm_out", None) is None or not isinstance(decoder.conv_norm_out, SpatialNorm):
            raise ValueError("a MoVQ decoder has spatial norms (VQModel norm_type='spatial')")
        self.config, self.post_quant_conv, self.decoder = config, post_quant_conv, decoder
        self._frames = _Frames()
        self.latent_channels = decoder.conv_in.in_channels
        self.scale_factor = 2 ** (len(decoder.up_blocks) - 1)
        ref = decoder.conv_in.weight
        zq = self.latent_channels
        blocks = [decoder.mid_block, *decoder.up_blocks]

        def new(module: nn.Module) -> nn.Module:
            return module.to(ref.device, ref.dtype)

        for block in blocks:
            mid = block is decoder.mid_block
            attentions = [a for a in (getattr(block, "attentions", None) or []) if a is not None]
            after_resnet = {j: [] for j in range(len(block.resnets))}
            after_attn = {j: [] for j in range(len(attentions))}
            for j, resnet in enumerate(block.resnets):
                if config.conv3d:
                    resnet.conv1 = InflatedConv3d.from_2d(resnet.conv1, self._frames)
                    resnet.conv2 = InflatedConv3d.from_2d(resnet.conv2, self._frames)
                if config.temporal_conv and (config.temporal_mid_blocks or not mid):
                    k = KERNELS[config.temporal_conv]
                    for i, conv in ((1, resnet.conv1), (2, resnet.conv2)):
                        c = conv.out_channels
                        proj = new(nn.Conv3d(c, c, k, padding=tuple(n // 2 for n in k)))
                        nn.init.zeros_(proj.weight)
                        nn.init.zeros_(proj.bias)
                        setattr(resnet, f"temporal_projection{i}", proj)
                        setattr(resnet, f"temporal_merge{i}", nn.Parameter(torch.zeros(1, device=ref.device,
                                                                                       dtype=ref.dtype)))
                        conv.register_forward_hook(functools.partial(_merge_temporal_conv, resnet, i, self._frames))
            if config.temporal_attention:
                block.temporal_attentions = nn.ModuleList(
                    new(TemporalAttention(a.to_q.in_features, zq)) for a in attentions)
                for j in after_attn:
                    after_attn[j].append(block.temporal_attentions[j])
            if config.temporal_resnets:
                block.temporal_resnets = nn.ModuleList(
                    new(TemporalResnet(r.conv2.out_channels, zq)) for r in block.resnets)
                # up blocks: after each ResNet; mid: the first after the attention, the second after ResNet 2
                sites = [(after_attn if attentions else after_resnet, 0), (after_resnet, 1)] if mid else \
                    [(after_resnet, j) for j in after_resnet]
                for (site, j), layer in zip(sites, block.temporal_resnets):
                    site[j].append(layer)
            for modules, layers in ((block.resnets, after_resnet), (attentions, after_attn)):
                for j, layers_j in layers.items():
                    if layers_j:
                        modules[j].register_forward_hook(functools.partial(_run_after, layers_j, self._frames),
                                                         with_kwargs=True)
            if config.release_attention_quirk:
                for a in attentions:
                    a.spatial_norm.register_forward_pre_hook(functools.partial(_first_frame_zq, self._frames))

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def from_vq_config(cls, vq_config: dict, config: VideoDecoderConfig) -> "VideoMoVQDecoder":
        """Fresh weights for the decoder of ``VQModel(**vq_config)``: built as VQModel builds it, without encoder."""
        from diffusers.models.autoencoders.vae import Decoder

        c = {"out_channels": 3, "layers_per_block": 1, "act_fn": "silu", "norm_num_groups": 32,
             "mid_block_add_attention": True, **vq_config}
        if c.get("norm_type") != "spatial":
            raise ValueError(f"a MoVQ decoder has norm_type 'spatial', got {c.get('norm_type')!r}")
        decoder = Decoder(in_channels=c["latent_channels"], out_channels=c["out_channels"],
                          up_block_types=c["up_block_types"], block_out_channels=c["block_out_channels"],
                          layers_per_block=c["layers_per_block"], act_fn=c["act_fn"],
                          norm_num_groups=c["norm_num_groups"], norm_type="spatial",
                          mid_block_add_attention=c["mid_block_add_attention"])
        post = nn.Conv2d(c.get("vq_embed_dim") or c["latent_channels"], c["latent_channels"], 1)
        return cls(decoder, post, config)

    @classmethod
    def from_image(cls, vq, config: VideoDecoderConfig) -> "VideoMoVQDecoder":
        """Inflate an image MoVQ (diffusers ``VQModel``): copies of its decoder and post_quant_conv, new layers
        zero-output, so the result decodes every frame exactly as ``vq.decode(z, force_not_quantize=True)``."""
        if getattr(vq.config, "norm_type", None) != "spatial":
            raise ValueError("from_image expects a MoVQ VQModel (norm_type='spatial')")
        return cls(copy.deepcopy(vq.decoder), copy.deepcopy(vq.post_quant_conv), config)

    @classmethod
    def from_release(cls, path, params: dict, dtype: torch.dtype = torch.float32, device="cpu",
                     **options) -> "VideoMoVQDecoder":
        """The release's ``video_movq.pt`` (a state dict of ``kandinsky_video.movq.MoVQ``), loaded strictly.

        ``params`` are the release's video MoVQ constructor params (``ch``, ..., ``temporal``,
        ``temporal_attention_block``, ...); they fix the layers. ``options`` are the decode options (``window``,
        ``chunking``, ``release_attention_quirk``). Every key must map to a parameter with its shape and every
        parameter must be in the file; the file's encoder / quant_conv (the pipeline encodes with the image MoVQ)
        are recognised and left out. One ``CheckpointError`` names the file and every bad key.
        """
        from ..loaders import read_torch_file  # here, not at the top: loaders imports the models package

        path = Path(path)
        vq_config, config = release_video_config(params, f"{path} (video MoVQ params)", **options)
        with torch.device("meta"):
            model = cls.from_vq_config(vq_config, config)
        model = model.to_empty(device="cpu")
        _load_release_state(model, read_torch_file(path), path, len(vq_config["block_out_channels"]))
        return model.to(device=device, dtype=dtype)

    # ---------------------------------------------------------------------------------------------- decoding
    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def decode(self, latents: torch.Tensor, windows_per_batch: int | None = None) -> torch.Tensor:
        """(B,C,T,h,w) latents (raw MoVQ latents, as ``vq.encode(x).latents``) -> (B,3,T,H,W), about [-1, 1]
        (not clipped, as the release's decode; clip to display). Windows of ``config.window_size(T)`` frames; all
        full windows of all clips go through the decoder together, ``windows_per_batch`` at a time if given (this
        bounds memory and changes no result), then the shorter last window."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects (B,{self.latent_channels},T,h,w) latents, got {tuple(latents.shape)}")
        if torch.is_grad_enabled() and getattr(self.decoder, "gradient_checkpointing", False):
            raise NotImplementedError("gradient checkpointing would recompute temporal layers outside their window")
        b, frames = latents.shape[0], latents.shape[2]
        if frames == 0:
            raise ValueError("decode: no frames")
        s = self.config.window_size(frames)
        n = frames // s
        z = latents.to(self.dtype)
        full = rearrange(z[:, :, :n * s], "b c (n t) h w -> (b n t) c h w", t=s)  # (B,C,n*s,h,w) -> (B*n*s,C,h,w)
        step = (windows_per_batch or b * n) * s
        out = torch.cat([self._decode_windows(c, s) for c in full.split(step)])
        parts = [rearrange(out, "(b n t) c h w -> b c (n t) h w", b=b, t=s)]  # (B*n*s,3,H,W) -> (B,3,n*s,H,W)
        if frames > n * s:
            rest = rearrange(z[:, :, n * s:], "b c t h w -> (b t) c h w")  # (B,C,r,h,w) -> (B*r,C,h,w)
            out = self._decode_windows(rest, frames - n * s)
            parts.append(rearrange(out, "(b t) c h w -> b c t h w", b=b))  # (B*r,3,H,W) -> (B,3,r,H,W)
        return torch.cat(parts, dim=2)

    forward = decode

    def _decode_windows(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """(N*t,C,h,w): N whole windows of t frames -> (N*t,3,H,W); exactly VQModel.decode(z, force_not_quantize)
        with the window length set for the temporal layers."""
        self._frames.t = t
        try:
            return self.decoder(self.post_quant_conv(z), z)
        finally:
            self._frames.t = None

    # ---------------------------------------------------------------------------------------------- training
    def new_parameter_names(self) -> list[str]:
        """The layers Table 3's "Temporal" finetune trains: everything named ``temporal`` plus the 3D convs."""
        inflated = {n for n, m in self.named_modules() if isinstance(m, InflatedConv3d)}
        return [n for n, _ in self.named_parameters() if "temporal" in n or n.rpartition(".")[0] in inflated]

    def set_finetune(self, finetune: str | None) -> list[str]:
        """requires_grad for Table 3's "Finetune" column (see ``FINETUNE``); None freezes everything. Returns the
        names of the trainable parameters."""
        if finetune is not None and finetune not in FINETUNE:
            raise ValueError(f"finetune must be one of {list(FINETUNE)} or None, got {finetune!r}")
        train = set(self.new_parameter_names()) if finetune == "Temporal" else \
            {n for n, _ in self.named_parameters() if n.startswith("decoder.")} if finetune == "Decoder" else set()
        for n, p in self.named_parameters():
            p.requires_grad_(n in train)
        return sorted(train)

    def extra_repr(self) -> str:
        return f"config={self.config}"


# ------------------------------------------------------------------------------------------- release files
_VIDEO_KEYS = ("temporal", "temporal_mid_blocks", "temporal_kernel_size", "temporal_conv_padding",
               "temporal_attention_block", "temporal_blocks", "build_3D_decoder", "flicker_augmentation")


def release_video_config(params: dict, source: str = "video MoVQ params", **options
                         ) -> tuple[dict, VideoDecoderConfig]:
    """The release's video ``MoVQ(params)`` -> (diffusers VQModel kwargs, VideoDecoderConfig). The release's
    defaults apply to absent options (kernel (3,3,3), padding (1,1,1), temporal_mid_blocks True)."""
    if params.get("flicker_augmentation"):
        raise CheckpointError(f"{source}: flicker_augmentation (a training-time input) is not supported")
    temporal_conv = None
    if params.get("temporal"):
        kernel = tuple(int(k) for k in params.get("temporal_kernel_size", (3, 3, 3)))
        padding = tuple(int(p) for p in params.get("temporal_conv_padding", (1, 1, 1)))
        names = {v: k for k, v in KERNELS.items()}
        if kernel not in names or padding != tuple(k // 2 for k in kernel):
            raise CheckpointError(f"{source}: temporal kernel {kernel} with padding {padding} is not one of "
                                  f"{sorted(KERNELS)} with 'same' padding")
        temporal_conv = names[kernel]
    config = VideoDecoderConfig(temporal_conv=temporal_conv,
                                temporal_mid_blocks=bool(params.get("temporal_mid_blocks", True)),
                                temporal_attention=bool(params.get("temporal_attention_block", False)),
                                temporal_resnets=bool(params.get("temporal_blocks", False)),
                                conv3d=bool(params.get("build_3D_decoder", False)), **options)
    image = {k: v for k, v in params.items() if k not in _VIDEO_KEYS}
    return release_vq_config(image, source), config


# Temporal module paths: the release's -> ours, anchored at the start; the rest of the key is the same on both
# sides. "{up}" = levels-1-i, as in codec's image map (the release numbers decoder levels by resolution).
_TEMPORAL_MODULES = [
    (r"decoder\.mid\.block_(?P<j>[12])\.temporal_", "decoder.mid_block.resnets.{j0}.temporal_"),
    (r"decoder\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)\.temporal_", "decoder.up_blocks.{up}.resnets.{j}.temporal_"),
    (r"decoder\.mid\.temporal_attn_1\.", "decoder.mid_block.temporal_attentions.0."),
    (r"decoder\.up\.(?P<i>\d+)\.temporal_attn\.(?P<j>\d+)\.", "decoder.up_blocks.{up}.temporal_attentions.{j}."),
    (r"decoder\.mid\.temporal_block_(?P<j>[12])\.", "decoder.mid_block.temporal_resnets.{j0}."),
    (r"decoder\.up\.(?P<i>\d+)\.temporal_block\.(?P<j>\d+)\.", "decoder.up_blocks.{up}.temporal_resnets.{j}."),
]


def release_video_movq_key(key: str, levels: int) -> str | None:
    """A key of the release's video MoVQ -> ours (diffusers names for the image layers); None when unknown."""
    for pat, head in _TEMPORAL_MODULES:
        m = re.match(pat, key)
        if m:
            g = m.groupdict()
            if "i" in g and int(g["i"]) >= levels:
                return None
            up = levels - 1 - int(g["i"]) if "i" in g else None
            j0 = int(g["j"]) - 1 if "j" in g else None
            return head.format(up=up, j0=j0, j=g.get("j")) + key[m.end():]
    return release_movq_key(key, levels)


def _load_release_state(model: VideoMoVQDecoder, state: dict, path: Path, levels: int) -> None:
    """Map, check everything (one error listing every problem), then copy."""
    own = model.state_dict()
    mapped, unmapped = {}, []
    for k, v in state.items():
        new = release_video_movq_key(k, levels) if isinstance(v, torch.Tensor) else None
        if new is None:
            unmapped.append(k)
        elif not new.startswith(("encoder.", "quant_conv.")):  # the unused encoder half of the release's MoVQ
            if new in own and own[new].dim() == 2 and v.dim() == 4 and tuple(v.shape[2:]) == (1, 1):
                v = v[:, :, 0, 0]  # the release's 1x1-conv attention projections -> Linear weights
            mapped[new] = v
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    shapes = sorted(f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(mapped) & set(own) if mapped[k].shape != own[k].shape)

    def lst(what, xs):
        return f"{len(xs)} {what} ({', '.join(xs[:8])}{', ...' if len(xs) > 8 else ''})" if xs else ""
    problems = [p for p in (lst("unmapped keys (release names)", sorted(unmapped)),
                            lst("missing keys (our names)", missing),
                            lst("keys the model does not have (our names)", unexpected),
                            lst("shape mismatches (our names)", shapes)) if p]
    if problems:
        raise CheckpointError(f"{path} does not fit the video MoVQ decoder {model.config}: " + "; ".join(problems)
                              + ". Is it the release's video_movq.pt, with the matching params?")
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v.to(own[k].dtype))
