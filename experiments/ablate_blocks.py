#!/usr/bin/env python
"""Regenerate the paper's Table 1 (temporal block variants) at any scale.

    python experiments/ablate_blocks.py                      # quick preset on CPU -> results/ablate_blocks/
    python experiments/ablate_blocks.py --preset smoke --out /tmp/smoke
    python experiments/ablate_blocks.py --variants Spatial Conv1dAttn1dBlocks --dry-run
    python experiments/ablate_blocks.py --preset paper --dry-run     # plan, parameters, GPU memory per rank

On real parts (each optional; see kv_research/study_inputs.py), e.g. on 8 GPUs:

    torchrun --nproc_per_node 8 experiments/ablate_blocks.py --preset paper --device cuda --bf16 --train-bf16 \
        --init-kandinsky3 kandinsky-3 --text-encoder kandinsky-3 --codec kandinsky-3 \
        --data my_videos/captions.csv --prompts ucf101 --samples-per-prompt 99 --reference UCF-101/ \
        --set unet.checkpointing=true --out runs/table1

or the same fields in a study file: --study study.json ({"init_kandinsky3": "kandinsky-3", "data": ...});
flags given on the command line win over the file.

Re-running the same command resumes: finished training steps, videos and evaluations are kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

# OpenMP waiting: measured on this 2-core machine (quick preset, Kandinsky 3.0 UNet, 2 threads), an image step took
# 383 ms with OpenMP's default (spinning) waits and 790 ms with OMP_WAIT_POLICY=PASSIVE when the machine was idle,
# but 3,774 ms against 1,100 ms when two such jobs shared the cores. The default is for the idle case; on a shared
# machine set OMP_WAIT_POLICY=PASSIVE or --threads 1 (504 ms, immune to sharing). Nothing is forced here.

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing

from kv_research.cli import parse_override  # noqa: E402

from kv_research.ablation import AblationConfig, plan, run_ablation, validate  # noqa: E402
from kv_research.models.temporal import DEFAULT_STUDY, VARIANTS  # noqa: E402


REAL_FIELDS = ("init_kandinsky3", "text_encoder", "codec", "decoder", "data", "reference", "fps", "prompt_limit",
               "metrics", "i3d", "clip")


def config_from_args(args) -> AblationConfig:
    """Defaults < the study file < flags given on the command line."""
    fields = {}
    if args.study:
        path = Path(args.study)
        if not path.is_file():
            raise FileNotFoundError(f"--study: {path} not found")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--study: {path} is not valid JSON ({e})") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"--study: {path} is not UTF-8 text (byte offset {e.start})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"--study: {path} must hold a JSON object of AblationConfig fields, "
                             f"got a {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(AblationConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"--study: {path} has unknown fields {unknown}; known: {sorted(known)}")
    flags = dict(preset=args.preset, variants=tuple(args.variants), out=args.out, prompts=args.prompts,
                 samples_per_prompt=args.samples_per_prompt, include_untrained=not args.no_untrained,
                 device=args.device, bf16=args.bf16, compile=args.compile, seed=args.seed,
                 progress=not args.no_progress, overrides=dict(args.overrides), train_bf16=args.train_bf16,
                 jobs=args.jobs, threads=args.threads or None, channels_last=args.channels_last,
                 **{k: getattr(args, k) for k in REAL_FIELDS})
    if flags["metrics"]:
        flags["metrics"] = tuple(m.strip() for m in flags["metrics"].split(",") if m.strip())
    defaults = AblationConfig()
    given = {k for k, v in flags.items() if v is not None and v != getattr(defaults, k)}
    merged = {**{k: v for k, v in flags.items() if v is not None}, **fields,
              **{k: v for k, v in flags.items() if k in given}}
    if "overrides" in fields and args.overrides:
        merged["overrides"] = {**fields["overrides"], **dict(args.overrides)}
    return AblationConfig(**merged)


def main(argv=None) -> int:
    from kv_research.cli import DEBUG_HELP, ArgumentParser
    ap = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=__doc__ + DEBUG_HELP)
    ap.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_STUDY), metavar="NAME",
                    help=f"rows of the table (default: {' '.join(DEFAULT_STUDY)}); any of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="results/ablate_blocks")
    ap.add_argument("--prompts", default=None, help="'ucf101' (zero-shot UCF-101 class prompts) or a CSV "
                                                   "(prompt[, id, motion]) / TXT prompt file such as a VBench list; "
                                                   "default: the preset's synthetic test split")
    real = ap.add_argument_group("real parts (default: the offline synthetic study)")
    real.add_argument("--study", default=None, metavar="FILE", help="JSON file with any of the fields below")
    real.add_argument("--init-kandinsky3", default=None, metavar="DIR",
                      help="diffusers Kandinsky 3.0 folder (or its unet/); image pretraining is skipped")
    real.add_argument("--text-encoder", default=None, metavar="DIR", help="T5 folder (or the Kandinsky 3.0 root)")
    real.add_argument("--codec", default=None, metavar="DIR|FILE",
                      help="'pixels', a MoVQ folder (Kandinsky 3.0 root or movq/), or the release's movq.pt")
    real.add_argument("--decoder", default=None, metavar="NAME|FILE",
                      help="video decoder for generated clips: a Table 3 name (e.g. '3x3x3 Conv + Attn') or the "
                           "release's video_movq.pt (its params from configs.json beside it)")
    real.add_argument("--data", default=None, metavar="CSV|DIR",
                      help="captioned videos: CSV (path, caption[, start, end]), a folder with captions.csv, "
                           "or a UCF-101 layout root")
    real.add_argument("--reference", default=None, metavar="DIR|CSV", help="real videos for FVD (default: --data)")
    real.add_argument("--fps", type=float, default=None, help="keyframe rate of real clips (default 2)")
    real.add_argument("--prompt-limit", type=int, default=None, help="keep the first N prompts")
    real.add_argument("--metrics", default=None, help="comma-separated, e.g. fvd,clipsim,motion")
    real.add_argument("--i3d", default=None, metavar="FILE", help="I3D TorchScript for FVD")
    real.add_argument("--clip", default=None, metavar="FILE", help="CLIP ViT-B/32 weights for CLIPSIM")
    real.add_argument("--train-bf16", action="store_true", help="bf16 autocast for training (GPU)")
    ap.add_argument("--samples-per-prompt", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for generation (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch Module.compile() the UNets (GPU)")
    ap.add_argument("--no-untrained", action="store_true", help="skip the untrained reference row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                    metavar="SECTION.FIELD=VALUE", help="override a preset field, e.g. --set train.video_steps=50")
    ap.add_argument("--dry-run", action="store_true", help="check inputs, print the plan and exit")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per process (0 = torch's default; cores // jobs in each row job)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="rows trained and generated at once, in worker processes (default: one per CPU core on a "
                         "CPU run outside torchrun, else 1; 1 = one after the other in this process)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="store the UNets' 2-D conv weights channels-last (default: on CPU, where it is faster; "
                         "--no-channels-last for the default layout, which rounds differently)")
    ap.add_argument("--no-progress", action="store_true")
    from kv_research.cli import debug_enabled, input_errors
    try:
        args = ap.parse_args(argv)
        if args.threads < 0:
            raise ValueError(f"--threads {args.threads}: expected a whole number >= 0 (0 = torch's default)")
        cfg = config_from_args(args)
        validate(cfg)
    except (*input_errors(), TypeError) as e:
        if debug_enabled():
            raise
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.dry_run:
        from kv_research.ablation import dry_run_report
        report, text = dry_run_report(cfg)
        print(json.dumps({**plan(cfg), "dry_run": report}, indent=2, default=str))   # stdout: JSON
        print(text, file=sys.stderr)                                                 # stderr: readable
        return 0
    table = run_ablation(cfg)
    if len(table):
        from kv_research.tables import display_table
        print(display_table(table).to_markdown(index=False))
        print(f"\nwritten: {Path(cfg.out) / 'ablate_blocks.md'} (+ .csv, .tex, .png, samples.png, run.json)")
    return 0


if __name__ == "__main__":
    from kv_research.cli import run
    sys.exit(run(main))
