"""Configs (one dataclass per concern) and the presets ``smoke``, ``quick`` and ``paper``.

* ``smoke``: tiny, seconds; what the tests and ``--preset smoke`` run.
* ``quick``: the default CPU study (32 px, 8 keyframes, pixel space) that the README's main job runs.
* ``paper``: the published Kandinsky 3.0 / Video 1.0 widths (384 base channels, 4 levels, 4096-d text, 16
  keyframes of 64x64 latents); it only needs to build on the meta device here and is meant for GPUs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field



@dataclass
class TextConfig:
    vocab_buckets: int = 4096
    dim: int = 64
    layers: int = 2
    heads: int = 4
    max_len: int = 32


@dataclass
class UNetConfig:
    in_channels: int = 3               # channels of x (3 = pixels, 4 = MoVQ latents)
    out_channels: int = 3
    model_channels: int = 32
    channel_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1            # spatial ResNet blocks per level on the way down
    attention_levels: tuple = (1, 2)   # levels with self- and cross-attention (and temporal attention)
    head_dim: int = 16
    groups: int = 8                    # GroupNorm groups
    text_dim: int = 64                 # width of the text tokens the UNet attends to
    time_embed_dim: int = 128
    variant: str = "Spatial"           # set by inflate()
    first_frame_cond: bool = True      # Kandinsky Video 1.1: first-frame latent + mask concatenated on channels
    checkpointing: bool = False        # gradient checkpointing per block (use_reentrant=False)

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(self.channel_mult) - 1}")


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000
    schedule: str = "cosine"           # alpha_bar = cos^2(((t/T) + s) / (1 + s) * pi / 2)
    zero_terminal_snr: bool = True     # Lin et al. 2023 rescale, as diffusers' rescale_betas_zero_snr in KV 1.1
    prediction: str = "v"              # "eps" | "v"
    sampler: str = "ddim"              # "ddim" | "ddpm"
    sample_steps: int = 25
    eta: float = 0.0                   # DDIM stochasticity
    guidance_text: float = 3.0         # w_T
    guidance_image: float = 1.5        # w_I (three-way guidance with the first frame)
    threshold_ratio: float = 0.995     # dynamic thresholding quantile (0 disables)
    noise_aug_level: int = 20          # timestep index used to noise the first frame at inference (KV 1.1: 20)
    noise_aug_max: int = 250           # training draws the level uniformly from [0, noise_aug_max]
    p_uncond_text: float = 0.1         # classifier-free guidance dropout during training
    p_uncond_image: float = 0.1


@dataclass
class TrainConfig:
    image_steps: int = 1500
    video_steps: int = 600
    batch_size: int = 16               # images per pretraining step
    video_batch_size: int = 4          # clips per fine-tuning step
    lr: float = 2e-3
    video_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_power: float = 0.75            # EMA warm-up: decay = 1 - (1 + step / inv_gamma) ** -power
    ema_max_decay: float = 0.999
    log_every: int = 50
    ckpt_every: int = 200
    train_spatial: bool = False        # paper: spatial weights frozen
    seed: int = 0
    num_threads: int = 0               # 0 = torch default


@dataclass
class EvalConfig:
    samples_per_prompt: int = 1
    batch_size: int = 16
    evaluator_preset: str = "quick"
    bootstrap: int = 1000
    ci: float = 0.95
    # paired motion-control test: the first N test prompts generated a second time (same seed and first frame)
    # with the requested motion moved to the other end of the training labels (quantiles below); 0 = off
    motion_control_prompts: int = 32
    motion_control_quantiles: tuple = (0.1, 0.9)

    def __post_init__(self):
        self.motion_control_quantiles = tuple(self.motion_control_quantiles)


@dataclass
class Preset:
    name: str
    unet: UNetConfig
    text: TextConfig
    diffusion: DiffusionConfig
    train: TrainConfig
    eval: EvalConfig
    data: dict = field(default_factory=dict)   # SyntheticConfig fields (kept as a dict: the data module owns the type)
    frames: int = 8
    size: int = 32

    def synthetic_config(self):
        from .data.synthetic import SyntheticConfig
        return SyntheticConfig(**{**self.data, "size": self.size, "frames": self.frames})


def _presets() -> dict[str, Preset]:
    smoke = Preset(
        name="smoke",
        unet=UNetConfig(model_channels=16, channel_mult=(1, 2), attention_levels=(1,), head_dim=8, groups=4,
                        text_dim=32, time_embed_dim=64),
        text=TextConfig(dim=32, layers=1, heads=2, max_len=24),
        diffusion=DiffusionConfig(sample_steps=8),
        train=TrainConfig(image_steps=80, video_steps=24, batch_size=8, video_batch_size=2, log_every=20,
                          ckpt_every=50),
        eval=EvalConfig(evaluator_preset="smoke", bootstrap=200, motion_control_prompts=6),
        data=dict(n_train=48, n_test=12, seed=0),
        frames=4, size=16)
    quick = Preset(
        name="quick",
        unet=UNetConfig(model_channels=16, channel_mult=(1, 2, 4)),
        text=TextConfig(),
        diffusion=DiffusionConfig(sample_steps=8, guidance_text=3.0, guidance_image=1.0),
        # video: 250 steps of 2 clips, not 125 of 4: at equal cost, twice the updates of the zero-initialised
        # temporal modules gave clearly steadier videos (experiments/motion_probe.py, results/motion_probe.md)
        train=TrainConfig(image_steps=500, video_steps=250, batch_size=16, video_batch_size=2),
        eval=EvalConfig(motion_control_prompts=16),
        data=dict(n_train=256, n_test=32, seed=0),
        frames=8, size=32)
    paper = Preset(
        name="paper",
        unet=UNetConfig(in_channels=4, out_channels=4, model_channels=384, channel_mult=(1, 2, 4, 8),
                        num_res_blocks=3, attention_levels=(1, 2, 3), head_dim=64, groups=32, text_dim=4096,
                        time_embed_dim=1536),
        text=TextConfig(dim=4096, layers=2, heads=32, max_len=128),
        diffusion=DiffusionConfig(prediction="eps", sampler="ddpm", sample_steps=50, guidance_text=5.0,
                                  guidance_image=3.0),
        train=TrainConfig(image_steps=0, video_steps=100_000, batch_size=1, video_batch_size=1, lr=1e-4,
                          video_lr=1e-4),
        eval=EvalConfig(samples_per_prompt=1, batch_size=4),
        data=dict(n_train=120_000, n_test=2048, seed=0),
        frames=16, size=64)
    return {p.name: p for p in (smoke, quick, paper)}


PRESETS = _presets()


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])  # shallow copy: callers may replace fields


def config_from_dict(cls, d: dict):
    """Rebuild a config dataclass from JSON, failing with the unknown keys named."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)
