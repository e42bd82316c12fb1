"""Channels-last against the default (contiguous) layout of the UNet's 2-D conv weights, at the quick widths.

    python benchmarks/bench_memory_format.py                       # image step, 3 video variants, sampling
    python benchmarks/bench_memory_format.py --threads 2 --rounds 9 --variants Conv3dAttn1dBlocks

What is timed (one process, ``--threads`` torch threads): a text-to-image training step (16 images), a video
fine-tuning step (2 clips of 8 frames) per variant, each through the real ``Trainer``, and one guided sampling
call of ``KeyframePipeline.generate`` (16 prompts, 8 keyframes, 8 DDIM steps). The two layouts are two copies of
the same model with the same weights, timed interleaved (A, B, B, A, ...) after a warm-up, so a change of load
hits both; per side the median, and the median and range of the pair-by-pair ratios channels-last / default.
The largest difference of the two sides' losses and videos is printed too: it is float32 rounding (summation
order), not a different computation. A script, not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kv_research as kv  # noqa: E402
from kv_research.models.layers import channels_last_  # noqa: E402
from kv_research.pipeline import KeyframePipeline  # noqa: E402
from kv_research.train import Trainer, TrainData  # noqa: E402


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}, range {min(xs):.3f}-{max(xs):.3f}"


def interleave(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each side, ABBA order, after one untimed call each."""
    names = list(fns)
    for n in names:
        fns[n]()
    out = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[n]()
            out[n].append(time.perf_counter() - t)
    return out


def report(what: str, times: dict[str, list[float]], diff: float) -> None:
    d, c = times["default"], times["channels_last"]
    print(f"{what:28s} default {statistics.median(d):.3f} s, channels-last {statistics.median(c):.3f} s; "
          f"ratio {spread([b / a for a, b in zip(d, c)])}; max |difference| {diff:.2e}", flush=True)


def bench_training(p, base, mode: str, variant: str, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    n = 32
    data = TrainData(torch.rand(n, 3, p.frames, p.size, p.size, generator=g),
                     [f"a red circle moves left {i}" for i in range(n)], torch.rand(n, generator=g) * 10)
    cfg = dataclasses.replace(p.train, ckpt_every=10**9, log_every=10**9)
    trainers, steps, losses = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("default", "channels_last"):
            pipe = copy.deepcopy(base)
            if mode == "video":
                pipe = pipe.inflated(variant)
            if side == "channels_last":
                channels_last_(pipe.unet)
            trainers[side] = Trainer(pipe, mode, data, cfg, Path(tmp) / side, steps=10**6, progress=False)
            steps[side], losses[side] = 0, []

        def step(side):
            def f():
                losses[side].append(trainers[side].train_step(steps[side]))
                steps[side] += 1
            return f
        times = interleave({s: step(s) for s in trainers}, rounds)
    diff = max(abs(a - b) for a, b in zip(losses["default"], losses["channels_last"]))
    report(f"{mode} step" + (f" {variant}" if mode == "video" else ""), times, diff)


def bench_sampling(p, base, variant: str, rounds: int) -> None:
    pipes = {"default": copy.deepcopy(base).inflated(variant).eval()}
    pipes["channels_last"] = copy.deepcopy(pipes["default"])
    channels_last_(pipes["channels_last"].unet)
    prompts = [f"a blue square moves up {i}" for i in range(16)]
    first = torch.rand(16, 3, p.size, p.size) * 2 - 1
    videos = {}

    def call(side):
        def f():
            videos[side] = pipes[side].generate(prompts, list(range(16)), [5.0] * 16, frames=p.frames, size=p.size,
                                                first_latents=first)
        return f
    times = interleave({s: call(s) for s in pipes}, rounds)
    report(f"sampling {variant}", times, float((videos["default"] - videos["channels_last"]).abs().max()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="timed calls per side")
    ap.add_argument("--variants", nargs="*", default=["Conv1dAttn1dLayers", "Conv1dAttn1dBlocks", "Conv3dAttn1dBlocks"])
    ap.add_argument("--sampling-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = kv.get_preset("quick")
    torch.manual_seed(0)
    base = KeyframePipeline.from_preset(p)
    print(f"quick preset, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"load average {os.getloadavg()}", flush=True)
    bench_training(p, base, "image", "Spatial", args.rounds)
    for v in args.variants:
        bench_training(p, base, "video", v, args.rounds)
    bench_sampling(p, base, args.variants[-1], args.sampling_rounds)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
