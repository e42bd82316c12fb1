#!/usr/bin/env python
"""Regenerate the paper's Table 3 (temporal MoVQ decoders) at CPU scale.

    python experiments/decoder.py                                    # quick preset -> results/decoder/
    python experiments/decoder.py --preset smoke --out /tmp/dec_smoke
    python experiments/decoder.py --rows Image "3x3x3 Conv + Attn (Decoder)" --dry-run
    python experiments/decoder.py --set finetune.steps=600 --set finetune.temporal_weight=0 --out runs/no_temporal

Rows are named as in kv_research.models.video_decoder.TABLE3_ROWS ("<Temporal Layers> (<Finetune>)", and "Image"),
plus the control "Image (Decoder)". Re-running the same command resumes: finished stages are kept; an --out that
holds a run with another configuration is refused. See kv_research/decoder_study.py for the protocol.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing

from kv_research.cli import parse_override  # noqa: E402

from kv_research.decoder_study import ROWS, apply_overrides, plan, preset_config, run_study, validate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="quick", choices=["smoke", "quick"])
    ap.add_argument("--out", default="results/decoder")
    ap.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                    help="subset of rows (default: all): " + "; ".join(ROWS))
    ap.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                    metavar="SECTION.FIELD=VALUE", help="override a preset field, e.g. --set finetune.steps=50 "
                                                        "(sections: vq, data, image, finetune, eval)")
    ap.add_argument("--dry-run", action="store_true", help="check inputs, print the plan (JSON) and exit")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = preset_config(args.preset, out=args.out, progress=not args.no_progress, threads=args.threads,
                            **({"rows": tuple(args.rows)} if args.rows else {}))
        cfg = apply_overrides(cfg, dict(args.overrides))
        validate(cfg)
    except (KeyError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(plan(cfg), indent=2, default=str))
        return 0
    table = run_study(cfg)
    from kv_research.decoder_study import SETS, display_table
    for st in SETS:
        print(f"\n## {st} clips\n")
        print(display_table(table, st).to_markdown(index=False))
    print(f"\nwritten: {Path(cfg.out) / 'decoder.md'} (+ .csv, .tex, .png, run.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
