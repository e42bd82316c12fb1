#!/usr/bin/env python
"""GPU path check and throughput figures (a script that prints figures; not a test).

    PYTHONPATH=. python benchmarks/gpu_check.py [--out DIR] [--only SECTION ...]

Exercises on CUDA, one section each (``--only`` picks some; default: all):

* ``train``: training steps in fp32 vs bf16 autocast, ``Module.compile()`` on vs off, and generation throughput,
  on two small configs;
* ``sdpa``: which SDPA backend the temporal attention can use;
* ``chunking``: attention chunking above 65,535 sequences;
* ``paper_unet``: the paper-width keyframe UNet (Kandinsky 3.0 config, random init, inflated with
  ``Conv1dAttn1dBlocks``, spatial frozen in bf16; batch 1, 16 keyframes of 64x64 latents, bf16 autocast, gradient
  checkpointing): step time, peak memory next to ``kv_research.memory``'s estimate, FLOPs and utilisation.

Writes ``gpu_check.json`` and ``gpu_check.md`` to --out (``gpu_check_<sections>.*`` with ``--only``, so a partial
run does not overwrite a full one).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kv_research as kv  # noqa: E402
from kv_research import memory  # noqa: E402
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


# ------------------------------------------------------------------------------------------------ sections
def section_train(res, args):
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
            comp = None
        # generation throughput (bf16), 2-way guidance as the preset
        pipe.eval()
        prompts = ["a big blue square moves up slowly over a checkered background"] * 16
        with torch.autocast("cuda", dtype=torch.bfloat16):
            def gen(pipe=pipe, p=p):
                pipe.generate(prompts, list(range(16)), [20.0] * 16, frames=p.frames, size=p.size, steps=25)
            dt = timed(gen, n=2, warmup=1)
        row = {"config": pname, "what": "generate 16 videos, 25 steps, bf16", "frames": p.frames, "size": p.size,
               "s_per_batch": dt, "videos_per_s": 16 / dt}
        res["rows"].append(row)
        print(row, flush=True)
        pipe = image = gen = None                 # free the GPU memory before the next config
        torch.cuda.empty_cache()
    lines = ["| config | what | frames x size | throughput | s per step/batch |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        thr = f"{r['clips_per_s']:.1f} clips/s" if "clips_per_s" in r else f"{r['videos_per_s']:.2f} videos/s"
        extra = (f" (first step with compile {r['first_step_incl_compile_s']:.1f} s)"
                 if "first_step_incl_compile_s" in r else "")
        lines.append(f"| {r['config']} | {r['what']}{extra} | {r['frames']}x{r['size']} | {thr} | "
                     f"{r.get('s_per_step', r.get('s_per_batch')):.4f} |")
    return lines + [""]


def section_sdpa(res, args):
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
    return [f"SDPA (ms, 16,384 sequences x 2 heads, T=16, d=32, bf16): {backends}"]


def section_chunking(res, args):
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
    return [f"Temporal attention over 65,536 sequences: {res['attention_over_65535']}"]


# dense bf16 tensor-core peaks (FLOP/s) by device name; None = unknown
def peak_bf16_flops(name: str) -> float | None:
    n = name.upper()
    if "H100" in n and "PCIE" in n:
        return 756e12
    if "H100" in n or "H200" in n or "GH200" in n:
        return 989e12             # H100 SXM; H200 has the same compute
    if "A100" in n:
        return 312e12
    return None


def build_paper_unet(variant="Conv1dAttn1dBlocks"):
    """Kandinsky 3.0 (``paper`` preset), random init, inflated, spatial frozen in bf16: built on the GPU."""
    cfg = dataclasses.replace(kv.get_preset("paper").unet, checkpointing=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        img = kv.build_unet("Spatial", config=cfg)
        vid = kv.inflate(img, variant)          # copies the image UNet on the GPU, adds the temporal modules
    del img
    with torch.no_grad():
        for prm in vid.parameters():
            if not prm.requires_grad:
                prm.data = prm.data.to(torch.bfloat16)
    torch.cuda.empty_cache()
    return vid


def section_paper_unet(res, args):
    from torch.utils.flop_counter import FlopCounterMode
    B, T, S, L = 1, 16, 64, 128
    t0 = time.perf_counter()
    unet = build_paper_unet()
    sync()
    t_build = time.perf_counter() - t0
    unet.train()
    cfg = unet.config
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)                     # as train.Trainer: AdamW on the trainable weights
    ema = [q.detach().clone() for q in params]                   # and an fp32 EMA of them
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, cfg.in_channels, T, S, S, device="cuda", generator=g)
    target = torch.randn(B, cfg.in_channels, T, S, S, device="cuda", generator=g)
    text = torch.randn(B, L, cfg.encoder_hid_dim, device="cuda", generator=g)
    mask = torch.ones(B, L, dtype=torch.bool, device="cuda")
    mask[:, 40:] = False
    first = torch.randn(B, cfg.in_channels, S, S, device="cuda", generator=g)
    t = torch.randint(0, 1000, (B,), device="cuda", generator=g)
    cond = dict(first_frame=first, motion_score=torch.full((B,), 5.0, device="cuda"),
                noise_level=torch.full((B,), 20.0, device="cuda"))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(unet(x, t, text, mask, **cond).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1e-3)
        return loss

    for _ in range(args.paper_warmup):
        step()
    sync()
    res["peak_before_paper_unet_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30   # earlier sections' peak
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.paper_steps):
        t1 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t1)
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    dt = statistics.median(times)
    # FLOPs: one whole step (checkpointing's recomputation included) and one forward alone
    with FlopCounterMode(display=False) as fc:
        step()
    step_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        unet(x, t, text, mask, **cond)
    fwd_flops = fc.get_total_flops()
    # model FLOPs = forward + backward: the step's count less the recomputation, taken as one whole forward (the
    # recompute covers the blocks only, so this is low by the few layers outside them: ~1 % at the smoke preset)
    model_flops = step_flops - fwd_flops
    peak_flops = peak_bf16_flops(res["gpu"])
    est = memory.estimate_training_memory(unet, frames=T, latent_size=S, batch=B, text_len=L,
                                          weight_dtype=torch.bfloat16, autocast_dtype=torch.bfloat16)
    counts = unet.parameter_counts()
    row = {"what": "paper keyframe UNet train step (Conv1dAttn1dBlocks, spatial frozen bf16, bf16 autocast, "
                   "gradient checkpointing, AdamW + EMA)",
           "batch": B, "frames": T, "latent_size": S, "params_total": counts["params_total"],
           "params_trainable": counts["params_trainable"], "build_s": t_build, "steps_timed": len(times),
           "s_per_step_median": dt, "s_per_step_all": times, "loss": loss.item(),
           "peak_allocated_gib": peak / 2 ** 30, "peak_reserved_gib": reserved / 2 ** 30,
           "estimate_gib": est["gib"], "estimate_activation_method": est["activation_detail"]["activation_method"],
           "step_tflops_counted": step_flops / 1e12, "forward_tflops": fwd_flops / 1e12,
           "model_tflops": model_flops / 1e12, "achieved_model_tflops_per_s": model_flops / dt / 1e12,
           "peak_bf16_tflops_per_s": None if peak_flops is None else peak_flops / 1e12,
           "mfu": None if peak_flops is None else model_flops / dt / peak_flops,
           "hfu": None if peak_flops is None else step_flops / dt / peak_flops}
    res["paper_unet"] = row
    print(json.dumps(row, indent=1), flush=True)
    print(memory.format_memory(est), flush=True)
    unet = opt = ema = params = None
    torch.cuda.empty_cache()
    util = ("unknown peak" if peak_flops is None else
            f"MFU {100 * row['mfu']:.1f} % (model FLOPs, recompute excluded), HFU {100 * row['hfu']:.1f} % "
            f"(all counted FLOPs), of {peak_flops / 1e12:.0f} TFLOP/s dense bf16")
    return [f"Paper keyframe UNet ({counts['params_total']:,} params, {counts['params_trainable']:,} trainable), "
            f"batch {B} x {T} keyframes of {S}x{S} latents, bf16 autocast, checkpointing: "
            f"{dt:.3f} s/step (median of {len(times)}), peak allocated {row['peak_allocated_gib']:.2f} GiB "
            f"(reserved {row['peak_reserved_gib']:.2f}) vs estimated {est['gib']['total_checkpointed']:.2f} GiB "
            f"(activations {est['gib']['activations_checkpointed']:.2f} of it); {model_flops / 1e12:.1f} model "
            f"TFLOPs/step ({step_flops / 1e12:.1f} counted, forward {fwd_flops / 1e12:.1f}): {util}", "",
            "```", memory.format_memory(est), "```"]


SECTIONS = {"train": section_train, "sdpa": section_sdpa, "chunking": section_chunking,
            "paper_unet": section_paper_unet}


def main():
    ap = argparse.ArgumentParser(description="GPU path check and throughput figures (CUDA only; not a test).")
    ap.add_argument("--out", default="results/gpu")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None, metavar="SECTION",
                    help=f"run only these sections ({', '.join(SECTIONS)}; default: all)")
    ap.add_argument("--skip-compile", action="store_true", help="train: skip the Module.compile() rows")
    ap.add_argument("--paper-steps", type=int, default=5, help="paper_unet: timed steps (default 5)")
    ap.add_argument("--paper-warmup", type=int, default=2, help="paper_unet: warm-up steps (default 2)")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    print(res)
    sections = args.only or list(SECTIONS)
    res["sections"] = sections
    lines = [f"# GPU check on {res['gpu']} (torch {res['torch']}), sections: {', '.join(sections)}", ""]
    for name in sections:
        lines += SECTIONS[name](res, args)
    res["peak_memory_gib"] = max(torch.cuda.max_memory_allocated() / 2 ** 30,
                                 res.get("peak_before_paper_unet_gib", 0.0))
    lines.append(f"Peak GPU memory: {res['peak_memory_gib']:.2f} GiB")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" if args.only is None else "gpu_check_" + "_".join(sections)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
