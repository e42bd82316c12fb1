"""Latent codecs for the keyframe UNet: what the UNet is trained on, and how its samples become pixels again.

One interface, ``Codec``: ``encode`` maps [0, 1] video (B,3,T,H,W) or images (B,3,H,W) to "model space" latents
(B,C,T,H/s,W/s) / (B,C,h,w); ``decode`` is the inverse and returns float32 in [0, 1]; ``identity`` is a JSON-able
description (name, config, sha256 of the weights) for caches to key on.

* ``PixelCodec``: the identity codec (model space = pixels in [-1, 1]), the CPU default. Its ``encode`` is exactly
  the pipeline's ``2x - 1`` so that switching to the codec interface changes no bit.
* ``MoVQCodec``: Kandinsky 3.0's MoVQ, i.e. a diffusers ``VQModel`` used exactly as diffusers'
  ``Kandinsky3Pipeline`` uses it. Loadable from a diffusers Kandinsky 3.0 folder (``from_pretrained``) or from the
  Kandinsky Video 1.1 release's own image ``movq.pt`` (``from_release``), whose keys are mapped to diffusers' names.
* ``load_codec(spec)``: "pixels" / a folder / a ``.pt`` file -> the matching codec.

The network is diffusers' ``VQModel`` in every case; this module only loads weights and fixes the calling
convention. Frames are independent for the image MoVQ, so videos are folded into the batch and processed in chunks of
``chunk_size`` frames, which bounds memory without changing results.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from ..checkpoint import CheckpointError
from ..weights import sha256_file

__all__ = ["Codec", "PixelCodec", "MoVQCodec", "load_codec", "release_vq_config", "release_movq_key",
           "convert_release_state"]


# ------------------------------------------------------------------------------------------------ interface
class Codec(nn.Module):
    """Base class. Subclasses implement ``_encode_frames`` / ``_decode_frames`` on (N,C,H,W) frames in [-1, 1]
    pixel space; folding, chunking, devices, dtypes and the [0, 1] <-> [-1, 1] mapping live here, once."""

    name: str = "codec"
    latent_channels: int
    scale_factor: int

    def __init__(self, chunk_size: int = 16):
        super().__init__()
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)

    # where inputs go: the weights' device and dtype (a codec without weights keeps the input's device)
    @property
    def device(self) -> torch.device | None:
        p = next(self.parameters(), None)
        return None if p is None else p.device

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return torch.float32 if p is None else p.dtype

    @torch.no_grad()
    def encode(self, video01: torch.Tensor) -> torch.Tensor:
        """(B,3,T,H,W) or (B,3,H,W) in [0, 1] -> (B,C,T,H/s,W/s) or (B,C,H/s,W/s) model-space latents, float32."""
        s = self.scale_factor
        if video01.dim() in (4, 5) and (video01.shape[-2] % s or video01.shape[-1] % s):
            raise ValueError(f"{self.name}: frame size {tuple(video01.shape[-2:])} is not a multiple of the "
                             f"codec's spatial factor {s}")
        return self._per_frame(video01, 3, "encode", lambda x: self._encode_frames(x.float() * 2 - 1))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents (B,C,T,h,w) or (B,C,h,w) -> video/images in [0, 1], float32."""
        return self._per_frame(latents, self.latent_channels, "decode",
                               lambda z: ((self._decode_frames(z).float() + 1) / 2).clamp(0, 1))

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent the codec would give back for what ``latents`` decode to, where that is exact and cheap.
        Stored first frames go through it: pixels are clamped to the displayable range (as when they were stored
        as images); a MoVQ latent is kept as generated (a decode/encode round trip would lose detail)."""
        return latents

    def identity(self) -> dict:
        raise NotImplementedError

    def _encode_frames(self, x: torch.Tensor) -> torch.Tensor:  # (N,3,H,W) in [-1, 1] -> (N,C,h,w)
        raise NotImplementedError

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:  # (N,C,h,w) -> (N,3,H,W), about [-1, 1]
        raise NotImplementedError

    def _per_frame(self, x: torch.Tensor, channels: int, what: str, fn) -> torch.Tensor:
        if x.dim() not in (4, 5) or x.shape[1] != channels:
            raise ValueError(f"{self.name}.{what} expects (B,{channels},T,H,W) or (B,{channels},H,W), "
                             f"got {tuple(x.shape)}")
        video = x.dim() == 5
        if video:
            b = x.shape[0]
            x = rearrange(x, "b c t h w -> (b t) c h w")  # (B,C,T,H,W) -> (B*T,C,H,W)
        if x.shape[0] == 0:
            raise ValueError(f"{self.name}.{what}: no frames in input of shape {tuple(x.shape)}")
        device = self.device
        out = torch.cat([fn(c if device is None else c.to(device)) for c in x.split(self.chunk_size)])
        if video:
            out = rearrange(out, "(b t) c h w -> b c t h w", b=b)  # (B*T,C',h,w) -> (B,C',T,h,w)
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, latent_channels={self.latent_channels}, scale_factor={self.scale_factor}, " \
               f"chunk_size={self.chunk_size}"


class PixelCodec(Codec):
    """The identity codec: model space is the pixels themselves, mapped to [-1, 1] by ``2x - 1``. No weights, so it
    runs wherever its input is."""

    name = "pixels"
    latent_channels = 3
    scale_factor = 1

    def _encode_frames(self, x):
        return x

    def _decode_frames(self, z):
        return z

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        return self.encode(self.decode(latents))

    def identity(self) -> dict:
        return {"name": self.name, "config": {"latent_channels": 3, "scale_factor": 1, "range": "2x-1"}}


# ---------------------------------------------------------------------------------------------------- MoVQ
class MoVQCodec(Codec):
    """Kandinsky 3.0's MoVQ (a diffusers ``VQModel`` with spatial norms), called as ``Kandinsky3Pipeline`` calls it.

    * encode = ``vq.encode(2x - 1).latents``: the *pre-quantisation* latents ``quant_conv(encoder(x))``, with **no
      scaling factor**. Kandinsky 3.0 and Kandinsky Video train their UNets on these raw latents: diffusers'
      text-to-image pipeline decodes its samples without dividing by anything and its image-to-image one feeds
      ``movq.encode(image).latents`` straight into the noising step; the Kandinsky Video release encodes its keyframe
      with ``movq.encode(image)`` and decodes with ``movq.decode(latents)``, unscaled too. The config's
      ``scaling_factor`` (0.18215) is a diffusers default none of them applies; applying it here would put the UNet
      in the wrong space.
    * decode = ``vq.decode(z, force_not_quantize=True).sample``: the latents go straight to the decoder (and condition
      its spatial norms) without snapping to the codebook. Both pipelines decode like this; the codebook lookup
      would only add quantisation error to samples that were never on the codebook.

    ``source`` says where the weights came from (shown in ``name``); ``weights`` are the files whose sha256 goes into
    ``identity()`` (for a model built in memory, the state dict itself is hashed).
    """

    def __init__(self, vq, source: str = "in memory", *, weights=(), fmt: str = "diffusers", chunk_size: int = 16):
        super().__init__(chunk_size)
        cfg = vq.config
        if cfg.in_channels != 3 or cfg.out_channels != 3:
            raise ValueError(f"{source}: a MoVQ codec maps RGB to RGB, this VQModel has in_channels "
                             f"{cfg.in_channels}, out_channels {cfg.out_channels}")
        self.vq = vq.eval().requires_grad_(False)
        self.source, self.format, self.weights = str(source), fmt, [Path(w) for w in weights]
        self.latent_channels = int(cfg.latent_channels)
        self.scale_factor = 2 ** (len(cfg.block_out_channels) - 1)
        what = "diffusers VQModel" if fmt == "diffusers" else "Kandinsky Video 1.1 release"
        self.name = f"movq ({what}, {self.source})"
        self._identity: dict | None = None
        self.video_decoder = None   # a VideoMoVQDecoder (with_video_decoder): decodes clips in temporal windows

    def _encode_frames(self, x):
        return self.vq.encode(x.to(self.dtype)).latents

    def _decode_frames(self, z):
        return self.vq.decode(z.to(self.dtype), force_not_quantize=True).sample

    # ------------------------------------------------------------------------------- video decoder (Table 3)
    def with_video_decoder(self, decoder) -> "MoVQCodec":
        """This codec with clips decoded by ``decoder`` (``models/video_decoder.py``): a Table 3 name
        (``"3x3x3 Conv + Attn"``, inflated from this MoVQ's image decoder, so it decodes exactly as the image decoder
        until fine-tuned), the release's ``video_movq.pt`` (read with its params from ``configs.json`` beside it),
        or a ``VideoMoVQDecoder``. Encoding always uses the image encoder, as the release does; images (4-D) still go
        through the image decoder."""
        from .video_decoder import DECODER_VARIANTS, VideoMoVQDecoder, variant_config
        if isinstance(decoder, str) and decoder in DECODER_VARIANTS:
            with torch.random.fork_rng(devices=[]):    # the new layers' random parts: the same decoder every time
                torch.manual_seed(0)
                decoder = VideoMoVQDecoder.from_image(self.vq, variant_config(decoder))
        elif isinstance(decoder, (str, Path)):
            path = Path(decoder)
            if not path.is_file():
                raise FileNotFoundError(f"video decoder {decoder!r}: neither a Table 3 decoder name "
                                        f"({', '.join(DECODER_VARIANTS)}) nor an existing file")
            params = _release_params(path, "video_movq")[0]
            decoder = VideoMoVQDecoder.from_release(path, params, device=self.device or "cpu", dtype=self.dtype)
        if decoder.latent_channels != self.latent_channels or decoder.scale_factor != self.scale_factor:
            raise ValueError(f"video decoder ({decoder.latent_channels} channels, x{decoder.scale_factor}) does not "
                             f"fit {self.name} ({self.latent_channels} channels, x{self.scale_factor})")
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.video_decoder = decoder.eval().requires_grad_(False)
        out.name = f"{self.name} + video decoder ({getattr(decoder, 'config', '')})"
        out._identity = None
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.video_decoder is None or latents.dim() != 5:
            return super().decode(latents)
        dev = self.device
        y = self.video_decoder.decode(latents.to(dev if dev is not None else latents.device,
                                                 self.video_decoder.dtype))
        return ((y.float() + 1) / 2).clamp(0, 1)

    def identity(self) -> dict:
        """Path-free on purpose: the same weights found elsewhere give the same identity (caches stay valid)."""
        if self._identity is None:
            if self.weights:
                digests = {w.name: sha256_file(w) for w in self.weights}
            else:
                h = hashlib.sha256()
                for k, v in self.vq.state_dict().items():
                    h.update(k.encode())
                    h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
                digests = {"state_dict": h.hexdigest()}
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.vq.config.items()
                      if not k.startswith("_")}
            self._identity = {"name": "movq", "format": self.format, "config": config, "sha256": digests}
        ident = {**self._identity, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.video_decoder is not None:     # clips decode differently: caches of decoded videos must know
            h = hashlib.sha256()
            for k, v in self.video_decoder.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            ident["video_decoder"] = {"config": repr(self.video_decoder.config), "state_dict": h.hexdigest()}
        return ident

    # ---------------------------------------------------------------------------- diffusers Kandinsky 3.0 folder
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32, device="cpu", chunk_size: int = 16):
        """A diffusers Kandinsky 3.0 folder (its ``movq/`` subfolder is used) or that ``movq/`` folder itself."""
        from diffusers import VQModel
        from diffusers.utils import logging as dlogging

        folder = _movq_folder(Path(path))
        variant, files = _diffusers_weights(folder)
        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # we report missing/unexpected keys ourselves, as an error, not a log line
        try:
            vq, info = VQModel.from_pretrained(folder, torch_dtype=dtype, variant=variant, local_files_only=True,
                                               use_safetensors=".safetensors" in files[0].name,
                                               output_loading_info=True)
        except Exception as e:  # truncated file, shapes of another model, ...
            raise CheckpointError(f"{folder}: diffusers could not load the VQModel ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]})") from e
        finally:
            dlogging.set_verbosity(level)
        # diffusers only logs missing keys (and initialises them at random): a half-random codec must not load
        bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(bad.values()):
            raise CheckpointError(f"{files[0]} does not fit its config.json: " + "; ".join(
                f"{len(v)} {k.replace('_', ' ')} ({', '.join(map(str, v[:8]))}{', ...' if len(v) > 8 else ''})"
                for k, v in bad.items() if v))
        return cls(nn.Module.to(vq, device), str(folder), weights=files, chunk_size=chunk_size)

    # ------------------------------------------------------------------------ Kandinsky Video 1.1 release movq.pt
    @classmethod
    def from_release(cls, path, params: dict | None = None, dtype: torch.dtype = torch.float32, device="cpu",
                     chunk_size: int = 16):
        """The release's image MoVQ ``movq.pt`` (a state dict of ``kandinsky_video.movq.MoVQ``) in a diffusers
        ``VQModel``. ``params`` are the release's MoVQ constructor params (``ch``, ``ch_mult``, ...); if not given
        they are read from the ``configs.json`` beside the file.

        The release omits the codebook (its class has none): ``quantize.embedding`` keeps a deterministic
        VectorQuantizer-style init. It is never read, since decoding always passes ``force_not_quantize=True``.
        Every other tensor must be in the file, under a known name, with the right shape.

        One known difference: the release's ``AttnBlock`` conditions the spatial norm of *every* item of a batch on
        the first item's latent (``SpatialNorm(h[i], zq)`` picks ``zq[0]``), so its batched decodes of several images
        differ from per-image decodes. The release only ever decodes single images with this model; diffusers (and
        this codec) decode each frame on its own, which equals the release at batch size 1.
        """
        from diffusers import VQModel

        from ..loaders import read_torch_file  # here, not at the top: loaders imports the models package

        path = Path(path)
        state = read_torch_file(path)
        bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise CheckpointError(f"{path} is not a plain state dict: non-tensor entries {bad[:8]}")
        if any(".temporal_" in k for k in state):
            raise CheckpointError(f"{path} holds a video MoVQ (temporal decoder layers 'temporal_*'); this codec "
                                  "loads the image MoVQ (movq.pt)")
        params, params_from = (dict(params), "the params argument") if params is not None else _release_params(path)
        config = release_vq_config(params, f"{path} (MoVQ params from {params_from})")
        with torch.device("meta"):
            vq = VQModel(**config)
        vq = vq.to_empty(device="cpu")
        state, unmapped = convert_release_state(state, len(config["block_out_channels"]))
        _load_checked(vq, state, unmapped, path, skip={"quantize.embedding.weight"})
        n = config["num_vq_embeddings"]
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            vq.quantize.embedding.weight.uniform_(-1.0 / n, 1.0 / n, generator=gen)
        # nn.Module.to: diffusers' own .to() warns about fp32-kept modules on any dtype cast; VQModel has none
        return cls(nn.Module.to(vq, device=device, dtype=dtype), str(path), weights=[path],
                   fmt="kandinsky_video_release", chunk_size=chunk_size)


def load_codec(spec=None, **kw) -> Codec:
    """``None`` / "pixels" -> ``PixelCodec``; a folder -> ``MoVQCodec.from_pretrained``; a ``.pt`` file ->
    ``MoVQCodec.from_release``. Keyword arguments (``dtype``, ``device``, ``chunk_size``, ``params``) go to the
    loader; ``None`` values mean "the default", and pixels use only ``chunk_size``."""
    kw = {k: v for k, v in kw.items() if v is not None}
    if isinstance(spec, Codec):
        return spec
    if spec is None or str(spec).lower() == "pixels":
        unknown = set(kw) - {"chunk_size", "dtype", "device"}
        if unknown:
            raise TypeError(f"pixel codec: unexpected options {sorted(unknown)}")
        return PixelCodec(kw.get("chunk_size", 16))
    p = Path(spec)
    if p.is_dir():
        return MoVQCodec.from_pretrained(p, **kw)
    if p.is_file() and p.suffix == ".pt":
        return MoVQCodec.from_release(p, **kw)
    if not p.exists():
        raise FileNotFoundError(f"codec not found: {spec!r} is not 'pixels' and no such file or folder exists")
    raise ValueError(f"codec {spec!r}: expected 'pixels', a diffusers Kandinsky 3.0 folder (or its movq/), or the "
                     "Kandinsky Video 1.1 release's movq.pt")


# ------------------------------------------------------------------------------------- diffusers folders
def _movq_folder(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"MoVQ folder not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (expected a diffusers Kandinsky 3.0 folder or its movq/)")
    folder = path / "movq" if (path / "movq").is_dir() else path
    cfg = folder / "config.json"
    if not cfg.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no config.json in {folder} (found: {', '.join(found) or 'nothing'}); expected a "
                                "diffusers Kandinsky 3.0 folder with movq/, or the movq/ folder itself")
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg} is not a readable JSON config ({e})") from e
    if raw.get("_class_name") != "VQModel":
        raise CheckpointError(f"{cfg} describes a {raw.get('_class_name')}, not a VQModel (the MoVQ codec); point "
                              "--codec at the Kandinsky 3.0 folder or its movq/")
    return folder


_WEIGHTS = [  # (variant, file whose presence decides, as diffusers names them)
    (None, "diffusion_pytorch_model.safetensors"), (None, "diffusion_pytorch_model.safetensors.index.json"),
    (None, "diffusion_pytorch_model.bin"), (None, "diffusion_pytorch_model.bin.index.json"),
    ("fp16", "diffusion_pytorch_model.fp16.safetensors"),
    ("fp16", "diffusion_pytorch_model.safetensors.index.fp16.json"),
    ("fp16", "diffusion_pytorch_model.fp16.bin")]


def _diffusers_weights(folder: Path) -> tuple[str | None, list[Path]]:
    """The variant diffusers should load, and the files that hold it (index + shards for sharded weights)."""
    for variant, name in _WEIGHTS:
        f = folder / name
        if f.is_file():
            if name.endswith(".json"):
                try:
                    shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as e:
                    raise CheckpointError(f"{f} is not a readable weight index ({e})") from e
                return variant, [f] + [folder / s for s in shards]
            return variant, [f]
    found = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(f"no VQModel weights in {folder}: expected diffusion_pytorch_model.safetensors (or .bin, "
                            f"sharded, or an .fp16 variant); found: {', '.join(found)}")


# -------------------------------------------------------------------------- Kandinsky Video release files
_REQUIRED = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels")
_VIDEO_ONLY = ("temporal", "temporal_attention_block", "temporal_blocks", "build_3D_decoder", "flicker_augmentation")


def _release_params(path: Path, section_name: str = "image_movq") -> tuple[dict, str]:
    """The image MoVQ params from ``configs.json`` beside ``path``. The release's ``get_T2V_pipeline`` calls
    ``get_movq(**configs["image_movq"])``, i.e. ``MoVQ(configs["image_movq"]["configs"])``; ``params`` (the training
    configs' name) and the params directly under ``image_movq`` are accepted too. ``section_name="video_movq"``
    reads the video MoVQ's the same way."""
    cfg = path.parent / "configs.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no MoVQ params given and no configs.json beside it ({cfg}); pass params= "
                              f"(the release's image MoVQ params: {', '.join(_REQUIRED)}, ...)")
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg} is not readable JSON ({e})") from e
    section = raw.get(section_name) if isinstance(raw, dict) else None
    if isinstance(section, dict):
        for cand in (section.get("configs"), section.get("params"), section):
            if isinstance(cand, dict) and "ch" in cand:
                return dict(cand), f"{cfg} ['{section_name}']"
    raise CheckpointError(f"{cfg} has no {section_name} params (looked for ['{section_name}']['configs'], "
                          f"['{section_name}']['params'] and ['{section_name}'])")


def release_vq_config(params: dict, source: str = "MoVQ params") -> dict:
    """The release's ``MoVQ(params)`` -> the diffusers ``VQModel`` kwargs that build the same network.

    A level gets attention blocks when its resolution (``resolution / 2**level``) is in ``attn_resolutions``; the
    decoder runs the levels in reverse. The release's norms are GroupNorm(32, eps 1e-6) everywhere (hard-coded, as in
    diffusers' SpatialNorm), hence ``norm_num_groups=32``. The codebook size is not in the release (its class has no
    codebook); 16384 is Kandinsky 3.0's, and only sizes the unused ``quantize.embedding``.
    """
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise CheckpointError(f"{source}: missing {missing}")
    video = [k for k in _VIDEO_ONLY if params.get(k)]
    unsupported = [k for k, bad in (("double_z", True), ("resamp_with_conv", False), ("give_pre_end", True),
                                    ("add_conv", True)) if k in params and bool(params[k]) == bad]
    if video or unsupported:
        raise CheckpointError(f"{source}: options {video + unsupported} are not the image MoVQ "
                              f"({'a video MoVQ: not this codec' if video else 'not supported'})")
    ch, mult, res = int(params["ch"]), [int(m) for m in params["ch_mult"]], int(params["resolution"])
    attn = {int(r) for r in params["attn_resolutions"]}
    levels = len(mult)
    has_attn = [res // 2 ** i in attn for i in range(levels)]
    z = int(params["z_channels"])
    return dict(in_channels=int(params.get("in_channels", 3)), out_channels=int(params.get("out_ch", 3)),
                down_block_types=["AttnDownEncoderBlock2D" if has_attn[i] else "DownEncoderBlock2D"
                                  for i in range(levels)],
                up_block_types=["AttnUpDecoderBlock2D" if has_attn[levels - 1 - i] else "UpDecoderBlock2D"
                                for i in range(levels)],
                block_out_channels=[ch * m for m in mult], layers_per_block=int(params["num_res_blocks"]),
                latent_channels=z, vq_embed_dim=z, num_vq_embeddings=int(params.get("n_embed", 16384)),
                norm_num_groups=32, norm_type="spatial", sample_size=res)


# Release (taming / MoVQ) names -> diffusers names, in two anchored steps. First the module path, matched at the start
# of the key (first match wins). "{up}" = levels-1-i: the release numbers the decoder levels by resolution (up.0 is
# full size), diffusers in the order they run. The kind says how the rest of the key is named inside that module.
_MODULES = [
    (r"(?P<s>encoder|decoder)\.(?P<m>conv_in|conv_out)\.", "{s}.{m}.", "plain"),
    (r"(?P<m>quant_conv|post_quant_conv)\.", "{m}.", "plain"),
    (r"(?P<s>encoder|decoder)\.norm_out\.", "{s}.conv_norm_out.", "norm"),
    (r"(?P<s>encoder)\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.", "{s}.down_blocks.{i}.resnets.{j}.", "resnet"),
    (r"(?P<s>encoder)\.down\.(?P<i>\d+)\.attn\.(?P<j>\d+)\.", "{s}.down_blocks.{i}.attentions.{j}.", "attn"),
    (r"(?P<s>encoder)\.down\.(?P<i>\d+)\.downsample\.conv\.", "{s}.down_blocks.{i}.downsamplers.0.conv.", "plain"),
    (r"(?P<s>encoder|decoder)\.mid\.block_1\.", "{s}.mid_block.resnets.0.", "resnet"),
    (r"(?P<s>encoder|decoder)\.mid\.block_2\.", "{s}.mid_block.resnets.1.", "resnet"),
    (r"(?P<s>encoder|decoder)\.mid\.attn_1\.", "{s}.mid_block.attentions.0.", "attn"),
    (r"(?P<s>decoder)\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)\.", "{s}.up_blocks.{up}.resnets.{j}.", "resnet"),
    (r"(?P<s>decoder)\.up\.(?P<i>\d+)\.attn\.(?P<j>\d+)\.", "{s}.up_blocks.{up}.attentions.{j}.", "attn"),
    (r"(?P<s>decoder)\.up\.(?P<i>\d+)\.upsample\.conv\.", "{s}.up_blocks.{up}.upsamplers.0.conv.", "plain"),
]
# Then the rest of the key (full match). "{norm}" is the norm's own rest, named as below; "{attn_norm}" is
# group_norm in the encoder, spatial_norm in the decoder. The 1x1-conv q/k/v/proj_out become Linear weights.
_LEAVES = {
    "plain": [(r"(?P<p>weight|bias)", "{p}")],
    "norm": [(r"(?P<n>.+)", "{norm}")],
    "resnet": [(r"(?P<c>conv1|conv2)\.(?P<p>weight|bias)", "{c}.{p}"),
               (r"nin_shortcut\.(?P<p>weight|bias)", "conv_shortcut.{p}"),
               (r"(?P<c>norm1|norm2)\.(?P<n>.+)", "{c}.{norm}")],
    "attn": [(r"q\.(?P<p>weight|bias)", "to_q.{p}"), (r"k\.(?P<p>weight|bias)", "to_k.{p}"),
             (r"v\.(?P<p>weight|bias)", "to_v.{p}"), (r"proj_out\.(?P<p>weight|bias)", "to_out.0.{p}"),
             (r"norm\.(?P<n>.+)", "{attn_norm}.{norm}")],
}
# Every release norm is a SpatialNorm; in the encoder it has no zq convs and diffusers uses a plain GroupNorm there.
_NORMS = {"encoder": (r"norm_layer\.(?P<p>weight|bias)", "{p}"),
          "decoder": (r"(?P<m>norm_layer|conv_y|conv_b)\.(?P<p>weight|bias)", "{m}.{p}")}
_LINEAR = re.compile(r"\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def release_movq_key(key: str, levels: int) -> str | None:
    """The release's key -> the diffusers ``VQModel`` key; None when no rule knows it."""
    for pat, head, kind in _MODULES:
        m = re.match(pat, key)
        if not m:
            continue
        g = m.groupdict()
        if "i" in g and g["s"] == "decoder":
            if int(g["i"]) >= levels:
                return None
            g["up"] = levels - 1 - int(g["i"])
        rest = key[m.end():]
        for lpat, tail in _LEAVES[kind]:
            lm = re.fullmatch(lpat, rest)
            if lm:
                lg = lm.groupdict()
                norm = ""
                if "n" in lg:
                    npat, ntail = _NORMS[g["s"]]
                    nm = re.fullmatch(npat, lg["n"])
                    if not nm:
                        return None
                    norm = ntail.format(**nm.groupdict())
                attn_norm = "group_norm" if g.get("s") == "encoder" else "spatial_norm"
                return head.format(**g) + tail.format(**lg, norm=norm, attn_norm=attn_norm)
        return None
    return None


def convert_release_state(state: dict, levels: int) -> tuple[dict, list[str]]:
    """Rename (and squeeze the attention projections of) a release state dict; returns (converted, unmapped)."""
    out, unmapped = {}, []
    for k, v in state.items():
        new = release_movq_key(k, levels)
        if new is None:
            unmapped.append(k)
            continue
        if _LINEAR.search(new) and v.dim() == 4 and tuple(v.shape[2:]) == (1, 1):
            v = v[:, :, 0, 0]  # (C,C,1,1) conv -> (C,C) linear
        out[new] = v
    return out, sorted(unmapped)


def _load_checked(model: nn.Module, state: dict, unmapped: list[str], path: Path, skip: set[str]) -> None:
    """Check everything first (one error listing every problem), then copy."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - skip)
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(state) & set(own) if state[k].shape != own[k].shape)

    def lst(what, xs):
        return f"{len(xs)} {what} ({', '.join(xs[:8])}{', ...' if len(xs) > 8 else ''})" if xs else ""
    problems = [p for p in (lst("unmapped keys", unmapped), lst("missing keys (diffusers names)", missing),
                            lst("keys the model does not have (diffusers names)", unexpected),
                            lst("shape mismatches (diffusers names)", shapes)) if p]
    if problems:
        raise CheckpointError(f"{path} does not fit the image MoVQ: " + "; ".join(problems)
                              + ". Is it the release's movq.pt, with the matching params?")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
