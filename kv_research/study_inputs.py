"""The parts a study is made of, resolved once: codec, text encoder, initial UNet, training data, prompts, the
reference videos and the detectors. Each part is independent and has an offline default:

| part          | default (CPU, embedded)                  | real (flags of ``experiments/ablate_blocks.py``)       |
|---------------|------------------------------------------|--------------------------------------------------------|
| codec         | pixels (x -> 2x - 1)                     | ``--codec DIR`` (Kandinsky 3.0 MoVQ) or the release's ``movq.pt`` |
| text encoder  | hashed words, trained with the UNet      | ``--text-encoder DIR`` (T5; features cached on disk)    |
| initial UNet  | trained here (text-to-image pretraining) | ``--init-kandinsky3 DIR`` (pretraining skipped)         |
| training data | the synthetic benchmark's train split    | ``--data CSV|DIR`` (captioned videos, UCF-101 layout)   |
| prompts       | the synthetic test split                 | ``--prompts ucf101|FILE``                               |
| reference     | synthetic train clips (FVD-syn)          | ``--reference DIR|CSV`` (default: the training videos)  |
| metrics       | FVD-syn, CLIPSIM-syn, attr acc, motion   | FVD (I3D), CLIPSIM (ViT-B/32), motion (RAFT)            |

Why one place: the study's stages (pretrain, inflate, fine-tune, generate, evaluate, tabulate) are the same for
every combination, so ``ablation.run_ablation`` runs them on a ``StudyInputs`` and never asks where it came from.
Real inputs are prepared in resumable, rank-sharded stages (latents and labels, then text features), and clips
that cannot be used are skipped and counted, never fatal.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

REAL_METRICS = ("fvd", "clipsim", "motion")
SYNTHETIC_METRICS = ("fvd_syn", "clipsim_syn", "attr_acc", "motion")


@dataclass
class StudyInputs:
    image: Any                        # KeyframePipeline: the text-to-image model (trained below when ``pretrain``)
    pretrain: bool
    data: Any                         # TrainData | LatentTrainData
    labels: np.ndarray | None         # motion labels of the training clips (motion-control quantiles); None: deferred
    prompts: pd.DataFrame
    reference: Any                    # (M, 3, T, H, W) real videos in [0, 1] for FVD / FVD-syn
    metrics: tuple
    size: int                         # latent size the UNet generates at
    untrained: Callable[[], Any]      # builds the floor row's pipeline
    untrained_note: str
    real_videos: torch.Tensor | None = None     # the "Real clips" row (synthetic benchmark only)
    data_cfg: Any = None              # SyntheticConfig when the data or the evaluators are synthetic
    detectors: dict = field(default_factory=dict)   # i3d / clip extractors for the real metrics
    notes: dict = field(default_factory=dict)       # what the table states about its inputs


# --------------------------------------------------------------------------------------------- pieces
def study_metrics(cfg) -> tuple:
    if cfg.metrics:
        return tuple(cfg.metrics)
    return REAL_METRICS if cfg.data else SYNTHETIC_METRICS


def load_detectors(cfg, metrics, frames: int) -> dict:
    """I3D (FVD) and CLIP ViT-B/32 (CLIPSIM) from ``cfg.i3d`` / ``cfg.clip`` or ``$KV_WEIGHTS_DIR``; missing
    files raise ``MissingWeightsError`` naming them, before any work."""
    out = {}
    if "fvd" in metrics:
        from .metrics.fvd import FVDProtocol, load_i3d
        # StyleGAN-V's protocol takes 16 frames; shorter keyframe clips are resampled to 16, and the table says so
        proto = FVDProtocol(short_clips="repeat") if frames < 16 else FVDProtocol()
        out["i3d"] = load_i3d(cfg.i3d, device=cfg.device, protocol=proto)
    if "clipsim" in metrics:
        from .metrics.clipsim import load_clip_vitb32
        out["clip"] = load_clip_vitb32(cfg.clip, device=cfg.device)
    return out


def text_encoder_for(cfg, out: Path, captions: list[str], dist) -> torch.nn.Module:
    """The T5 encoder as a feature cache: features of every caption and prompt are computed once (sharded over
    ranks), then served from disk, so the encoder never sits beside the UNet during training or generation."""
    from .models.text import CachedTextEncoder, T5TextEncoder, TextFeatureCache
    folder = out / "text_features"
    ident = T5TextEncoder.identity_for(cfg.text_encoder)
    cache = TextFeatureCache(folder, identity=ident) if dist.main or (folder / "cache.json").is_file() else None
    dist.barrier()
    cache = cache or TextFeatureCache(folder, identity=ident)
    missing = [c for c in dict.fromkeys(captions) if c not in cache]
    mine = missing[dist.rank::dist.world]
    if mine:
        cache.encoder = T5TextEncoder(cfg.text_encoder, device=cfg.device)
        cache.precompute(mine, progress=cfg.progress)
        cache.encoder = None          # free the (8.7 B-parameter) encoder before the UNet is built
    dist.barrier()
    return CachedTextEncoder(cache)


def requested_motion(prompts: pd.DataFrame, labels: np.ndarray, quantiles=(0.1, 0.5, 0.9)) -> pd.DataFrame:
    """A prompt set without requested motion gets one: the training labels' 10/50/90 % quantiles, cycled over the
    prompts in order, so that requested-vs-measured motion is defined for any prompt set."""
    if "motion" in prompts.columns:
        return prompts
    levels = np.quantile(np.asarray(labels, dtype=np.float64), quantiles)
    out = prompts.copy()
    out["motion"] = [float(levels[i % len(levels)]) for i in range(len(out))]
    return out


def read_reference(source, frames: int, fps: float, size: int, n: int, progress: bool = True, seed: int = 0):
    """Up to ``n`` real videos for FVD: each clip's first ``frames`` keyframes at ``fps`` (the generated videos'
    own frame rate), ``size`` px centre crops. Unusable clips are skipped and returned with their reasons."""
    from tqdm.auto import tqdm

    from .data.real import CAPTIONS_CSV, list_captioned_videos
    from .data.video import VIDEO_EXTENSIONS, VideoDecodeError, read_video
    src = Path(source)
    flat = (sorted(f for f in src.iterdir() if f.suffix.lower() in VIDEO_EXTENSIONS)
            if src.is_dir() and not (src / CAPTIONS_CSV).is_file() else [])
    if flat:      # a plain folder of videos (no captions needed for a reference set)
        entries, skipped = [(str(f), None, None) for f in flat], []
    else:
        clips = list_captioned_videos(source)
        entries, skipped = [(c.path, c.start, c.end) for c in clips], list(clips.skipped)
    videos = []
    for path, start, end in tqdm(entries, desc="reference videos", disable=not progress):
        if len(videos) >= n:
            break
        try:
            videos.append(read_video(path, num_frames=frames, fps=fps, size=size, start=start, end=end))
        except VideoDecodeError as e:
            skipped.append((str(path), e.reason))
    if len(videos) < 2:
        raise ValueError(f"reference {source}: {len(videos)} usable videos of {frames} keyframes at {fps} fps "
                         f"(FVD needs at least 2); skipped: {skipped[:3]}")
    return torch.stack(videos), skipped


# --------------------------------------------------------------------------------------------- synthetic
def synthetic_data(cfg, p, out: Path, dist, labels: bool = True):
    """The embedded benchmark: train clips in memory (pixels) and their RAFT motion labels.

    ``labels=False`` leaves the labels for later (``attach_synthetic_labels``): the motion column is NaN, which
    text-to-image pretraining never reads and which any video loss would turn into a NaN loss at once."""
    from .data.synthetic import build_benchmark, make_clip
    from .train import TrainData
    data_cfg = p.synthetic_config()
    if dist.main:
        build_benchmark(out / "benchmark", data_cfg)
    dist.barrier()
    train_clips = [make_clip(i, data_cfg, "train") for i in range(data_cfg.n_train)]
    clips = torch.stack([c.video for c in train_clips])
    values = synthetic_labels(cfg, p) if labels else None
    motion = (torch.as_tensor(values, dtype=torch.float32) if labels
              else torch.full((len(train_clips),), float("nan")))
    return TrainData(clips, [c.caption for c in train_clips], motion), values


def synthetic_labels(cfg, p):
    """RAFT motion labels of the synthetic train split (cached per clip: a second call reads them back)."""
    from .metrics.motion import MotionLabelCache
    return MotionLabelCache(device=cfg.device).label_synthetic(p.synthetic_config(), "train", progress=cfg.progress)


def attach_synthetic_labels(inputs: "StudyInputs", cfg, p) -> "StudyInputs":
    """Fill in the labels that ``prepare_inputs(labels=False)`` left out (read from the label cache when another
    process has computed them meanwhile)."""
    values = synthetic_labels(cfg, p)
    inputs.data.motion = torch.as_tensor(values, dtype=torch.float32)
    inputs.labels = np.asarray(values)
    return inputs


def synthetic_reference(data, data_cfg, n: int):
    from .data.synthetic import make_clip
    clips = data.clips
    extra = range(len(clips), n)   # the train clips already rendered, then more of the split
    return torch.cat([clips[:n]] + ([torch.stack([make_clip(i, data_cfg, "train").video for i in extra])]
                                    if len(extra) else []))


# --------------------------------------------------------------------------------------------- real data
def real_data(cfg, p, out: Path, codec, dist):
    """Captioned videos -> cached keyframe latents and per-window motion labels (resumable, rank-sharded)."""
    from .data.real import KeyframeConfig, build_latent_cache, list_captioned_videos, open_latent_cache
    from .train import LatentTrainData
    clips = list_captioned_videos(cfg.data)
    kcfg = KeyframeConfig(frames=p.frames, fps=cfg.fps, size=p.size * codec.scale_factor)
    folder = out / "latents"
    build_latent_cache(clips, codec, folder, kcfg, rank=dist.rank, world=dist.world, progress=cfg.progress,
                       device=cfg.device)
    dist.barrier()
    latents = open_latent_cache(folder)
    if latents.n_skipped:
        log.warning("%d of %d clips skipped (listed in %s)", latents.n_skipped, latents.n_skipped + len(latents),
                    folder / "skipped.csv")
    data = LatentTrainData(latents, p.frames)
    labels = np.asarray(latents.motion_labels(p.frames), dtype=np.float64)
    return data, labels, latents


# --------------------------------------------------------------------------------------------- assembly
def image_pipeline(cfg, p, codec, text_encoder):
    """The text-to-image model: Kandinsky 3.0 from ``--init-kandinsky3`` (its conventions and schedule), or a
    fresh UNet of the preset sized to the codec's channels and the text encoder's width."""
    from .models.unet import KeyframeUNet
    from .pipeline import KeyframePipeline
    text_dim = getattr(text_encoder, "dim", None)
    if cfg.init_kandinsky3:
        from .loaders import load_kandinsky3
        unet = load_kandinsky3(cfg.init_kandinsky3, device=cfg.device)
        if unet.config.in_channels != codec.latent_channels:
            raise ValueError(f"{cfg.init_kandinsky3}: the UNet takes {unet.config.in_channels}-channel latents but "
                             f"the codec ({codec.name}) gives {codec.latent_channels}; pass --codec with its MoVQ")
        if text_encoder is None or text_dim != unet.config.encoder_hid_dim:
            raise ValueError(f"{cfg.init_kandinsky3}: the UNet takes {unet.config.encoder_hid_dim}-d text tokens, "
                             f"the text encoder gives {text_dim}-d; pass --text-encoder with its T5")
        # the widths are the checkpoint's; the video options and checkpointing are the study's (--set unet.*)
        unet.config = dataclasses.replace(unet.config, **{k: getattr(p.unet, k) for k in (
            "first_frame_cond", "noise_augmentation", "motion_conditioning", "checkpointing")})
        conv = unet.conventions
        diff = dataclasses.replace(p.diffusion, zero_terminal_snr=conv.zero_terminal_snr, prediction=conv.prediction)
        return KeyframePipeline(unet, text_encoder, diff, codec=codec), False
    ucfg = dataclasses.replace(p.unet, variant="Spatial", in_channels=codec.latent_channels,
                               out_channels=codec.latent_channels,
                               encoder_hid_dim=text_dim or p.unet.encoder_hid_dim)
    unet = KeyframeUNet(ucfg)
    if text_encoder is None:     # the hashed-word encoder, after the UNet (the order the seed has always drawn in)
        from .models.text import TextEncoder
        text_encoder = TextEncoder(p.text)
    return KeyframePipeline(unet, text_encoder, p.diffusion, codec=codec), True


def prepare_inputs(cfg, p, out: Path, dist, stage, labels: bool = True) -> StudyInputs:
    """Resolve every part of the study (``cfg``: an ``AblationConfig``; ``p``: its resolved preset): the offline
    default of each, or the real one given. ``stage(name)`` times a stage (a context manager).

    ``labels=False`` (the synthetic benchmark only, and only where prompts carry their own motion) defers the
    training clips' motion labels: ``inputs.labels`` is None until ``attach_synthetic_labels``."""
    if not labels and (cfg.data or cfg.prompts):
        raise ValueError("motion labels can be deferred for the synthetic benchmark and its own prompts only")
    from .data.synthetic import load_prompts, make_clip
    from .models.codec import load_codec
    from .prompt_sets import describe_prompt_set, load_prompt_set

    metrics = study_metrics(cfg)
    codec = load_codec(cfg.codec, device=cfg.device)      # encodes the training clips (latent cache)
    notes: dict = {"prompt_set": describe_prompt_set(cfg.prompts, cfg.prompt_limit, cfg.samples_per_prompt)}
    data_cfg = p.synthetic_config()
    real_videos = None
    with stage("benchmark" if not cfg.data else "latents"):
        if cfg.data:
            data, label_values, latents = real_data(cfg, p, out, codec, dist)
            notes["training_data"] = {"source": cfg.data, "clips": len(latents), "skipped": latents.n_skipped,
                                      "fps": cfg.fps, "skipped_list": str(out / "latents" / "skipped.csv")}
        else:
            data, label_values = synthetic_data(cfg, p, out, dist, labels=labels)
    if cfg.prompts:
        prompts = load_prompt_set(cfg.prompts, cfg.prompt_limit)
        if "motion" not in prompts.columns:
            prompts = requested_motion(prompts, label_values)
            notes["requested_motion"] = "training labels' 10/50/90 % quantiles, cycled over the prompts"
    else:
        prompts = load_prompts(out / "benchmark" / "test.csv")
        if cfg.prompt_limit:
            prompts = prompts.head(cfg.prompt_limit).reset_index(drop=True)
    if cfg.text_encoder:
        with stage("text features"):
            captions = list(data.captions) + list(prompts.prompt) + [""]
            text_encoder = text_encoder_for(cfg, out, captions, dist)
    else:
        text_encoder = None        # the hashed-word encoder, built after the UNet from the same seed
    if cfg.decoder:        # generated clips are decoded in temporal windows (Table 3); encoding stays per frame
        codec = codec.with_video_decoder(cfg.decoder)
    torch.manual_seed(cfg.seed)
    image, pretrain = image_pipeline(cfg, p, codec, text_encoder)
    size = p.size

    # the reference videos of FVD / FVD-syn, and the "Real clips" row (synthetic benchmark only)
    if "fvd" in metrics:
        with stage("reference videos"):
            reference, skipped = read_reference(cfg.reference or cfg.data, p.frames, cfg.fps,
                                                size * codec.scale_factor, cfg.n_reference, cfg.progress)
        notes["reference"] = {"source": cfg.reference or cfg.data, "videos": len(reference),
                              "skipped": len(skipped), "fps": cfg.fps}
    else:
        reference = synthetic_reference(data, data_cfg, cfg.n_reference) if not cfg.data else None
    if not cfg.prompts and not cfg.data and codec.scale_factor == 1:
        real_videos = torch.stack([make_clip(i, data_cfg, "test").video for i in range(len(prompts))])
        real_videos = real_videos.repeat_interleave(cfg.samples_per_prompt, 0)

    def untrained():
        from .models.unet import KeyframeUNet
        from .pipeline import KeyframePipeline
        torch.manual_seed(cfg.seed + 1)
        if pretrain and not cfg.text_encoder and not cfg.codec:   # the suite's own models: as before real parts
            return KeyframePipeline.from_preset(p, "Conv1dAttn1dBlocks")
        fresh = KeyframePipeline(KeyframeUNet(dataclasses.replace(image.unet.config, variant="Spatial")),
                                 image.text_encoder, image.diffusion_cfg, image.null_embedding, image.codec)
        fresh.unet.conventions = getattr(image.unet, "conventions", None)
        return fresh.inflated("Conv1dAttn1dBlocks")
    detectors = load_detectors(cfg, metrics, p.frames) if {"fvd", "clipsim"} & set(metrics) else {}
    return StudyInputs(image=image, pretrain=pretrain, data=data,
                       labels=None if label_values is None else np.asarray(label_values), prompts=prompts,
                       reference=reference, metrics=metrics, size=size, untrained=untrained,
                       untrained_note="random-init Conv1dAttn1dBlocks of the same widths, never trained",
                       real_videos=real_videos, data_cfg=data_cfg, detectors=detectors, notes=notes)
