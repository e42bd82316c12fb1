"""OpenMP waiting policy, thread count and parallel jobs for training: quick-preset steps through the real Trainer.

    python benchmarks/bench_threads.py                            # 20 image steps, 1 and 2 threads, 3 rounds
    python benchmarks/bench_threads.py --mode video --rounds 5 --threads 1 2
    python benchmarks/bench_threads.py --jobs 2 --mode video      # 1 process x 2 threads vs 2 processes x 1 thread

``--jobs N`` compares the two ways of using N cores for the study's rows (``ablation.row_jobs``): one process with
N threads, and N one-thread processes training at the same time (they wait for a common start time after their
warm-up, so their timed steps overlap), as training steps per second of the machine.

Why subprocesses: OpenMP reads ``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` once, when the runtime starts, so each
measurement is a fresh process with its own environment. Why interleaved rounds: on a shared machine the load moves
while the script runs; each round runs every setting once (the two policies in alternating order, ABBA), so each
PASSIVE/default pair saw about the same load, and the script prints the median and spread of the pair-by-pair
ratios next to the medians of the seconds per step. A script, not a test: the figures depend on the machine and on
what else runs on it (the load averages before and after are printed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = ("default", "PASSIVE")


def child(mode: str, steps: int, warmup: int, start_at: float = 0.0) -> dict:
    """In the measured process: ``steps`` quick-preset training steps through the real Trainer, after ``warmup``."""
    import dataclasses

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import kv_research as kv
    from kv_research.pipeline import KeyframePipeline
    from kv_research.train import Trainer, TrainData

    p = kv.get_preset("quick")
    torch.manual_seed(0)
    pipe = KeyframePipeline.from_preset(p)
    if mode == "video":
        pipe = pipe.inflated("Conv1dAttn1dBlocks")
    n = 32
    data = TrainData(torch.rand(n, 3, p.frames, p.size, p.size), [f"a red circle moves left {i}" for i in range(n)],
                     torch.rand(n) * 10)
    cfg = dataclasses.replace(p.train, ckpt_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(pipe, mode, data, cfg, tmp, steps=warmup + steps, progress=False)
        for s in range(warmup):
            tr.train_step(s)
        time.sleep(max(0.0, start_at - time.time()))
        t = time.perf_counter()
        for s in range(warmup, warmup + steps):
            tr.train_step(s)
        dt = time.perf_counter() - t
    return {"s_per_step": dt / steps, "torch_threads": torch.get_num_threads()}


def _launch(policy: str, threads: int, args, start_at: float = 0.0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", "--mode", args.mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--start-at", str(start_at)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, threads: int) -> float:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    if res["torch_threads"] != threads:
        raise RuntimeError(f"asked for {threads} threads, torch used {res['torch_threads']}")
    return res["s_per_step"]


def measure(policy: str, threads: int, args) -> float:
    return _result(_launch(policy, threads, args), threads)


def measure_jobs(n: int, args, lead_s: float = 25.0) -> list[float]:
    """n one-thread processes whose timed steps start together ``lead_s`` from now (after import and warm-up)."""
    start = time.time() + lead_s
    procs = [_launch("default", 1, args, start) for _ in range(n)]
    return [_result(p, 1) for p in procs]


def jobs_main(args) -> int:
    n = args.jobs
    print(f"{args.steps} quick {args.mode} steps per process; 1 process x {n} threads vs {n} processes x 1 thread; "
          f"load average before: {os.getloadavg()}", flush=True)
    one, many, ratios = [], [], []
    for r in range(args.rounds):
        sides = ("one", "many") if r % 2 == 0 else ("many", "one")
        got = {}
        for side in sides:
            if side == "one":
                got[side] = 1.0 / measure("default", n, args)                 # steps / s of the machine
            else:
                got[side] = sum(1.0 / t for t in measure_jobs(n, args))
            print(f"round {r + 1}: {side:4s} {got[side]:.3f} steps/s", flush=True)
        one.append(got["one"])
        many.append(got["many"])
        ratios.append(got["many"] / got["one"])
    print(f"\ntraining steps per second of the machine (median of {args.rounds} rounds): "
          f"1 x {n} threads {statistics.median(one):.3f}, {n} x 1 thread {statistics.median(many):.3f}")
    print(f"{n} jobs / 1 process, pair by pair: {spread(ratios)}")
    print(f"load average after: {os.getloadavg()}")
    return 0


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}, range {min(xs):.3f}-{max(xs):.3f}"


def report(times: dict, threads: list[int]) -> None:
    print(f"\nseconds per step (median of {len(next(iter(times.values())))} runs):")
    for th in threads:
        print(f"  {th} thread(s): " + ", ".join(f"{pol} {statistics.median(times[th, pol]):.3f}" for pol in POLICIES))
    print("PASSIVE / default, pair by pair (same round):")
    for th in threads:
        print(f"  {th} thread(s): {spread([b / a for a, b in zip(times[th, 'default'], times[th, 'PASSIVE'])])}")
    if len(threads) > 1:
        lo, hi = min(threads), max(threads)
        for pol in POLICIES:
            r = [b / a for a, b in zip(times[lo, pol], times[hi, pol])]
            print(f"{hi} / {lo} threads, {pol}: {spread(r)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="image", choices=["image", "video"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=0, help="compare 1 process x N threads with N 1-thread processes")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.mode, args.steps, args.warmup, args.start_at)))
        return 0
    if args.jobs:
        return jobs_main(args)
    print(f"{args.steps} quick {args.mode} steps per run; load average before: {os.getloadavg()}", flush=True)
    times = {(th, pol): [] for th in args.threads for pol in POLICIES}
    for r in range(args.rounds):
        order = POLICIES if r % 2 == 0 else POLICIES[::-1]          # ABBA: neither side always runs first
        for th in args.threads:
            for pol in order:
                times[th, pol].append(measure(pol, th, args))
                print(f"round {r + 1}: {th} thread(s) {pol:8s} {times[th, pol][-1]:.3f} s/step", flush=True)
    report(times, args.threads)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
