"""Command line: evaluate a folder of generated videos against their prompts.

    python -m kv_research.evaluate --videos DIR --prompts FILE [--metrics fvd,clipsim,motion,fvd_syn,
        clipsim_syn,attr_acc,dynamic_degree,flow_score | synthetic] [--reference DIR] --out DIR [--strict]
        [--overwrite] [--motion-protocol suite|vbench [--fps FPS]]

Videos: .mp4/.avi/.webm/.gif/.mov/.mkv (decoded by ``kv_research.data.video.read_video``) or .npy/.npz holding
(T,H,W,3) uint8 (.npz: key ``video`` or a single array). Prompts: a CSV with columns ``video`` (file name, with
or without extension), ``prompt`` and optionally ``motion`` (requested motion score), or a .txt with one prompt
per line in the sorted order of the video files. Writes ``OUT/per_video.csv`` (column ``video``, then one
column per metric) and ``OUT/summary.json`` (each metric with its interval, N, detector name and hash; ``inputs``
with an ``id`` of what was evaluated; ``skipped``; ``metrics_skipped``).

Default metrics: the real ones a user evaluating their own generator expects, ``fvd,clipsim,motion``. Without
``--metrics`` each of them whose reference (``--reference`` for FVD) or detector weights are missing is left out
with one line ``metric NAME skipped: reason`` on stderr and listed in ``summary.json["metrics_skipped"]``; an
explicit ``--metrics`` makes a missing one an error instead. ``--metrics synthetic`` is the synthetic benchmark's
set (``fvd_syn,clipsim_syn,attr_acc,motion``: evaluators trained on the synthetic videos, meaningful only for them).

Motion metrics, from one RAFT pass: ``motion`` (this project's score, ``metrics/motion.py``), ``dynamic_degree``
(VBench: the fraction of dynamic videos) and ``flow_score`` (EvalCrafter: mean |flow| in input pixels). Each
summary entry has a ``protocol`` naming the convention and how this implementation differs from the original
(RAFT-small at a 128-px working size, frames as given). ``--motion-protocol vbench`` computes ``dynamic_degree``
with VBench's own protocol instead (every round(fps/8)-th native frame, 20 RAFT refinements, native resolution;
``metrics.motion.vbench_motion_stats``); the frame rate is the clips' own (video files) or ``--fps`` (needed for
.npy/.npz, and overriding the files'); clips of different frame rates, or too short to keep 2 frames, are errors.
``summary.json["metrics"]["dynamic_degree"]["protocol"]["variant"]`` records which protocol was used.

Bad inputs (issue 13): each gets a clear error -- exit status 2 and one line ``error: ...`` naming the file or the
option and its value (``--debug`` or ``KV_DEBUG=1`` shows the traceback instead) -- or a visible skip. Everything
that can be checked without decoding a video is checked first, so a typo fails in a second, not after an hour of
I3D:

1. Options: argparse's own errors are one line too; ``--batch-size`` >= 1, ``--n-boot`` in [1, 10^6],
   ``--num-frames`` >= 1 (>= 2 with a motion metric), ``--size`` in [8, 4096], ``--data-size`` in [8, 1024],
   ``--data-frames`` in [2, 256], ``--seed`` >= 0, ``--device`` a torch device that exists, ``--evaluator-preset``
   a known preset; metric names are checked against ``metrics.core.METRICS``; ``--motion-protocol`` is suite or
   vbench (vbench only with ``dynamic_degree``), ``--fps`` in (0, 1000] and only with ``--motion-protocol vbench``.
2. Output folder: an ``--out`` that is a file, lies under a file or cannot be written in is refused. An ``--out``
   holding a ``summary.json`` of other inputs is refused unless ``--overwrite``: ``summary.json["inputs"]["id"]``
   hashes the resolved videos folder, prompt file and reference folder, the metric set, ``--num-frames`` and
   ``--size`` (an unreadable summary.json, or one without an id, counts as other inputs); the same command run
   again replaces its own outputs. Outputs are written atomically, and only after every check and the whole
   evaluation succeeded, so a failed run leaves the files of an earlier run byte-identical.
3. Prompt files: non-UTF-8 bytes (file and line), an empty file, a CSV that does not parse (file and line as
   pandas reports it), a CSV header without rows, a missing column, an empty prompt or blank .txt line, a video
   without a row, a row without a video, a row matched by two files (``a.npy`` and ``a.npz``: both are named) and
   a ``motion`` cell that is not a finite number >= 0 (NaN, inf, negative, text; the row is named, row 1 = the
   first line after the header) are errors (``ValueError`` subclasses, i.e. ``cli.input_errors()``).
4. Clips: every file is decoded once, before any model runs. A clip that cannot be used is skipped: an empty
   file, not a video, a corrupt stream (anywhere: the whole stream is decoded), a corrupt .npz/.npy, a .npy
   header (or .npz member header) declaring more data than the file holds (read with ``numpy.lib.format`` before
   anything is allocated, so an absurd shape costs nothing), not uint8 (T,H,W,3), 0 frames, frames smaller than
   ``MIN_SIDE`` px on a side (e.g. 1x1), fewer frames than ``--num-frames``. Each skip prints one line
   ``skipped FILE: reason`` on stderr and is listed in ``summary.json`` as ``"skipped": {"count": n, "files":
   [{"file": name, "reason": ...}]}`` (``"reference_skipped"`` likewise for ``--reference``); skipped clips
   have no row in per_video.csv and the other clips are evaluated. ``--strict`` makes the first such clip an
   error naming it. No usable clip at all (or fewer than 2 for FVD) is an error.
5. One-frame clips: ``motion``, ``dynamic_degree`` and ``flow_score`` need >= 2 frames. Rather than a NaN or a
   silently wrong number, a clip with fewer frames is skipped entirely (as in 4, so that every metric of a run
   has the same N) when any of them is requested; otherwise it is evaluated.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from .data.video import VideoDecodeError, VideoTooShortError
from .metrics.core import MOTION_METRICS, SET_METRICS   # MOTION_METRICS need clips of >= 2 frames
from .utils import (InputFileError, atomic_write_json, atomic_write_text, check_motion_values, read_csv_file,
                    read_text_file)

MEDIA_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mov", ".mkv", ".m4v")
ARRAY_EXTENSIONS = (".npy", ".npz")
DEFAULT_METRICS = "fvd,clipsim,motion"      # each left out with a notice when its weights or reference are missing
METRIC_SETS = {"synthetic": "fvd_syn,clipsim_syn,attr_acc,motion"}   # --metrics synthetic: for synthetic videos
MOTION_PROTOCOLS = ("suite", "vbench")       # --motion-protocol: dynamic_degree's (metrics.motion.dynamic_degree)
MAX_FPS = 1000.0
MIN_SIDE = 8          # px; frames smaller than this on a side (a 1x1 "video") are refused, not upscaled into noise
MAX_SIZE = 4096       # --size upper bound


class EvaluateInputError(ValueError):
    """A problem with the command-line inputs, found before any work."""


# ------------------------------------------------------------------------------------------------ inputs
def list_videos(folder: Path, what: str = "videos") -> list[Path]:
    if folder.is_file():
        raise EvaluateInputError(f"--{what} {folder} is a file, not a folder")
    if not folder.is_dir():
        raise EvaluateInputError(f"--{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS + ARRAY_EXTENSIONS)
    if not files:
        raise EvaluateInputError(f"no video files in {folder} (looked for {', '.join(MEDIA_EXTENSIONS + ARRAY_EXTENSIONS)})")
    return files


def read_prompts(path: Path, videos: list[Path]) -> tuple[list[str], np.ndarray | None]:
    """Prompts (and requested motion, if the CSV has it) aligned with ``videos``; mismatches are errors.

    Raises ``EvaluateInputError`` / ``utils.InputFileError`` (both ``ValueError``) naming the file and the line or
    row (row 1 = the first line after the CSV header)."""
    if not path.is_file():
        raise EvaluateInputError(f"--prompts file not found: {path}")
    if path.suffix.lower() == ".txt":
        lines = read_text_file(path, "--prompts").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise EvaluateInputError(f"--prompts {path} is empty (a .txt holds one prompt per video)")
        blank = [i + 1 for i, ln in enumerate(lines) if not ln.strip()]
        if blank:
            raise EvaluateInputError(f"--prompts {path} line {blank[0]}: empty prompt (a .txt holds one prompt per "
                                     "video, without blank lines)")
        if len(lines) != len(videos):
            raise EvaluateInputError(f"{path} has {len(lines)} prompts but {videos[0].parent} has "
                                     f"{len(videos)} videos; a .txt must hold one prompt per video, in sorted "
                                     f"file-name order ({videos[0].name} ... {videos[-1].name})")
        return [ln.strip() for ln in lines], None
    df = read_csv_file(path, "--prompts", keep_default_na=False, dtype=str)
    missing = [c for c in ("video", "prompt") if c not in df.columns]
    if missing:
        raise EvaluateInputError(f"{path}: missing columns {missing}; found {list(df.columns)} "
                                 "(need 'video', 'prompt', optional 'motion')")
    if len(df) == 0:
        raise EvaluateInputError(f"--prompts {path} has a header but no rows")
    cells = [str(v).strip() for v in df["video"]]
    exact: dict[str, list[int]] = {}
    by_stem: dict[str, list[int]] = {}
    for i, v in enumerate(cells):
        for key in {v, Path(v).name}:
            exact.setdefault(key, []).append(i)
        by_stem.setdefault(Path(v).stem, []).append(i)
    rows, unmatched, owner = [], [], {}
    for p in videos:     # an exact file name wins; else the row without extension (or with another one)
        hits = sorted(set(exact.get(p.name) or exact.get(p.stem) or by_stem.get(p.stem) or []))
        if not hits:
            unmatched.append(p.name)
            continue
        if len(hits) > 1:
            raise EvaluateInputError(f"{path}: video {p.name} matches several rows "
                                     f"{[h + 1 for h in hits]} ({[cells[h] for h in hits]})")
        r = hits[0]
        if r in owner:
            raise EvaluateInputError(f"--prompts {path} row {r + 1} ({cells[r]!r}) matches two video files, "
                                     f"{owner[r].name} and {p.name}: remove one (the same clip twice?) or give "
                                     "each its own row with its extension")
        owner[r] = p
        rows.append(r)
    if unmatched:
        raise EvaluateInputError(f"{len(unmatched)} videos have no row in {path}: {unmatched[:10]}")
    extra = sorted(set(range(len(df))) - set(rows))
    if extra:
        raise EvaluateInputError(f"{len(extra)} rows of {path} name no video file: {[cells[r] for r in extra][:10]}")
    prompts = [df["prompt"].iloc[r] for r in rows]
    empty = [videos[i].name for i, pr in enumerate(prompts) if not pr.strip()]
    if empty:
        raise EvaluateInputError(f"empty prompts for {empty[:10]} in {path}")
    motion = None
    if "motion" in df.columns:
        motion = check_motion_values([df["motion"].iloc[r] for r in rows], path,
                                     [f"row {r + 1} (video {p.name})" for r, p in zip(rows, videos)], "--prompts")
    return prompts, motion


# ------------------------------------------------------------------------------------------------ clips
def _check_frames(path: Path, shape) -> None:
    if shape[0] == 0:
        raise VideoDecodeError(path, "0 frames")
    if min(shape[1], shape[2]) < MIN_SIDE:
        raise VideoDecodeError(path, f"frames are {shape[1]}x{shape[2]} px; at least {MIN_SIDE} px a side needed")


def _npy_header(f, path: Path, available: int, where: str = "") -> None:
    """Check a .npy header (file object at offset 0, ``available`` bytes in all) WITHOUT reading the data:
    version, dtype, shape, and that the declared data fits in what the file holds."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as e:
        raise VideoDecodeError(path, f"{where}not a valid .npy header ({' '.join(str(e).split())})") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise VideoDecodeError(path, f"{where}expected uint8 (T,H,W,3), got {dtype} {shape}")
    _check_frames(path, shape)
    declared, data = math.prod(shape) * dtype.itemsize, available - f.tell()
    if declared > data:
        raise VideoDecodeError(path, f"{where}header declares {shape} ({declared:,} bytes) but only {data:,} bytes "
                                     "of data follow (truncated or corrupt)")


_ARRAY_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, struct.error,
                      NotImplementedError, RuntimeError)


def _read_array(path: Path) -> np.ndarray:
    """A .npy/.npz clip as uint8 (T,H,W,3), by content (the extension is not trusted); ``VideoDecodeError``
    names the file for anything else. Headers are checked before any array memory is allocated."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        head = f.read(6)
    try:
        if head == fmt.MAGIC_PREFIX:
            with open(path, "rb") as f:
                _npy_header(f, path, path.stat().st_size)
                f.seek(0)
                return fmt.read_array(f, allow_pickle=False)
        if head[:2] != b"PK":
            raise VideoDecodeError(path, f"not a NumPy .npy/.npz file (starts with {head!r})")
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            if "video" not in members and len(members) != 1:
                raise VideoDecodeError(path, f"npz needs key 'video' or exactly one array, has {sorted(members)}")
            member = members["video" if "video" in members else next(iter(members))]
            with zf.open(member) as f:
                _npy_header(f, path, zf.getinfo(member).file_size, f"member {member}: ")
            with zf.open(member) as f:
                return fmt.read_array(f, allow_pickle=False)
    except VideoDecodeError:
        raise
    except _ARRAY_READ_ERRORS as e:
        raise VideoDecodeError(path, f"cannot read the array ({type(e).__name__}: {' '.join(str(e).split())})") from e


def load_video(path: Path, num_frames: int | None, size: int | None, info: dict | None = None) -> torch.Tensor:
    """(3,T,H,W) float [0,1]. Arrays: first ``num_frames`` frames, short side to ``size`` + centre crop.

    ``info`` (a dict), if given, gets ``fps``: the file's native frame rate, None for arrays (they store none).
    Raises ``VideoDecodeError`` (path + reason) for a clip that cannot be used (module docstring, point 4)."""
    if info is not None:
        info["fps"] = None
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    if path.suffix.lower() not in ARRAY_EXTENSIONS:
        from .data.video import read_video
        try:
            video, meta = read_video(path, num_frames=num_frames, size=size, return_info=True)
        except VideoDecodeError:
            raise
        except (ValueError, RuntimeError, OSError, EOFError, IndexError) as e:    # anything else the decoder raises
            raise VideoDecodeError(path, f"decoding failed ({type(e).__name__}: {' '.join(str(e).split())})") from e
        _check_frames(path, (video.shape[1], *meta["source_hw"]))
        if info is not None:
            info["fps"] = meta.get("native_fps")
        return video
    arr = _read_array(path)
    if num_frames is not None:
        if arr.shape[0] < num_frames:
            raise VideoTooShortError(path, f"{arr.shape[0]} frames, {num_frames} needed (--num-frames)")
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


def load_folder(files: list[Path], num_frames, size, what: str, progress: bool, *, strict: bool = False,
                min_frames: int = 1, why: str = "", fps_of: dict | None = None
                ) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """Decode each file once -> (stacked usable clips (N,3,T,H,W), their paths, [(path, reason)] skipped).

    ``fps_of`` (a dict), if given, gets {path: native fps or None} of the usable clips (``--motion-protocol``).

    A clip that cannot be used (``VideoDecodeError``, or fewer than ``min_frames`` frames, ``why`` says for what)
    is skipped with one line on stderr, or with ``strict`` is an ``EvaluateInputError`` naming it."""
    videos, kept, skipped = [], [], []
    for p in tqdm(files, desc=f"read {what}", disable=not progress):
        try:
            meta: dict = {}
            v = load_video(p, num_frames, size, meta)
            if v.shape[1] < min_frames:
                raise VideoDecodeError(p, f"{v.shape[1]} frame{'s' if v.shape[1] != 1 else ''}; {why} need "
                                          f">= {min_frames} frames")
        except VideoDecodeError as e:
            reason = " ".join(str(e.reason).split())
            if strict:
                raise EvaluateInputError(f"{p}: {reason} (--strict stops at the first unusable clip)") from e
            skipped.append((p, reason))
            tqdm.write(f"skipped {p}: {reason}", file=sys.stderr)
            continue
        videos.append(v)
        kept.append(p)
        if fps_of is not None:
            fps_of[p] = meta.get("fps")
    if not videos:
        raise EvaluateInputError(f"none of the {len(files)} {what} files in {files[0].parent} can be used "
                                 f"(each was skipped, reasons above)")
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        detail = ", ".join(f"{p.name}: {tuple(v.shape[1:])}" for p, v in list(zip(kept, videos))[:6])
        raise EvaluateInputError(f"{what} differ in (T,H,W) ({detail} ...); pass --num-frames and --size")
    return torch.stack(videos), kept, skipped


def folder_id(files: list[Path], num_frames, size) -> str:
    """Dataset id for the reference-statistics cache: file names, sizes, mtimes and read options."""
    h = hashlib.sha256(f"{num_frames}|{size}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{files[0].parent.name}-{h.hexdigest()[:16]}"


# ------------------------------------------------------------------------------------------------ checks
def preflight_weights(metrics: list[str], args) -> None:
    """Fail now, with the weights' own message, if a detector file is missing."""
    from .weights import find_weights
    if "fvd" in metrics:
        find_weights("i3d_torchscript", args.i3d)
    if "clipsim" in metrics:
        from .metrics.clipsim import _find_clip_weights
        _find_clip_weights(args.clip)
    if set(MOTION_METRICS) & set(metrics):
        from .weights import MissingWeightsError
        errors = []
        for key in ("raft_small_tv", "raft_small_princeton"):
            try:
                find_weights(key, args.raft)
                return
            except MissingWeightsError as e:
                errors.append(str(e))
        raise MissingWeightsError("motion needs RAFT-small weights:\n\n" + "\n\n".join(errors))


def parse_metrics(text: str) -> list[str]:
    from .metrics.core import METRICS
    text = METRIC_SETS.get(text.strip(), text)
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise EvaluateInputError(f"--metrics: unknown metrics {unknown}; known: {', '.join(METRICS)} "
                                 f"(or a set: {', '.join(METRIC_SETS)})")
    if len(set(metrics)) != len(metrics):
        raise EvaluateInputError(f"--metrics {text!r} names a metric twice")
    return metrics


_WEIGHT_NOTES = {"fvd": "no StyleGAN-V I3D weights (i3d_torchscript.pt) in $KV_WEIGHTS_DIR or --i3d",
                 "clipsim": "no OpenAI CLIP ViT-B/32 weights (ViT-B-32.pt or its open_clip conversion) in "
                            "$KV_WEIGHTS_DIR or --clip",
                 "motion": "no RAFT-small weights (raft-small.pth or torchvision's) in $KV_WEIGHTS_DIR or --raft"}


def default_metrics(args) -> tuple[list[str], list[dict]]:
    """``DEFAULT_METRICS`` less those whose reference or weights are missing -> (metrics, [{metric, reason}]).

    Why: the default is what a user evaluating their own generator expects, and a missing I3D file should cost
    them FVD, not the whole run; the notice (stderr and summary.json) keeps the omission visible."""
    from .weights import MissingWeightsError
    kept, dropped = [], []
    for m in parse_metrics(DEFAULT_METRICS):
        reason = None
        if m == "fvd" and args.reference is None:
            reason = "no --reference folder of real videos (FVD is a distance to a reference set)"
        else:
            try:
                preflight_weights([m], args)
            except MissingWeightsError:
                reason = _WEIGHT_NOTES[m]
        if reason is None:
            kept.append(m)
        else:
            dropped.append({"metric": m, "reason": reason})
    if not kept:
        raise EvaluateInputError("none of the default metrics (" + DEFAULT_METRICS + ") can run: "
                                 + "; ".join(f"{d['metric']}: {d['reason']}" for d in dropped)
                                 + " (provide them, or pass --metrics, e.g. --metrics synthetic for synthetic videos)")
    return kept, dropped


def check_options(args, metrics: list[str]) -> None:
    """Range checks of the numeric (and device/preset) options, before any work; messages name option and value."""
    motion = sorted(set(MOTION_METRICS) & set(metrics))

    def need(option, value, lo, hi=None, note=""):
        if value is not None and (value < lo or (hi is not None and value > hi)):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise EvaluateInputError(f"{option} must be {rng}, got {value}{note}")

    need("--batch-size", args.batch_size, 1)
    need("--n-boot", args.n_boot, 1, 1_000_000)
    need("--num-frames", args.num_frames, 2 if motion else 1, note=f" ({', '.join(motion)} need >= 2 frames)"
         if motion else "")
    need("--size", args.size, MIN_SIDE, MAX_SIZE)
    need("--data-size", args.data_size, 8, 1024)
    need("--data-frames", args.data_frames, 2, 256)
    need("--seed", args.seed, 0)
    if args.fps is not None:
        if not (math.isfinite(args.fps) and 0 < args.fps <= MAX_FPS):
            raise EvaluateInputError(f"--fps must be a frame rate in (0, {MAX_FPS:g}], got {args.fps}")
        if args.motion_protocol != "vbench":
            raise EvaluateInputError(f"--fps {args.fps:g} is used only with --motion-protocol vbench (the suite "
                                     "protocol takes the frames as given)")
    if args.motion_protocol == "vbench" and "dynamic_degree" not in metrics:
        raise EvaluateInputError("--motion-protocol vbench applies to dynamic_degree, which --metrics does not "
                                 f"request ({', '.join(metrics)})")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        raise EvaluateInputError(f"--device {args.device!r} is not a torch device ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EvaluateInputError(f"--device {args.device}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EvaluateInputError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
    if {"fvd_syn", "clipsim_syn", "attr_acc"} & set(metrics):
        from .metrics.evaluators import PRESETS
        if args.evaluator_preset not in PRESETS:
            raise EvaluateInputError(f"--evaluator-preset {args.evaluator_preset!r} is unknown; known: "
                                     f"{', '.join(sorted(PRESETS))}")


def input_identity(args, metrics: list[str]) -> dict:
    """What was evaluated, recorded as ``summary.json["inputs"]``; ``id`` hashes it (output-folder policy)."""
    def resolved(p):
        return str(Path(p).expanduser().resolve()) if p is not None else None
    ident = {"videos": resolved(args.videos), "prompts": resolved(args.prompts), "reference": resolved(args.reference),
             "metrics": sorted(metrics), "num_frames": args.num_frames, "size": args.size}
    if args.motion_protocol != "suite":     # only when not the default, so earlier runs keep their id
        ident.update(motion_protocol=args.motion_protocol, fps=args.fps)
    ident["id"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def check_out_folder(out: Path, inputs: dict, overwrite: bool) -> None:
    """Refuse, before any work, an --out that is a file, cannot be written, or holds another run's summary."""
    from .cli import check_out_dir
    check_out_dir(out)
    summary = out / "summary.json"
    if overwrite or not summary.exists():
        return
    try:
        old = json.loads(summary.read_text(encoding="utf-8")).get("inputs") or {}
    except (OSError, ValueError, AttributeError):
        old = {"id": None}
    if isinstance(old, dict) and old.get("id") == inputs["id"]:
        return
    if not isinstance(old, dict) or not old.get("id"):
        what = "no input id (unreadable, or written by something else)"
    else:
        diff = [f"{k} {old.get(k)!r} -> {inputs[k]!r}" for k in inputs if k != "id" and old.get(k) != inputs[k]]
        what = "other inputs: " + "; ".join(diff) if diff else f"other inputs (id {old.get('id')})"
    raise EvaluateInputError(f"--out {out} holds a summary.json with {what}; pass --overwrite to replace it, "
                             "or choose another --out")


# ------------------------------------------------------------------------------------------------ command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line under the cli policy, instead of usage + message + exit
        raise EvaluateInputError(f"{message} (see python -m kv_research.evaluate --help)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m kv_research.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", required=True, type=Path, help="folder of generated videos")
    ap.add_argument("--prompts", required=True, type=Path, help="CSV (video,prompt[,motion]) or .txt")
    ap.add_argument("--metrics", default=None,
                    help=f"comma list, or 'synthetic' ({METRIC_SETS['synthetic']}); default {DEFAULT_METRICS}, "
                         "each left out with a notice when its weights or --reference are missing")
    ap.add_argument("--reference", type=Path, help="folder of real videos (required for fvd)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the outputs in --out even if its summary.json is of other inputs")
    ap.add_argument("--strict", action="store_true",
                    help="an unusable clip is an error (default: skipped, named on stderr, counted in summary)")
    ap.add_argument("--num-frames", type=int, help="keep the first N frames of every video")
    ap.add_argument("--size", type=int, help="short side to SIZE px, centre crop")
    ap.add_argument("--i3d", help="path of i3d_torchscript.pt (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--fvd-repeat-short", action="store_true",
                    help="FVD: resample clips shorter than 16 frames by index repetition (recorded in summary)")
    ap.add_argument("--clip", help="path of the CLIP ViT-B/32 weights (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--raft", help="path of RAFT-small weights (default: $KV_WEIGHTS_DIR)")
    ap.add_argument("--motion-protocol", choices=MOTION_PROTOCOLS, default="suite",
                    help="dynamic_degree: 'suite' (frames as given, RAFT-small 6 updates at 128 px; default) or "
                         "'vbench' (every round(fps/8)-th native frame, 20 updates, native resolution)")
    ap.add_argument("--fps", type=float, help="native frame rate of the clips for --motion-protocol vbench "
                                              "(default: the video files'; needed for .npy/.npz)")
    ap.add_argument("--evaluator-preset", default="quick", help="synthetic evaluators: smoke | quick")
    ap.add_argument("--data-size", type=int, default=32, help="synthetic benchmark frame size (evaluators)")
    ap.add_argument("--data-frames", type=int, default=8, help="synthetic benchmark clip length (evaluators)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _skipped(skipped: list[tuple[Path, str]]) -> dict:
    return {"count": len(skipped), "files": [{"file": p.name, "reason": r} for p, r in skipped]}


def main(argv=None) -> int:
    from .cli import debug_enabled
    from .weights import MissingWeightsError
    try:
        args = build_parser().parse_args(argv)
        progress = not args.no_progress
        if args.metrics is None:
            metrics, metrics_skipped = default_metrics(args)
            for d in metrics_skipped:
                print(f"metric {d['metric']} skipped: {d['reason']}", file=sys.stderr)
        else:
            metrics, metrics_skipped = parse_metrics(args.metrics), []
        check_options(args, metrics)
        inputs = input_identity(args, metrics)
        check_out_folder(args.out, inputs, args.overwrite)
        files = list_videos(args.videos, "videos")
        prompts, motion = read_prompts(args.prompts, files)
        ref_files = list_videos(args.reference, "reference") if args.reference else None
        if "fvd" in metrics and ref_files is None:
            raise EvaluateInputError("metric 'fvd' needs --reference DIR (real videos)")
        preflight_weights(metrics, args)
        motion_metrics = [m for m in metrics if m in MOTION_METRICS]
        fps_of: dict = {}
        videos, kept, skipped = load_folder(files, args.num_frames, args.size, "videos", progress, strict=args.strict,
                                            min_frames=2 if motion_metrics else 1, why=", ".join(motion_metrics),
                                            fps_of=fps_of)
        reference, ref_skipped = None, []
        if ref_files:
            reference, ref_files, ref_skipped = load_folder(ref_files, args.num_frames, args.size, "reference",
                                                            progress, strict=args.strict)
        if skipped:
            index = {p: i for i, p in enumerate(files)}
            prompts = [prompts[index[p]] for p in kept]
            motion = motion[[index[p] for p in kept]] if motion is not None else None
            print(f"skipped {len(skipped)} of {len(files)} video files (listed in summary.json); evaluating "
                  f"{len(kept)}", file=sys.stderr)
        set_metrics = [m for m in metrics if m in SET_METRICS]
        if set_metrics and len(kept) < 2:
            raise EvaluateInputError(f"{', '.join(set_metrics)} need at least 2 usable videos, {args.videos} has "
                                     f"{len(kept)} ({len(skipped)} skipped)")
        if "fvd" in metrics and not args.fvd_repeat_short:
            from .metrics.fvd import FVDProtocol
            need = FVDProtocol().frames
            short = [(w, v.shape[2]) for w, v in (("videos", videos), ("reference", reference))
                     if v is not None and v.shape[2] < need]
            if short:
                raise EvaluateInputError(f"FVD needs clips of >= {need} frames, got {short}; pass longer videos or "
                                         "--fvd-repeat-short (index repetition, recorded in the summary)")
        fps = vbench_fps(args, kept, fps_of, videos.shape[2]) if args.motion_protocol == "vbench" else None
    except (EvaluateInputError, InputFileError, MissingWeightsError, VideoDecodeError) as e:
        if debug_enabled():
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2

    from .data.synthetic import SyntheticConfig
    from .metrics.core import evaluate_videos
    from .metrics.fvd import FVDProtocol
    per_video, summary = evaluate_videos(
        videos, prompts, requested_motion=motion, reference_videos=reference, metrics=metrics,
        names=[p.name for p in kept], i3d=args.i3d, clip=args.clip,
        raft=_load_raft(args.raft, args.device) if motion_metrics else None,
        data_cfg=SyntheticConfig(size=args.data_size, frames=args.data_frames), evaluator_preset=args.evaluator_preset,
        reference_id=folder_id(ref_files, args.num_frames, args.size) if ref_files else None,
        fvd_protocol=FVDProtocol(short_clips="repeat" if args.fvd_repeat_short else "error"),
        batch_size=args.batch_size, device=args.device, n_boot=args.n_boot, seed=args.seed, progress=progress,
        motion_protocol=args.motion_protocol, fps=fps)
    summary["inputs"] = inputs
    summary["n_files"] = len(files)
    summary["skipped"] = _skipped(skipped)
    summary["metrics_skipped"] = metrics_skipped
    if ref_files is not None:
        summary["reference_skipped"] = _skipped(ref_skipped)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "per_video.csv", per_video.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(args.out / "summary.json", summary)      # last: marks the folder complete
    for name, m in summary["metrics"].items():
        print(f"{name:14s} {m['value']:.4f}  [{m['ci_low']:.4f}, {m['ci_high']:.4f}]  N={m['n']}  "
              f"{m.get('detector', '')}")
    print(f"wrote {args.out / 'per_video.csv'} and {args.out / 'summary.json'}"
          + (f" ({len(skipped)} skipped clips listed there)" if skipped else ""))
    return 0


def vbench_fps(args, kept: list[Path], fps_of: dict, num_frames: int) -> float:
    """The one frame rate of the clips for ``--motion-protocol vbench`` (``--fps`` wins), checked to keep >= 2
    frames; clips without a stored rate (arrays) or of different rates are errors naming them."""
    from .metrics.motion import VBENCH_TARGET_FPS, vbench_frame_indices
    if args.fps is not None:
        fps = args.fps
    else:
        unknown = [p.name for p in kept if not fps_of.get(p)]
        if unknown:
            raise EvaluateInputError(f"--motion-protocol vbench needs the clips' frame rate; {len(unknown)} files "
                                     f"store none ({', '.join(unknown[:5])}): pass --fps")
        rates = {p.name: float(fps_of[p]) for p in kept}
        if max(rates.values()) - min(rates.values()) > 1e-6:
            detail = ", ".join(f"{n}: {r:g}" for n, r in list(rates.items())[:6])
            raise EvaluateInputError(f"--motion-protocol vbench: the clips have different frame rates ({detail} ...);"
                                     " evaluate each rate separately, or pass --fps to treat them alike")
        fps = next(iter(rates.values()))
    kept_idx = vbench_frame_indices(num_frames, fps)
    if len(kept_idx) < 2:
        step = max(1, round(fps / VBENCH_TARGET_FPS))
        raise EvaluateInputError(f"--motion-protocol vbench at {fps:g} fps keeps every {step}-th frame: clips of "
                                 f"{num_frames} frames keep {len(kept_idx)}; dynamic_degree needs >= 2 (clips of "
                                 f">= {step + 1} frames)")
    return fps


def _load_raft(path, device):
    from .metrics.motion import load_raft
    return load_raft(path=path, device=device)


if __name__ == "__main__":
    from kv_research.cli import run
    sys.exit(run(main))
