"""Throughput of the data paths: synthetic rendering, real-video decoding and (optionally) RAFT motion labelling.

    python benchmarks/bench_loading.py                       # synthetic + real loading
    python benchmarks/bench_loading.py --motion-clips 64     # + RAFT-small labelling of 64 clips (extrapolated)

A script, not a test: numbers depend on the machine and on its load, which is printed alongside.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from kv_research.data.synthetic import SyntheticConfig, SyntheticVideoDataset, collate_clips, make_clip
from kv_research.data.video import VIDEO_EXTENSIONS, VideoDecodeError, read_video
from kv_research.utils import shared_data_dir


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} clips/s  ({n} clips in {seconds:.2f} s)"


def bench_synthetic(n: int, cfg: SyntheticConfig) -> None:
    t = time.perf_counter()
    for i in range(n):
        make_clip(i, cfg)
    print(f"synthetic make_clip            {cfg.frames}x{cfg.size}x{cfg.size}: {_rate(n, time.perf_counter() - t)}")
    ds = SyntheticVideoDataset(cfg, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=32, collate_fn=collate_clips)
    t, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["video"].shape[0]
        if seen >= n:
            break
    print(f"synthetic DataLoader (batch 32)           : {_rate(seen, time.perf_counter() - t)}")


def bench_real(folder: Path, size: int, frames: int, fps: float) -> None:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    for verify in (True, False):
        t, ok, failed = time.perf_counter(), 0, []
        for p in files:
            try:
                read_video(p, num_frames=frames, fps=fps, size=size, verify=verify)
                ok += 1
            except VideoDecodeError as e:
                failed.append(f"{p.name} ({type(e).__name__})")
        dt = time.perf_counter() - t
        label = "full decode (verify)" if verify else "stop early (no verify)"
        print(f"real read_video {frames}f@{fps}fps {size}px, {label:22s}: {_rate(len(files), dt)}; "
              f"{ok} loaded, {len(failed)} failed: {', '.join(failed) or '-'}")


def bench_motion(n: int, cfg: SyntheticConfig, iters: int) -> None:
    from kv_research.metrics.motion import MotionConfig, MotionLabelCache
    with tempfile.TemporaryDirectory() as tmp:
        cache = MotionLabelCache(tmp, cfg=MotionConfig(num_flow_updates=iters))
        cache.raft  # load the weights outside the timed part
        t = time.perf_counter()
        cache.label_synthetic(SyntheticConfig(**{**cfg.__dict__, "n_train": n}), n=n, progress=True)
        dt = time.perf_counter() - t
    pairs = n * (cfg.frames - 1)
    print(f"RAFT-small labels (128 px, {iters} iters)        : {_rate(n, dt)}; {1000 * dt / pairs:.0f} ms/pair; "
          f"512 clips would take {512 * dt / n / 60:.1f} min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-synthetic", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--videos", type=Path, default=shared_data_dir() / "videos")
    ap.add_argument("--motion-clips", type=int, default=0, help="also time RAFT labelling of this many clips")
    ap.add_argument("--iters", type=int, default=12, help="RAFT num_flow_updates for --motion-clips")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()}")
    cfg = SyntheticConfig(size=a.size, frames=a.frames)
    bench_synthetic(a.n_synthetic, cfg)
    if a.videos.is_dir():
        bench_real(a.videos, a.size, a.frames, a.fps)
    else:
        print(f"real videos: folder not found: {a.videos} (set KV_SHARED_DATA)")
    if a.motion_clips:
        bench_motion(a.motion_clips, cfg, a.iters)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
