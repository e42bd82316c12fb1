"""The paper's Table 2 at CPU scale: FusionFrames interpolation against masked frame interpolation (MFI), both
inflated from one text-to-image UNet, trained at the same budget and run on the same keyframes.

Run folder (self-describing; every stage skips what is already complete, so a killed run resumes to the same
table; a folder that holds a run with another configuration is refused before any work)::

    OUT/run.json                      resolved config + hash, stage timings per invocation, protocol, detectors
    OUT/image/                        text-to-image pretraining (stats.jsonl, config.json, checkpoints/)
    OUT/keyframe/                     the keyframe model (Conv1dAttn1dBlocks), fine-tuned from the image model
    OUT/rows/{FusionFrames,MFI}/      interpolation training runs (same steps, batch, windows and seed)
    OUT/keyframes.safetensors         the generated keyframes both methods interpolate (and the real ones' seeds)
    OUT/generation/<set>_<k>.safetensors   batch k of a set: both methods' videos and their wall-clock seconds
    OUT/per_clip.csv, OUT/summary.json
    OUT/interpolation.{csv,md,tex}, OUT/interpolation.png (frames of both methods beside the truth)

Protocol (why):

* Data: the synthetic benchmark re-rendered at ``rate`` = 16 x its frame rate (``data.interpolation.fine_clip``):
  keyframe j of a clip is fine frame 16 j, and the 15 frames between are known exactly. Two passes of T -> 4T - 3
  turn K keyframes into 16 (K - 1) + 1 frames, the paper's 2 -> 8 -> 30 fps. Training windows have 4G + 1 frames
  at a random stride s in ``strides`` (the skip-frame label); pass 1 then runs at s = rate / 4, pass 2 at s = 1.
* Equal budget: both models start from the same EMA weights of the image model and train with the same steps,
  batch size, learning rate, windows and noise (the trainer seeds step k's batch by (seed, k)). MFI does ~4x the
  UNet work per step (every frame is an item); the budget is counted in steps, as the paper's comparison is.
* Two keyframe sources, as the issue asks: ``real`` = the true keyframes of test clips (PSNR / SSIM of the
  in-between frames against the truth are defined) and ``generated`` = keyframes of the keyframe model for the
  test prompts (the paper's Table 2 setting; FVD-syn and motion only).
* Wall-clock: generation runs batch by batch, FusionFrames then MFI on the same keyframes, in one process, so
  both see the same machine load; the ratio is of the summed seconds. FLOPs: ``FlopCounterMode`` on one video.
* FVD-syn: the suite's synthetic video net on windows of ``fvd_window`` consecutive full-rate frames every
  ``fvd_hop`` frames; the reference is the true full-rate clips (paired with the real-keyframe set: the same
  clips resampled together in the bootstrap, which runs over clips, not windows). The net was trained on
  base-rate clips: at full rate it sees slow motion, so FVD-syn here mostly weighs appearance and sharpness.
* Linear blend: every in-between frame the cross-fade of its two keyframes (weights by position), no model. Why:
  it shows whether a learned method has learned to interpolate at all at this budget (the synthetic objects move
  little between keyframes, so a blend is a strong baseline for PSNR, a weak one for sharpness and motion).
* Held-out denoising loss by position: the v-prediction loss of each method on windows of test clips at fixed
  steps t, split by a frame's position in its gap (1st, 2nd, 3rd frame after the left keyframe). Why: FusionFrames
  starts as three copies of the image model's prediction *for the first noisy frame* (replicated output conv), so
  the 2nd and 3rd frames' own noise is unreadable at initialisation; this column shows how far training got.
* Motion consistency (RAFT): the warping error of a video under its own flow (``metrics.reconstruction``: forward-
  backward checked pixels, 8-bit levels; lower = frames that follow their own motion), and the RAFT motion (mean
  flow magnitude per frame pair, px). The truth's values are given for reference.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from tqdm.auto import tqdm

from .metrics.reconstruction import frame_metrics, original_flows, summarise, valid_mask, warp
from .utils import atomic_write_bytes, atomic_write_json, atomic_write_text, config_hash, to_jsonable

METHODS = ("FusionFrames", "MFI")        # the paper's Table 2 rows, in its order reversed: ours first
BLEND = "Linear blend"                   # learning-free reference: each in-between frame a cross-fade of its keyframes
TRUTH = "Truth"                          # the true full-rate clips: reference values of the motion columns
ROWS = (*METHODS, BLEND, TRUTH)
SETS = ("real", "generated")
PAPER_TABLE2 = [   # UCF-101, 2 interpolation passes (30 fps), keyframes of the 220k Conv1dAttn1dBlocks model
    {"Method": "Masked Frame Interpolation", "IS": 23.371, "FVD": 550.932},
    {"Method": "FusionFrames Interpolation", "IS": 24.325, "FVD": 433.054},
]
PAPER_SOURCE = "FusionFrames (arXiv 2311.13073v2) Table 2: UCF-101, 2048 videos of generated keyframes, 30 fps"
PER_CLIP = ("psnr", "ssim", "warp_error", "motion")


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class DataConfig:
    keyframes: int = 5              # keyframes per evaluated video (-> 16 (K - 1) + 1 frames)
    rate: int = 16                  # full rate / keyframe rate: two passes of x4
    train_frames: int = 8           # base-rate frames of a training clip (fine clips: (train_frames - 1) rate + 1)
    n_train: int = 128              # training clips (fine rate, held in memory)
    n_real: int = 10                # test clips whose true keyframes are interpolated
    n_generated: int = 6            # test prompts whose generated keyframes are interpolated
    seed: int = 0


@dataclass
class TrainConfig:
    image_steps: int = 500          # text-to-image pretraining (batch: the preset's)
    keyframe_steps: int = 250       # keyframe model (K-frame base-rate clips, batch: the preset's)
    steps: int = 300                # each interpolation model
    batch: int = 2
    lr: float = 1e-3
    groups: int = 4                 # G: windows of 4G + 1 frames
    strides: tuple = (1, 2, 3, 4)   # random skip (the label s); must hold rate / 4 and 1
    log_every: int = 50
    ckpt_every: int = 100

    def __post_init__(self):
        self.strides = tuple(int(s) for s in self.strides)


@dataclass
class EvalConfig:
    steps: int = 8                  # sampling steps of each pass
    guidance: float = 0.25          # context guidance w (paper)
    batch: int = 2                  # videos per generation batch
    fvd_window: int = 8
    fvd_hop: int = 4
    raft_work_size: int = 128       # RAFT-small needs >= 128 px
    raft_updates: int = 6
    bootstrap: int = 1000
    fvd_bootstrap: int = 200
    ci: float = 0.95
    evaluator_preset: str = "quick"
    figure_frames: int = 17         # frames 0..16: the first keyframe gap


@dataclass
class InterpolationStudyConfig:
    preset: str = "quick"           # model widths, text encoder, diffusion schedule (kv_research.config)
    out: str = "results/interpolation"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mfi_variant: str = "Conv1dAttn1dBlocks"
    seed: int = 0
    threads: int = 0                # torch CPU threads (0 = torch's default)
    progress: bool = True


SECTIONS = ("data", "train", "eval")


def preset_config(name: str = "quick", **fields) -> InterpolationStudyConfig:
    """``quick``: the CPU study (under 30 min on 2 cores); ``smoke``: tiny widths and steps, for the tests."""
    if name == "quick":
        cfg = InterpolationStudyConfig(preset="quick")
    elif name == "smoke":
        cfg = InterpolationStudyConfig(
            preset="smoke",
            data=DataConfig(keyframes=3, train_frames=3, n_train=8, n_real=3, n_generated=2),
            train=TrainConfig(image_steps=30, keyframe_steps=6, steps=6, batch=2, groups=2, strides=(1, 4),
                              log_every=3, ckpt_every=4),
            eval=EvalConfig(steps=2, batch=2, bootstrap=100, fvd_bootstrap=20, raft_updates=2,
                            evaluator_preset="smoke", figure_frames=9))
    else:
        raise KeyError(f"unknown preset {name!r}; choose smoke or quick")
    return dataclasses.replace(cfg, **fields)


def apply_overrides(cfg: InterpolationStudyConfig, overrides: dict) -> InterpolationStudyConfig:
    """``{"train.steps": 50, ...}`` -> a new config; unknown sections or fields, or values of another type, raise."""
    from .ablation import _checked
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"--set {key}: use section.field with section in {', '.join(SECTIONS)}")
        sub = getattr(cfg, section)
        types = {f.name: f.type for f in dataclasses.fields(sub)}
        if name not in types:
            raise ValueError(f"--set {key}: {type(sub).__name__} has no field '{name}'")
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **{name: _checked(key, value,
                                                                                             types[name])})})
    return cfg


def identity(cfg: InterpolationStudyConfig) -> dict:
    """What makes two runs the same run (the folder, progress bars and threads may change)."""
    d = to_jsonable(cfg)
    for k in ("out", "progress", "threads"):
        d.pop(k)
    return d


def skip_schedule(cfg: InterpolationStudyConfig) -> tuple[int, int]:
    """s of pass 1 and pass 2 in units of full-rate frames: rate / 4, then 1 (the release's 3, 1 at its rates)."""
    return (cfg.data.rate // 4, 1)


def output_frames(cfg: InterpolationStudyConfig) -> int:
    return (cfg.data.keyframes - 1) * cfg.data.rate + 1


def validate(cfg: InterpolationStudyConfig) -> None:
    """Every check that can run before any work; each message names the field and the value."""
    from .config import get_preset
    from .models.temporal import get_variant
    get_preset(cfg.preset)
    get_variant(cfg.mfi_variant)
    d, t, e = cfg.data, cfg.train, cfg.eval
    if d.rate != 16:
        raise ValueError(f"data.rate={d.rate}: two passes of T -> 4T - 3 need rate 16")
    if d.keyframes < 2 or d.n_real < 2 or d.n_generated < 2:
        raise ValueError(f"data.keyframes, data.n_real and data.n_generated must be >= 2 (got {d.keyframes}, "
                         f"{d.n_real}, {d.n_generated}): intervals need two clips")
    missing = sorted(set(skip_schedule(cfg)) - set(t.strides))
    if missing:
        raise ValueError(f"train.strides={list(t.strides)} lacks {missing}: the passes run at s = "
                         f"{list(skip_schedule(cfg))}, which training must have seen")
    need = 4 * t.groups * max(t.strides) + 1
    have = (d.train_frames - 1) * d.rate + 1
    if have < need:
        raise ValueError(f"data.train_frames={d.train_frames}: fine clips of {have} frames are shorter than a "
                         f"training window ({t.groups} groups at stride {max(t.strides)}: {need} frames)")
    if min(t.steps, t.batch, t.groups, e.steps, e.batch, e.fvd_window, e.fvd_hop) < 1:
        raise ValueError("train.steps, train.batch, train.groups, eval.steps, eval.batch, eval.fvd_window and "
                         "eval.fvd_hop must be >= 1")
    if e.fvd_window > output_frames(cfg):
        raise ValueError(f"eval.fvd_window={e.fvd_window} is longer than the videos ({output_frames(cfg)} frames)")
    if not 0 < e.ci < 1:
        raise ValueError(f"eval.ci={e.ci}: must be in (0, 1)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    rj = out / "run.json"
    if rj.is_file():
        try:
            old = json.loads(rj.read_text()).get("config_hash")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{rj} is damaged ({err}); delete it (or the folder) to start again") from None
        if old != config_hash(identity(cfg)):
            raise ValueError(f"--out {out} holds a run with another configuration (run.json config_hash {old}); "
                             "choose another --out or delete the folder")


def plan(cfg: InterpolationStudyConfig) -> dict:
    d = cfg.data
    return {"config": to_jsonable(cfg), "config_hash": config_hash(identity(cfg)),
            "output_frames": output_frames(cfg), "passes": list(skip_schedule(cfg)),
            "videos_per_method": d.n_real + d.n_generated, "methods": list(METHODS)}


# ------------------------------------------------------------------------------------------------------ models
def _test_cfg(cfg, p):
    from .data.synthetic import SyntheticConfig
    return SyntheticConfig(**{**p.data, "size": p.size, "frames": cfg.data.keyframes})


def build_image(cfg, p):
    """The text-to-image pipeline of the preset (pixel space), seeded by ``cfg.seed``."""
    from .pipeline import KeyframePipeline
    torch.manual_seed(cfg.seed)
    return KeyframePipeline.from_preset(p)


def interpolation_pipe(method: str, image, cfg, p):
    """A fresh interpolation pipeline of ``method`` inflated from ``image``'s UNet (its text encoder shared)."""
    from .interpolation_pipeline import InterpolationPipeline, MFIPipeline
    from .models.interpolation import InterpolationUNet
    from .models.mfi import MaskedFrameInterpolationUNet
    kw = dict(guidance=cfg.eval.guidance, skip_schedule=skip_schedule(cfg), codec=image.codec)
    for q in image.text_encoder.parameters():       # shared by every model of the study: frozen (paper), so that
        q.requires_grad_(False)                     # training one method cannot change another's text features
    if method == "FusionFrames":
        return InterpolationPipeline(InterpolationUNet.from_image(image.unet), image.text_encoder, p.diffusion, **kw)
    if method == "MFI":
        return MFIPipeline(MaskedFrameInterpolationUNet.from_image(image.unet, cfg.mfi_variant), image.text_encoder,
                           p.diffusion, **kw)
    raise KeyError(f"unknown method {method!r}; choose {', '.join(METHODS)}")


def _train(pipe, mode, data, tcfg, folder, cfg, steps):
    from .train import Trainer
    tr = Trainer(pipe, mode, data, tcfg, folder, steps=steps, progress=cfg.progress)
    tr.fit()
    pipe.load_state_dict(tr.ema_state_dict())
    return pipe.eval()


def _interp_train_config(cfg, p):
    t = cfg.train
    return dataclasses.replace(p.train, video_steps=t.steps, video_batch_size=t.batch, video_lr=t.lr,
                               log_every=t.log_every, ckpt_every=t.ckpt_every, seed=cfg.seed)


def load_study_models(run_dir: str | Path, device="cpu"):
    """(keyframe pipeline, FusionFrames pipeline) of a finished study folder, EMA weights: what ``generate --run``
    animates with. Problems name the missing file."""
    from .checkpoint import load_checkpoint, pipeline_from_checkpoint
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    cfg = config_from_plan(meta)
    files = {k: run_dir / k / "checkpoints" / "last.safetensors" for k in ("image", "keyframe")}
    files["interpolation"] = run_dir / "rows" / "FusionFrames" / "checkpoints" / "last.safetensors"
    for what, f in files.items():
        if not f.is_file():
            raise FileNotFoundError(f"--run {run_dir}: the {what} model is missing ({f}); has the study finished "
                                    "training? Re-run experiments/interpolation.py with the same --out")
    image = pipeline_from_checkpoint(files["image"])
    keyframe = pipeline_from_checkpoint(files["keyframe"]).to(device).eval()
    from .config import get_preset
    ff = interpolation_pipe("FusionFrames", image, cfg, get_preset(cfg.preset))
    load_checkpoint(files["interpolation"], ff, use_ema=True)
    return keyframe, ff.to(device).eval(), files, cfg


def config_from_plan(meta: dict) -> InterpolationStudyConfig:
    c = dict(meta["config"])
    return InterpolationStudyConfig(**{**c, "data": DataConfig(**c["data"]), "train": TrainConfig(**c["train"]),
                                       "eval": EvalConfig(**c["eval"])})


# ---------------------------------------------------------------------------------------------------- the data
def test_clips(cfg, p):
    """Truth of both sets: full-rate test clips (N, 3, F, H, W) in [0, 1], captions, ground-truth motion."""
    from .data.interpolation import fine_clip
    from .data.synthetic import make_clip
    tcfg = _test_cfg(cfg, p)
    n = cfg.data.n_real + cfg.data.n_generated
    pairs = [fine_clip(i, tcfg, cfg.data.rate, "test") for i in range(n)]
    motion = [make_clip(i, tcfg, "test").gt_motion for i in range(n)]
    return torch.stack([v for v, _ in pairs]), [c for _, c in pairs], torch.tensor(motion, dtype=torch.float32)


def clip_seed(cfg, index: int) -> int:
    return cfg.seed * 100_003 + index


# ------------------------------------------------------------------------------------------------- generation
def _save(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata={"meta": json.dumps(meta)}))


def _load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from .checkpoint import CheckpointError
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["meta"])
    except Exception as e:   # noqa: BLE001 - any damage to a cached file is the same problem for the user
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); delete it to recompute") from None


def _to_uint8(v01: torch.Tensor) -> torch.Tensor:
    return (v01.clamp(0, 1) * 255).round().to(torch.uint8)


def generate_keyframes(keyframe_pipe, captions, motion, cfg, p, path: Path) -> torch.Tensor:
    """Keyframes of the keyframe model for the generated set (first frame by text-to-image, KV 1.1), cached."""
    if path.is_file():
        return _load(path)[0]["keyframes"]
    from .interpolation_pipeline import TextToVideoPipeline
    t2v = TextToVideoPipeline(keyframe_pipe)
    seeds = [clip_seed(cfg, i) for i in range(len(captions))]
    out = []
    for i in tqdm(range(0, len(captions), cfg.eval.batch), desc="keyframes", disable=not cfg.progress):
        sl = slice(i, i + cfg.eval.batch)
        out.append(t2v(captions[sl], seeds[sl], motion[sl], frames=cfg.data.keyframes, size=p.size,
                       decode=False))
    keys = keyframe_pipe.codec.decode(torch.cat(out)).clamp(0, 1)
    _save(path, {"keyframes": keys}, {"seeds": seeds, "captions": list(captions)})
    return keys


@torch.no_grad()
def generate_sets(pipes: dict, keyframes: dict, captions: dict, cfg, folder: Path) -> tuple[dict, dict]:
    """Both methods on every batch of both sets, alternating, timed: videos {set: {method: (N,3,F,H,W) uint8}}
    and seconds {set: {method: [per batch]}}. Each batch is its own file, so a killed run resumes per batch."""
    folder.mkdir(parents=True, exist_ok=True)
    videos = {s: {m: [] for m in pipes} for s in keyframes}
    seconds = {s: {m: [] for m in pipes} for s in keyframes}
    jobs = [(s, i) for s in keyframes for i in range(0, len(keyframes[s]), cfg.eval.batch)]
    for s, i in tqdm(jobs, desc="interpolate (both methods)", disable=not cfg.progress):
        path = folder / f"{s}_{i // cfg.eval.batch:03d}.safetensors"
        if not path.is_file():
            keys01 = keyframes[s][i:i + cfg.eval.batch]
            caps = captions[s][i:i + cfg.eval.batch]
            seeds = [clip_seed(cfg, 10_000 * SETS.index(s) + i + j) for j in range(len(caps))]
            out, sec = {}, {}
            for m, pipe in pipes.items():
                t0 = time.perf_counter()
                lat = pipe.passes(pipe.encode(keys01), 2, caps, seeds, steps=cfg.eval.steps)
                out[m] = _to_uint8(pipe.codec.decode(lat))
                sec[m] = time.perf_counter() - t0
            _save(path, out, {"seconds": sec, "n": len(caps), "threads": torch.get_num_threads()})
        t, meta = _load(path)
        for m in pipes:
            videos[s][m].append(t[m])
            seconds[s][m].append(meta["seconds"][m])
    return {s: {m: torch.cat(v) for m, v in d.items()} for s, d in videos.items()}, seconds


def flops_and_params(pipes: dict, keyframes01: torch.Tensor, caption: str, cfg) -> dict:
    """UNet FLOPs per generated frame (one video, both passes, both guidance branches) and parameters."""
    from torch.utils.flop_counter import FlopCounterMode
    res = {}
    generated = output_frames(cfg) - cfg.data.keyframes
    for m, pipe in pipes.items():
        with FlopCounterMode(display=False) as fc:
            pipe.passes(pipe.encode(keyframes01[:1]), 2, [caption], [0], steps=cfg.eval.steps)
        res[m] = {"gflops_per_frame": fc.get_total_flops() / generated / 1e9,
                  "params": sum(q.numel() for q in pipe.unet.parameters())}
    return res


# ---------------------------------------------------------------------------------------------------- metrics
def self_flows(videos01: torch.Tensor, raft, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    return original_flows(videos01, raft, cfg.eval.raft_work_size, cfg.eval.raft_updates)


def motion_metrics(videos01: torch.Tensor, raft, cfg) -> dict[str, np.ndarray]:
    """Per clip: warping error under the clip's own RAFT flow (8-bit levels, checked pixels) and RAFT motion (mean
    flow magnitude per pair, px at the frame size)."""
    fwd, bwd = self_flows(videos01, raft, cfg)
    b = videos01.shape[0]
    f, bk = rearrange(fwd, "b p c h w -> (b p) c h w"), rearrange(bwd, "b p c h w -> (b p) c h w")  # pairs as images
    mask = valid_mask(f, bk).float()
    cur = rearrange(videos01[:, :, :-1], "b c p h w -> (b p) c h w")     # frames 0..F-2
    nxt = rearrange(videos01[:, :, 1:], "b c p h w -> (b p) c h w")      # frames 1..F-1
    err = ((cur - warp(nxt, f)).abs().mean(1) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1)
    mag = f.pow(2).sum(1).sqrt().mean((1, 2))
    return {"warp_error": 255 * rearrange(err, "(b p) -> b p", b=b).mean(1).double().numpy(),
            "motion": rearrange(mag, "(b p) -> b p", b=b).mean(1).double().numpy()}


@torch.no_grad()
def window_features(featnet, videos01: torch.Tensor, cfg) -> np.ndarray:
    """(N, K, D) features of K windows of ``fvd_window`` consecutive frames every ``fvd_hop`` frames per clip."""
    w, hop = cfg.eval.fvd_window, cfg.eval.fvd_hop
    starts = list(range(0, videos01.shape[2] - w + 1, hop))
    wins = torch.stack([videos01[:, :, s:s + w] for s in starts], 1)              # (N, K, 3, w, H, W)
    flat = rearrange(wins, "n k c t h w -> (n k) c t h w")                       # windows as clips
    feats = torch.cat([featnet(x)[0] for x in flat.split(32)]).double().numpy()
    return feats.reshape(len(videos01), len(starts), -1)


def clip_bootstrap_fvd(gen: np.ndarray, ref: np.ndarray, paired: bool, n_boot: int, level: float) -> dict:
    """Fréchet distance of (N, K, D) window features against (M, K, D), with a bootstrap over clips (windows of one
    clip are resampled together; ``paired``: the same clip indices in both sets), bias-shifted as ``bootstrap_fvd``."""
    from .metrics.frechet import feature_stats, frechet_distance

    def fd(gi, ri):
        g, r = gen[gi].reshape(-1, gen.shape[-1]), ref[ri].reshape(-1, ref.shape[-1])
        return frechet_distance(*feature_stats(g, 0, warn=False), *feature_stats(r, 0, warn=False), method="eigh")
    n, m = len(gen), len(ref)
    point = fd(np.arange(n), np.arange(m))
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(n_boot):
        gi = rng.integers(0, n, n)
        boot.append(fd(gi, gi if paired else rng.integers(0, m, m)))
    boot = np.array(boot)
    bias = float(boot.mean() - point)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"value": point, "ci_low": float(lo) - bias, "ci_high": float(hi) - bias, "n": n, "windows": gen.shape[1],
            "paired": paired, "bias": bias, "n_boot": n_boot}


def linear_blend(keyframes01: torch.Tensor, rate: int) -> torch.Tensor:
    """(N, 3, K, H, W) keyframes -> (N, 3, (K - 1) rate + 1, H, W) uint8: frame j rate + i is
    (1 - i / rate) K_j + (i / rate) K_{j+1}."""
    a = torch.arange(rate, dtype=keyframes01.dtype) / rate                      # (rate,)
    left, right = keyframes01[:, :, :-1, None], keyframes01[:, :, 1:, None]     # (n, c, k-1, 1, h, w)
    mix = left + a[:, None, None] * (right - left)                              # (n, c, k-1, rate, h, w)
    body = rearrange(mix, "n c k r h w -> n c (k r) h w")
    return _to_uint8(torch.cat([body, keyframes01[:, :, -1:]], dim=2))


LOSS_STEPS = (100, 300, 600, 900)   # diffusion steps t of the held-out denoising loss (of 1000)


@torch.no_grad()
def denoising_loss(pipes: dict, windows: torch.Tensor, captions: list[str], stride: int, seed: int) -> dict:
    """Held-out v-loss {method: {t: [1st, 2nd, 3rd frame of a gap]}} on (N, C, 4G+1, h, w) windows, keyframes
    clean, full conditioning, the same noise for every method."""
    from .interpolation_pipeline import between_positions
    n = len(windows)
    tgt = between_positions(windows.shape[2])
    out = {m: {} for m in pipes}
    g = torch.Generator().manual_seed(seed)
    for t in LOSS_STEPS:
        tt = torch.full((n,), t)
        noise = torch.randn(windows.shape, generator=g)
        for m, pipe in pipes.items():
            x_t = pipe.diffusion.q_sample(windows, tt, noise)
            text, mask = pipe.encode_text(captions)
            v = pipe._predict(x_t, tt, text, mask, windows[:, :, ::4], torch.zeros(n), torch.full((n,), stride),
                              torch.ones(n), text_projected=False)
            err = (v - pipe.diffusion.target(windows[:, :, tgt], tt, noise[:, :, tgt])).pow(2)
            per = rearrange(err.mean((0, 1, 3, 4)), "(g k) -> g k", k=3).mean(0)   # (3,): position in the gap
            out[m][t] = [round(float(x), 5) for x in per]
    return out


def evaluate(videos: dict, truth01: torch.Tensor, names: dict, featnet, raft, cfg) -> tuple[pd.DataFrame, dict]:
    """Per-clip metrics and summaries {set: {row: {metric: {value, ci_low, ci_high, n}}}}."""
    e = cfg.eval
    n_real = cfg.data.n_real
    truth = {"real": truth01[:n_real], "generated": truth01[n_real:]}
    ref_feats = window_features(featnet, truth01, cfg)                 # every true clip: the generated set's reference
    frames, summary = [], {}
    between = [i for i in range(truth01.shape[2]) if i % cfg.data.rate]     # every non-key frame of both passes
    bar = tqdm(total=len(SETS) * len(ROWS), desc="evaluate", disable=not cfg.progress)
    for s in SETS:
        summary[s] = {}
        for row in ROWS:
            v = truth[s] if row == TRUTH else videos[s][row].float() / 255
            m = motion_metrics(v, raft, cfg)
            if s == "real" and row != TRUTH:
                fm = frame_metrics(v[:, :, between], truth[s][:, :, between])
                m["psnr"], m["ssim"] = fm["psnr"], fm["ssim"]
            else:
                m["psnr"] = m["ssim"] = np.full(len(v), np.nan)
            frames.append(pd.DataFrame({"set": s, "row": row, "clip": names[s], **{k: m[k] for k in PER_CLIP}}))
            summary[s][row] = {k: summarise(m[k], e.bootstrap, e.ci) for k in PER_CLIP}
            if row != TRUTH:
                g = window_features(featnet, v, cfg)
                ref = ref_feats[:n_real] if s == "real" else ref_feats
                summary[s][row]["fvd_syn"] = clip_bootstrap_fvd(g, ref, s == "real", e.fvd_bootstrap, e.ci)
            bar.update()
    bar.close()
    return pd.concat(frames, ignore_index=True), summary


# ------------------------------------------------------------------------------------------------------ study
def run_study(cfg: InterpolationStudyConfig) -> pd.DataFrame:
    """All stages; returns the table (one line per keyframe set and method)."""
    from .config import get_preset
    from .data.interpolation import InterpolationTrainData
    from .data.synthetic import SyntheticConfig, make_clip
    from .train import TrainData
    validate(cfg)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    p = get_preset(cfg.preset)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".gitignore").is_file():
        atomic_write_text(out / ".gitignore", "# heavy, reproducible by re-running\nimage/\nkeyframe/\nrows/\n"
                                              "generation/\nkeyframes.safetensors\n")
    run_json = out / "run.json"
    prev = json.loads(run_json.read_text()) if run_json.is_file() else {}
    meta = {**plan(cfg), "kind": "interpolation", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "timings_s": prev.get("timings_s", {}), "invocations_s": prev.get("invocations_s", [])}
    atomic_write_json(run_json, meta)
    timings: dict[str, float] = {}

    class stage:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *a):
            timings[self.name] = time.perf_counter() - self.t

    # 1. the image model and the keyframe model ------------------------------------------------------------
    d = cfg.data
    train_cfg = SyntheticConfig(**{**p.data, "size": p.size, "frames": d.keyframes})
    with stage("data"):
        clips = [make_clip(i, train_cfg, "train") for i in range(p.data.get("n_train", 256))]
        base = TrainData(torch.stack([c.video for c in clips]), [c.caption for c in clips],
                         torch.tensor([c.gt_motion for c in clips], dtype=torch.float32))
        fine = InterpolationTrainData.render(dataclasses.replace(train_cfg, frames=d.train_frames), d.rate,
                                             cfg.train.groups, cfg.train.strides, n=d.n_train)
    # the keyframe model's motion condition is the clips' exact ground-truth motion (same units as motion_score);
    # generate --run resolves --motion presets against these
    meta["motion_labels"] = [round(float(x), 5) for x in base.motion]
    atomic_write_json(run_json, meta)
    image = build_image(cfg, p)
    with stage("image pretraining"):
        _train(image, "image", base, dataclasses.replace(p.train, seed=cfg.seed), out / "image", cfg,
               cfg.train.image_steps)
    with stage("keyframe model"):
        keyframe = image.inflated("Conv1dAttn1dBlocks", train_spatial=p.train.train_spatial)
        _train(keyframe, "video", base, dataclasses.replace(p.train, seed=cfg.seed), out / "keyframe", cfg,
               cfg.train.keyframe_steps)

    # 2. both interpolation models at the same budget ------------------------------------------------------
    pipes = {}
    for m in METHODS:
        with stage(f"{m}: train"):
            pipes[m] = _train(interpolation_pipe(m, image, cfg, p), "interpolation", fine,
                              _interp_train_config(cfg, p), out / "rows" / m, cfg, cfg.train.steps)

    # 3. the same keyframes for both: real (test clips) and generated (keyframe model) --------------------
    truth, captions, motion = test_clips(cfg, p)
    n_real = d.n_real
    with stage("generated keyframes"):
        gen_keys = generate_keyframes(keyframe, captions[n_real:], motion[n_real:], cfg, p,
                                      out / "keyframes.safetensors")
    keyframes = {"real": truth[:n_real, :, ::d.rate], "generated": gen_keys}
    caps = {"real": captions[:n_real], "generated": captions[n_real:]}
    with stage("interpolation (both methods, alternating)"):
        videos, seconds = generate_sets(pipes, keyframes, caps, cfg, out / "generation")
    for k in SETS:
        videos[k][BLEND] = linear_blend(keyframes[k], d.rate)
    cost = flops_and_params(pipes, keyframes["real"], caps["real"][0], cfg)
    stride = d.rate // 4                                           # pass 1's spacing: the harder gap
    groups = min(cfg.train.groups, (truth.shape[2] - 1) // (4 * stride))
    held_out = pipes["MFI"].encode(truth[:n_real, :, :4 * groups * stride + 1:stride])
    losses = denoising_loss(pipes, held_out, caps["real"], stride, cfg.seed)

    # 4. metrics -------------------------------------------------------------------------------------------
    from .metrics.evaluators import load_or_train_evaluators
    from .metrics.motion import load_raft
    ev_cfg = get_preset(cfg.eval.evaluator_preset).synthetic_config()
    with stage("evaluate"):
        ev = load_or_train_evaluators(ev_cfg, cfg.eval.evaluator_preset, progress=cfg.progress)
        raft = load_raft("small")
        names = {"real": [f"test_{i:04d}" for i in range(n_real)],
                 "generated": [f"test_{i:04d}" for i in range(n_real, n_real + d.n_generated)]}
        per_clip, summary = evaluate(videos, truth, names, ev.feature_net, raft, cfg)
    n_videos = {s: len(keyframes[s]) for s in SETS}
    time_s = {m: sum(sum(seconds[s][m]) for s in SETS) / sum(n_videos.values()) for m in METHODS}
    timing = {"seconds_per_video": time_s, "ratio_mfi_over_fusionframes": time_s["MFI"] / time_s["FusionFrames"],
              "per_batch": seconds, "threads": torch.get_num_threads()}
    atomic_write_text(out / "per_clip.csv", per_clip.to_csv(index=False))
    atomic_write_json(out / "summary.json", {"metrics": summary, "timing": timing, "cost": cost,
                                             "denoising_loss": losses})

    # 5. table, figure, run.json ----------------------------------------------------------------------------
    protocol = {"N": n_videos, "keyframes": d.keyframes, "output_frames": output_frames(cfg),
                "resolution": p.size, "passes_s": list(skip_schedule(cfg)), "sampling_steps": cfg.eval.steps,
                "guidance": cfg.eval.guidance, "train": to_jsonable(cfg.train), "threads": torch.get_num_threads(),
                "detectors": {"raft": raft.kv_weights,
                              "fvd_syn": {"name": ev.feature_net.info.name, "sha256": ev.feature_net.info.sha256}},
                "fvd_windows": {"frames": cfg.eval.fvd_window, "hop": cfg.eval.fvd_hop},
                "training_s": {m: timings_all_so_far(meta, timings, f"{m}: train") for m in METHODS},
                "denoising_loss": {"windows": len(held_out), "frames": held_out.shape[2], "stride": stride,
                                   "values": losses}}
    table = build_table(summary, timing, cost)
    write_tables(table, out, protocol)
    write_figure(out / "interpolation.png", videos, truth, keyframes, cfg)
    timings_all = dict(meta["timings_s"])
    for k, v in timings.items():
        timings_all[k] = timings_all.get(k, 0.0) + v
    meta["invocations_s"] = meta["invocations_s"] + [time.perf_counter() - t_start]
    meta.update({"timings_s": timings_all, "protocol": protocol, "timing": {k: v for k, v in timing.items()
                                                                           if k != "per_batch"}})
    atomic_write_json(run_json, meta)
    return table


def timings_all_so_far(meta: dict, timings: dict, name: str) -> float | None:
    """Seconds of stage ``name`` over every invocation (None if it never ran: resumed from its checkpoint)."""
    total = meta["timings_s"].get(name, 0.0) + timings.get(name, 0.0)
    return round(total, 1) if total else None


# ------------------------------------------------------------------------------------------------------ tables
COLUMNS = {"PSNR": ("psnr", "higher", 2), "SSIM": ("ssim", "higher", 3), "FVD-syn": ("fvd_syn", "lower", 1),
           "warp error": ("warp_error", "lower", 2), "RAFT motion": ("motion", "", 3)}


def build_table(summary: dict, timing: dict, cost: dict) -> pd.DataFrame:
    rows = []
    for s in SETS:
        for row in ROWS:
            r = {"keyframes": s, "method": row}
            for col, (key, _, _) in COLUMNS.items():
                m = summary[s][row].get(key) or {}
                r[col], r[f"{col} ci_low"], r[f"{col} ci_high"] = m.get("value"), m.get("ci_low"), m.get("ci_high")
            if row in METHODS:
                r["s/video"] = timing["seconds_per_video"][row]
                r["GFLOPs/frame"] = cost[row]["gflops_per_frame"]
                r["params"] = cost[row]["params"]
            rows.append(r)
    return pd.DataFrame(rows)


def _fmt(v, lo=None, hi=None, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    s = f"{v:.{digits}f}"
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        d = {"Keyframes": r["keyframes"], "Method": r["method"]}
        for col, (_, better, digits) in COLUMNS.items():
            name = f"{col} {'↑' if better == 'higher' else '↓' if better == 'lower' else ''}".strip()
            d[name] = _fmt(r[col], r[f"{col} ci_low"], r[f"{col} ci_high"], digits)
        d["s / video"] = _fmt(r.get("s/video"), digits=2)
        d["GFLOPs / frame"] = _fmt(r.get("GFLOPs/frame"), digits=3)
        d["Params"] = "–" if pd.isna(r.get("params")) else f"{int(r['params']):,}"
        rows.append(d)
    return pd.DataFrame(rows)


def protocol_lines(protocol: dict, timing: dict | None = None) -> list[str]:
    det = protocol["detectors"]
    lines = [f"N = {protocol['N']['real']} videos interpolated from real keyframes and {protocol['N']['generated']} "
             f"from generated keyframes per method; {protocol['keyframes']} keyframes -> "
             f"{protocol['output_frames']} frames (passes at s = {protocol['passes_s']}), "
             f"{protocol['resolution']}x{protocol['resolution']} px, {protocol['sampling_steps']} sampling steps per "
             f"pass, context guidance w = {protocol['guidance']}.",
             f"FVD-syn: synthetic video net ({det['fvd_syn']['name']}, sha256 {det['fvd_syn']['sha256'][:16]}) on "
             f"{protocol['fvd_windows']['frames']}-frame windows every {protocol['fvd_windows']['hop']} frames, "
             "against the true full-rate clips; RAFT-small (sha256 "
             f"{str(det['raft'].get('sha256'))[:16]}) for warp error and motion.",
             f"Training: {protocol['train']['steps']} steps x {protocol['train']['batch']} windows of "
             f"{4 * protocol['train']['groups'] + 1} frames for each method, strides {protocol['train']['strides']}, "
             f"same seed{_train_seconds(protocol)}. Intervals: 95 % bootstrap over clips. Times: one process, "
             f"alternating per batch, {protocol['threads']} torch thread(s)."]
    return lines


def _train_seconds(protocol: dict) -> str:
    t = protocol.get("training_s") or {}
    if not all(t.get(m) for m in METHODS):
        return ""
    return " (training wall-clock: " + ", ".join(f"{m} {t[m]:.0f} s" for m in METHODS) + ")"


def loss_table(protocol: dict) -> pd.DataFrame:
    """The held-out denoising loss as rows (method, t) x columns (frame 1, 2, 3 of a gap)."""
    rows = []
    for m, by_t in protocol["denoising_loss"]["values"].items():
        for t, per in by_t.items():
            rows.append({"Method": m, "t": int(t), **{f"frame {i + 1} of the gap": f"{v:.3f}"
                                                       for i, v in enumerate(per)}})
    return pd.DataFrame(rows)


def write_tables(table: pd.DataFrame, out: Path, protocol: dict) -> None:
    atomic_write_text(out / "interpolation.csv", table.to_csv(index=False))
    disp = display_table(table)
    ff, mfi = (table[(table.keyframes == "real") & (table.method == m)].iloc[0] for m in METHODS)
    ratio = mfi["s/video"] / ff["s/video"]
    md = ["# Interpolation: FusionFrames vs masked frame interpolation (the paper's Table 2, CPU scale)", "",
          *protocol_lines(protocol), "", disp.to_markdown(index=False), "",
          f"MFI / FusionFrames wall-clock for the same output frames: x{ratio:.2f} (measured in this run); UNet "
          f"FLOPs per generated frame: x{mfi['GFLOPs/frame'] / ff['GFLOPs/frame']:.2f}.",
          "PSNR / SSIM: the interpolated (non-key) frames against the true ones; defined for real keyframes only. "
          "Truth = the true full-rate clips (reference values; FVD-syn 0 by construction, not shown). Linear blend = "
          "each in-between frame the cross-fade of its two keyframes (no model; real keyframes give it the truth's "
          "keyframes exactly).", "",
          "## Held-out denoising loss (v-prediction MSE) by position in the gap", "",
          f"{protocol['denoising_loss']['windows']} windows of {protocol['denoising_loss']['frames']} frames of the "
          f"real-keyframe test clips at stride {protocol['denoising_loss']['stride']} (pass 1), keyframes clean, "
          "the same noise for both methods. FusionFrames starts as three copies of the image model's prediction for "
          "the gap's first noisy frame: frames 2 and 3 are untrained at initialisation.", "",
          loss_table(protocol).to_markdown(index=False), "",
          f"## Published numbers (not ours): {PAPER_SOURCE}", "", pd.DataFrame(PAPER_TABLE2).to_markdown(index=False),
          "", "The paper's IS / FVD use a UCF-101 C3D / I3D at 512 px; ours are the suite's synthetic detectors at "
          "CPU scale: compare directions, not values.", ""]
    atomic_write_text(out / "interpolation.md", "\n".join(md))
    tex = disp.to_latex(index=False, escape=True, caption=" ".join(protocol_lines(protocol)), label="tab:interpolation")
    atomic_write_text(out / "interpolation.tex", tex)


def write_figure(path: Path, videos: dict, truth01: torch.Tensor, keyframes: dict, cfg) -> None:
    """Frames 0..figure_frames-1 of the first clip of each set: truth and linear blend (real set only),
    FusionFrames, MFI."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    T = min(cfg.eval.figure_frames, truth01.shape[2])
    rows = [("real: truth", truth01[0])] + [(f"real: {m}", videos["real"][m][0].float() / 255)
                                            for m in (*METHODS, BLEND)]
    rows += [(f"generated: {m}", videos["generated"][m][0].float() / 255) for m in METHODS]
    fig, axes = plt.subplots(len(rows), T, figsize=(T * 0.75, len(rows) * 0.85), squeeze=False)
    for ri, (name, v) in enumerate(rows):
        for t in range(T):
            ax = axes[ri][t]
            ax.imshow(rearrange(v[:, t], "c h w -> h w c").numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if t % cfg.data.rate == 0 or (t % (cfg.data.rate // 4) == 0 and ri == 0):
                ax.set_title("key" if t % cfg.data.rate == 0 else "pass 1", fontsize=5)
            if t == 0:
                ax.set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["InterpolationStudyConfig", "DataConfig", "TrainConfig", "EvalConfig", "METHODS", "BLEND", "PAPER_TABLE2",
           "preset_config", "apply_overrides", "validate", "plan", "run_study", "load_study_models",
           "interpolation_pipe", "display_table", "clip_bootstrap_fvd", "motion_metrics", "window_features",
           "linear_blend", "denoising_loss"]
