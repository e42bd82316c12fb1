#!/usr/bin/env python
"""GPU path check and throughput figures (a script that prints figures; not a test).

    PYTHONPATH=. python benchmarks/gpu_check.py [--out DIR]

Exercises on CUDA: training steps in fp32 vs bf16 autocast, ``Module.compile()`` on vs off, which SDPA backend the
temporal attention can use, attention chunking above 65,535 sequences, and generation throughput. Writes
``gpu_check.json`` and ``gpu_check.md`` to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kv_research as kv  # noqa: E402
from kv_research.models.layers import Context  # noqa: E402
from kv_research.models.temporal import TemporalAttention  # noqa: E402
from kv_research.pipeline import KeyframePipeline  # noqa: E402


def sync():
    torch.cuda.synchronize()


def timed(fn, n, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def preset(name):
    p = kv.get_preset("quick")
    if name == "quick":
        return p
    # a mid-size Kandinsky 3.0: 64 px, 16 keyframes, 4 levels of 64-256 channels (one GPU trains it in minutes)
    return dataclasses.replace(p, name="gpu-mid", frames=16, size=64,
                               unet=dataclasses.replace(p.unet, block_out_channels=(64, 128, 256, 256),
                                                        attention_head_dim=32, groups=16))


def train_step_fn(pipe, batch, dtype):
    params = [q for q in pipe.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    B, T, S = batch, pipe._frames, pipe._size
    clips = torch.rand(B, 3, T, S, S, device="cuda")
    caps = ["a small red circle moves left quickly over a striped background"] * B
    motion = torch.rand(B, device="cuda") * 20
    ctx = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step():
        with ctx:
            loss = pipe.video_loss(clips, caps, motion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/gpu")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    print(res)

    for pname, batch in (("quick", 32), ("gpu-mid", 8)):
        p = preset(pname)
        torch.manual_seed(0)
        image = KeyframePipeline.from_preset(p)
        pipe = image.inflated("Conv1dAttn1dBlocks").cuda()
        pipe._frames, pipe._size = p.frames, p.size
        for label, dtype in (("fp32 (tf32)", None), ("bf16 autocast", torch.bfloat16)):
            dt = timed(train_step_fn(pipe, batch, dtype), n=10)
            row = {"config": pname, "what": f"train step, {label}", "batch_clips": batch, "frames": p.frames,
                   "size": p.size, "s_per_step": dt, "clips_per_s": batch / dt}
            res["rows"].append(row)
            print(row, flush=True)
        if not args.skip_compile:
            comp = image.inflated("Conv1dAttn1dBlocks").cuda()
            comp._frames, comp._size = p.frames, p.size
            comp.unet.compile()
            step = train_step_fn(comp, batch, torch.bfloat16)
            t0 = time.perf_counter()
            step()
            sync()
            t_compile = time.perf_counter() - t0
            dt = timed(step, n=10)
            row = {"config": pname, "what": "train step, bf16 autocast + Module.compile()", "batch_clips": batch,
                   "frames": p.frames, "size": p.size, "s_per_step": dt, "clips_per_s": batch / dt,
                   "first_step_incl_compile_s": t_compile}
            res["rows"].append(row)
            print(row, flush=True)
        # generation throughput (bf16), 2-way guidance as the preset
        pipe.eval()
        prompts = ["a big blue square moves up slowly over a checkered background"] * 16
        with torch.autocast("cuda", dtype=torch.bfloat16):
            def gen():
                pipe.generate(prompts, list(range(16)), [20.0] * 16, frames=p.frames, size=p.size, steps=25)
            dt = timed(gen, n=2, warmup=1)
        row = {"config": pname, "what": "generate 16 videos, 25 steps, bf16", "frames": p.frames, "size": p.size,
               "s_per_batch": dt, "videos_per_s": 16 / dt}
        res["rows"].append(row)
        print(row, flush=True)
        del pipe, image

    # SDPA backends for temporal attention: (b h w) sequences of T frames
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(4 * 64 * 64, 2, 16, 32, device="cuda", dtype=torch.bfloat16)
    backends = {}
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("math", SDPBackend.MATH), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(be):
                dt = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q[:16384], q[:16384],
                                                                                      q[:16384]), n=20)
            backends[name] = dt * 1e3
        except RuntimeError as e:
            backends[name] = f"unavailable: {str(e).splitlines()[0][:80]}"
    res["sdpa_ms_16384x2heads_T16_d32_bf16"] = backends
    print(backends, flush=True)

    # chunking: b*h*w = 4 * 128 * 128 = 65,536 sequences (> 65,535) of T = 16 frames
    attn = TemporalAttention(channels=64, head_dim=32, window=1).cuda()
    with torch.no_grad():
        attn.to_out[0].weight.normal_(0, 0.02)
    x = torch.randn(4 * 16, 64, 128, 128, device="cuda")
    ctx = Context(torch.zeros(64, 32, device="cuda"), None, None, 16, torch.zeros(64, 32, device="cuda"))
    with torch.no_grad():
        chunked = attn(x, ctx)
        attn.max_batch = 10 ** 9
        try:
            whole = attn(x, ctx)
            sync()
            unchunked = f"ran; max |diff| vs chunked = {(whole - chunked).abs().max().item():.2e}"
        except RuntimeError as e:
            unchunked = f"failed: {str(e).splitlines()[0][:120]}"
    res["attention_over_65535"] = {"chunked": "ran", "unchunked": unchunked}
    print(res["attention_over_65535"], flush=True)
    res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    lines = [f"# GPU check on {res['gpu']} (torch {res['torch']})", "",
             "| config | what | frames x size | throughput | s per step/batch |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        thr = f"{r['clips_per_s']:.1f} clips/s" if "clips_per_s" in r else f"{r['videos_per_s']:.2f} videos/s"
        extra = f" (first step with compile {r['first_step_incl_compile_s']:.1f} s)" if "first_step_incl_compile_s" in r else ""
        lines.append(f"| {r['config']} | {r['what']}{extra} | {r['frames']}x{r['size']} | {thr} | "
                     f"{r.get('s_per_step', r.get('s_per_batch')):.4f} |")
    lines += ["", f"SDPA (ms, 16,384 sequences x 2 heads, T=16, d=32, bf16): {backends}",
              f"Temporal attention over 65,536 sequences: {res['attention_over_65535']}",
              f"Peak GPU memory: {res['peak_memory_gib']:.2f} GiB"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
