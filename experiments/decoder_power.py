"""How many synthetic test clips the decoder table needs before a row's flicker interval can clear the Image row's.

    python experiments/decoder_power.py                          # from the committed results/decoder
    python experiments/decoder_power.py --run OUT --sizes 128 256 384 512 --sims 400

Why: Table 3's flicker column is compared with unpaired 95 % intervals (the issue's criterion), whose widths are
set by how much clips differ from each other, not by how much decoders differ on the same clip. This script takes
the per-clip flicker values of a finished run (``OUT/rows/<row>/per_clip.csv``) as the pilot, draws N clips with
replacement (the same clips for both rows, as a larger test split would give), computes both rows' percentile
bootstrap intervals of the mean exactly as the table does, and reports the fraction of simulated runs in which the
row's interval lies wholly below the Image row's. It assumes the pilot's effects are the true ones, so for the row
that looked best in the pilot it is optimistic (the winner's curse).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def interval(x: np.ndarray, rng, boot: int, level: float = 0.95) -> tuple[float, float]:
    means = x[rng.integers(0, len(x), (boot, len(x)))].mean(1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("results/decoder"), help="a finished decoder study folder")
    ap.add_argument("--set", dest="clip_set", default="synthetic", choices=["synthetic", "real"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 256, 384])
    ap.add_argument("--sims", type=int, default=200, help="simulated test splits per size")
    ap.add_argument("--boot", type=int, default=400, help="bootstrap resamples per interval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    files = sorted((args.run / "rows").glob("*/per_clip.csv"))
    if not files:
        print(f"error: no rows/*/per_clip.csv under {args.run}: run experiments/decoder.py first", file=sys.stderr)
        return 2
    flicker = {}
    for f in files:
        df = pd.read_csv(f)
        flicker[f.parent.name] = df[df["set"] == args.clip_set].sort_values("clip")["flicker"].to_numpy()
    if "Image" not in flicker:
        print(f"error: {args.run}/rows/Image/per_clip.csv is missing (the reference row)", file=sys.stderr)
        return 2
    base = flicker.pop("Image")
    rng = np.random.default_rng(args.seed)
    print(f"pilot: {args.run} ({args.clip_set} clips, N = {len(base)}); Image flicker {base.mean():.3f} "
          f"(sd {base.std(ddof=1):.3f}); fraction of {args.sims} simulated test splits per N in which the row's "
          "95 % interval lies wholly below the Image row's:")
    print(f"{'row':28s} {'mean':>7s} {'Δ paired':>9s} " + " ".join(f"{'N=' + str(n):>7s}" for n in args.sizes))
    for row, x in flicker.items():
        if len(x) != len(base):
            print(f"{row}: {len(x)} clips against {len(base)} for Image: skipped", file=sys.stderr)
            continue
        wins = []
        for n in args.sizes:
            hits = 0
            for _ in range(args.sims):
                pick = rng.integers(0, len(base), n)
                hits += interval(x[pick], rng, args.boot)[1] < interval(base[pick], rng, args.boot)[0]
            wins.append(hits / args.sims)
        print(f"{row:28s} {x.mean():7.3f} {np.mean(x - base):9.3f} " + " ".join(f"{w:7.2f}" for w in wins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
