"""Loaders for real checkpoints: diffusers' Kandinsky 3.0 and the released Kandinsky Video 1.1 files.

* ``load_kandinsky3(path)``: a diffusers-format Kandinsky 3.0 folder (or its ``unet/`` subfolder: ``config.json`` +
  safetensors) -> the ``Spatial`` KeyframeUNet, its config read from the file.
* ``load_kandinsky_video(path)``: a folder with the release's files under their hub names (``t2v.pt``,
  ``t5_projections.pt``, optional ``configs.json``) -> ``.unet`` (``Conv1dAttn1dBlocks`` with the KV 1.1
  conditioning, the text projection loaded into it) and ``.null_embedding``.

Both are strict: missing or unexpected keys and shape mismatches give one ``CheckpointError`` that names the file
and lists them; a missing file names the file and where it was looked for. Nothing is half-loaded: the state dict is
checked completely before a single tensor is copied. Foreign ``.pt`` files are read with ``weights_only=True``.

Each checkpoint carries its ``Conventions`` (``unet.conventions``), which the pipeline applies: how text is
prepared and what the unconditional text is, the guidance scale convention (theirs = ours - 1), the schedule.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import DiffusionConfig, UNetConfig
from .models.unet import KeyframeUNet, inflate


@dataclass
class Conventions:
    """How a checkpoint's own pipeline used it; recorded with the model and applied by ``KeyframePipeline``.

    guidance_offset: their classifier-free guidance ``(w + 1) e_c - w e_u`` is our ``cfg_combine`` with
    ``w_ours = w_theirs + guidance_offset``.
    """
    source: str = "kv_research"
    text: str = "suite"                 # "suite" (hashed words) | "diffusers" | "kandinsky_video"
    unconditional: str = "empty_prompt"  # "empty_prompt" | "zeros" (all-masked row) | "null_embedding"
    cut_context: bool = False           # cut the tokens to (longest mask + 1), as both Kandinsky pipelines do
    guidance_offset: float = 0.0
    guidance_scale: float | None = None  # the checkpoint pipeline's default, in *their* convention
    zero_terminal_snr: bool = True
    prediction: str = "v"

    def diffusion_config(self, **overrides) -> DiffusionConfig:
        """A ``DiffusionConfig`` with this checkpoint's schedule and target (cosine = ``squaredcos_cap_v2``)."""
        kw = dict(zero_terminal_snr=self.zero_terminal_snr, prediction=self.prediction)
        if self.guidance_scale is not None:
            kw["guidance_text"] = self.guidance_scale + self.guidance_offset
        return dataclasses.replace(DiffusionConfig(), **{**kw, **overrides})


KANDINSKY3 = Conventions(source="diffusers Kandinsky 3.0", text="diffusers", unconditional="zeros", cut_context=True,
                         guidance_offset=1.0, guidance_scale=3.0, zero_terminal_snr=False, prediction="eps")
KANDINSKY_VIDEO_11 = Conventions(source="Kandinsky Video 1.1 release", text="kandinsky_video",
                                 unconditional="null_embedding", cut_context=True, guidance_offset=1.0,
                                 guidance_scale=5.0, zero_terminal_snr=True, prediction="eps")


# ------------------------------------------------------------------------------------------- file reading
def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (looked for it in {path.parent})")
    return path


def read_torch_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on the CPU, with errors that name the file."""
    path = _need(Path(path), "checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code refused by weights_only, ...
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); is the file complete and of this format?") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = _need(Path(path), "weights file")
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path} could not be read as safetensors ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); is the file complete?") from e


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                allow_missing: set[str] = frozenset()) -> None:
    """Check keys and shapes completely, then copy; one error listing every problem, naming ``source``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - set(allow_missing))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def lst(name, xs):
            return f"{len(xs)} {name} ({', '.join(xs[:8])}{', ...' if len(xs) > 8 else ''})" if xs else ""
        parts = [p for p in (lst("missing keys", missing), lst("unexpected keys", unexpected),
                             lst("shape mismatches", shapes)) if p]
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts)
                              + ". Is it the right file for this model and config?")
    with torch.no_grad():
        for k, v in state.items():
            t = own[k]
            if t.is_meta:
                continue
            t.copy_(v.to(t.dtype))


# ------------------------------------------------------------------------------------------ Kandinsky 3.0
def _k3_unet_dir(path: Path) -> Path:
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no Kandinsky 3.0 UNet config found: looked for {path / 'unet' / 'config.json'} "
                            f"and {path / 'config.json'} (a diffusers Kandinsky 3.0 folder or its unet/ subfolder)")


def kandinsky3_config(unet_dir: Path) -> UNetConfig:
    cfg_path = unet_dir / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not a readable JSON config ({e})") from e
    if raw.get("_class_name") not in (None, "Kandinsky3UNet"):
        raise CheckpointError(f"{cfg_path} describes a {raw.get('_class_name')}, expected Kandinsky3UNet")
    lpb, cad = raw.get("layers_per_block", 3), raw.get("cross_attention_dim", 4096)
    if isinstance(lpb, (list, tuple)) or isinstance(cad, (list, tuple)):
        raise CheckpointError(f"{cfg_path}: per-level layers_per_block / cross_attention_dim are not supported "
                              "(diffusers' Kandinsky3UNet cannot build them either)")
    try:
        return UNetConfig(in_channels=raw.get("in_channels", 4), block_out_channels=tuple(raw.get(
            "block_out_channels", (384, 768, 1536, 3072))), layers_per_block=lpb, groups=raw.get("groups", 32),
            attention_head_dim=raw.get("attention_head_dim", 64),
            time_embedding_dim=raw.get("time_embedding_dim", 1536), cross_attention_dim=cad,
            encoder_hid_dim=raw.get("encoder_hid_dim", 4096), convention="diffusers")
    except ValueError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e


def _k3_weights(unet_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    single = unet_dir / "diffusion_pytorch_model.safetensors"
    index = unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    fp16 = unet_dir / "diffusion_pytorch_model.fp16.safetensors"
    if single.is_file():
        return read_safetensors(single), str(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for s in shards:
            state.update(read_safetensors(unet_dir / s))
        return state, str(index)
    if fp16.is_file():
        return read_safetensors(fp16), str(fp16)
    raise FileNotFoundError(f"no UNet weights in {unet_dir}: expected diffusion_pytorch_model.safetensors (or its "
                            ".index.json shards, or the .fp16 variant)")


def load_kandinsky3(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> KeyframeUNet:
    """diffusers' Kandinsky 3.0 UNet (folder or its ``unet/``) -> the suite's ``Spatial`` KeyframeUNet."""
    unet_dir = _k3_unet_dir(Path(path))
    cfg = kandinsky3_config(unet_dir)
    state, source = _k3_weights(unet_dir)
    with torch.device("meta"):
        unet = KeyframeUNet(cfg)
    unet = unet.to_empty(device="cpu")
    load_strict(unet, state, source)
    unet.conventions = KANDINSKY3
    return unet.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------ Kandinsky Video 1.1
_ATTN = {"to_query": "to_q", "to_key": "to_k", "to_value": "to_v", "output_layer": "to_out.0"}
_TOP = [(r"^to_time_embed\.1\.", "time_embedding.linear_1."), (r"^to_time_embed\.3\.", "time_embedding.linear_2."),
        (r"^feature_pooling\.", "add_time_condition."),
        (r"^to_temporal_embed\.1\.", "temporal_embed.position.linear_1."),
        (r"^to_temporal_embed\.3\.", "temporal_embed.position.linear_2."),
        (r"^temporal_noise_aug_time_encoding\.1\.", "temporal_embed.noise_level.linear_1."),
        (r"^temporal_noise_aug_time_encoding\.3\.", "temporal_embed.noise_level.linear_2."),
        (r"^temporal_motion_score_encoding\.1\.", "temporal_embed.motion.linear_1."),
        (r"^temporal_motion_score_encoding\.3\.", "temporal_embed.motion.linear_2."),
        (r"^in_layer\.", "video_in_conv."), (r"^out_layer\.0\.", "conv_norm_out."), (r"^out_layer\.2\.", "conv_out.")]
_SLOT = {"0": "resnets_in.{j}", "1": "attentions.{j1}", "2": "resnets_out.{j}", "3": "temporal_resnets_in.{j}",
         "4": "temporal_resnets_out.{j}"}


def kandinsky_key(key: str) -> str | None:
    """The release's (original Kandinsky code's) key -> the suite's (= diffusers') key; None for ``image_in_layer``.

    Anchored regexes only: diffusers' own converter uses fnmatch patterns that would also catch the temporal keys.
    """
    for pat, rep in _TOP:
        if re.match(pat, key):
            key = re.sub(pat, rep, key)
            break
    else:
        m = re.match(r"^(down|up)_samples\.(\d+)\.(.*)$", key)
        if m:
            kind, i, rest = m.groups()
            head = f"{kind}_blocks.{i}."
            if rest.startswith("self_attention_block."):
                rest = "attentions.0." + rest[len("self_attention_block."):]
            elif rest.startswith("temporal_attention_block."):
                rest = "temporal_attention." + rest[len("temporal_attention_block."):]
            else:
                r = re.match(r"^resnet_attn_blocks\.(\d+)\.([0-4])\.(.*)$", rest)
                if r is None:
                    return key
                j, slot, tail = r.groups()
                rest = _SLOT[slot].format(j=j, j1=int(j) + 1) + "." + tail
            key = head + rest
        elif key.startswith("image_in_layer."):
            return None
    return re.sub(r"\.(to_query|to_key|to_value|output_layer)\.", lambda mm: f".{_ATTN[mm.group(1)]}.", key)


@dataclass
class KandinskyVideoCheckpoint:
    unet: KeyframeUNet
    null_embedding: torch.Tensor          # (1, cross_attention_dim): the unconditional text token (already projected)
    conventions: Conventions = field(default_factory=lambda: KANDINSKY_VIDEO_11)
    files: dict = field(default_factory=dict)


def _release_unet_kwargs(path: Path, given: dict | None) -> tuple[dict, str]:
    if given is not None:
        return dict(given), "the unet_kwargs argument"
    cfg_file = path / "configs.json"
    if not cfg_file.is_file():
        return {}, "defaults (no configs.json)"
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not readable JSON ({e})") from e
    # the released configs.json is not public; accept the UNet kwargs at any depth, preferring the keyframe model's
    found = []

    def walk(obj, trail):
        if isinstance(obj, dict):
            if "model_channels" in obj:
                found.append((trail, obj))
            for k, v in obj.items():
                walk(v, trail + [str(k)])
    walk(raw, [])
    pick = [o for t, o in found if not any("interp" in s.lower() for s in t)]
    if not pick:
        raise CheckpointError(f"{cfg_file} holds no keyframe UNet options (a dict with 'model_channels')")
    return dict(pick[0]), str(cfg_file)


def _release_widths(state: dict, kwargs: dict, source: str, what: str) -> tuple:
    """(input channels, output channels, time width, text width, block widths, ResNets per level) of a released
    keyframe or interpolation UNet, read from its tensors and cross-checked against ``kwargs`` (``configs.json``)."""
    try:
        init, num_channels = state["in_layer.weight"].shape[:2]
        out_channels = state["out_layer.2.weight"].shape[0]
        E = state["to_time_embed.1.weight"].shape[0]
        ctx_dim = state["feature_pooling.attention.to_key.weight"].shape[1]
        levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down_samples.")})
        widths = tuple(state[f"down_samples.{i}.resnet_attn_blocks.0.0.resnet_blocks.3.projection.weight"].shape[0]
                       for i in levels)
        n = len({k.split(".")[3] for k in state if k.startswith("down_samples.0.resnet_attn_blocks.")})
    except KeyError as e:
        raise CheckpointError(f"{source} is not a Kandinsky Video {what} UNet (no {e.args[0]})") from None
    mc = kwargs.get("model_channels")
    if mc is not None:
        want = tuple(mc * m for m in kwargs.get("dim_mult", (1, 2, 4, 8)))
        if want != widths:
            raise CheckpointError(f"{source}: configs say widths {want}, the tensors have {widths}")
    if init != widths[0] // 2:
        raise CheckpointError(f"{source}: input conv width {init} is not half the first block width {widths[0]} "
                              "(Kandinsky 3.0's layout, the only one this UNet builds)")
    return num_channels, out_channels, E, ctx_dim, widths, n


def release_unet_config(state: dict, kwargs: dict, source: str) -> UNetConfig:
    """The suite's config of a released keyframe UNet: widths from the tensors, the rest from ``kwargs``
    (``configs.json``) or the Kandinsky defaults (groups 32, head dim 64), every width cross-checked."""
    num_channels, out_channels, E, ctx_dim, widths, n = _release_widths(state, kwargs, source, "keyframe")
    in_ch = (num_channels - 1) // 2
    try:
        return UNetConfig(in_channels=in_ch, out_channels=out_channels, block_out_channels=widths, layers_per_block=n,
                          groups=kwargs.get("groups", 32), attention_head_dim=kwargs.get("head_dim", 64),
                          time_embedding_dim=E, cross_attention_dim=ctx_dim, encoder_hid_dim=ctx_dim,
                          add_attention=tuple(kwargs.get("add_self_attention", (False, True, True, True))),
                          convention="kandinsky_video", first_frame_cond=num_channels == 2 * in_ch + 1,
                          noise_augmentation="temporal_noise_aug_time_encoding.1.weight" in state,
                          motion_conditioning="temporal_motion_score_encoding.1.weight" in state)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_kandinsky_video(path: str | Path, unet_kwargs: dict | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> KandinskyVideoCheckpoint:
    """The released Kandinsky Video 1.1 keyframe model (``t2v.pt`` + ``t5_projections.pt``) -> the suite's UNet."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Kandinsky Video folder not found: {path} (expected t2v.pt and t5_projections.pt "
                                "under their hub names)")
    t2v_file, proj_file = _need(path / "t2v.pt", "t2v.pt"), _need(path / "t5_projections.pt", "t5_projections.pt")
    t2v = read_torch_file(t2v_file)
    if "unet" not in t2v or "null_embedding" not in t2v:
        raise CheckpointError(f"{t2v_file} has keys {sorted(t2v)[:6]}, expected 'unet' and 'null_embedding' "
                              "(the release's t2v.pt)")
    raw, null = t2v["unet"], t2v["null_embedding"]
    kwargs, cfg_source = _release_unet_kwargs(path, unet_kwargs)
    cfg = release_unet_config(raw, kwargs, str(t2v_file))
    # the unet file holds the 9-channel image_in_layer; image mode feeds zeros into channels 4..8, so its first
    # in_channels columns are exactly the suite's conv_in
    state = {}
    for k, v in raw.items():
        nk = kandinsky_key(k)
        if nk is not None:
            state[nk] = v
    for part in ("weight", "bias"):
        src = raw.get(f"image_in_layer.{part}")
        if src is None:
            raise CheckpointError(f"{t2v_file} has no image_in_layer.{part} (not a Kandinsky Video 1.1 keyframe UNet)")
        state[f"conv_in.{part}"] = src[:, : cfg.in_channels] if part == "weight" else src
    proj = read_torch_file(proj_file)
    if "projection_base" not in proj:
        raise CheckpointError(f"{proj_file} has keys {sorted(proj)}, expected 'projection_base'")
    pb = proj["projection_base"]
    for src, dst in (("0.weight", "projection_linear.weight"), ("1.weight", "projection_norm.weight"),
                     ("1.bias", "projection_norm.bias")):
        if src not in pb:
            raise CheckpointError(f"{proj_file}: projection_base has no '{src}'")
        state[f"encoder_hid_proj.{dst}"] = pb[src]
    enc_dim = pb["0.weight"].shape[1]
    cfg = dataclasses.replace(cfg, encoder_hid_dim=enc_dim)
    with torch.device("meta"):
        img = KeyframeUNet(cfg)
    unet = inflate(img, "Conv1dAttn1dBlocks").to_empty(device="cpu")
    load_strict(unet, state, f"{t2v_file} + {proj_file.name}")
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.conventions = KANDINSKY_VIDEO_11
    unet = unet.to(device=device, dtype=dtype)
    return KandinskyVideoCheckpoint(unet=unet, null_embedding=null.to(device=device, dtype=dtype),
                                    files={"t2v": str(t2v_file), "t5_projections": str(proj_file),
                                           "config": cfg_source})


__all__ = ["Conventions", "KANDINSKY3", "KANDINSKY_VIDEO_11", "load_kandinsky3", "load_kandinsky_video",
           "load_kandinsky_video_interpolation", "KandinskyVideoCheckpoint", "kandinsky_key", "load_strict",
           "read_torch_file", "CheckpointError"]


# ------------------------------------------------------------------ Kandinsky Video 1.1 interpolation UNet
# the release's interpolation-only keys -> the suite's (InterpolationUNet); checked before ``kandinsky_key``
_INTERP_TOP = [(r"^in_layer\.", "conv_in."), (r"^perturbation_to_time_embed\.1\.", "perturbation_embedding.linear_1."),
               (r"^perturbation_to_time_embed\.3\.", "perturbation_embedding.linear_2."),
               (r"^time_embed_merge$", "perturbation_merge"), (r"^skip_merge$", "skip_merge"),
               (r"^skip_embeddings\.weight$", "skip_embedding.weight")]
# applied after ``kandinsky_key`` (which has turned the block paths and attention names into the suite's)
_INTERP_TAIL = [(r"\.temporal_projection_new\.temporal_merge$", ".temporal_projection.merge"),
                (r"\.temporal_projection_new\.temporal_projection\.(weight|bias)$", r".temporal_projection.conv.\1"),
                (r"^((?:down|up)_blocks\.\d+)\.temporal_attention\.temporal_merge1$",
                 r"\1.temporal_attention_block.attention_merge"),
                (r"^((?:down|up)_blocks\.\d+)\.temporal_attention\.temporal_merge2$",
                 r"\1.temporal_attention_block.feed_forward_merge"),
                (r"^((?:down|up)_blocks\.\d+)\.temporal_attention\.", r"\1.temporal_attention_block.")]
# constructor options of the release's interpolation UNet that this model builds (the class defaults)
_INTERP_SUPPORTED = {"temporal": (True,), "use_perturbation_time_embed": (True,),
                     "merge_perturbation_time_with_diffusion_time": (True,),
                     "merge_perturbation_time_with_context": (False,), "pass_skip_frames": (True,),
                     "add_new_temporal_params": (False,), "add_temporal_attention": (True,),
                     "expansion_ratio": (4,), "compression_ratio": (2,)}


def kandinsky_interpolation_key(key: str) -> str:
    """A key of the release's interpolation UNet -> the suite's ``InterpolationUNet`` key (anchored regexes; a key
    that matches no rule comes back unchanged and is then reported as unexpected)."""
    for pat, rep in _INTERP_TOP:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    if key.startswith("image_in_layer."):     # a keyframe-model key: not part of the interpolation UNet
        return key
    key = kandinsky_key(key)
    for pat, rep in _INTERP_TAIL:
        key = re.sub(pat, rep, key)
    return key


def _interpolation_config(state: dict, kwargs: dict, source: str) -> UNetConfig:
    """The suite's config of a released interpolation UNet: widths from the tensors, options from ``kwargs``."""
    bad = [f"{k}={kwargs[k]!r}" for k, ok in _INTERP_SUPPORTED.items() if k in kwargs and kwargs[k] not in ok]
    if any(kwargs.get("time_downsample", ())):
        bad.append(f"time_downsample={kwargs['time_downsample']!r}")
    if "add_cross_attention" in kwargs and tuple(kwargs["add_cross_attention"]) != tuple(
            kwargs.get("add_self_attention", (False, True, True, True))):
        bad.append("add_cross_attention != add_self_attention")
    nb = kwargs.get("num_blocks")
    if nb is not None and len(set(nb)) != 1:
        bad.append(f"num_blocks={nb!r} (one count for every level)")
    if bad:
        raise CheckpointError(f"{source}: options not supported by InterpolationUNet: {', '.join(bad)}")
    num_channels, out_channels, E, ctx_dim, widths, n = _release_widths(state, kwargs, source, "interpolation")
    if num_channels % 5 or out_channels % 3 or num_channels // 5 != out_channels // 3:
        raise CheckpointError(f"{source}: {num_channels} input / {out_channels} output channels are not "
                              "[keyframe, 3 noisy frames, keyframe] -> 3 frames of the same latent width")
    try:
        return UNetConfig(in_channels=num_channels // 5, out_channels=out_channels // 3, block_out_channels=widths,
                          layers_per_block=n, groups=kwargs.get("groups", 32),
                          attention_head_dim=kwargs.get("head_dim", 64), time_embedding_dim=E,
                          cross_attention_dim=ctx_dim, encoder_hid_dim=ctx_dim,
                          add_attention=tuple(kwargs.get("add_self_attention", (False, True, True, True))),
                          convention="kandinsky_video", first_frame_cond=False, noise_augmentation=False,
                          motion_conditioning=False)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_kandinsky_video_interpolation(path: str | Path, unet_kwargs: dict | None = None,
                                       device: str | torch.device = "cpu",
                                       dtype: torch.dtype = torch.float32) -> KandinskyVideoCheckpoint:
    """The released Kandinsky Video 1.1 interpolation UNet (``interpolation.pt`` + ``t5_projections.pt``'s
    ``projection_base``, which the 1.1 pipeline uses for interpolation too) -> ``.unet`` (``InterpolationUNet``),
    ``.null_embedding`` (``interpolation.pt``'s own). Options: ``unet_kwargs`` or the interpolation entry of
    ``configs.json`` (a dict with ``model_channels`` under a key naming "interp"), else the class defaults.
    Strict like ``load_kandinsky_video``. Conventions: v-prediction, their guidance 0.5 (= ours 1.5)."""
    from .models.interpolation import InterpolationUNet
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Kandinsky Video folder not found: {path} (expected interpolation.pt and "
                                "t5_projections.pt under their hub names)")
    ck_file = _need(path / "interpolation.pt", "interpolation.pt")
    proj_file = _need(path / "t5_projections.pt", "t5_projections.pt")
    ck = read_torch_file(ck_file)
    if "unet" not in ck or "null_embedding" not in ck:
        raise CheckpointError(f"{ck_file} has keys {sorted(ck)[:6]}, expected 'unet' and 'null_embedding' "
                              "(the release's interpolation.pt)")
    raw, null = ck["unet"], ck["null_embedding"]
    if unet_kwargs is not None:
        kwargs, cfg_source = dict(unet_kwargs), "the unet_kwargs argument"
    elif (path / "configs.json").is_file():
        cfg_file = path / "configs.json"
        try:
            conf = json.loads(cfg_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_file} is not readable JSON ({e})") from e
        found = []

        def walk(obj, trail):
            if isinstance(obj, dict):
                if "model_channels" in obj and any("interp" in s.lower() for s in trail):
                    found.append(obj)
                for k, v in obj.items():
                    walk(v, trail + [str(k)])
        walk(conf, [])
        kwargs, cfg_source = (dict(found[0]), str(cfg_file)) if found else ({}, f"defaults ({cfg_file} has no "
                                                                                 "interpolation UNet options)")
    else:
        kwargs, cfg_source = {}, "defaults (no configs.json)"
    cfg = _interpolation_config(raw, kwargs, str(ck_file))
    state = {kandinsky_interpolation_key(k): v for k, v in raw.items()}
    proj = read_torch_file(proj_file)
    if "projection_base" not in proj:
        raise CheckpointError(f"{proj_file} has keys {sorted(proj)}, expected 'projection_base'")
    pb = proj["projection_base"]
    for src, dst in (("0.weight", "projection_linear.weight"), ("1.weight", "projection_norm.weight"),
                     ("1.bias", "projection_norm.bias")):
        if src not in pb:
            raise CheckpointError(f"{proj_file}: projection_base has no '{src}'")
        state[f"encoder_hid_proj.{dst}"] = pb[src]
    cfg = dataclasses.replace(cfg, encoder_hid_dim=pb["0.weight"].shape[1])
    with torch.device("meta"):
        unet = InterpolationUNet(cfg, skip_classes=raw["skip_embeddings.weight"].shape[0]
                                 if "skip_embeddings.weight" in raw else 20)
    unet = unet.to_empty(device="cpu")
    load_strict(unet, state, f"{ck_file} + {proj_file.name}")
    for p in unet.parameters():
        p.requires_grad_(False)
    unet.conventions = dataclasses.replace(KANDINSKY_VIDEO_11, source="Kandinsky Video 1.1 release (interpolation)",
                                           guidance_scale=0.5, prediction="v")
    unet = unet.to(device=device, dtype=dtype)
    return KandinskyVideoCheckpoint(unet=unet, null_embedding=null.to(device=device, dtype=dtype),
                                    conventions=unet.conventions,
                                    files={"interpolation": str(ck_file), "t5_projections": str(proj_file),
                                           "config": cfg_source})
