"""Command line: evaluate a folder of generated videos against their prompts.

    python -m kv_research.evaluate --videos DIR --prompts FILE [--metrics fvd,clipsim,motion,fvd_syn,
        clipsim_syn,attr_acc] [--reference DIR] --out DIR

Videos: .mp4/.avi/.webm/.gif/.mov/.mkv (decoded by ``kv_research.data.video.read_video``) or .npy/.npz holding
(T,H,W,3) uint8 (.npz: key ``video`` or a single array). Prompts: a CSV with columns ``video`` (file name, with
or without extension), ``prompt`` and optionally ``motion`` (requested motion score), or a .txt with one prompt
per line in the sorted order of the video files. Writes ``OUT/per_video.csv`` (column ``video``, then one
column per metric) and ``OUT/summary.json`` (each metric with its interval, N, detector name and hash).

Everything that can be checked without decoding a video is checked first (paths, prompt matching, metric
names, weight files), so a typo fails in a second, not after an hour of I3D.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from .utils import atomic_write_json, atomic_write_text

MEDIA_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mov", ".mkv", ".m4v")
ARRAY_EXTENSIONS = (".npy", ".npz")
DEFAULT_METRICS = "fvd_syn,clipsim_syn,attr_acc,motion"


class EvaluateInputError(ValueError):
    """A problem with the command-line inputs, found before any work."""


def list_videos(folder: Path, what: str = "videos") -> list[Path]:
    if not folder.is_dir():
        raise EvaluateInputError(f"--{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS + ARRAY_EXTENSIONS)
    if not files:
        raise EvaluateInputError(f"no video files in {folder} (looked for {', '.join(MEDIA_EXTENSIONS + ARRAY_EXTENSIONS)})")
    return files


def read_prompts(path: Path, videos: list[Path]) -> tuple[list[str], np.ndarray | None]:
    """Prompts (and requested motion, if the CSV has it) aligned with ``videos``; mismatches are errors."""
    if not path.is_file():
        raise EvaluateInputError(f"--prompts file not found: {path}")
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != len(videos):
            raise EvaluateInputError(f"{path} has {len(lines)} prompts but {videos[0].parent} has "
                                     f"{len(videos)} videos; a .txt must hold one prompt per video, in sorted "
                                     f"file-name order ({videos[0].name} ... {videos[-1].name})")
        return [ln.strip() for ln in lines], None
    df = pd.read_csv(path, keep_default_na=False, dtype={"video": str, "prompt": str})
    missing = [c for c in ("video", "prompt") if c not in df.columns]
    if missing:
        raise EvaluateInputError(f"{path}: missing columns {missing}; found {list(df.columns)} "
                                 "(need 'video', 'prompt', optional 'motion')")
    by_name = {}
    for i, v in enumerate(df["video"]):
        for key in {v, Path(v).name, Path(v).stem}:
            by_name.setdefault(key, []).append(i)
    rows, unmatched = [], []
    for p in videos:
        hits = by_name.get(p.name) or by_name.get(p.stem)
        if not hits:
            unmatched.append(p.name)
        elif len(set(hits)) > 1:
            raise EvaluateInputError(f"{path}: video {p.name} matches several rows {sorted(set(hits))}")
        else:
            rows.append(hits[0])
    if unmatched:
        raise EvaluateInputError(f"{len(unmatched)} videos have no row in {path}: {unmatched[:10]}")
    extra = sorted(set(range(len(df))) - set(rows))
    if extra:
        raise EvaluateInputError(f"{len(extra)} rows of {path} name no video file: {list(df['video'].iloc[extra][:10])}")
    prompts = [df["prompt"].iloc[r] for r in rows]
    empty = [videos[i].name for i, pr in enumerate(prompts) if not pr.strip()]
    if empty:
        raise EvaluateInputError(f"empty prompts for {empty[:10]} in {path}")
    motion = None
    if "motion" in df.columns:
        try:
            motion = np.array([float(df["motion"].iloc[r]) for r in rows])
        except ValueError as e:
            raise EvaluateInputError(f"{path}: column 'motion' must be numeric ({e})") from e
    return prompts, motion


def load_video(path: Path, num_frames: int | None, size: int | None) -> torch.Tensor:
    """(3,T,H,W) float [0,1]. Arrays: first ``num_frames`` frames, short side to ``size`` + centre crop."""
    if path.suffix.lower() not in ARRAY_EXTENSIONS:
        from .data.video import read_video
        return read_video(path, num_frames=num_frames, size=size)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if "video" not in z.files and len(z.files) != 1:
                    raise EvaluateInputError(f"{path}: npz needs key 'video' or exactly one array, has {z.files}")
                arr = z["video" if "video" in z.files else z.files[0]]
    except (OSError, ValueError) as e:
        raise EvaluateInputError(f"{path}: cannot read array ({e})") from e
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise EvaluateInputError(f"{path}: expected uint8 (T,H,W,3), got {arr.dtype} {arr.shape}")
    if num_frames is not None:
        if arr.shape[0] < num_frames:
            raise EvaluateInputError(f"{path}: {arr.shape[0]} frames, {num_frames} needed")
        arr = arr[:num_frames]
    video = rearrange(torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0, "t h w c -> c t h w")
    if size is not None:
        _, t, h, w = video.shape
        s = size / min(h, w)
        hh, ww = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(rearrange(video, "c t h w -> t c h w"), size=(hh, ww), mode="bilinear",
                          align_corners=False, antialias=True)
        top, left = (hh - size) // 2, (ww - size) // 2
        video = rearrange(x[:, :, top:top + size, left:left + size], "t c h w -> c t h w").clamp(0, 1)
    return video.contiguous()


def load_folder(files: list[Path], num_frames, size, what: str, progress: bool) -> torch.Tensor:
    videos = [load_video(p, num_frames, size) for p in tqdm(files, desc=f"read {what}", disable=not progress)]
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name}: {tuple(v.shape[1:])}" for p, v in list(zip(files, videos))[:6])
        raise EvaluateInputError(f"{what} differ in (T,H,W) ({detail} ...); pass --num-frames and --size")
    return torch.stack(videos)


def folder_id(files: list[Path], num_frames, size) -> str:
    """Dataset id for the reference-statistics cache: file names, sizes, mtimes and read options."""
    h = hashlib.sha256(f"{num_frames}|{size}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{files[0].parent.name}-{h.hexdigest()[:16]}"


def preflight_weights(metrics: list[str], args) -> None:
    """Fail now, with the weights' own message, if a detector file is missing."""
    from .weights import find_weights
    if "fvd" in metrics:
        find_weights("i3d_torchscript", args.i3d)
    if "clipsim" in metrics:
        from .metrics.clipsim import _find_clip_weights
        _find_clip_weights(args.clip)
    if "motion" in metrics:
        from .weights import MissingWeightsError
        errors = []
        for key in ("raft_small_tv", "raft_small_princeton"):
            try:
                find_weights(key, args.raft)
                return
            except MissingWeightsError as e:
                errors.append(str(e))
        raise MissingWeightsError("motion needs RAFT-small weights:\n\n" + "\n\n".join(errors))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kv_research.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", required=True, type=Path, help="folder of generated videos")
    ap.add_argument("--prompts", required=True, type=Path, help="CSV (video,prompt[,motion]) or .txt")
    ap.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma list (default {DEFAULT_METRICS})")
    ap.add_argument("--reference", type=Path, help="folder of real videos (required for fvd)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--num-frames", type=int, help="keep the first N frames of every video")
    ap.add_argument("--size", type=int, help="short side to SIZE px, centre crop")
    ap.add_argument("--i3d", help="path of i3d_torchscript.pt (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--fvd-repeat-short", action="store_true",
                    help="FVD: resample clips shorter than 16 frames by index repetition (recorded in summary)")
    ap.add_argument("--clip", help="path of the CLIP ViT-B/32 weights (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--raft", help="path of RAFT-small weights (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--evaluator-preset", default="quick", help="synthetic evaluators: smoke | quick")
    ap.add_argument("--data-size", type=int, default=32, help="synthetic benchmark frame size (evaluators)")
    ap.add_argument("--data-frames", type=int, default=8, help="synthetic benchmark clip length (evaluators)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .metrics.core import METRICS
    from .weights import MissingWeightsError
    progress = not args.no_progress
    try:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise EvaluateInputError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        files = list_videos(args.videos, "videos")
        prompts, motion = read_prompts(args.prompts, files)
        ref_files = list_videos(args.reference, "reference") if args.reference else None
        if "fvd" in metrics and ref_files is None:
            raise EvaluateInputError("metric 'fvd' needs --reference DIR (real videos)")
        preflight_weights(metrics, args)
        videos = load_folder(files, args.num_frames, args.size, "videos", progress)
        reference = load_folder(ref_files, args.num_frames, args.size, "reference", progress) if ref_files else None
        if "fvd" in metrics and not args.fvd_repeat_short:
            from .metrics.fvd import FVDProtocol
            need = FVDProtocol().frames
            short = [(w, v.shape[2]) for w, v in (("videos", videos), ("reference", reference))
                     if v is not None and v.shape[2] < need]
            if short:
                raise EvaluateInputError(f"FVD needs clips of >= {need} frames, got {short}; pass longer videos or "
                                         "--fvd-repeat-short (index repetition, recorded in the summary)")
    except (EvaluateInputError, MissingWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from .data.synthetic import SyntheticConfig
    from .metrics.core import evaluate_videos
    from .metrics.fvd import FVDProtocol
    per_video, summary = evaluate_videos(
        videos, prompts, requested_motion=motion, reference_videos=reference, metrics=metrics,
        names=[p.name for p in files], i3d=args.i3d, clip=args.clip,
        raft=_load_raft(args.raft, args.device) if "motion" in metrics else None,
        data_cfg=SyntheticConfig(size=args.data_size, frames=args.data_frames), evaluator_preset=args.evaluator_preset,
        reference_id=folder_id(ref_files, args.num_frames, args.size) if ref_files else None,
        fvd_protocol=FVDProtocol(short_clips="repeat" if args.fvd_repeat_short else "error"),
        batch_size=args.batch_size, device=args.device, n_boot=args.n_boot, seed=args.seed, progress=progress)
    summary["inputs"] = {"videos": str(args.videos), "prompts": str(args.prompts),
                         "reference": str(args.reference) if args.reference else None,
                         "num_frames": args.num_frames, "size": args.size}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "per_video.csv", per_video.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(args.out / "summary.json", summary)
    for name, m in summary["metrics"].items():
        print(f"{name:12s} {m['value']:.4f}  [{m['ci_low']:.4f}, {m['ci_high']:.4f}]  N={m['n']}  "
              f"{m.get('detector', '')}")
    print(f"wrote {args.out / 'per_video.csv'} and {args.out / 'summary.json'}")
    return 0


def _load_raft(path, device):
    from .metrics.motion import load_raft
    return load_raft(path=path, device=device)


if __name__ == "__main__":
    from kv_research.cli import run
    sys.exit(run(main))
