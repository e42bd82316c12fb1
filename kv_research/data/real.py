"""Captioned real videos for training: listing, 2-fps keyframes and a resumable on-disk latent cache.

Policy, in the order the data flows:

1. **Listing** (``list_captioned_videos``). A source is a CSV (``path``, ``caption``, optional ``start``/``end``
   in seconds; paths relative to the CSV's folder or absolute), a folder holding ``captions.csv``, or a UCF-101
   folder (``root/<ClassName>/v_<ClassName>_gXX_cYY.avi``, caption = ``template`` over the class words, the
   rule of ``UCF101Dataset``). A missing source or missing columns are the caller's mistake and raise. A bad
   *row* (empty caption, missing file, start >= end, an unparsable time, a duplicate) is only skipped and
   recorded as (path, reason): a study over thousands of scraped clips must report how many it lost, not die
   on the first one. Only a CSV in which every row is bad raises, since then the mistake is the CSV's.
2. **Keyframes** (``KeyframeConfig``, ``read_keyframes``). As in the paper, the keyframe model is trained on
   ``frames`` = 16 frames sampled at ``fps`` = 2 from a random start. Each clip is decoded once with
   ``read_video`` (its documented policy: nearest frame to each target time, short side resized to ``size``
   and centre-cropped, whole stream verified) over its [start, end] window, and the first ``max_keyframes``
   samples are kept. A training window is ``frames`` consecutive cached keyframes starting at a uniformly
   random index, so random starts live on the clip's 2-fps grid (anchored at ``start``), never between its
   points; this is what lets one cached tensor per clip serve every window. Clips with fewer than ``frames``
   keyframes ("too short") and undecodable files (``VideoDecodeError``) are skipped, logged and counted.
3. **Labels.** There is one motion-score definition in the suite (``kv_research.metrics.motion``). For each
   clip we store the per-pair statistic ``motion_stats(keyframes)["mean"]`` (K-1 values, ``MotionConfig()``).
   The score of a window is the mean over its pairs, so the label of the window of ``frames`` keyframes from
   ``s`` is ``mean(pair_motion[s : s+frames-1])``: the suite's ``motion_score`` of exactly those pixels (up to
   float rounding from how RAFT batches pairs, ~1e-6), for every start, at the cost of one RAFT pass per clip.
4. **Cache layout** (``build_latent_cache``)::

       folder/manifest.json             identity (codec, KeyframeConfig, MotionConfig + RAFT weights sha256,
                                        dtype, shard_size, batch_size, clip-list hash), shard count, listing skips
       folder/shard-00000.safetensors   <clip_id>/latents (C, K, h, w) in dtype; <clip_id>/pair_motion (K-1,) f32
       folder/shard-00000.json          entries (clip_id, path, caption, keyframes, start, end) + this shard's skips
       folder/skipped.csv               path, reason: every skipped clip (listing and build), once all shards exist

   Shard j holds clips [j*shard_size, (j+1)*shard_size) of the list. Every file is written atomically, the
   ``.json`` after the ``.safetensors``, so a shard exists only when both files do. Building into a folder
   whose manifest differs raises (naming what differs) instead of mixing two datasets in one cache.
5. **Resumption and ranks.** A shard whose files exist is not rebuilt, so a killed build re-run with the same
   arguments finishes the job. Within a shard the clips are encoded in fixed groups (``batch_size`` readable
   clips in list order, sub-batched by keyframe count), so a shard's bytes depend only on its clips and the
   identity; a resumed build gives the same bits as an uninterrupted one (on the same device and software).
   Rank r of ``world`` builds shards r, r+world, ...; the caller synchronises ranks (barrier) before
   ``open_latent_cache``, which refuses a cache with a missing shard.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import operator
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kv_research.data.video import UCF101Dataset, VideoDecodeError, VideoTooShortError, parse_seconds, read_video
from kv_research.utils import atomic_write_bytes, atomic_write_json, to_jsonable

__all__ = ["CaptionedClip", "ClipList", "list_captioned_videos", "make_clip_id", "KeyframeConfig", "read_keyframes",
           "build_latent_cache", "open_latent_cache", "LatentClipSet", "CacheMismatchError", "CAPTIONS_CSV"]

log = logging.getLogger(__name__)

CAPTIONS_CSV = "captions.csv"
FORMAT = "kv_research.latent_cache/1"
_STORE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ----------------------------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class CaptionedClip:
    """One usable row: ``path`` (absolute or as resolved), caption, optional window (s) and a stable id."""
    path: str
    caption: str
    start: float | None
    end: float | None
    clip_id: str


@dataclass
class ClipList:
    """The usable clips of a source, in source order, plus the rows skipped while listing as (path, reason)."""
    clips: list[CaptionedClip]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[CaptionedClip]:
        return iter(self.clips)

    def __getitem__(self, i):
        return self.clips[i]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _seconds_text(x: float | None) -> str:
    return "end" if x is None else repr(float(x))


def make_clip_id(rel: str, start: float | None = None, end: float | None = None) -> str:
    """'Class/v_x.avi' (+ window) -> 'Class_v_x.avi@1.0-3.5': readable, safe as a file/tensor name, stable.

    A hash of the raw name is appended when sanitising lost more than the folder separators (or the name is
    long), so two different names cannot end up with the same id that way.
    """
    raw = rel if start is None and end is None else f"{rel}@{_seconds_text(start or 0.0)}-{_seconds_text(end)}"
    flat = raw.replace("/", "_")
    safe = re.sub(r"[^A-Za-z0-9_.@+-]", "_", flat)
    if safe != flat or len(safe) > 160:
        safe = f"{safe[:160]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def _rel_name(path: Path, root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:                                    # outside the root: the absolute path names it
        return Path(os.path.abspath(path)).as_posix().lstrip("/")


def list_captioned_videos(source, *, template: str = "a person {action}", split_file=None) -> ClipList:
    """List the clips of a CSV / folder with ``captions.csv`` / UCF-101 folder (module policy, step 1).

    ``template`` and ``split_file`` apply to the UCF-101 layout only (as in ``UCF101Dataset``).
    """
    source = Path(source).expanduser()
    if source.is_file():
        return _from_csv(source, source.parent)
    if source.is_dir():
        if (source / CAPTIONS_CSV).is_file():
            return _from_csv(source / CAPTIONS_CSV, source)
        return _from_ucf101(source, template, split_file)
    raise FileNotFoundError(f"video source not found: {source} (give a captions CSV, a folder holding "
                            f"{CAPTIONS_CSV}, or a UCF-101 folder root/<ClassName>/<video>)")


def _from_csv(csv_path: Path, root: Path) -> ClipList:
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path}: empty file; needs columns 'path' and 'caption' "
                         "(optional 'start', 'end'), found none") from None
    missing = [c for c in ("path", "caption") if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; needs 'path' and 'caption' "
                         f"(optional 'start', 'end'), found {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{csv_path}: no rows")
    clips, skipped, seen = [], [], {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2                                       # the header is line 1
        clip, path, reason = _parse_row(rec, root, f"{csv_path.name} line {line}")
        if clip is not None and clip.clip_id in seen:
            clip, reason = None, f"duplicate of line {seen[clip.clip_id]} (same clip id {clip.clip_id!r})"
        if clip is None:
            skipped.append((path, f"{reason} ({csv_path.name} line {line})"))
            log.warning("%s line %d: skipping %s: %s", csv_path, line, path, reason)
            continue
        seen[clip.clip_id] = line
        clips.append(clip)
    if not clips:
        first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise ValueError(f"{csv_path}: every row is unusable ({len(skipped)} rows); first reasons: {first}")
    if skipped:
        log.warning("%s: %d clips listed, %d rows skipped", csv_path, len(clips), len(skipped))
    return ClipList(clips, skipped, str(csv_path))


def _parse_row(rec: dict, root: Path, where: str) -> tuple[CaptionedClip | None, str, str]:
    """(clip or None, path for the skip list, reason)."""
    raw = str(rec["path"]).strip()
    if not raw:
        return None, f"<empty path, {where}>", "empty path"
    path = Path(raw) if os.path.isabs(raw) else root / raw
    caption = str(rec["caption"]).strip()
    if not caption:
        return None, str(path), "empty caption"
    try:
        start = parse_seconds(rec.get("start"), "start")
        end = parse_seconds(rec.get("end"), "end")
    except ValueError as e:
        return None, str(path), str(e)
    if start is not None and start < 0:
        return None, str(path), f"negative start ({start:g} s)"
    if start is not None and end is not None and start >= end:
        return None, str(path), f"start >= end ({start:g} >= {end:g} s)"
    if end is not None and end <= 0:
        return None, str(path), f"end <= 0 ({end:g} s)"
    if not path.is_file():
        return None, str(path), "file not found"
    return CaptionedClip(str(path), caption, start, end, make_clip_id(_rel_name(path, root), start, end)), str(path), ""


def _from_ucf101(root: Path, template: str, split_file) -> ClipList:
    try:
        ds = UCF101Dataset(root, split_file=split_file, template=template)   # lists only; decodes nothing
    except ValueError as e:
        raise ValueError(f"{root}: no {CAPTIONS_CSV} and not a UCF-101 layout ({e})") from None
    clips, skipped = [], []
    for path, caption, _ in ds.entries:
        if not path.is_file():                              # a split file may name clips that are absent
            skipped.append((str(path), "file not found"))
            log.warning("%s: skipping %s: file not found", root, path)
            continue
        clips.append(CaptionedClip(str(path), caption, None, None, make_clip_id(_rel_name(path, root))))
    if not clips:
        raise ValueError(f"{root}: no video files in the class folders {ds.classes[:5]}"
                         + (f" ({len(skipped)} listed in {split_file} are missing)" if skipped else ""))
    return ClipList(clips, skipped, str(root))


def _clip_list_hash(clips: Sequence[CaptionedClip]) -> str:
    """What the cache depends on: ids (relative names + windows), captions and order; not where files live."""
    blob = json.dumps([[c.clip_id, c.caption, c.start, c.end] for c in clips]).encode()
    return hashlib.sha256(blob).hexdigest()


# ----------------------------------------------------------------------------------------------- keyframes
@dataclass(frozen=True)
class KeyframeConfig:
    frames: int = 16            # keyframes per training window (the paper: 16)
    fps: float = 2.0            # keyframe rate (the paper: 2 fps)
    size: int = 64              # pixels: short side resized to this, then centre-cropped (read_video)
    max_keyframes: int = 64     # at most this many keyframes cached per clip (32 s at 2 fps)

    def __post_init__(self):
        for name, kind in (("frames", int), ("fps", float), ("size", int), ("max_keyframes", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))   # fps=2 and fps=2.0: one identity
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2 (a motion label needs a frame pair), got {self.frames}")
        if not self.fps > 0 or self.size < 1:
            raise ValueError(f"fps must be > 0 and size >= 1, got fps={self.fps}, size={self.size}")
        if self.max_keyframes < self.frames:
            raise ValueError(f"max_keyframes ({self.max_keyframes}) must be >= frames ({self.frames})")


def read_keyframes(clip: CaptionedClip, cfg: KeyframeConfig) -> torch.Tensor:
    """(3, K, size, size) in [0, 1]: the clip's keyframes as cached (K <= max_keyframes); raises
    ``VideoDecodeError`` for unusable files and ``VideoTooShortError`` when K < ``cfg.frames``."""
    video = read_video(clip.path, fps=cfg.fps, size=cfg.size, start=clip.start, end=clip.end)
    k = video.shape[1]
    if k < cfg.frames:
        raise VideoTooShortError(clip.path, f"too short: {k} keyframes at {cfg.fps:g} fps, need {cfg.frames}")
    return video[:, :cfg.max_keyframes].contiguous()


# ----------------------------------------------------------------------------------------------- building
class CacheMismatchError(ValueError):
    """The folder holds a cache built with another identity (codec, keyframes, motion, clips, ...)."""


def _shard_name(j: int) -> str:
    return f"shard-{j:05d}"


def _shard_done(folder: Path, j: int) -> bool:
    return (folder / f"{_shard_name(j)}.safetensors").is_file() and (folder / f"{_shard_name(j)}.json").is_file()


def _identity(codec, cfg: KeyframeConfig, mcfg, raft, dtype, shard_size: int, batch_size: int,
              clips: Sequence[CaptionedClip]) -> dict:
    from kv_research.metrics.motion import weights_fingerprint
    ident = {"codec": {"identity": codec.identity(), "latent_channels": int(codec.latent_channels),
                       "scale_factor": int(codec.scale_factor)},
             "keyframes": asdict(cfg),
             "motion": {**asdict(mcfg), "raft_weights_sha256": weights_fingerprint(raft)},
             "dtype": _STORE_DTYPES[dtype], "shard_size": shard_size, "batch_size": batch_size,
             "clips": {"count": len(clips), "sha256": _clip_list_hash(clips)}}
    return json.loads(json.dumps(to_jsonable(ident)))      # as it reads back from the manifest


def _diff(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: cached {old!r}, now {new!r}"]


def _refuse(folder: Path, diffs: list[str]) -> None:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise CacheMismatchError(f"{folder}: holds a latent cache built with another identity ({shown}); "
                             "use another folder or delete this one")


def _load_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.json, not a latent cache (build_latent_cache writes it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CacheMismatchError(f"{path}: format {manifest.get('format')!r}, this code reads {FORMAT!r}")
    return manifest


def build_latent_cache(clips, codec, folder, cfg: KeyframeConfig | None = None, *, raft=None, shard_size: int = 64,
                       batch_size: int = 8, rank: int = 0, world: int = 1, progress: bool = True, device="cpu",
                       dtype: torch.dtype = torch.float32) -> None:
    """Encode this rank's missing shards of ``clips`` (a ``ClipList`` or a sequence of ``CaptionedClip``).

    ``codec``: ``encode(video01 (B,3,T,H,W) in [0,1]) -> (B,C,T,H/s,W/s)``, ``latent_channels``,
    ``scale_factor`` (s) and ``identity() -> dict``. ``raft``: the flow model for the labels (``load_raft()``
    when None). Latents are stored in ``dtype``; motion values always in float32. See the module docstring.
    """
    from safetensors.torch import save

    from kv_research.metrics.motion import MotionConfig, load_raft
    cfg = cfg or KeyframeConfig()
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    if dtype not in _STORE_DTYPES:
        raise ValueError(f"dtype must be one of {list(_STORE_DTYPES)}, got {dtype}")
    folder = Path(folder)
    items = list(clips)
    ids = [c.clip_id for c in items]
    if len(set(ids)) != len(ids):
        dup, times = Counter(ids).most_common(1)[0]
        raise ValueError(f"clip ids must be unique; {dup!r} appears {times} times")
    mcfg = MotionConfig()
    raft = raft if raft is not None else load_raft(mcfg.kind, device=device)
    identity = _identity(codec, cfg, mcfg, raft, dtype, shard_size, batch_size, items)
    ident_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    n_shards = -(-len(items) // shard_size)
    manifest = {"format": FORMAT, "identity": identity, "identity_sha256": ident_hash, "n_clips": len(items),
                "n_shards": n_shards, "listing_skipped": [list(s) for s in getattr(clips, "skipped", [])]}
    if (folder / "manifest.json").is_file():
        old = _load_manifest(folder)
        diffs = _diff(old["identity"], identity)
        if diffs:
            _refuse(folder, diffs)
        manifest = old                  # same identity; keep its record of the listing skips
    else:
        atomic_write_json(folder / "manifest.json", manifest)

    mine = list(range(rank, n_shards, world))
    todo = [j for j in mine if not _shard_done(folder, j)]
    count = lambda js: sum(len(items[j * shard_size:(j + 1) * shard_size]) for j in js)   # noqa: E731
    bar = tqdm(total=count(mine), initial=count(mine) - count(todo), unit="clip", disable=not progress,
               desc=f"latent cache{f' rank {rank}/{world}' if world > 1 else ''}")
    n_ok = n_bad = 0
    for j in todo:
        tensors, record = _build_shard(items[j * shard_size:(j + 1) * shard_size], codec, cfg, mcfg, raft,
                                       batch_size, device, dtype, bar)
        record.update(format=FORMAT, shard=j, identity_sha256=ident_hash)
        atomic_write_bytes(folder / f"{_shard_name(j)}.safetensors", save(tensors))
        atomic_write_json(folder / f"{_shard_name(j)}.json", record)       # written last: marks the shard done
        n_ok, n_bad = n_ok + len(record["entries"]), n_bad + len(record["skipped"])
    bar.close()
    complete = all(_shard_done(folder, j) for j in range(n_shards))
    if complete:                        # each rank checks after writing its own shards, so the last one writes it
        _write_skipped_csv(folder, manifest["listing_skipped"], n_shards)
    (log.warning if n_bad else log.info)(
        "%s: rank %d/%d built %d shards (%d already present): %d clips cached, %d skipped%s", folder, rank, world,
        len(todo), len(mine) - len(todo), n_ok, n_bad,
        " (all shards present; see skipped.csv)" if complete else f" ({n_shards} shards in all; others pending)")


def _build_shard(clips: Sequence[CaptionedClip], codec, cfg, mcfg, raft, batch_size, device, dtype, bar):
    """(tensors, record) of one shard; the encoding groups depend only on the shard's clips (bit-exact resume)."""
    from kv_research.metrics.motion import motion_stats
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[list[str]] = []
    pending: list[tuple[CaptionedClip, torch.Tensor]] = []

    def flush():
        by_len: dict[int, list] = {}
        for clip, video in pending:
            by_len.setdefault(video.shape[1], []).append((clip, video))
        for group in by_len.values():
            x = torch.stack([v for _, v in group]).to(device)                  # (B, 3, K, H, W) in [0, 1]
            with torch.no_grad():
                z = codec.encode(x)
            _check_latents(z, x, codec)
            pair = motion_stats(x, raft, work_size=mcfg.work_size, num_flow_updates=mcfg.num_flow_updates)["mean"]
            packed = torch.contiguous_format                # codecs may return strided views; safetensors refuses them
            for b, (clip, _) in enumerate(group):
                tensors[f"{clip.clip_id}/latents"] = z[b].detach().to("cpu", dtype).clone(memory_format=packed)
                tensors[f"{clip.clip_id}/pair_motion"] = pair[b].to("cpu", torch.float32).clone(memory_format=packed)
        pending.clear()

    for clip in clips:
        try:
            pending.append((clip, read_keyframes(clip, cfg)))
        except VideoDecodeError as e:
            skipped.append([clip.path, e.reason])
            log.warning("latent cache: skipping %s: %s", clip.path, e.reason)
        bar.update(1)
        if len(pending) == batch_size:
            flush()
    flush()
    entries = [{"clip_id": c.clip_id, "path": c.path, "caption": c.caption,
                "keyframes": int(tensors[f"{c.clip_id}/latents"].shape[1]), "start": c.start, "end": c.end}
               for c in clips if f"{c.clip_id}/latents" in tensors]
    return tensors, {"entries": entries, "skipped": skipped}


def _check_latents(z, x, codec) -> None:
    b, _, k, h, w = x.shape
    s = int(codec.scale_factor)
    want = (b, int(codec.latent_channels), k, h // s, w // s)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != want:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"codec.encode({tuple(x.shape)}) returned {got}; expected {want} "
                         "(B, latent_channels, T, H/scale_factor, W/scale_factor)")


def _write_skipped_csv(folder: Path, listing_skipped, n_shards: int) -> None:
    rows = [tuple(s) for s in listing_skipped]
    for j in range(n_shards):
        rows += [tuple(s) for s in json.loads((folder / f"{_shard_name(j)}.json").read_text())["skipped"]]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(rows)
    atomic_write_bytes(folder / "skipped.csv", buf.getvalue().encode())


# ----------------------------------------------------------------------------------------------- reading
def open_latent_cache(folder, *, codec=None, cfg: KeyframeConfig | None = None) -> LatentClipSet:
    """Open a complete cache. With ``codec`` / ``cfg`` given, also refuse a cache built with others."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    ident = manifest["identity"]
    diffs = []
    if codec is not None:
        now = {"identity": codec.identity(), "latent_channels": int(codec.latent_channels),
               "scale_factor": int(codec.scale_factor)}
        diffs += _diff(ident["codec"], json.loads(json.dumps(to_jsonable(now))), "codec.")
    if cfg is not None:
        diffs += _diff(ident["keyframes"], json.loads(json.dumps(asdict(cfg))), "keyframes.")
    if diffs:
        _refuse(folder, diffs)
    n = manifest["n_shards"]
    missing = [_shard_name(j) for j in range(n) if not _shard_done(folder, j)]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of {n} shards missing ({', '.join(missing[:5])}"
                                f"{', ...' if len(missing) > 5 else ''}): build incomplete, re-run "
                                "build_latent_cache with the same arguments (on every rank)")
    shards = []
    for j in range(n):
        path = folder / f"{_shard_name(j)}.json"
        record = json.loads(path.read_text())
        if record.get("identity_sha256") != manifest["identity_sha256"]:
            raise CacheMismatchError(f"{path}: written for another manifest than {folder / 'manifest.json'}; "
                                     "delete the folder and rebuild")
        shards.append(record)
    return LatentClipSet(folder, manifest, shards)


class LatentClipSet:
    """Cached clips: latent windows, captions and exact motion labels; shards are read lazily.

    Only the shards' small ``.json`` files are read when opening; tensors are read on demand through
    ``safetensors.safe_open`` (memory-mapped, so a window reads only its slice), keeping the most recently
    used shard handles open (``max_open_shards``: training draws clips uniformly, so a small LRU would reopen a
    shard on almost every draw, while an open mapping costs a file descriptor and no resident memory).
    Picklable (handles are dropped), so it can be used inside DataLoader workers.
    """

    max_open_shards = 32

    def __init__(self, folder, manifest: dict, shards: list[dict]):
        self.folder, self.manifest = Path(folder), manifest
        self._where = [j for j, s in enumerate(shards) for _ in s["entries"]]
        entries = [e for s in shards for e in s["entries"]]
        self.clip_ids: list[str] = [e["clip_id"] for e in entries]
        self.captions: list[str] = [e["caption"] for e in entries]
        self.paths: list[str] = [e["path"] for e in entries]
        self.lengths: list[int] = [int(e["keyframes"]) for e in entries]
        self.skipped: list[tuple[str, str]] = ([tuple(s) for s in manifest.get("listing_skipped", [])]
                                               + [tuple(s) for r in shards for s in r["skipped"]])
        self.config = KeyframeConfig(**manifest["identity"]["keyframes"])
        self._handles: OrderedDict = OrderedDict()
        self._pairs: dict[int, torch.Tensor] = {}
        self._shape = None

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __repr__(self) -> str:
        return f"LatentClipSet({str(self.folder)!r}, {len(self)} clips, {self.n_skipped} skipped)"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every clip's latents."""
        if self._shape is None:
            if not len(self):
                raise ValueError(f"{self.folder}: no cached clips (all {self.n_skipped} skipped; see skipped.csv)")
            c, _, h, w = self._handle(self._where[0]).get_slice(f"{self.clip_ids[0]}/latents").get_shape()
            self._shape = (c, h, w)
        return self._shape

    def _handle(self, j: int):
        from safetensors import safe_open
        if j in self._handles:
            self._handles.move_to_end(j)
        else:
            self._handles[j] = safe_open(str(self.folder / f"{_shard_name(j)}.safetensors"), framework="pt")
            while len(self._handles) > self.max_open_shards:
                self._handles.popitem(last=False)
        return self._handles[j]

    def _check(self, i, start: int, frames: int) -> int:
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        if frames < 1 or start < 0 or start + frames > self.lengths[i]:
            raise IndexError(f"window [{start}, {start + frames}) outside clip {i} ({self.clip_ids[i]}), "
                             f"which has {self.lengths[i]} keyframes")
        return i

    def window(self, i: int, start: int, frames: int) -> torch.Tensor:
        """(C, frames, h, w) float32: latents of keyframes start .. start+frames-1 of clip i."""
        i = self._check(i, start, frames)
        return self._handle(self._where[i]).get_slice(f"{self.clip_ids[i]}/latents")[:, start:start + frames].float()

    def pair_motion(self, i: int) -> torch.Tensor:
        """(K-1,) float32: the per-pair motion statistic of clip i's cached keyframes."""
        i = operator.index(i)
        if i not in self._pairs:
            self._pairs[i] = self._handle(self._where[i]).get_tensor(f"{self.clip_ids[i]}/pair_motion")
        return self._pairs[i]

    def window_motion(self, i: int, start: int, frames: int) -> float:
        """The suite's motion score of the window: mean of pairs start .. start+frames-2."""
        if frames < 2:
            raise ValueError(f"a motion label needs frames >= 2, got {frames}")
        i = self._check(i, start, frames)
        return float(self.pair_motion(i)[start:start + frames - 1].mean())

    def sample(self, i: int, frames: int | None = None, generator: torch.Generator | None = None):
        """(latents (C, frames, h, w), caption, motion) of a window with a uniformly random start in [0, K-frames]."""
        frames = frames or self.config.frames
        k = self.lengths[operator.index(i)]
        if k < frames:
            raise ValueError(f"clip {i} ({self.clip_ids[i]}) has {k} keyframes, fewer than frames={frames}")
        start = int(torch.randint(0, k - frames + 1, (1,), generator=generator))
        return self.window(i, start, frames), self.captions[i], self.window_motion(i, start, frames)

    def motion_labels(self, frames: int | None = None) -> np.ndarray:
        """(N,) float64: each clip's label for its first window (NaN where the clip is shorter than frames)."""
        frames = frames or self.config.frames
        return np.array([self.window_motion(i, 0, frames) if self.lengths[i] >= frames else np.nan
                         for i in range(len(self))], dtype=np.float64)
