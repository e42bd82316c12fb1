"""FusionFrames interpolation vs masked frame interpolation (MFI): wall-clock and UNet FLOPs for the same output.

    python benchmarks/bench_interpolation.py                         # quick width, 32 px, 5 keyframes, 2 passes
    python benchmarks/bench_interpolation.py --preset smoke --keyframes 3 --repeats 1

Both models are built from the same text-to-image UNet (untrained: cost does not depend on the weights) and run
the same sampler (DDIM, context guidance, ``--steps`` steps) on the same keyframes, one pass (T -> 4T - 3) and two
passes (-> 16T - 15), in one process, alternating, best of ``--repeats``. Prints seconds per video, the ratio, UNet
FLOPs per generated frame and parameters. A script, not a test: times depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import kv_research as kv
from kv_research.interpolation_pipeline import InterpolationPipeline, MFIPipeline, frames_after
from kv_research.models.interpolation import InterpolationUNet
from kv_research.models.mfi import DEFAULT_VARIANT, MaskedFrameInterpolationUNet
from kv_research.models.text import TextEncoder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", choices=["smoke", "quick"])
    ap.add_argument("--keyframes", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2, choices=[1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mfi-variant", default=DEFAULT_VARIANT)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is often fastest on 2 shared cores)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.keyframes < 2 or a.steps < 1 or a.repeats < 1:
        ap.error("--keyframes >= 2, --steps >= 1, --repeats >= 1")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    p = kv.get_preset(a.preset)
    img = kv.build_unet("Spatial", preset=a.preset).eval()
    te = TextEncoder(p.text)
    pipes = {"FusionFrames": InterpolationPipeline(InterpolationUNet.from_image(img), te, p.diffusion).eval(),
             "MFI": MFIPipeline(MaskedFrameInterpolationUNet.from_image(img, a.mfi_variant), te, p.diffusion).eval()}
    keys = torch.rand(1, 3, a.keyframes, p.size, p.size) * 2 - 1
    prompt = ["a small red circle moves left quickly over a striped background"]
    out_frames = frames_after(a.keyframes, a.passes)
    generated = out_frames - a.keyframes
    res = {}
    for name, pipe in pipes.items():
        with FlopCounterMode(display=False) as fc:
            pipe.passes(keys, a.passes, prompt, [0], steps=a.steps)
        res[name] = {"flops_per_generated_frame": fc.get_total_flops() / generated,
                     "params": sum(q.numel() for q in pipe.unet.parameters()), "seconds": []}
    for _ in range(a.repeats):                       # alternate, so both see the same machine load
        for name, pipe in pipes.items():
            t = time.perf_counter()
            pipe.passes(keys, a.passes, prompt, [0], steps=a.steps)
            res[name]["seconds"].append(time.perf_counter() - t)
    for r in res.values():
        r["seconds_per_video"] = min(r["seconds"])
    ratio = res["MFI"]["seconds_per_video"] / res["FusionFrames"]["seconds_per_video"]
    flop_ratio = res["MFI"]["flops_per_generated_frame"] / res["FusionFrames"]["flops_per_generated_frame"]
    setup = {"preset": a.preset, "resolution": p.size, "keyframes": a.keyframes, "passes": a.passes,
             "output_frames": out_frames, "steps": a.steps, "guidance": "context (2 branches)",
             "mfi_variant": a.mfi_variant, "threads": a.threads, "torch": torch.__version__,
             "load_avg": os.getloadavg()[0]}
    if a.json:
        print(json.dumps({"setup": setup, "results": res, "time_ratio": ratio, "flop_ratio": flop_ratio}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    print(f"{'method':<14}{'s/video':>10}{'GFLOPs/frame':>14}{'params':>12}")
    for name, r in res.items():
        print(f"{name:<14}{r['seconds_per_video']:>10.3f}{r['flops_per_generated_frame'] / 1e9:>14.3f}"
              f"{r['params']:>12,}")
    print(f"MFI / FusionFrames: time x{ratio:.2f}, UNet FLOPs x{flop_ratio:.2f} (paper: '>3x faster', A100)")


if __name__ == "__main__":
    main()
