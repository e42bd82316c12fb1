"""The temporal-block ablation (the paper's Table 1, at any scale): train the text-to-image UNet once, inflate it
into each variant, fine-tune, generate from the benchmark prompt set, evaluate, and write the table.

Run folder (self-describing, EDM-style)::

    OUT/run.json                     resolved config + its hash, stage timings, detectors and their hashes
    OUT/benchmark/{train,test}.csv   the prompt set used (human-readable)
    OUT/image/                       text-to-image pretraining: stats.jsonl, config.json, checkpoints/
    OUT/first_frames/                KV 1.1 step 1, shared by every variant inflated from the image model
    OUT/variants/<name>/             fine-tuning run, videos/ (lossless) + previews/ (gif), per_video.csv, summary.json
    OUT/ablate_blocks.{csv,md,tex}   the table; OUT/ablate_blocks.png (metric bars), OUT/samples.png (frames)

Every stage skips what is already complete, so a killed run resumes to the same table. An OUT that holds a run
with another configuration is refused before any work, and so is one holding a damaged file a re-run would read
or keep (``check_run_folder``: truncated or foreign checkpoints, JSON, videos, first frames, previews, summaries):
one line names the file and what to delete so that the re-run recomputes it, and nothing in OUT is changed.
run.json is rewritten only when a run completes (or first created), so a failed re-run leaves it byte-identical.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import get_preset
from .models.temporal import DEFAULT_STUDY, get_variant
from .utils import RunFolderError, atomic_write_json, config_hash, file_damage, to_jsonable

CONTROL = "motion_control"    # sub-folder of a variant: the same prompts at the other end of the motion range
UNTRAINED = "Untrained"      # random-init Conv1dAttn1dBlocks, never trained: the floor every trained model must beat
REAL = "Real clips"          # the benchmark's own test clips: the ceiling / noise floor of each metric


@dataclass
class AblationConfig:
    preset: str = "quick"
    variants: tuple = DEFAULT_STUDY
    out: str = "results/ablate_blocks"
    prompts: str | None = None          # CSV/TXT prompt set; default: the synthetic test split of the preset
    samples_per_prompt: int = 1
    n_reference: int = 256              # real clips (train split) for FVD-syn reference statistics
    include_untrained: bool = True
    device: str = "cpu"
    bf16: bool = False                  # bf16 autocast for generation (GPU)
    compile: bool = False               # Module.compile() on each UNet before training/generation (GPU)
    seed: int = 0
    progress: bool = True
    overrides: dict = field(default_factory=dict)   # e.g. {"train.video_steps": 10} for quick experiments
    # real parts (study_inputs.py); None = the offline default of each
    init_kandinsky3: str | None = None  # diffusers Kandinsky 3.0 folder (or its unet/): skips image pretraining
    text_encoder: str | None = None     # T5 folder (or the Kandinsky 3.0 root); features cached in OUT/text_features
    codec: str | None = None            # "pixels" | MoVQ folder (Kandinsky 3.0 root or movq/) | the release's movq.pt
    decoder: str | None = None          # video decoder for generated clips: a Table 3 name or the release's video_movq.pt
    data: str | None = None             # captioned videos: CSV (path, caption[, start, end]), folder, UCF-101 root
    reference: str | None = None        # real videos for FVD (folder, CSV, UCF-101 root); default: --data
    fps: float = 2.0                    # keyframe rate of real clips (the paper: 16 keyframes at 2 fps)
    prompt_limit: int | None = None     # keep the first N prompts of the set (stated in the table)
    metrics: tuple | None = None        # default: FVD, CLIPSIM, motion with --data; the synthetic metrics without
    i3d: str | None = None              # detector files (default: found in $KV_WEIGHTS_DIR)
    clip: str | None = None
    train_bf16: bool = False            # bf16 autocast for training too (GPU)
    jobs: int | None = None             # rows trained in parallel worker processes (None: auto; see row_jobs)
    threads: int | None = None          # torch threads per process (None: torch's default; cores // jobs per worker)
    channels_last: bool | None = None   # UNets' 2-D conv weights channels-last (None: on CPU; models.layers.channels_last_)

    def __post_init__(self):
        self.variants = tuple(self.variants)
        if self.metrics is not None:
            self.metrics = tuple(self.metrics)

    def identity(self) -> dict:
        """What makes two runs the same run (the variant list may grow; the folder and device may change)."""
        d = to_jsonable(self)
        for k in ("variants", "out", "device", "progress", "compile", "jobs", "threads", "channels_last"):
            d.pop(k)
        for k in ("init_kandinsky3", "text_encoder", "codec", "decoder", "data", "reference", "fps", "prompt_limit",
                  "metrics", "i3d", "clip", "train_bf16"):
            if d.get(k) is None or (k == "fps" and d[k] == 2.0) or (k == "train_bf16" and not d[k]):
                d.pop(k)     # unset real parts leave the identity (and the hash) of a synthetic run unchanged
        return d


def run_hash(cfg: AblationConfig) -> str:
    """What a run folder is keyed by: the run's identity and the fully resolved preset (model widths included),
    so a folder written with another architecture or preset definition is refused before any work."""
    return config_hash({**cfg.identity(), "resolved_preset": to_jsonable(resolved_preset(cfg))})


def resolved_preset(cfg: AblationConfig):
    p = get_preset(cfg.preset)
    for key, value in cfg.overrides.items():
        section, _, name = key.partition(".")
        if section not in ("unet", "text", "diffusion", "train", "eval") or not name:
            raise ValueError(f"override '{key}': use section.field with section in unet, text, diffusion, train, eval")
        sub = getattr(p, section)
        if not hasattr(sub, name) or not dataclasses.is_dataclass(sub):
            known = ", ".join(f.name for f in dataclasses.fields(sub))
            raise ValueError(f"override '{key}': {type(sub).__name__} has no field '{name}' (fields: {known})")
        if key in _NOT_SETTABLE:
            raise ValueError(f"--set {key}: {_NOT_SETTABLE[key]}")
        field_type = {f.name: f.type for f in dataclasses.fields(sub)}[name]
        try:
            new_sub = dataclasses.replace(sub, **{name: _checked(key, value, field_type)})
        except (TypeError, ValueError) as e:       # the config's own checks (e.g. GroupNorm groups)
            msg = str(e) if str(e).startswith("--set") else f"--set {key}={json.dumps(value)}: {e}"
            raise ValueError(msg) from None
        p = dataclasses.replace(p, **{section: new_sub})
    return p


# ranges of the --set fields that differ from the default (numbers >= 0), and fields with a fixed set of values
_RANGES = {
    "text.vocab_buckets": (1, None), "text.dim": (1, None), "text.heads": (1, None), "text.max_len": (1, None),
    "diffusion.num_timesteps": (2, None), "diffusion.sample_steps": (1, None), "diffusion.eta": (0, 1),
    "diffusion.threshold_ratio": (0, 1), "diffusion.p_uncond_text": (0, 1), "diffusion.p_uncond_image": (0, 1),
    "train.batch_size": (1, None), "train.video_batch_size": (1, None), "train.log_every": (1, None),
    "train.ckpt_every": (1, None), "train.ema_max_decay": (0, 1), "train.ema_power": (1e-9, None),
    "train.lr": (1e-12, None), "train.video_lr": (1e-12, None),
    "eval.samples_per_prompt": (1, None), "eval.batch_size": (1, None), "eval.bootstrap": (1, None),
    "eval.ci": (1e-9, 1 - 1e-9),
}
_CHOICES = {"diffusion.schedule": ("cosine",), "diffusion.prediction": ("eps", "v"),
            "diffusion.sampler": ("ddim", "ddpm"), "unet.convention": ("diffusers", "kandinsky_video")}
_NOT_SETTABLE = {"unet.variant": "set by inflation; choose the rows with --variants"}


def _checked(key: str, value, field_type):
    """An override's value of the field's own type (annotations are strings here), refused rather than converted:
    numbers are >= 0 unless ``_RANGES`` says otherwise (no config field here takes a negative), ints are whole,
    booleans are true/false, text fields with a fixed set of values (``_CHOICES``) one of them."""
    t = str(field_type).split("|")[0].strip()
    want = {"int": "a whole number >= 0", "float": "a number >= 0", "bool": "true or false", "str": "text",
            "tuple": "a JSON list, e.g. [1, 2]"}.get(t)
    ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
          and value == value and value != float("inf"),
          "bool": isinstance(value, bool), "str": isinstance(value, str),
          "tuple": isinstance(value, (list, tuple))}.get(t, True)
    if key in _RANGES:
        lo, hi = _RANGES[key]
        ok = ok and value >= lo and (hi is None or value <= hi)
        kind = "a whole number" if t == "int" else "a number"
        if 0 < lo < 1e-6:
            want = f"{kind} > 0" + (f" and < {round(hi)}" if hi is not None else "")
        else:
            want = f"{kind} >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    if key in _CHOICES:
        ok, want = ok and value in _CHOICES[key], "one of " + ", ".join(_CHOICES[key])
    if not ok:
        raise ValueError(f"--set {key}={json.dumps(value)}: expected {want}")
    return tuple(value) if t == "tuple" else value


def check_preset(p) -> None:
    """What the preset's fields must satisfy together (each is range-checked by ``_checked``)."""
    d = p.diffusion
    problems = []
    if p.text.dim % p.text.heads:
        problems.append(f"text.heads={p.text.heads} must divide text.dim={p.text.dim}")
    if d.sample_steps > d.num_timesteps:
        problems.append(f"diffusion.sample_steps={d.sample_steps} exceeds diffusion.num_timesteps={d.num_timesteps}")
    for name in ("noise_aug_level", "noise_aug_max"):
        if getattr(d, name) >= d.num_timesteps:
            problems.append(f"diffusion.{name}={getattr(d, name)} must be < diffusion.num_timesteps="
                            f"{d.num_timesteps}")
    from .metrics.evaluators import PRESETS
    if p.eval.evaluator_preset not in PRESETS:
        problems.append(f"eval.evaluator_preset={p.eval.evaluator_preset!r} is unknown; known: "
                        f"{', '.join(sorted(PRESETS))}")
    if problems:
        raise ValueError("; ".join(problems))


def check_options(cfg: AblationConfig) -> None:
    """The run's own options (flags or study-file fields): type and range, the device, before any work."""
    from .cli import UsageError, check_device
    from .config import PRESETS
    if cfg.preset not in PRESETS:
        raise UsageError(f"--preset {cfg.preset!r} is unknown; choose one of {', '.join(PRESETS)}")

    def whole(name, value, lo, optional=False):
        if optional and value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected a whole number >= {lo}")
    whole("samples_per_prompt", cfg.samples_per_prompt, 1)
    whole("seed", cfg.seed, 0)
    whole("n_reference", cfg.n_reference, 2)
    whole("prompt_limit", cfg.prompt_limit, 1, optional=True)
    whole("jobs", cfg.jobs, 1, optional=True)
    whole("threads", cfg.threads, 1, optional=True)
    import math
    if isinstance(cfg.fps, bool) or not isinstance(cfg.fps, (int, float)) or not math.isfinite(cfg.fps) \
            or cfg.fps <= 0:
        raise UsageError(f"--fps {cfg.fps!r}: expected a frame rate > 0")
    if not isinstance(cfg.device, str):
        raise UsageError(f"--device {cfg.device!r}: expected a device name such as cpu or cuda:0")
    check_device(cfg.device)
    if not isinstance(cfg.overrides, dict):
        raise UsageError(f"overrides {cfg.overrides!r}: expected an object {{\"section.field\": value}}")


# ------------------------------------------------------------------------------------------------ checks
def validate(cfg: AblationConfig) -> None:
    """Everything that can be checked before any work: options, variants, prompts, the output folder and every
    file an earlier run left in it (``check_run_folder``). ``--dry-run`` runs the same checks."""
    check_options(cfg)
    for v in cfg.variants:
        get_variant(v)           # raises with the list of known names
    if len(set(cfg.variants)) != len(cfg.variants):
        raise ValueError(f"variant listed twice: {list(cfg.variants)}")
    p = resolved_preset(cfg)
    check_preset(p)
    ecfg = p.eval
    q = ecfg.motion_control_quantiles
    if ecfg.motion_control_prompts < 0 or len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
        raise ValueError(f"eval.motion_control_prompts must be >= 0 (got {ecfg.motion_control_prompts}) and "
                         f"eval.motion_control_quantiles two increasing numbers in [0, 1] (got {q})")
    if cfg.prompts is not None:
        from .prompt_sets import load_prompt_set
        load_prompt_set(cfg.prompts, cfg.prompt_limit)
    from .metrics.motion import MotionLabelCache
    MotionLabelCache(device=cfg.device)      # RAFT weights present and verified, before any training
    validate_real_parts(cfg)
    from .cli import check_out_dir
    out = Path(cfg.out)
    check_out_dir(out)
    run_json = out / "run.json"
    if run_json.is_file():
        damage = file_damage(run_json)
        if damage:
            raise RunFolderError(f"{run_json} is damaged ({damage}); delete it to recompute it (the finished "
                                 "stages beside it are kept), or choose another --out; nothing was changed")
        old = json.loads(run_json.read_text())
        if old.get("config_hash") != run_hash(cfg):
            raise ValueError(
                f"{out} holds a different run (config hash {old.get('config_hash')}, this one "
                f"{run_hash(cfg)}; its config: {json.dumps((old.get('config') or {}).get('preset'))}). "
                "Choose another --out; nothing was changed.")
        for v in cfg.variants:   # a checkpoint left by another variant or config in a variant's folder
            ck = out / "variants" / v / "checkpoints" / "last.json"
            if ck.is_file() and not file_damage(ck):        # a damaged one is named by check_run_folder
                got = json.loads(ck.read_text()).get("variant")
                if got != v:
                    raise ValueError(f"{ck} is a checkpoint of variant '{got}', but this folder is for '{v}'; "
                                     "remove it or choose another --out")
        check_run_folder(out)
    elif out.is_dir() and any(out.iterdir()):
        if not (out / "benchmark").is_dir():
            raise ValueError(f"{out} exists, is not empty and holds no ablation run; choose another --out")
        check_run_folder(out)    # a run whose run.json was deleted (or not yet written): its files still count


# what a re-run does with each kind of file of a run folder: (pattern relative to OUT, advice, checks); the first
# match wins. Advice None: rewritten from the config by every run (benchmark lists, tables, figures, trainer
# config), so a damaged copy is simply replaced. Files matching nothing (the user's own) are left alone.
_RUN_FILES = [
    ("run.json", None, {}),      # checked first by validate
    ("benchmark/*", None, {}),
    ("ablate_blocks.*", None, {}), ("samples.png", None, {}),
    ("**/config.json", None, {}),
    ("**/checkpoints/*", "retrain", {}),
    ("**/stats.jsonl", "retrain", {}),
    ("**/videos/*.npz", "delete it to regenerate that video", {"video": True}),
    ("**/previews/*.gif", "preview", {}),
    ("**/first_frames/*.npz", "delete it to recompute it (with the next video of that sample that is generated)", {"npz_keys": ("latent", "frame")}),
    ("**/summary.json", "evaluate", {}), ("**/per_video.csv", "evaluate", {}),
    ("latents/shard-*", "shard", {}),
    ("latents/*", "folder", {}), ("text_features/cache.json", "folder", {}),
    ("text_features/**/*.safetensors", "delete it to recompute those text features", {}),
]


def _run_file_rule(rel: Path):
    for pattern, advice, kw in _RUN_FILES:
        if rel.match(pattern) or (pattern.startswith("**/") and rel.match(pattern[3:])):
            return advice, kw
    return None, None


def check_run_folder(out: str | Path) -> None:
    """Every file of an earlier run that a re-run reads or keeps can be read back, checked before anything is
    written: checkpoints (safetensors header against the file size, the JSON beside it, the optimizer archive),
    training stats, generated videos and first frames (every array read), previews, evaluation summaries, latent
    shards and text features. A damaged file raises ``RunFolderError`` naming it and what to delete so that the
    re-run recomputes it; nothing in the folder is changed. Temporary files of interrupted writes (``.*.tmp``)
    are ignored."""
    from .checkpoint import CheckpointError, check_checkpoint
    out = Path(out)
    checked_ckpt = set()
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(out)
        advice, kw = _run_file_rule(rel)
        if advice is None:
            continue
        stage = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if advice == "retrain":
            advice = (f"delete {stage / 'checkpoints'}{os.sep} and {stage / 'stats.jsonl'} to retrain "
                      f"{stage.relative_to(out)} from scratch")
        elif advice == "preview":
            advice = f"delete it and {path.parent.parent / 'videos' / (path.stem + '.npz')} to regenerate both"
        elif advice == "evaluate":
            advice = (f"delete {path.parent / 'summary.json'} and {path.parent / 'per_video.csv'} to re-evaluate "
                      f"{path.parent.relative_to(out)}")
        elif advice == "shard":
            advice = f"delete {path.with_suffix('.safetensors')} and {path.with_suffix('.json')} to rebuild that shard"
        elif advice == "folder":
            advice = f"delete the folder {path.parent} to rebuild it"
        if path.parent.name == "checkpoints" and path.name.startswith("last."):
            ck = path.parent / "last.safetensors"
            if ck in checked_ckpt:
                continue
            checked_ckpt.add(ck)
            try:
                if ck.is_file():
                    check_checkpoint(ck)
                else:
                    raise CheckpointError(f"{path}: its checkpoint {ck.name} is missing")
            except (CheckpointError, FileNotFoundError) as e:
                raise RunFolderError(f"damaged checkpoint: {e}; {advice}; nothing was changed") from None
            continue
        damage = file_damage(path, **kw)
        if damage:
            raise RunFolderError(f"{path} is damaged ({damage}); {advice}; nothing was changed")


def validate_real_parts(cfg: AblationConfig) -> None:
    """The real parts' files exist and are what they claim, and the detectors are present: checked before any
    work, each error naming the path."""
    from .study_inputs import study_metrics
    for name in ("init_kandinsky3", "text_encoder", "data", "reference"):
        v = getattr(cfg, name)
        if v is not None and not Path(v).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: {v} does not exist")
    if cfg.codec not in (None, "pixels"):
        from .models.codec import _movq_folder, load_codec
        if Path(cfg.codec).is_dir():
            _movq_folder(Path(cfg.codec))     # its config: a folder of another model is refused here, by name
        else:
            load_codec(cfg.codec, device="cpu")
    if cfg.decoder and cfg.codec in (None, "pixels"):
        raise ValueError("--decoder needs a MoVQ --codec (the video decoder replaces the MoVQ's image decoder)")
    if cfg.init_kandinsky3 and not cfg.text_encoder:
        raise ValueError("--init-kandinsky3 needs --text-encoder (the T5 whose features Kandinsky 3.0 was trained "
                         "on; its root folder usually holds text_encoder/ and tokenizer/)")
    if cfg.fps <= 0:
        raise ValueError(f"fps must be > 0, got {cfg.fps}")
    metrics = study_metrics(cfg)
    from .metrics.core import METRICS
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    if not cfg.data and {"fvd", "clipsim"} & set(metrics) and not cfg.reference and "fvd" in metrics:
        raise ValueError("metric 'fvd' needs real reference videos: pass --reference (or --data)")
    if "fvd" in metrics:                    # the detector files exist (and match their hash where one is known)
        from .weights import find_weights
        find_weights("i3d_torchscript", cfg.i3d)
    if "clipsim" in metrics:
        from .metrics.clipsim import _find_clip_weights
        _find_clip_weights(cfg.clip)


def plan(cfg: AblationConfig) -> dict:
    p = resolved_preset(cfg)
    first = (["latents + motion labels of --data (resumable, sharded over ranks)"] if cfg.data
             else ["benchmark", "motion labels"])
    first += ["text features (T5, cached)"] if cfg.text_encoder else []
    first += (["load Kandinsky 3.0 (no image pretraining)"] if cfg.init_kandinsky3
              else [f"image pretraining ({p.train.image_steps} steps)"])
    return {"config": to_jsonable(cfg), "config_hash": run_hash(cfg), "preset": to_jsonable(p),
            "stages": first
            + [f"{v}: fine-tune {p.train.video_steps} steps, generate"
               + (f", motion control ({p.eval.motion_control_prompts} prompts)" if p.eval.motion_control_prompts
                  else "") + ", evaluate" for v in cfg.variants]
            + (["Untrained: generate, evaluate"] if cfg.include_untrained else []) + ["tables, figures"]}


def files_to_read(cfg: AblationConfig) -> list[str]:
    """Every input file the run will open (weights, configs, data lists), as far as it can be known up front."""
    files = []

    def add(folder, patterns):
        folder = Path(folder)
        if folder.is_file():
            files.append(str(folder))
            return
        for pat in patterns:
            files.extend(str(f) for f in sorted(folder.glob(pat)))
    if cfg.init_kandinsky3:
        add(cfg.init_kandinsky3, ["config.json", "*.safetensors", "*.bin", "unet/config.json", "unet/*.safetensors",
                                  "unet/*.bin"])
    if cfg.text_encoder:
        add(cfg.text_encoder, ["config.json", "*.safetensors", "*.json", "spiece.model", "text_encoder/*",
                               "tokenizer/*"])
    if cfg.codec not in (None, "pixels"):
        add(cfg.codec, ["config.json", "*.safetensors", "movq/*"])
    for src in (cfg.data, cfg.reference):
        if src:
            add(src, ["*.csv"])
    from .weights import find_weights
    for key in ("raft_small_princeton",):
        try:
            files.append(str(find_weights(key)))
        except FileNotFoundError as e:
            files.append(f"MISSING: {str(e).splitlines()[0]}")
    return list(dict.fromkeys(files))


def dry_run_report(cfg: AblationConfig) -> tuple[dict, str]:
    """What ``--dry-run`` adds to the plan: parameters of each row, the files read, and the GPU memory per rank of
    fine-tuning each variant (with and without gradient checkpointing), all on the meta device: nothing is
    allocated or loaded. Returns (JSON-able dict, readable text)."""
    import os

    from .memory import estimate_training_memory, format_memory
    from .models.unet import KeyframeUNet, inflate
    from .variants import variant_table
    p = resolved_preset(cfg)
    ucfg = p.unet
    if cfg.init_kandinsky3:
        from .loaders import _k3_unet_dir, kandinsky3_config
        ucfg = kandinsky3_config(_k3_unet_dir(Path(cfg.init_kandinsky3)))
    rows = variant_table(cfg.preset, list(cfg.variants), device="meta", unet_config=ucfg)
    files = files_to_read(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bs = p.train.video_batch_size
    lines = [f"parameters ({cfg.preset}, {p.frames} keyframes of {p.size}x{p.size} latents):"]
    lines += [f"  {r['name']:<22} total {r['params_total']:>15,}  temporal {r['params_temporal']:>15,}  "
              f"{r['gflops']:,.1f} GFLOPs / forward" for r in rows]
    lines += ["", "files read:"] + [f"  {f}" for f in files]
    memory = {}
    for v in cfg.variants:
        with torch.device("meta"):
            img = KeyframeUNet(dataclasses.replace(ucfg, variant="Spatial"))
            unet = img if v == "Spatial" else inflate(img, v, train_spatial=p.train.train_spatial)
        # as this suite's trainer holds them: every weight in fp32 (frozen ones too), bf16 autocast with --train-bf16
        amp = torch.bfloat16 if cfg.train_bf16 else None
        est = estimate_training_memory(unet, frames=p.frames, latent_size=p.size, batch=bs, world=world,
                                       weight_dtype=torch.float32, autocast_dtype=amp)
        memory[v] = est["gib"]
        lines += ["", f"GPU memory per rank, fine-tuning {v} (batch {bs}, {world} rank(s)), estimate:",
                  format_memory(est)]
    report = {"parameters": rows, "files": files, "memory_per_rank_gib": memory,
              "memory_setting": {"batch": bs, "frames": p.frames, "latent_size": p.size, "world": world,
                                 "weights": "all fp32 (frozen too) + fp32 gradients, AdamW, EMA; compute "
                                 + ("bf16 autocast" if cfg.train_bf16 else "fp32")}}
    return report, "\n".join(lines)


# --------------------------------------------------------------------------------------------------- run
def run_ablation(cfg: AblationConfig) -> pd.DataFrame:
    from .harness import init_distributed

    validate(cfg)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = init_distributed(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    run_json = out / "run.json"
    prev = json.loads(run_json.read_text()) if run_json.is_file() else {}
    meta = {**plan(cfg), "timings_s": prev.get("timings_s", {}), "torch": torch.__version__,
            "variants_done": prev.get("variants_done", [])}
    if dist.main and not prev:   # marks a new folder as this run's; an earlier run.json is rewritten only at the
        atomic_write_json(run_json, meta)   # end, so a re-run that fails midway leaves it byte-identical

    stage = _timer(timings)
    tasks = list(cfg.variants) + ([UNTRAINED] if cfg.include_untrained else [])
    jobs, threads = row_jobs(cfg, dist, len(tasks))
    workers = _Workers(cfg, jobs, threads) if jobs > 1 else None
    side = workers is not None and side_lane(cfg, dist)
    meta["jobs"] = {"jobs": jobs, "threads_per_job": threads if jobs > 1 else torch.get_num_threads(),
                    "side_lane": side}
    try:
        # 1-2. the study's parts and the image model (beside it, in a worker: labels, evaluators, the floor rows)
        st = _prepare(cfg, dist, stage, workers if side else None)
        p, inputs, image, prompts = st.p, st.inputs, st.image, st.prompts
        rows = tasks + ([REAL] if inputs.real_videos is not None else [])      # the rows of the table

        # 3. each row: inflate, fine-tune, generate (in parallel worker processes when jobs > 1) -------------
        ev = None
        if workers is not None:   # each worker also evaluates its rows (the evaluators are on disk by now)
            # trained (or loaded) once, here or by the side lane: then this loads them from disk
            ev = _evaluators(st, stage if not workers.side_done else (lambda name: stage(f"{name} (loaded)")))
            with stage(f"rows in {jobs} parallel jobs (wall)"):
                workers.rows([v for v in rows if v not in workers.side_done])
            timings.update(workers.timings)
            workers.close()
        else:
            for v in tasks:
                _row(st, v, stage)
    except BaseException:
        if workers is not None:
            workers.stop()
        raise

    if not dist.main:
        return pd.DataFrame()

    # 4. evaluation (cached per row in its summary.json: rows the workers evaluated are read back) -----------
    if jobs == 1:
        ev = _evaluators(st, stage)
    from .harness import sample_names
    from .metrics.motion import load_raft
    names = [x[0] for x in sample_names(prompts, cfg.samples_per_prompt)]
    raft = load_raft(device=cfg.device)    # one RAFT for every row's motion columns and motion-control pairs
    summaries: dict[str, dict] = {}
    for name in rows:
        key = f"{name}: evaluate"
        with stage(key) if key not in timings else contextlib.nullcontext():
            summaries[name] = _evaluate_row(st, name, ev, raft)
    rows_dirs = {name: out / "variants" / name for name in tasks}
    real_videos = inputs.real_videos

    # 5. table, figures, run.json -------------------------------------------------------------------------
    from .tables import build_table, write_figures, write_tables
    stats = {v: _train_stats(out / "variants" / v) for v in cfg.variants}
    from .variants import variant_table
    arch = {r["name"]: r for r in variant_table(cfg.preset, [v for v in cfg.variants] + ["Conv1dAttn1dBlocks"],
                                                 device="meta", unet_config=image.unet.config,
                                                 size=inputs.size,
                                                 text_len=_text_len(image, prompts) if cfg.text_encoder else None)}
    table = build_table(summaries, arch, stats, order=list(cfg.variants) + [UNTRAINED, REAL])
    protocol = {"N": len(names), "frames": p.frames, "resolution": inputs.size * image.codec.scale_factor,
                "latent_resolution": inputs.size, "codec": image.codec.name, "n_reference": len(inputs.reference)
                if isinstance(inputs.reference, torch.Tensor) else cfg.n_reference,
                "detectors": {m["detector"]: m.get("detector_sha256") for s in summaries.values()
                              for m in s.get("metrics", {}).values() if isinstance(m, dict) and "detector" in m},
                "untrained": inputs.untrained_note, **inputs.notes}
    if ev is not None:
        protocol["evaluator_quality"] = ev.report.get("quality", ev.report)
    write_tables(table, out, protocol)
    write_figures(table, out, {n: d for n, d in rows_dirs.items()}, names, real_videos)
    # a resumed run adds to the stage times of earlier invocations instead of replacing them with its own
    # (near-zero) times for the stages it skipped; each invocation's total is kept
    timings_all = dict(meta["timings_s"])
    for k, v in timings.items():
        timings_all[k] = timings_all.get(k, 0.0) + v
    invocations = list(prev.get("invocations_s") or ([prev["timings_s"]["total (this invocation)"]]
                                                      if "total (this invocation)" in prev.get("timings_s", {})
                                                      else []))
    invocations.append(time.perf_counter() - t_start)
    timings_all["total (this invocation)"] = invocations[-1]
    timings_all["total (all invocations)"] = sum(invocations)
    meta["invocations_s"] = invocations
    meta.update({"timings_s": timings_all, "protocol": protocol,
                 "variants_done": sorted(set(meta["variants_done"]) | set(cfg.variants))})
    atomic_write_json(run_json, meta)
    return table


# ------------------------------------------------------------------------------------------- the rows
@dataclass
class _Study:
    """What every row needs besides its name: built once per process by ``_prepare``."""
    cfg: AblationConfig
    p: object
    out: Path
    inputs: object
    image: object
    prompts: pd.DataFrame
    control_prompts: pd.DataFrame | None
    gen_kw: dict
    amp: object


def side_lane(cfg: AblationConfig, dist) -> bool:
    """Whether, with row workers, one of them computes the motion labels, trains the evaluators and makes the
    Untrained and Real-clips rows while this process pretrains the image model (none of them needs it).

    Why: text-to-image pretraining is one process's work, and a second thread gains it little (a quick image step
    0.455 s at 2 threads against 0.588 s at 1, ``benchmarks/bench_threads.py``), so the other core does those
    stages meanwhile instead of before and after it. Only for the synthetic benchmark with its own prompts (real
    data bring their labels with their latents)."""
    return dist.world == 1 and not cfg.data and not cfg.prompts and not cfg.init_kandinsky3


def _prepare(cfg: AblationConfig, dist, stage, workers: "_Workers | None" = None, pretrain: bool = True) -> _Study:
    """The study's parts (data, labels, text, prompts, reference, detectors) and the image model, pretrained
    once and shared by every variant (skipped for Kandinsky 3.0; a finished pretraining is loaded back).

    ``workers``: the side lane (``side_lane``) runs in one of them during the pretraining, which then uses one
    worker's threads. ``pretrain=False``: the image model stays as initialised (the side lane's own parts)."""
    from .study_inputs import attach_synthetic_labels, prepare_inputs
    from .train import Trainer
    p = resolved_preset(cfg)
    out = Path(cfg.out)
    inputs = prepare_inputs(cfg, p, out, dist, stage, labels=workers is None)
    image, prompts = inputs.image, inputs.prompts
    _memory_format(cfg, image)
    amp = torch.bfloat16 if cfg.train_bf16 else None
    if workers is not None:
        workers.start_side([UNTRAINED] * cfg.include_untrained + [REAL] * (inputs.real_videos is not None))
    if inputs.pretrain and pretrain:
        threads = torch.get_num_threads()
        if workers is not None:
            torch.set_num_threads(workers.threads)          # the other core runs the side lane
        try:
            with stage("image pretraining"):
                tr = Trainer(image, "image", inputs.data, p.train, out / "image", progress=cfg.progress,
                             device=cfg.device, autocast_dtype=amp)
                tr.fit()
                image.load_state_dict(tr.ema_state_dict())     # inflate from the EMA weights
        finally:
            torch.set_num_threads(threads)
    if workers is not None:
        with stage("waiting for the side lane"):
            workers.wait_side()
        attach_synthetic_labels(inputs, cfg, p)              # computed by the side lane: read from the cache
    image.to(cfg.device).eval()
    gen_kw = dict(frames=p.frames, size=inputs.size, samples_per_prompt=cfg.samples_per_prompt,
                  batch_size=p.eval.batch_size, base_seed=cfg.seed, dist=dist, progress=cfg.progress,
                  autocast_dtype=torch.bfloat16 if cfg.bf16 else None)
    return _Study(cfg, p, out, inputs, image, prompts, motion_control_prompts(prompts, inputs.labels, p.eval), gen_kw,
                  amp)


def use_channels_last(cfg: AblationConfig) -> bool:
    """``cfg.channels_last``, or by default on CPU (measured faster there; on GPU the layout is left to the user)."""
    return cfg.channels_last if cfg.channels_last is not None else str(cfg.device).startswith("cpu")


def _memory_format(cfg: AblationConfig, pipe):
    """Every UNet of the study goes through here (the image model, each inflated row, the untrained row), so all of
    them use one layout: rows computed in different processes then round alike."""
    if use_channels_last(cfg):
        from .models.layers import channels_last_
        channels_last_(pipe.unet)
    return pipe


def _row(st: _Study, v: str, stage) -> None:
    """One row of the table: inflate the image model, fine-tune, generate the prompt set and the motion-control
    set (``Untrained``: generate from the random-init video model). Every step skips what is already on disk."""
    from .harness import generate_prompt_set
    from .train import Trainer
    cfg, cfg_out, p = st.cfg, st.out, st.p
    vdir = cfg_out / "variants" / v
    if v == UNTRAINED:
        raw = _memory_format(cfg, st.inputs.untrained().to(st.cfg.device).eval())
        with stage("Untrained: generate"):
            generate_prompt_set(raw, st.prompts, vdir, first_frames_dir=vdir / "first_frames", **st.gen_kw)
        return
    pipe = _memory_format(cfg, st.image.inflated(v, train_spatial=p.train.train_spatial))   # new temporal convs too
    if cfg.compile:     # compiles forward in place; state_dict keys stay the same (no '_orig_mod.')
        pipe.unet.compile()
    with stage(f"{v}: fine-tune"):
        tr = Trainer(pipe, "video", st.inputs.data, p.train, vdir, progress=cfg.progress, device=cfg.device,
                     autocast_dtype=st.amp)
        tr.fit()
        pipe.load_state_dict(tr.ema_state_dict())
    pipe.eval()
    with stage(f"{v}: generate"):
        generate_prompt_set(pipe, st.prompts, vdir, first_frames_dir=cfg_out / "first_frames", image_pipe=st.image,
                            **st.gen_kw)
    if st.control_prompts is not None:
        with stage(f"{v}: motion control"):
            generate_prompt_set(pipe, st.control_prompts, vdir / CONTROL, first_frames_dir=cfg_out / "first_frames",
                                image_pipe=st.image, **st.gen_kw)


def _evaluators(st: _Study, stage):
    """The synthetic evaluators (FVD-syn, CLIPSIM-syn, attribute accuracy), trained once and cached on disk; None
    when the run's metrics need none of them."""
    if not {"fvd_syn", "clipsim_syn", "attr_acc"} & set(st.inputs.metrics):
        return None
    from .metrics.evaluators import load_or_train_evaluators
    with stage("evaluators"):
        return load_or_train_evaluators(st.inputs.data_cfg, st.p.eval.evaluator_preset, progress=st.cfg.progress,
                                        device=st.cfg.device)


def _evaluate_row(st: _Study, name: str, ev, raft) -> dict:
    """The summary of one row (``evaluate_folder``, cached in its summary.json): its videos, and for a trained
    variant the paired motion-control videos; ``REAL``: the true test clips."""
    from .harness import load_samples, sample_names
    cfg = st.cfg
    samples = sample_names(st.prompts, cfg.samples_per_prompt)
    names, texts, requested = [x[0] for x in samples], [x[1] for x in samples], [x[3] for x in samples]
    requested = None if requested[0] is None else np.asarray(requested, dtype=np.float64)
    folder = st.out / "variants" / name
    videos = st.inputs.real_videos if name == REAL else load_samples(folder, names)
    control = None
    if st.control_prompts is not None and name in cfg.variants:
        cnames = [s[0] for s in sample_names(st.control_prompts, cfg.samples_per_prompt)]
        control = (load_samples(folder / CONTROL, cnames),
                   np.repeat(st.control_prompts.motion.to_numpy(np.float64), cfg.samples_per_prompt))
    return evaluate_folder(folder, videos, names, texts, requested, st.inputs.reference, ev, st.p, cfg, control,
                           raft, metrics=st.inputs.metrics, detectors=st.inputs.detectors)


def row_jobs(cfg: AblationConfig, dist, n_rows: int) -> tuple[int, int]:
    """(worker processes, torch threads per worker) for the rows. ``cfg.jobs`` None = auto: on a CPU run outside
    torchrun, one worker per core (at most one per row), each with cores // jobs threads; otherwise 1.

    Why: at the quick widths a fine-tuning step is thousands of small kernels that two threads share poorly, so
    two one-thread processes on two cores train two rows at once: 2.67 training steps per second of the machine
    against 1.75 for one 2-thread process (x1.56 pair by pair; ``benchmarks/bench_threads.py --jobs 2 --mode
    video``). Generation and RAFT are compute-bound and gain nothing, lose nothing. Every row is seeded by what it
    is, so the table is the same with any number of jobs at the same threads per process
    (tests/test_ablation.py)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if dist.world > 1:           # under torchrun the ranks share each row (DDP); rows stay one after the other
        jobs = 1
    elif cfg.jobs is not None:
        jobs = max(1, min(int(cfg.jobs), n_rows))
    elif str(cfg.device).startswith("cpu") and dist.world == 1 and not cfg.compile:
        jobs = max(1, min(cores, n_rows))
    else:
        jobs = 1
    return jobs, cfg.threads or max(1, cores // jobs)


_WORKER: dict = {}


def _exit_with_parent(parent: int, poll_s: float = 0.2) -> None:
    """End this worker as soon as the parent process ``parent`` is gone (already gone included: a worker still
    starting up when its parent died has been re-parented by now). Why: pool workers outlive a parent killed with
    SIGKILL (the OOM killer, ``kill -9``), and an orphan still training a row would write into OUT beside the
    re-run that resumes it."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _worker_init(cfg: AblationConfig, threads: int, parent: int) -> None:
    import signal
    _exit_with_parent(parent)
    # Ctrl-C reaches the whole process group: the parent prints the one "interrupted" line and ends the workers,
    # so a worker must not print a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing RLock, a semaphore that a worker ended by the parent would leave to
    # multiprocessing's resource tracker (a "leaked semaphore" warning at exit); the workers draw no bars
    import threading
    from tqdm.auto import tqdm
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    _WORKER["cfg"] = cfg


def _worker_parts(side: bool, stage=None):
    """(study, evaluators, RAFT) of this worker, built on its first task. Rows: every part is on disk (the parent
    prepared it, the image model included), so this loads, it does not recompute. The side lane: the parts that
    do not need the image model (``_prepare(pretrain=False)``), the labels and evaluators computed here."""
    key = "side" if side else "rows"
    if key not in _WORKER:
        from .harness import Dist
        from .metrics.motion import load_raft
        cfg = _WORKER["cfg"]
        stage = stage or (lambda name: contextlib.nullcontext())
        st = _prepare(cfg, Dist(), stage, pretrain=not side)
        _WORKER[key] = (st, _evaluators(st, stage), load_raft(device=cfg.device))
    return _WORKER[key]


def _timer(timings: dict, prefix: str = ""):
    @contextlib.contextmanager
    def stage(name):
        t = time.perf_counter()
        yield
        timings[prefix + name] = time.perf_counter() - t
    return stage


def _worker_row(v: str, side: bool = False, timings: dict | None = None) -> tuple[str, dict]:
    timings = {} if timings is None else timings
    stage = _timer(timings)
    st, ev, raft = _worker_parts(side)
    if v != REAL:
        _row(st, v, stage)
    with stage(f"{v}: evaluate"):
        _evaluate_row(st, v, ev, raft)
    return v, timings


def _worker_side(rows: list[str]) -> tuple[str, dict]:
    """The side lane: motion labels (into the label cache), evaluators (into theirs), then ``rows`` (Untrained,
    Real clips), all while the parent pretrains the image model."""
    timings: dict[str, float] = {}
    _worker_parts(True, _timer(timings, "side lane: "))        # "side lane: benchmark" = clips and motion labels
    for v in rows:
        _worker_row(v, side=True, timings=timings)
    del _WORKER["side"]                                           # its random-init image model is not the study's
    return "side lane", timings


def _stop(pool) -> None:
    """Cancel what has not started and end the running workers (before Python 3.14 there is no public way)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
    pool.shutdown(wait=True)     # the pool's manager thread has seen the ended workers before the error goes up


class _Workers:
    """``jobs`` spawned worker processes for the rows (and the side lane), each with ``threads`` torch threads.

    Each worker builds the study's parts on its first task and keeps them. Rows are handed out in the order given.
    A failure in one worker stops them all and is raised in the parent; what the finished rows wrote is kept, so a
    re-run resumes. ``timings``: the stage times the workers measured."""

    def __init__(self, cfg: AblationConfig, jobs: int, threads: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        self.cfg, self.jobs, self.threads = cfg, jobs, threads
        self.timings: dict[str, float] = {}
        self.side_done: list[str] = []
        # spawn, not fork: a forked child would inherit torch's thread pools and OpenMP state mid-use. A pool of
        # processes (not multiprocessing.Pool) so that a worker killed by the system fails the run instead of
        # hanging it
        self.pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                        initargs=(dataclasses.replace(cfg, progress=False), threads, os.getpid()))

    def _submit(self, fn, *args):
        import signal
        # a submit may start a worker (spawned ones start on demand, when no worker is idle): with SIGINT ignored
        # meanwhile, it starts with SIGINT ignored (an ignored signal stays ignored across exec), so a Ctrl-C while
        # it imports is not a traceback of its own
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return self.pool.submit(fn, *args)
        finally:
            signal.signal(signal.SIGINT, previous)

    def start_side(self, rows: list[str]) -> None:
        self._side = (self._submit(_worker_side, rows), rows)

    def wait_side(self) -> None:
        fut, rows = self._side
        _, t = self._result(fut)
        self.timings.update(t)
        self.side_done = list(rows)
        if self.cfg.progress:
            print("side lane: " + ", ".join(f"{k.removeprefix('side lane: ')} {v:.0f} s" for k, v in t.items()),
                  flush=True)

    def rows(self, tasks: list[str]) -> None:
        from concurrent.futures import as_completed
        from tqdm.auto import tqdm
        futures = [self._submit(_worker_row, v) for v in tasks]
        bar = tqdm(total=len(tasks), desc=f"rows ({self.jobs} jobs x {self.threads} thread(s))",
                   disable=not self.cfg.progress)
        try:
            for fut in as_completed(futures):
                v, t = self._result(fut)
                self.timings.update(t)
                bar.update(1)
                if self.cfg.progress:
                    bar.write(f"{v}: " + ", ".join(f"{k.split(': ', 1)[-1]} {s:.0f} s" for k, s in t.items()))
        finally:
            bar.close()

    def _result(self, fut):
        from concurrent.futures.process import BrokenProcessPool
        try:
            return fut.result()
        except BrokenProcessPool as e:
            raise RuntimeError(f"a row worker process died ({e}); the rows finished so far are kept in "
                               f"{self.cfg.out}: re-run the same command to resume (--jobs 1 trains one row at "
                               "a time)") from None

    def close(self) -> None:
        self.pool.shutdown()

    def stop(self) -> None:
        _stop(self.pool)


def _text_len(image, prompts) -> int:
    """Tokens the UNet sees for these prompts (for the GFLOPs column)."""
    tokens, _ = image.encode_text(list(prompts.prompt[:8]))
    return int(tokens.shape[1])


def motion_control_prompts(prompts: pd.DataFrame, labels, ecfg) -> pd.DataFrame | None:
    """The paired motion-control set: the first ``ecfg.motion_control_prompts`` prompts, each requesting the
    other end of the training motion range (the high quantile if its own request is below the median label,
    else the low one). None when off or when the prompt set requests no motion."""
    n = min(ecfg.motion_control_prompts, len(prompts))
    if n < 2 or "motion" not in prompts.columns:
        return None
    lo, mid, hi = np.quantile(np.asarray(labels, dtype=np.float64), [ecfg.motion_control_quantiles[0], 0.5,
                                                                     ecfg.motion_control_quantiles[1]])
    ctl = prompts.head(n).copy()
    ctl["motion"] = np.where(ctl["motion"].to_numpy(np.float64) < mid, hi, lo)
    return ctl


def evaluate_folder(folder: Path, videos, names, texts, requested, reference, ev, p, cfg, control=None,
                    raft=None, metrics=None, detectors=None) -> dict:
    """Evaluate one row's videos (cached in ``folder/summary.json`` keyed by the videos' content hash).

    ``control``: (videos, requested) of the paired motion-control set, aligned with the first videos of the row.
    """
    import hashlib
    from .metrics.core import evaluate_videos
    h = hashlib.sha256((videos * 255).round().to(torch.uint8).numpy().tobytes())
    if control is not None:
        h.update((control[0] * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(np.asarray(control[1], dtype=np.float64).tobytes())
    digest = h.hexdigest()[:16]
    summ_path = folder / "summary.json"
    if summ_path.is_file():
        old = json.loads(summ_path.read_text())
        if old.get("videos_sha256") == digest:
            return old
    detectors = detectors or {}
    per_video, summary = evaluate_videos(videos, texts, requested_motion=requested, reference_videos=reference,
                                         evaluators=ev, names=names, raft=raft, device=cfg.device,
                                         progress=cfg.progress, n_boot=p.eval.bootstrap,
                                         metrics=metrics or ("fvd_syn", "clipsim_syn", "attr_acc", "motion"),
                                         i3d=detectors.get("i3d"), clip=detectors.get("clip"))
    if control is not None and requested is not None:
        from .metrics.agreement import motion_control
        from .metrics.motion import motion_score
        c_videos, c_requested = control
        k = c_videos.shape[0]
        measured = motion_score(c_videos, raft, device=cfg.device)
        summary["metrics"]["motion_control"] = motion_control(
            per_video["motion"].to_numpy()[:k], measured.numpy(), requested[:k], c_requested,
            level=p.eval.ci, n_boot=p.eval.bootstrap)
        per_video["control_requested"] = np.concatenate([c_requested, np.full(len(names) - k, np.nan)])
        per_video["control_motion"] = np.concatenate([measured.numpy(), np.full(len(names) - k, np.nan)])
    folder.mkdir(parents=True, exist_ok=True)
    from .utils import atomic_write_text
    atomic_write_text(folder / "per_video.csv", per_video.to_csv(index=False))
    summary = {**summary, "videos_sha256": digest}
    atomic_write_json(summ_path, summary)
    return summary


def _train_stats(run_dir: Path) -> dict:
    from .train import read_stats
    recs = read_stats(run_dir)
    if not recs:
        return {}
    return {"clips_per_s": float(np.mean([r["samples_per_s"] for r in recs])), "final_loss": recs[-1]["loss"],
            "steps": recs[-1]["step"]}
