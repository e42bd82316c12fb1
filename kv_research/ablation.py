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
with another configuration is refused before any work.
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

from .config import get_preset
from .models.temporal import DEFAULT_STUDY, get_variant
from .utils import atomic_write_json, config_hash, to_jsonable

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

    def identity(self) -> dict:
        """What makes two runs the same run (the variant list may grow; the folder and device may change)."""
        d = to_jsonable(self)
        for k in ("variants", "out", "device", "progress", "compile"):
            d.pop(k)
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
        if not hasattr(sub, name):
            raise ValueError(f"override '{key}': {type(sub).__name__} has no field '{name}'")
        p = dataclasses.replace(p, **{section: dataclasses.replace(sub, **{name: value})})
    return p


# ------------------------------------------------------------------------------------------------ checks
def validate(cfg: AblationConfig) -> None:
    """Everything that can be checked before any work: variants, prompts, the output folder."""
    from .harness import load_prompt_table
    for v in cfg.variants:
        get_variant(v)           # raises with the list of known names
    if len(set(cfg.variants)) != len(cfg.variants):
        raise ValueError(f"variant listed twice: {list(cfg.variants)}")
    ecfg = resolved_preset(cfg).eval
    q = ecfg.motion_control_quantiles
    if ecfg.motion_control_prompts < 0 or len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
        raise ValueError(f"eval.motion_control_prompts must be >= 0 (got {ecfg.motion_control_prompts}) and "
                         f"eval.motion_control_quantiles two increasing numbers in [0, 1] (got {q})")
    if cfg.prompts is not None:
        load_prompt_table(cfg.prompts)
    from .metrics.motion import MotionLabelCache
    MotionLabelCache(device=cfg.device)      # RAFT weights present and verified, before any training
    out = Path(cfg.out)
    run_json = out / "run.json"
    if run_json.is_file():
        try:
            old = json.loads(run_json.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_json} is not valid JSON ({e}); move the folder away or choose another --out")
        if old.get("config_hash") != run_hash(cfg):
            raise ValueError(
                f"{out} holds a different run (config hash {old.get('config_hash')}, this one "
                f"{run_hash(cfg)}; its config: {json.dumps(old.get('config', {}).get('preset'))}). "
                "Choose another --out; nothing was changed.")
        for v in cfg.variants:   # a checkpoint left by another variant or config in a variant's folder
            ck = out / "variants" / v / "checkpoints" / "last.json"
            if ck.is_file():
                got = json.loads(ck.read_text()).get("variant")
                if got != v:
                    raise ValueError(f"{ck} is a checkpoint of variant '{got}', but this folder is for '{v}'; "
                                     "remove it or choose another --out")
    elif out.is_dir() and any(out.iterdir()) and not (out / "benchmark").is_dir():
        raise ValueError(f"{out} exists, is not empty and holds no ablation run; choose another --out")


def plan(cfg: AblationConfig) -> dict:
    p = resolved_preset(cfg)
    return {"config": to_jsonable(cfg), "config_hash": run_hash(cfg), "preset": to_jsonable(p),
            "stages": ["benchmark", "motion labels", f"image pretraining ({p.train.image_steps} steps)"]
            + [f"{v}: fine-tune {p.train.video_steps} steps, generate"
               + (f", motion control ({p.eval.motion_control_prompts} prompts)" if p.eval.motion_control_prompts
                  else "") + ", evaluate" for v in cfg.variants]
            + (["Untrained: generate, evaluate"] if cfg.include_untrained else []) + ["tables, figures"]}


# --------------------------------------------------------------------------------------------------- run
def run_ablation(cfg: AblationConfig) -> pd.DataFrame:
    from .data.synthetic import build_benchmark, load_prompts, make_clip
    from .harness import generate_prompt_set, init_distributed, load_prompt_table, load_samples
    from .metrics.evaluators import load_or_train_evaluators
    from .metrics.motion import MotionLabelCache
    from .pipeline import KeyframePipeline
    from .train import TrainData, Trainer

    validate(cfg)
    t_start = time.perf_counter()
    dist = init_distributed(cfg.device)
    p = resolved_preset(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    run_json = out / "run.json"
    prev = json.loads(run_json.read_text()) if run_json.is_file() else {}
    meta = {**plan(cfg), "timings_s": prev.get("timings_s", {}), "torch": torch.__version__,
            "variants_done": prev.get("variants_done", [])}
    if dist.main:
        atomic_write_json(run_json, meta)

    def stage(name):
        class _T:
            def __enter__(s):
                s.t = time.perf_counter()

            def __exit__(s, *a):
                timings[name] = time.perf_counter() - s.t
        return _T()

    # 1. benchmark files and data ----------------------------------------------------------------------
    data_cfg = p.synthetic_config()
    with stage("benchmark"):
        if dist.main:
            build_benchmark(out / "benchmark", data_cfg)
        dist.barrier()
        prompts = load_prompt_table(cfg.prompts) if cfg.prompts else load_prompts(out / "benchmark" / "test.csv")
        train_clips = [make_clip(i, data_cfg, "train") for i in range(data_cfg.n_train)]
        clips = torch.stack([c.video for c in train_clips])
        captions = [c.caption for c in train_clips]
    with stage("motion labels"):
        labels = MotionLabelCache(device=cfg.device).label_synthetic(data_cfg, "train", progress=cfg.progress)
    data = TrainData(clips, captions, torch.as_tensor(labels, dtype=torch.float32))

    # 2. text-to-image pretraining (once, shared by every variant) --------------------------------------
    torch.manual_seed(cfg.seed)
    image = KeyframePipeline.from_preset(p)
    with stage("image pretraining"):
        tr = Trainer(image, "image", data, p.train, out / "image", progress=cfg.progress, device=cfg.device)
        tr.fit()
        image.load_state_dict(tr.ema_state_dict())     # inflate from the EMA weights
    image.eval()

    gen_kw = dict(frames=p.frames, size=p.size, samples_per_prompt=cfg.samples_per_prompt,
                  batch_size=p.eval.batch_size, base_seed=cfg.seed, dist=dist, progress=cfg.progress,
                  autocast_dtype=torch.bfloat16 if cfg.bf16 else None)
    rows_dirs: dict[str, Path] = {}
    control_prompts = motion_control_prompts(prompts, labels, p.eval)

    # 3. each variant: inflate, fine-tune, generate ------------------------------------------------------
    for v in cfg.variants:
        vdir = out / "variants" / v
        pipe = image.inflated(v, train_spatial=p.train.train_spatial)
        if cfg.compile:     # compiles forward in place; state_dict keys stay the same (no '_orig_mod.')
            pipe.unet.compile()
        with stage(f"{v}: fine-tune"):
            tr = Trainer(pipe, "video", data, p.train, vdir, progress=cfg.progress, device=cfg.device)
            tr.fit()
            pipe.load_state_dict(tr.ema_state_dict())
        pipe.eval()
        with stage(f"{v}: generate"):
            generate_prompt_set(pipe, prompts, vdir, first_frames_dir=out / "first_frames", image_pipe=image,
                                **gen_kw)
        if control_prompts is not None:
            with stage(f"{v}: motion control"):
                generate_prompt_set(pipe, control_prompts, vdir / CONTROL, first_frames_dir=out / "first_frames",
                                    image_pipe=image, **gen_kw)
        rows_dirs[v] = vdir
        del pipe
    if cfg.include_untrained:
        torch.manual_seed(cfg.seed + 1)
        raw = KeyframePipeline.from_preset(p, "Conv1dAttn1dBlocks").to(cfg.device).eval()
        udir = out / "variants" / UNTRAINED
        with stage("Untrained: generate"):
            generate_prompt_set(raw, prompts, udir, first_frames_dir=udir / "first_frames", **gen_kw)
        rows_dirs[UNTRAINED] = udir
        del raw

    if not dist.main:
        return pd.DataFrame()

    # 4. evaluation ---------------------------------------------------------------------------------------
    from .harness import sample_names
    samples = sample_names(prompts, cfg.samples_per_prompt)
    names, texts, requested = [x[0] for x in samples], [x[1] for x in samples], [x[3] for x in samples]
    requested = None if requested[0] is None else np.asarray(requested, dtype=np.float64)
    with stage("evaluators"):
        ev = load_or_train_evaluators(data_cfg, p.eval.evaluator_preset, progress=cfg.progress, device=cfg.device)
    from .metrics.motion import load_raft
    raft = load_raft(device=cfg.device)    # one RAFT for every row's motion columns and motion-control pairs
    extra = range(len(clips), cfg.n_reference)   # the train clips already rendered, then more of the split
    reference = torch.cat([clips[:cfg.n_reference]] + ([torch.stack([make_clip(i, data_cfg, "train").video
                                                                      for i in extra])] if len(extra) else []))
    summaries: dict[str, dict] = {}
    real_dir = out / "variants" / REAL
    real_videos = None
    if not cfg.prompts:   # the synthetic test clips themselves, for the "Real clips" row
        real_videos = torch.stack([make_clip(i, data_cfg, "test").video for i in range(len(prompts))])
        real_videos = real_videos.repeat_interleave(cfg.samples_per_prompt, 0)
    for name, folder in list(rows_dirs.items()) + ([(REAL, real_dir)] if real_videos is not None else []):
        with stage(f"{name}: evaluate"):
            videos = real_videos if name == REAL else load_samples(folder, names)
            control = None
            if control_prompts is not None and name in cfg.variants:
                cnames = [s[0] for s in sample_names(control_prompts, cfg.samples_per_prompt)]
                control = (load_samples(folder / CONTROL, cnames),
                           np.repeat(control_prompts.motion.to_numpy(np.float64), cfg.samples_per_prompt))
            summaries[name] = evaluate_folder(folder, videos, names, texts, requested, reference, ev, p, cfg,
                                              control, raft)

    # 5. table, figures, run.json -------------------------------------------------------------------------
    from .tables import build_table, write_figures, write_tables
    stats = {v: _train_stats(out / "variants" / v) for v in cfg.variants}
    from .variants import variant_table
    arch = {r["name"]: r for r in variant_table(cfg.preset, [v for v in cfg.variants] + ["Conv1dAttn1dBlocks"],
                                                 device="meta")}
    table = build_table(summaries, arch, stats, order=list(cfg.variants) + [UNTRAINED, REAL])
    protocol = {"N": len(names), "frames": p.frames, "resolution": p.size, "n_reference": cfg.n_reference,
                "detectors": {m["detector"]: m.get("detector_sha256") for s in summaries.values()
                              for m in s.get("metrics", {}).values() if isinstance(m, dict) and "detector" in m},
                "evaluator_quality": ev.report.get("quality", ev.report)}
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
                    raft=None) -> dict:
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
    per_video, summary = evaluate_videos(videos, texts, requested_motion=requested, reference_videos=reference,
                                         evaluators=ev, names=names, raft=raft, device=cfg.device,
                                         progress=cfg.progress,
                                         n_boot=p.eval.bootstrap)
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
