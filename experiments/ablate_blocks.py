#!/usr/bin/env python
"""Regenerate the paper's Table 1 (temporal block variants) at any scale.

    python experiments/ablate_blocks.py                      # quick preset on CPU -> results/ablate_blocks/
    python experiments/ablate_blocks.py --preset smoke --out /tmp/smoke
    python experiments/ablate_blocks.py --variants Spatial Conv1dAttn1dBlocks --dry-run
    torchrun --nproc_per_node 4 experiments/ablate_blocks.py --preset paper --device cuda --bf16

Re-running the same command resumes: finished training steps, videos and evaluations are kept.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# OpenMP waiting: measured on this 2-core machine (quick preset, Kandinsky 3.0 UNet, 2 threads), an image step took
# 383 ms with OpenMP's default (spinning) waits and 790 ms with OMP_WAIT_POLICY=PASSIVE when the machine was idle,
# but 3,774 ms against 1,100 ms when two such jobs shared the cores. The default is for the idle case; on a shared
# machine set OMP_WAIT_POLICY=PASSIVE or --threads 1 (504 ms, immune to sharing). Nothing is forced here.

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing

from kv_research.ablation import AblationConfig, plan, run_ablation, validate  # noqa: E402
from kv_research.models.temporal import DEFAULT_STUDY, VARIANTS  # noqa: E402


def parse_override(s: str):
    key, sep, value = s.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects section.field=value, got {s!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_STUDY), metavar="NAME",
                    help=f"rows of the table (default: {' '.join(DEFAULT_STUDY)}); any of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="results/ablate_blocks")
    ap.add_argument("--prompts", default=None, help="CSV (prompt[, id, motion]) or TXT prompt set; "
                                                   "default: the preset's synthetic test split")
    ap.add_argument("--samples-per-prompt", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for generation (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch Module.compile() the UNets (GPU)")
    ap.add_argument("--no-untrained", action="store_true", help="skip the untrained reference row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                    metavar="SECTION.FIELD=VALUE", help="override a preset field, e.g. --set train.video_steps=50")
    ap.add_argument("--dry-run", action="store_true", help="check inputs, print the plan and exit")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = AblationConfig(preset=args.preset, variants=tuple(args.variants), out=args.out, prompts=args.prompts,
                         samples_per_prompt=args.samples_per_prompt, include_untrained=not args.no_untrained,
                         device=args.device, bf16=args.bf16, compile=args.compile, seed=args.seed, progress=not args.no_progress,
                         overrides=dict(args.overrides))
    try:
        validate(cfg)
    except (KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.dry_run:
        print(json.dumps(plan(cfg), indent=2))
        return 0
    table = run_ablation(cfg)
    if len(table):
        from kv_research.tables import display_table
        print(display_table(table).to_markdown(index=False))
        print(f"\nwritten: {Path(cfg.out) / 'ablate_blocks.md'} (+ .csv, .tex, .png, samples.png, run.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
