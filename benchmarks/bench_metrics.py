"""Time of the metric pipeline against bare detector forward passes on the same clips (overhead ratio).

    python benchmarks/bench_metrics.py [--n 32] [--metrics fvd,clipsim,motion,fvd_syn,clipsim_syn,attr_acc]
                                       [--i3d PATH] [--clip PATH] [--preset smoke|quick] [--n-boot 1000]
                                       [--rounds 5] [--threads 1]
    python benchmarks/bench_metrics.py --raft-batches 16,28,56 [--n 16] [--rounds 3]   # RAFT pairs per call

"pipeline" = ``evaluate_videos(..., metrics=[m])`` end to end (input checks, preprocessing, the shared loop,
bootstrap intervals, FVD reference statistics from a warm cache). "bare" = the detector's forward passes alone
on inputs prepared beforehand, in the same chunks as the pipeline (``--batch-size`` clips per batch; CLIP's frame
batches, RAFT's pairs per call), as a lower bound. Without real weights, FVD uses the random-init I3D stand-in
and CLIPSIM a random-init ViT-B-32-quickgelu (same architecture and cost as the real one); the timings are
about the harness, not about the scores.

Why interleaved: on a shared machine the load changes between two timings taken one after the other, which made
the overhead figure swing from 0.53 to 0.98 between runs (issue 14). Each round times both sides back to back,
in alternating order (ABBA); the script prints one row per metric with the medians and the median and spread
(min-max) of the round-by-round ratios pipeline / bare.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from kv_research.data.synthetic import SyntheticConfig, make_clip  # noqa: E402
from kv_research.metrics.core import evaluate_videos  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(sides: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each side per round; the sides alternate their order (ABBA), so both see the same load."""
    names = list(sides)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(timed(sides[n]))
    return times


def ratio_summary(num: list[float], den: list[float]) -> str:
    """Median and spread (min-max) of the round-by-round ratios num / den."""
    r = [a / max(b, 1e-9) for a, b in zip(num, den)]
    return f"x{statistics.median(r):5.2f} (min {min(r):.2f}, max {max(r):.2f}, {len(r)} rounds)"


@torch.no_grad()
def bare_i3d(det, videos, batch):
    xs = [det.preprocess(v) for v in torch.split(videos, batch)]                 # prepared beforehand
    return lambda: [det.detector(x, rescale=False, resize=False, return_features=True) for x in xs]


@torch.no_grad()
def bare_clip(ex, videos, prompts, batch):
    """The pipeline's chunks: per batch of clips, its frames in ``frame_batch`` images and its distinct prompts."""
    xs, tokens = [], []
    for start in range(0, len(videos), batch):
        frames = rearrange(videos[start:start + batch], "b c t h w -> (b t) c h w")   # every frame is an image
        xs += [ex.image_transform(f) for f in torch.split(frames, ex.frame_batch)]
        tokens.append(ex.tokenizer(sorted(set(prompts[start:start + batch]))))
    return lambda: ([ex.model.encode_image(x) for x in xs], [ex.model.encode_text(t) for t in tokens])


@torch.no_grad()
def bare_synnet(fx, videos, batch):
    return lambda: [fx.net(v) for v in torch.split(videos, batch)]


def raft_pairs(videos, batch: int, pairs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """RAFT inputs in the chunks ``motion.motion_stats`` makes: per batch of ``batch`` clips, whole clips of at
    most ``pairs`` consecutive-frame pairs per call (prepared beforehand: resized, padded, in [-1, 1])."""
    from kv_research.metrics import motion
    t = videos.shape[2]
    per_chunk = max(1, pairs // (t - 1))
    out = []
    for v in torch.split(videos, batch):
        for clips in torch.split(v, per_chunk):
            frames, _ = motion._prepare(rearrange(clips, "b c t h w -> (b t) c h w"), motion.MotionConfig().work_size)
            frames = rearrange(frames, "(b t) c h w -> b t c h w", b=clips.shape[0])
            first = rearrange(frames[:, :-1], "b t c h w -> (b t) c h w")
            second = rearrange(frames[:, 1:], "b t c h w -> (b t) c h w")
            out += list(zip(torch.split(first, pairs), torch.split(second, pairs)))
    return out


@torch.no_grad()
def bare_raft(raft, videos, batch, pairs: int):
    from kv_research.metrics import motion
    n, xs = motion.MotionConfig().num_flow_updates, raft_pairs(videos, batch, pairs)
    return lambda: [raft(a, c, num_flow_updates=n) for a, c in xs]


def raft_batch_study(videos, sizes: list[int], rounds: int) -> None:
    """Milliseconds per pair of RAFT-small (the metric's settings) at each number of pairs per call, interleaved."""
    from kv_research.metrics.motion import MotionConfig, load_raft
    raft, updates = load_raft(), MotionConfig().num_flow_updates
    first, second = raft_pairs(videos, len(videos), 10**9)[0]                     # every pair, split exactly below
    pairs = first.shape[0]

    def side(k):
        chunks = list(zip(torch.split(first, k), torch.split(second, k)))
        return torch.no_grad()(lambda: [raft(a, c, num_flow_updates=updates) for a, c in chunks])
    sides = {k: side(k) for k in sizes}
    sides[sizes[0]]()                                                             # warm-up
    times = interleaved(sides, rounds)
    print(f"RAFT-small, {pairs} pairs of {tuple(videos.shape[-2:])} frames (resized to 128 px):")
    for k in sizes:
        print(f"  {k:4d} pairs per call: {1e3 * statistics.median(times[k]) / pairs:7.1f} ms/pair (median), "
              f"vs {sizes[0]} per call {ratio_summary(times[k], times[sizes[0]])}")


def metric_sides(m: str, args, videos, prompts, requested, tmp: Path):
    """(clips, evaluate_videos keywords, bare callable) for metric ``m``, both sides on the same clips and chunks."""
    from kv_research.metrics import motion
    kw = dict(progress=False, batch_size=args.batch_size, n_boot=args.n_boot)
    if m == "fvd":
        from kv_research.metrics.fvd import load_i3d, save_i3d_standin
        cfg16 = SyntheticConfig(frames=16)
        v = torch.stack([make_clip(i, cfg16, "test").video for i in range(args.n)])
        ref = torch.stack([make_clip(i, cfg16, "train").video for i in range(args.n)])
        det = load_i3d(args.i3d or save_i3d_standin(tmp / "i3d_torchscript.pt"))
        kw.update(i3d=det, reference_videos=ref)
        return v, kw, bare_i3d(det, v, args.batch_size)
    if m == "clipsim":
        from kv_research.metrics.clipsim import load_clip_vitb32
        ex = load_clip_vitb32(args.clip, pretrained=args.clip is not None)
        kw.update(clip=ex)
        return videos, kw, bare_clip(ex, videos, prompts, args.batch_size)
    if m == "motion":
        raft = motion.load_raft()
        kw.update(raft=raft, requested_motion=requested)
        return videos, kw, bare_raft(raft, videos, args.batch_size, motion.RAFT_BATCH_PAIRS)
    from kv_research.metrics.evaluators import load_or_train_evaluators
    ev = load_or_train_evaluators(SyntheticConfig(), args.preset, progress=False)   # trains once if not cached
    kw.update(evaluators=ev)
    bare = bare_clip(ev.clip, videos, prompts, args.batch_size) if m == "clipsim_syn" else \
        bare_synnet(ev.feature_net, videos, args.batch_size)
    return videos, kw, bare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="number of clips")
    ap.add_argument("--metrics", default="fvd,clipsim,motion,fvd_syn,clipsim_syn,attr_acc")
    ap.add_argument("--i3d", help="real i3d_torchscript.pt (default: random-init stand-in)")
    ap.add_argument("--clip", help="real CLIP ViT-B/32 weights (default: random init)")
    ap.add_argument("--preset", default="smoke", help="synthetic evaluators preset")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per batch, on both sides")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (pipeline, bare) per metric")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--raft-batches", help="only time RAFT at these pairs per call, e.g. 16,28,56")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kv_research.utils import shared_data_dir
    os.environ.setdefault("KV_WEIGHTS_DIR", str(shared_data_dir() / "weights"))     # RAFT-small lives there

    clips = [make_clip(i, SyntheticConfig(), "test") for i in range(args.n)]
    videos, prompts = torch.stack([c.video for c in clips]), [c.caption for c in clips]
    if args.raft_batches:
        raft_batch_study(videos, [int(k) for k in args.raft_batches.split(",")], args.rounds)
        print(f"(torch threads: {torch.get_num_threads()}; load average {os.getloadavg()})")
        return 0
    requested = [float(sum(1 for _ in c.attrs["objects"])) for c in clips]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KV_CACHE_DIR", str(Path(tmp) / "cache"))
        for m in [m for m in args.metrics.split(",") if m]:
            v, kw, bare = metric_sides(m, args, videos, prompts, requested, Path(tmp))
            pipe = functools.partial(evaluate_videos, v, prompts, metrics=[m], **kw)
            pipe(), bare()                                    # warm-up: reference cache, lazy imports
            t = interleaved({"pipeline": pipe, "bare": bare}, args.rounds)
            print(f"{m:12s} N={v.shape[0]:4d}  pipeline {statistics.median(t['pipeline']):8.3f} s   "
                  f"bare forward {statistics.median(t['bare']):8.3f} s   "
                  f"overhead {ratio_summary(t['pipeline'], t['bare'])}", flush=True)
    print(f"\n(torch threads: {torch.get_num_threads()}; n_boot={args.n_boot}; batch {args.batch_size} clips; "
          f"clips {tuple(videos.shape[1:])}; load average {os.getloadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
