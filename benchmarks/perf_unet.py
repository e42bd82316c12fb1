"""Speed of the suite's UNet: ours vs diffusers' Kandinsky3UNet, each temporal variant vs the image model, and
the achieved GFLOP/s of every step against this machine's fp32 matmul peak measured in the same run.

    python benchmarks/perf_unet.py                          # full run (about 3-4 min on 2 quiet cores)
    python benchmarks/perf_unet.py --quick                  # a smoke run: few rounds, two variants, no wide video
    python benchmarks/perf_unet.py --threads 1 --json results/perf_unet/threads1.json

Why: the CPU study's cost is dominated by UNet training steps, so (a) our re-implementation must not be slower
than the reference it is checked against (same module names, same weights, same inputs), (b) the price of each
temporal variant relative to training the image model on the same frames says what the video rows cost, and
(c) achieved GFLOP/s against a matmul peak says how far the small study widths are from compute-bound.

Method: everything in one process, at one thread count (``--threads``; torch's default otherwise; on 2 shared
cores ``--threads 1`` is often faster for the small kernels of the quick widths, so try both). The two sides of a
comparison are timed interleaved (after warm-up: the FLOP-counting call and ``--warmup`` more per side; then
A, B, A, B, ... for N rounds), so load from other processes hits both alike; per side the median is reported, and
for the pair-by-pair ratio A/B its median, IQR and min-max. The matmul peak is measured at the start and at the
end and the larger is used (contention only slows it down). With every core busy, another process makes the
OpenMP threads wait on each other and a step can take 10-50x longer: watch the load column and the min-max.
A training step is forward + MSE loss + backward + AdamW step (separate optimizers). ours vs diffusers: all
parameters trainable. Variants: video mode (first frame, motion score, noise level), only the temporal parameters
trainable (``inflate``'s default), against the image model trained on the same B*T frames as single images.
FLOPs come from ``FlopCounterMode`` over one call (matmul, conv and attention only: norms and pointwise ops are
not counted, the optimizer step adds none), so GFLOP/s is a lower bound on the work actually done. MKL is left at
its default (no ``MKL_CBWR``): outputs of ours and diffusers then agree to rounding, which is checked once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import kv_research
from kv_research import VARIANTS, get_preset, inflate
from kv_research.models.unet import KeyframeUNet

# a width at which convolutions dominate (one training step of 8 images at 32 px is about 2-3 s on 2 cores;
# at 4 images per step the norms and pointwise ops still cost a third of the time)
WIDE = dict(block_out_channels=(128, 256, 256, 512), groups=32, attention_head_dim=64, time_embedding_dim=512,
            cross_attention_dim=256)


# ---------------------------------------------------------------------------------------------------- timing
def matmul_peak(n: int, repeats: int) -> float:
    """Best-of-``repeats`` GFLOP/s of an fp32 (n x n) @ (n x n) ``torch.mm``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and, when ``fn`` runs it, backward); doubles as a warm-up call."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def interleaved(fa, fb, rounds: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(rounds):
        for f, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return ta, tb


def compare(name: str, config: str, a: str, b: str, fa, fb, args, rounds: int) -> dict:
    t0 = time.perf_counter()
    flops_a, flops_b = count_flops(fa), count_flops(fb)
    t1 = time.perf_counter()
    ta, tb = interleaved(fa, fb, rounds, args.warmup)
    ratios = [x / y for x, y in zip(ta, tb)]
    q25, _, q75 = statistics.quantiles(ratios, n=4, method="inclusive")      # linear interpolation
    row = {"comparison": name, "config": config, "a": a, "b": b, "rounds": rounds,
           "median_s_a": statistics.median(ta), "median_s_b": statistics.median(tb),
           "ratio_median": statistics.median(ratios), "ratio_q25": q25,
           "ratio_q75": q75, "ratio_min": min(ratios), "ratio_max": max(ratios),
           "gflop_a": flops_a / 1e9, "gflop_b": flops_b / 1e9, "times_s_a": ta, "times_s_b": tb,
           "min_s_a": min(ta), "min_s_b": min(tb), "first_calls_s": t1 - t0, "wall_s": time.perf_counter() - t0,
           "loadavg_1min": os.getloadavg()[0]}
    for s in "ab":
        row[f"gflops_per_s_{s}"] = row[f"gflop_{s}"] / row[f"median_s_{s}"]
    print(f"  {name:24s} {config:26s} {a} vs {b}: ratio {row['ratio_median']:.3f} "
          f"({row['wall_s']:.0f} s, load {row['loadavg_1min']:.1f})", flush=True)
    return row


HEADER = (f"{'comparison':24s} {'config':26s} {'A':>18s} {'B':>10s} {'N':>3s} {'A ms':>8s} {'B ms':>8s} "
          f"{'A/B med':>7s} {'IQR':>11s} {'min-max':>11s} {'GFLOP A':>8s} {'GF/s A':>7s} {'%pk':>4s} "
          f"{'GFLOP B':>8s} {'GF/s B':>7s} {'%pk':>4s} {'load':>4s}")


def print_row(r: dict) -> None:
    print(f"{r['comparison']:24s} {r['config']:26s} {r['a'][-18:]:>18s} {r['b'][-10:]:>10s} {r['rounds']:3d} "
          f"{1e3 * r['median_s_a']:8.1f} {1e3 * r['median_s_b']:8.1f} {r['ratio_median']:7.3f} "
          f"{r['ratio_q25']:5.2f}-{r['ratio_q75']:<5.2f} {r['ratio_min']:5.2f}-{r['ratio_max']:<5.2f} "
          f"{r['gflop_a']:8.2f} {r['gflops_per_s_a']:7.1f} {100 * r['frac_peak_a']:4.0f} "
          f"{r['gflop_b']:8.2f} {r['gflops_per_s_b']:7.1f} {100 * r['frac_peak_b']:4.0f} "
          f"{r['loadavg_1min']:4.1f}")


# ----------------------------------------------------------------------------------------------------- steps
def train_step(model, opt, call, target):
    """forward + MSE + backward + AdamW step, as one callable."""
    def step():
        loss = F.mse_loss(call(model), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def adamw(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def text_inputs(cfg, n: int, L: int, gen: torch.Generator):
    text = torch.randn(n, L, cfg.encoder_hid_dim, generator=gen)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[:, L // 2:] = torch.rand(n, L - L // 2, generator=gen) < 0.5   # some padded tokens
    return text, mask


def ours_vs_diffusers(cfg, label: str, B: int, S: int, L: int, args, rounds: int) -> list[dict]:
    from diffusers import Kandinsky3UNet
    torch.manual_seed(0)
    ref = Kandinsky3UNet(in_channels=cfg.in_channels, time_embedding_dim=cfg.time_embedding_dim, groups=cfg.groups,
                         attention_head_dim=cfg.attention_head_dim, layers_per_block=cfg.layers_per_block,
                         block_out_channels=cfg.block_out_channels, cross_attention_dim=cfg.cross_attention_dim,
                         encoder_hid_dim=cfg.encoder_hid_dim)
    with torch.no_grad():   # diffusers zero-initialises some output layers; make every weight matter
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = KeyframeUNet(dataclasses.replace(cfg, convention="diffusers", variant="Spatial"))
    ours.load_state_dict(ref.state_dict())   # strict: same names, same shapes
    gen = torch.Generator().manual_seed(1)
    x, target = torch.randn(B, cfg.in_channels, S, S, generator=gen), torch.randn(B, cfg.in_channels, S, S)
    t = torch.randint(0, 1000, (B,), generator=gen)
    text, mask = text_inputs(cfg, B, L, gen)
    call_ours = lambda m: m(x[:, :, None], t, text, mask)[:, :, 0]   # noqa: E731
    call_ref = lambda m: m(x, t, text, mask.long()).sample           # noqa: E731
    with torch.no_grad():
        a, b = call_ours(ours), call_ref(ref)
    diff = (a - b).abs().max().item()
    print(f"  [{label}] ours vs diffusers forward: max |diff| = {diff:.2e} (max |y| = {b.abs().max():.2f})")
    assert diff <= 1e-4 * max(1.0, b.abs().max().item()), f"outputs disagree: max abs diff {diff}"

    def fwd(m, call):
        def f():
            with torch.no_grad():
                call(m)
        return f
    rows = [compare("ours/diffusers forward", label, "ours", "diffusers", fwd(ours, call_ours),
                    fwd(ref, call_ref), args, rounds),
            compare("ours/diffusers train", label, "ours", "diffusers",
                    train_step(ours, adamw(ours), call_ours, target),
                    train_step(ref, adamw(ref), call_ref, target), args, rounds)]
    rows[0]["max_abs_diff"] = diff
    return rows


def variants_vs_image(cfg, label: str, B: int, T: int, S: int, L: int, variants: list[str], args,
                      rounds: int) -> list[dict]:
    torch.manual_seed(0)
    img = KeyframeUNet(dataclasses.replace(cfg, variant="Spatial"))
    gen = torch.Generator().manual_seed(2)
    C = cfg.in_channels
    x, target = torch.randn(B, C, T, S, S, generator=gen), torch.randn(B, C, T, S, S, generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    text, mask = text_inputs(cfg, B, L, gen)
    # the image model on the same B*T frames, each a single image with its clip's caption and step
    xi, ti = x.transpose(1, 2).reshape(B * T, C, 1, S, S), t.repeat_interleave(T)
    texti, maski = text.repeat_interleave(T, 0), mask.repeat_interleave(T, 0)
    targeti = target.transpose(1, 2).reshape(B * T, C, 1, S, S)
    img_step = train_step(img, adamw(img), lambda m: m(xi, ti, texti, maski), targeti)
    call_vid = lambda m: m(x, t, text, mask, first_frame=x[:, :, 0], motion_score=torch.full((B,), 3.0),  # noqa
                           noise_level=torch.zeros(B))
    rows = []
    for v in variants:
        vid = inflate(img, v)
        row = compare("variant/image train", label, v, "image", train_step(vid, adamw(vid), call_vid, target),
                      img_step, args, rounds)
        row["params_trainable_a"] = vid.parameter_counts()["params_trainable"]
        rows.append(row)
        del vid
    return rows


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    temporal = [v for v in VARIANTS if v != "Spatial"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds per comparison, quick widths")
    ap.add_argument("--wide-rounds", type=int, default=5, help="interleaved rounds per comparison, wide config")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per side (after the FLOP-counting one)")
    ap.add_argument("--variants", nargs="*", default=temporal, help="variants timed at the quick widths")
    ap.add_argument("--wide-variants", nargs="*", default=["Conv1dAttn1dLayers", "Conv3dAttn3dBlocks"],
                    help="variants also timed at the wide config (none: skip)")
    ap.add_argument("--wide-batch", type=int, default=8, help="images per step, wide config")
    ap.add_argument("--wide-size", type=int, default=32, help="resolution, wide config")
    ap.add_argument("--wide-frames", type=int, default=8, help="frames of the one clip per step, wide video")
    ap.add_argument("--mm-size", type=int, default=2048, help="matmul size for the peak")
    ap.add_argument("--quick", action="store_true", help="3 rounds, two variants, no wide video")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure (and raw times) here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.wide_rounds = 3, 3
        args.variants, args.wide_variants = args.variants[:2], []
    for v in args.variants + args.wide_variants:
        if v not in temporal:
            ap.error(f"unknown variant '{v}'; known: {', '.join(temporal)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)

    p = get_preset("quick")
    quick, L = p.unet, p.text.max_len
    wide = dataclasses.replace(quick, **WIDE)
    started = time.perf_counter()
    peak_start = matmul_peak(args.mm_size, 10)
    import diffusers
    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "kv_research": kv_research.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "mkl_cbwr": os.environ.get("MKL_CBWR", "(unset)"),
           "loadavg_start": os.getloadavg(), "matmul_size": args.mm_size, "matmul_peak_gflops_start": peak_start}
    print("timing (progress; the table follows once the matmul peak is measured again at the end)", flush=True)
    ql = f"quick b{p.train.batch_size} {p.size}px"
    wl = f"wide b{args.wide_batch} {args.wide_size}px"
    rows = ours_vs_diffusers(quick, ql, p.train.batch_size, p.size, L, args, args.rounds)
    rows += ours_vs_diffusers(wide, wl, args.wide_batch, args.wide_size, L, args, args.wide_rounds)
    rows += variants_vs_image(quick, f"quick {p.train.video_batch_size}x{p.frames}f {p.size}px",
                              p.train.video_batch_size, p.frames, p.size, L, args.variants, args, args.rounds)
    if args.wide_variants:
        rows += variants_vs_image(wide, f"wide 1x{args.wide_frames}f {args.wide_size}px", 1, args.wide_frames,
                                  args.wide_size, L, args.wide_variants, args, args.wide_rounds)
    env["loadavg_end"], env["wall_s"] = os.getloadavg(), time.perf_counter() - started
    env["matmul_peak_gflops_end"] = peak_end = matmul_peak(args.mm_size, 10)
    # contention only slows a measurement down, so the faster of the two is the better estimate of the peak
    env["matmul_peak_gflops"] = peak = max(peak_start, peak_end)
    for r in rows:
        for s in "ab":
            r[f"frac_peak_{s}"] = r[f"gflops_per_s_{s}"] / peak

    print(f"\ntorch {env['torch']}, diffusers {env['diffusers']}, threads {env['threads']} of {env['cpu_count']} "
          f"cores (--threads N; 1 is often faster for small kernels on 2 shared cores), MKL_CBWR {env['mkl_cbwr']}")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s ({args.mm_size}x{args.mm_size} torch.mm, best of 10; "
          f"{peak_start:.1f} at the start, {peak_end:.1f} at the end)")
    print(f"quick widths: {quick.block_out_channels}, groups {quick.groups}, head {quick.attention_head_dim}, "
          f"temb {quick.time_embedding_dim}, text {L} x {quick.encoder_hid_dim}; image batch {p.train.batch_size} "
          f"at {p.size}px; video {p.train.video_batch_size} clips x {p.frames} frames; N = {args.rounds}")
    print(f"wide widths: {wide.block_out_channels}, groups {wide.groups}, head {wide.attention_head_dim}, temb "
          f"{wide.time_embedding_dim}, cross {wide.cross_attention_dim}; image batch {args.wide_batch} at "
          f"{args.wide_size}px; video 1 clip x {args.wide_frames} frames; N = {args.wide_rounds}")
    print("ours vs diffusers forward, max |diff|: " + ", ".join(f"{r['config']} {r['max_abs_diff']:.1e}"
                                                               for r in rows if "max_abs_diff" in r))
    print("A/B = pair-by-pair time ratio (median, IQR, min-max); ms = median per side; GF/s = counted GFLOP / "
          "median time; %pk = of the matmul peak; load = 1-min load average after the row (this run counts)\n")
    print(HEADER)
    for r in rows:
        print_row(r)
    print(f"\n{len(rows)} comparisons in {env['wall_s']:.0f} s; load avg {env['loadavg_start'][0]:.2f} at the "
          f"start, {env['loadavg_end'][0]:.2f} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                              for k, v in vars(args).items()},
                                         "configs": {"quick": dataclasses.asdict(quick),
                                                     "wide": dataclasses.asdict(wide)},
                                         "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
