"""Configs (one dataclass per concern) and the presets ``smoke``, ``quick`` and ``paper``.

* ``smoke``: tiny, seconds; what the tests and ``--preset smoke`` run.
* ``quick``: the default CPU study (32 px, 8 keyframes, pixel space) that the README's main job runs.
* ``paper``: Kandinsky 3.0 exactly (diffusers' ``Kandinsky3UNet`` defaults: 4 levels of 384-3072 channels,
  4096-d T5 text, 3.06 B parameters) with 16 keyframes of 64x64 latents; it builds on the meta device here and
  is meant for GPUs.
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
    """Kandinsky 3.0's UNet at any size, in diffusers' ``Kandinsky3UNet`` argument names, plus the video options.

    Fixed by the architecture (as in diffusers): 4 levels are the published model, but any number >= 1 builds;
    no mid block; ResNet blocks 1-3-3-1 with hidden width max(in, out) / 2; feed-forward expansion 4;
    self- and cross-attention at every level but the first (``add_attention``, diffusers' hard-coded tuple, whose
    up-path use is the reversed tuple's first N entries: diffusers' quirk, copied so that 2-level test configs match).
    """
    in_channels: int = 4               # channels of x (3 = pixels, 4 = MoVQ latents)
    out_channels: int = 0              # 0 = in_channels (diffusers: always equal)
    block_out_channels: tuple = (384, 768, 1536, 3072)
    layers_per_block: int = 3
    groups: int = 32                   # GroupNorm groups (must divide every normalised width)
    attention_head_dim: int = 64
    time_embedding_dim: int = 1536
    cross_attention_dim: int = 4096    # width of the projected text tokens
    encoder_hid_dim: int = 4096        # width of the raw text tokens (T5 d_model); the projection is in the UNet
    add_attention: tuple = (False, True, True, True)
    # whose code the checkpoint follows: sinusoid rounding, and whether padded tokens are zeroed after the text
    # projection ("kandinsky_video") or before it, by the pipeline ("diffusers"); see models/unet.py
    convention: str = "diffusers"
    variant: str = "Spatial"           # set by inflate()
    first_frame_cond: bool = True      # Kandinsky Video 1.1: first-frame latent + mask concatenated on channels
    noise_augmentation: bool = True    # KV 1.1: the first frame's noise level embedded into the temporal condition
    motion_conditioning: bool = True   # KV 1.1: the motion score embedded into the temporal condition
    checkpointing: bool = False        # gradient checkpointing per block (use_reentrant=False)

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.add_attention = tuple(bool(a) for a in self.add_attention)
        if not self.out_channels:
            self.out_channels = self.in_channels
        problems = []
        if not self.block_out_channels or min(self.block_out_channels) < 2 or self.block_out_channels[0] < 4:
            problems.append(f"block_out_channels must be >= 2 each and the first >= 4 (the input conv has half of "
                            f"it), got {self.block_out_channels}")
        if len(self.add_attention) < len(self.block_out_channels):
            problems.append(f"add_attention needs one flag per level ({len(self.block_out_channels)}), "
                            f"got {self.add_attention}")
        for name in ("in_channels", "layers_per_block", "groups", "attention_head_dim", "time_embedding_dim",
                     "cross_attention_dim", "encoder_hid_dim"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.convention not in ("diffusers", "kandinsky_video"):
            problems.append(f"convention must be 'diffusers' or 'kandinsky_video', got {self.convention!r}")
        if self.layers_per_block < 2:
            problems.append(f"layers_per_block must be >= 2 (Kandinsky 3.0's up blocks change width in their last "
                            f"ResNet), got {self.layers_per_block}")
        if problems:
            raise ValueError("; ".join(problems))
        bad = sorted({c for c in self.normalised_widths() if c % self.groups})
        if bad:
            raise ValueError(f"groups={self.groups} does not divide the normalised widths {bad} of "
                             f"block_out_channels={self.block_out_channels}; choose groups that divide them")
        attn = sorted({c for c in self.attention_widths() + [self.time_embedding_dim] if c % self.attention_head_dim})
        if attn:
            raise ValueError(f"attention_head_dim={self.attention_head_dim} does not divide the attention widths "
                             f"{attn} (block widths with attention, time_embedding_dim)")

    @property
    def text_dim(self) -> int:
        """Width of the (raw) text tokens the UNet takes."""
        return self.encoder_hid_dim

    @property
    def init_channels(self) -> int:
        return self.block_out_channels[0] // 2

    def down_attention(self) -> tuple:
        return self.add_attention[: len(self.block_out_channels)]

    def up_attention(self) -> tuple:
        return tuple(reversed(self.add_attention))[: len(self.block_out_channels)]

    def normalised_widths(self) -> list[int]:
        """Every width that a GroupNorm sees in the spatial model (ResNet ins, hidden, outs; attention widths)."""
        dims = [self.init_channels, *self.block_out_channels]
        ws = [self.init_channels]
        cats = self.block_out_channels[:-1]
        for cin, cout in zip(dims[:-1], dims[1:]):
            ws += [cin, cout, max(cin, cout) // 2, cout // 2]
        for lvl, (cout, cin) in enumerate(zip(reversed(dims[:-1]), reversed(dims[1:]))):
            cat = cats[-lvl] if lvl else 0
            ws += [cin + cat, (cin + cat) // 2, cin, cin // 2, cout, max(cin, cout) // 2]
        return ws

    def attention_widths(self) -> list[int]:
        dims = [self.init_channels, *self.block_out_channels]
        ws = []
        for lvl, a in enumerate(self.down_attention()):
            if a:
                ws += [dims[lvl], dims[lvl + 1]]
        cats = [0, *reversed(self.block_out_channels[:-1])]
        for lvl, a in enumerate(self.up_attention()):
            if a:
                ws += [dims[len(dims) - 2 - lvl], dims[len(dims) - 1 - lvl], dims[len(dims) - 1 - lvl] + cats[lvl]]
        return ws


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
        # diffusers' own tiny Kandinsky3UNet test shape: 2 levels (its attention quirk puts attention in both up
        # blocks), the cheapest config that still has every block type, for the tests' end-to-end runs
        unet=UNetConfig(in_channels=3, block_out_channels=(16, 32), layers_per_block=2, groups=4,
                        attention_head_dim=8, time_embedding_dim=64, cross_attention_dim=32, encoder_hid_dim=32),
        text=TextConfig(dim=32, layers=1, heads=2, max_len=24),
        diffusion=DiffusionConfig(sample_steps=8),
        train=TrainConfig(image_steps=80, video_steps=24, batch_size=8, video_batch_size=2, log_every=20,
                          ckpt_every=50),
        eval=EvalConfig(evaluator_preset="smoke", bootstrap=200, motion_control_prompts=6),
        data=dict(n_train=48, n_test=12, seed=0),
        frames=4, size=16)
    quick = Preset(
        name="quick",
        # a small Kandinsky 3.0: 4 levels (32, 16, 8, 4 px), attention at levels 1-3, 2 layers per block
        unet=UNetConfig(in_channels=3, block_out_channels=(16, 32, 64, 64), layers_per_block=2, groups=4,
                        attention_head_dim=16, time_embedding_dim=128, cross_attention_dim=64, encoder_hid_dim=64),
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
        unet=UNetConfig(),            # Kandinsky 3.0 exactly: diffusers' Kandinsky3UNet defaults
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
