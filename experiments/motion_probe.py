"""Does a fine-tuned keyframe model follow the requested motion score? A small, direct probe.

The ablation table reports Spearman(measured, requested) over the test prompts, where the requested score is the
one measured on each prompt's real clip. That mixes two things: whether the videos are temporally coherent at
all (flicker reads as motion to RAFT) and whether the motion-score condition changes anything. This probe
separates them: every test prompt is generated twice from the same seed and first frame, once with a low and
once with a high requested score, and it reports

* ``measured_low`` / ``measured_high``: mean RAFT motion score of each set (256-px units),
* ``control``: the mean paired difference high - low and the fraction of prompts where high > low
  (0.5 = the condition does nothing),
* ``spearman``/``mae`` against the prompts' own requested scores (as in the table).

Usage (the image model of an ablation run is reused, so only fine-tuning runs)::

    python experiments/motion_probe.py --run results/ablate_blocks --variants Conv1dAttn1dBlocks \
        --steps 150 600 --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kv_research.ablation import AblationConfig, resolved_preset  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/ablate_blocks", help="ablation run folder holding image/checkpoints")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--variants", nargs="+", default=["Conv1dAttn1dBlocks"])
    ap.add_argument("--steps", nargs="+", type=int, default=[150])
    ap.add_argument("--video-lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None, help="clips per fine-tuning step")
    ap.add_argument("--low", type=float, default=0.3)
    ap.add_argument("--high", type=float, default=3.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=V")
    ap.add_argument("--json", default=None, help="append one JSON line per result here")
    args = ap.parse_args(argv)

    from scipy.stats import spearmanr

    from kv_research.data.synthetic import load_prompts, make_clip
    from kv_research.metrics.motion import MotionLabelCache, load_raft, motion_score
    from kv_research.pipeline import KeyframePipeline, sample_seed
    from kv_research.train import TrainData, Trainer

    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        overrides[k] = json.loads(v)
    if args.video_lr is not None:
        overrides["train.video_lr"] = args.video_lr
    if args.batch is not None:
        overrides["train.video_batch_size"] = args.batch
    p = resolved_preset(AblationConfig(preset=args.preset, overrides=overrides))
    dev = args.device
    data_cfg = p.synthetic_config()
    clips = [make_clip(i, data_cfg, "train") for i in range(data_cfg.n_train)]
    labels = MotionLabelCache(device=dev).label_synthetic(data_cfg, "train", progress=False)
    data = TrainData(torch.stack([c.video for c in clips]), [c.caption for c in clips],
                     torch.as_tensor(labels, dtype=torch.float32))
    test = load_prompts(Path(args.run) / "benchmark" / "test.csv")
    prompts, requested = list(test.prompt), np.asarray(test.motion, dtype=np.float64)
    seeds = [sample_seed(t, 0, 0) for t in prompts]
    raft = load_raft("small", device=dev)

    torch.manual_seed(0)
    image = KeyframePipeline.from_preset(p)
    tr = Trainer(image, "image", data, p.train, Path(args.run) / "image", progress=False, device=dev)
    if not tr.resume() or tr.step < tr.steps:
        raise SystemExit(f"{args.run}/image holds no finished image model; run the ablation first")
    image.load_state_dict(tr.ema_state_dict())
    image.eval()
    gens = [torch.Generator().manual_seed(s ^ 0x5EED) for s in seeds]
    with torch.no_grad():
        first = ((image.generate_images(prompts, gens, p.size) + 1) / 2).clamp(0, 1)
    print(f"train labels: mean {labels.mean():.2f}, range {labels.min():.2f}..{labels.max():.2f}; "
          f"test requested: mean {requested.mean():.2f}", flush=True)

    for v in args.variants:
        for steps in args.steps:
            pipe = image.inflated(v, train_spatial=p.train.train_spatial)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                tr = Trainer(pipe, "video", data, p.train, tmp, steps=steps, progress=False, device=dev)
                tr.fit()
                pipe.load_state_dict(tr.ema_state_dict())
            t_train = time.perf_counter() - t0
            pipe.eval()
            meas = {}
            with torch.no_grad():
                for name, req in (("own", requested), ("low", np.full(len(prompts), args.low)),
                                  ("high", np.full(len(prompts), args.high))):
                    vids = pipe.generate(prompts, seeds, req.tolist(), frames=p.frames, size=p.size,
                                         first_frames01=first)
                    meas[name] = motion_score(vids.float().clamp(0, 1), raft, device=dev).numpy()
                    drift = (vids[:, :, 1:] - vids[:, :, :1]).abs().mean().item()
                    meas[name + "_drift"] = drift
            diff = meas["high"] - meas["low"]
            rec = {"variant": v, "steps": steps, "video_lr": p.train.video_lr, "batch": p.train.video_batch_size,
                   "train_s": round(t_train, 1), "overrides": overrides,
                   "measured_own": float(meas["own"].mean()), "mae": float(np.abs(meas["own"] - requested).mean()),
                   "spearman": float(spearmanr(meas["own"], requested).statistic),
                   "measured_low": float(meas["low"].mean()), "measured_high": float(meas["high"].mean()),
                   "control_diff": float(diff.mean()), "control_frac": float((diff > 0).mean()),
                   "drift_own": meas["own_drift"]}
            print(json.dumps(rec), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
