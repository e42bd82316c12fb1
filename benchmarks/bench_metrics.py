"""Time of the metric pipeline against bare detector forward passes on the same clips (overhead ratio).

    python benchmarks/bench_metrics.py [--n 32] [--metrics fvd,clipsim,motion,fvd_syn,clipsim_syn,attr_acc]
                                       [--i3d PATH] [--clip PATH] [--preset smoke|quick] [--n-boot 1000]

"pipeline" = ``evaluate_videos(..., metrics=[m])`` end to end (input checks, preprocessing, the shared loop,
bootstrap intervals, FVD reference statistics from a warm cache). "bare" = the detector's forward passes alone
on inputs prepared beforehand, as a lower bound. Without real weights, FVD uses the random-init I3D stand-in
and CLIPSIM a random-init ViT-B-32-quickgelu (same architecture and cost as the real one); the timings are
about the harness, not about the scores. Prints one row per metric.
"""
from __future__ import annotations

import argparse
import os
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


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def bare_i3d(det, videos, batch):
    xs = [det.preprocess(v) for v in torch.split(videos, batch)]                 # prepared beforehand
    return lambda: [det.detector(x, rescale=False, resize=False, return_features=True) for x in xs]


@torch.no_grad()
def bare_clip(ex, videos, prompts, batch):
    frames = rearrange(videos, "b c t h w -> (b t) c h w")                       # every frame is an image
    xs = [ex.image_transform(f) for f in torch.split(frames, ex.frame_batch)]
    tokens = ex.tokenizer(sorted(set(prompts)))
    return lambda: ([ex.model.encode_image(x) for x in xs], ex.model.encode_text(tokens))


@torch.no_grad()
def bare_synnet(fx, videos, batch):
    return lambda: [fx.net(v) for v in torch.split(videos, batch)]


@torch.no_grad()
def bare_raft(raft, videos):
    from kv_research.metrics import motion
    size = motion.MotionConfig().work_size
    b, _, t, h, w = videos.shape
    x = rearrange(videos, "b c t h w -> (b t) c h w")
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1
    x = rearrange(x, "(b t) c h w -> b t c h w", b=b)
    first, second = x[:, :-1].reshape(-1, 3, size, size), x[:, 1:].reshape(-1, 3, size, size)
    n = motion.MotionConfig().num_flow_updates
    return lambda: [raft(a, c, num_flow_updates=n) for a, c in zip(torch.split(first, 16), torch.split(second, 16))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="number of clips")
    ap.add_argument("--metrics", default="fvd,clipsim,motion,fvd_syn,clipsim_syn,attr_acc")
    ap.add_argument("--i3d", help="real i3d_torchscript.pt (default: random-init stand-in)")
    ap.add_argument("--clip", help="real CLIP ViT-B/32 weights (default: random init)")
    ap.add_argument("--preset", default="smoke", help="synthetic evaluators preset")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from kv_research.utils import shared_data_dir
    os.environ.setdefault("KV_WEIGHTS_DIR", str(shared_data_dir() / "weights"))     # RAFT-small lives there
    metrics = [m for m in args.metrics.split(",") if m]

    cfg = SyntheticConfig()
    clips = [make_clip(i, cfg, "test") for i in range(args.n)]
    videos, prompts = torch.stack([c.video for c in clips]), [c.caption for c in clips]
    requested = [float(sum(1 for _ in c.attrs["objects"])) for c in clips]
    common = dict(progress=False, batch_size=args.batch_size, n_boot=args.n_boot)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("KV_CACHE_DIR", str(Path(tmp) / "cache"))
        for m in metrics:
            kw, bare = dict(common), None
            if m == "fvd":
                from kv_research.metrics.fvd import load_i3d, save_i3d_standin
                cfg16 = SyntheticConfig(frames=16)
                v = torch.stack([make_clip(i, cfg16, "test").video for i in range(args.n)])
                ref = torch.stack([make_clip(i, cfg16, "train").video for i in range(args.n)])
                det = load_i3d(args.i3d or save_i3d_standin(Path(tmp) / "i3d_torchscript.pt"))
                kw.update(i3d=det, reference_videos=ref)
                bare = bare_i3d(det, v, args.batch_size)
            elif m == "clipsim":
                from kv_research.metrics.clipsim import load_clip_vitb32
                ex = load_clip_vitb32(args.clip, pretrained=args.clip is not None)
                kw.update(clip=ex)
                v = videos
                bare = bare_clip(ex, v, prompts, args.batch_size)
            elif m == "motion":
                from kv_research.metrics.motion import load_raft
                raft = load_raft()
                kw.update(raft=raft, requested_motion=requested)
                v = videos
                bare = bare_raft(raft, v)
            else:
                from kv_research.metrics.evaluators import load_or_train_evaluators
                ev = load_or_train_evaluators(cfg, args.preset, progress=False)   # trains once if not cached
                kw.update(evaluators=ev)
                v = videos
                bare = bare_clip(ev.clip, v, prompts, args.batch_size) if m == "clipsim_syn" else \
                    bare_synnet(ev.feature_net, v, args.batch_size)
            evaluate_videos(v, prompts, metrics=[m], **kw)                    # warm-up: reference cache, lazy imports
            t_pipe = timed(lambda: evaluate_videos(v, prompts, metrics=[m], **kw))
            t_bare = timed(bare, repeat=2)
            rows.append((m, tuple(v.shape), t_pipe, t_bare))
            print(f"{m:12s} N={v.shape[0]:4d}  pipeline {t_pipe:8.3f} s   bare forward {t_bare:8.3f} s   "
                  f"overhead x{t_pipe / max(t_bare, 1e-9):6.2f}", flush=True)
    print(f"\n(torch threads: {torch.get_num_threads()}; n_boot={args.n_boot}; clips {tuple(videos.shape[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
