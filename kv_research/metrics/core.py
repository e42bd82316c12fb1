"""One entry point for evaluation: ``evaluate_videos(videos, prompts, ...) -> (per_video, summary)``.

Design (after k-diffusion's ``evaluation.py``): every metric's detector is wrapped in a small ``nn.Module``
extractor with one signature, ``forward(videos, prompts) -> dict[str, Tensor (B, ...)]``, and a single loop
walks over the videos once, batch by batch, calling each *distinct* extractor once per batch. FVD-syn and
attribute accuracy share the synthetic video net, so that net runs once. Set-level metrics (FVD, FVD-syn)
are computed afterwards from the collected features against cached reference statistics; per-video metrics
(CLIPSIM, CLIPSIM-syn, attribute checks, motion, and from the same RAFT pass VBench's dynamic degree and
EvalCrafter's flow score, each with its ``protocol``) become columns of ``per_video``. Every summary entry carries
its bootstrap interval, N, and the detector's name and hash.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["METRICS", "evaluate_videos", "run_extractors", "I3DMetric", "SynVideoMetric", "ClipSimMetric",
           "MotionMetric"]

METRICS = ("fvd", "clipsim", "motion", "fvd_syn", "clipsim_syn", "attr_acc", "dynamic_degree", "flow_score")
SET_METRICS = ("fvd", "fvd_syn")
MOTION_METRICS = ("motion", "dynamic_degree", "flow_score")   # one RAFT pass; each needs clips of >= 2 frames


# ----------------------------------------------------------------------------------------------- extractors
class I3DMetric(nn.Module):
    """FVD features: (B,3,T,H,W) -> {"features": (B, 400)}."""
    key = "i3d"

    def __init__(self, detector):
        super().__init__()
        self.detector = detector
        self.info = detector.info

    def forward(self, videos, prompts=None) -> dict:
        return {"features": self.detector(videos)}


class SynVideoMetric(nn.Module):
    """Synthetic video net: FVD-syn features and the attribute checks of each prompt, in one forward pass."""
    key = "synvideo"

    def __init__(self, evaluators):
        super().__init__()
        self.net = evaluators.feature_net
        self.evaluators = evaluators
        self.info = self.net.info

    def forward(self, videos, prompts=None) -> dict:
        feats, out = self.net(videos)
        res = {"features": feats}
        if prompts is not None:
            checks = self.evaluators.attribute_checks(out, list(prompts))
            res.update({f"attr_{k}": torch.from_numpy(v) for k, v in checks.items()})
        return res


class ClipSimMetric(nn.Module):
    """CLIPSIM (any ``ClipSimExtractor``): (B,3,T,H,W) + prompts -> {column: (B,)}."""

    def __init__(self, extractor, column: str):
        super().__init__()
        self.extractor = extractor
        self.column = column
        self.key = column

    def forward(self, videos, prompts) -> dict:
        return {self.column: self.extractor(videos, list(prompts))}


class MotionMetric(nn.Module):
    """One RAFT pass (``kv_research.metrics.motion.motion_stats``) -> {"motion": (B,) THE motion score,
    "flow_score": (B,) EvalCrafter flow score, "dynamic_degree": (B,) 1.0/0.0 VBench dynamic, "dynamic_pairs": (B,)}.

    ``dynamic_protocol="vbench"`` computes dynamic degree from a second pass under VBench's own protocol
    (``motion.vbench_motion_stats``, needs ``fps``); ``suite_pass=False`` skips the first pass when only
    dynamic degree is wanted."""
    key = "motion"

    def __init__(self, raft=None, device="cpu", dynamic_protocol: str = "suite", fps: float | None = None,
                 suite_pass: bool = True):
        super().__init__()
        from . import motion
        self._motion = motion
        motion.dynamic_protocol_info(dynamic_protocol, fps)          # unknown protocol -> ValueError, before RAFT
        if dynamic_protocol == "vbench":
            motion.vbench_frame_indices(2, fps)                        # fps checked before any RAFT work
        self.dynamic_protocol, self.fps = dynamic_protocol, fps
        self.suite_pass = suite_pass or dynamic_protocol == "suite"
        self.raft = raft if raft is not None else motion.load_raft(device=device)
        weights = getattr(self.raft, "kv_weights", None) or {}
        self.name = f"torchvision RAFT ({weights.get('key', type(self.raft).__name__)}), {motion.MotionConfig()}"
        self.sha256 = motion.weights_fingerprint(self.raft)

    def forward(self, videos, prompts=None) -> dict:
        out = {}
        if self.suite_pass:
            s = self._motion.motion_stats(videos, raft=self.raft)
            out.update(motion=s["motion_score"], flow_score=s["motion_score"] * s["scale_to_input"])
        if self.dynamic_protocol == "vbench":
            s = self._motion.vbench_motion_stats(videos, raft=self.raft, fps=self.fps)
        dynamic, counts = self._motion.dynamic_from_stats(s)
        out.update(dynamic_degree=dynamic.double(), dynamic_pairs=counts)
        return out


@torch.no_grad()
def run_extractors(extractors: Sequence[nn.Module], videos: torch.Tensor, prompts: Sequence[str] | None,
                   batch_size: int = 8, device="cpu", progress: bool = True, desc: str = "evaluate") -> dict:
    """The shared feature-extraction loop: each extractor sees every batch once -> {key: {output: ndarray}}."""
    acc: dict = {ex.key: defaultdict(list) for ex in extractors}
    n = videos.shape[0]
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = videos[start:start + batch_size].to(device)
        batch_prompts = None if prompts is None else list(prompts[start:start + batch_size])
        for ex in extractors:
            for name, value in ex(batch, batch_prompts).items():
                acc[ex.key][name].append(torch.as_tensor(value).double().cpu().numpy())
    return {k: {name: np.concatenate(v) for name, v in d.items()} for k, d in acc.items()}


# ----------------------------------------------------------------------------------------------- entry point
def evaluate_videos(videos: torch.Tensor, prompts: Sequence[str], *, requested_motion=None, reference_videos=None,
                    metrics: Sequence[str] = ("fvd_syn", "clipsim_syn", "attr_acc", "motion"), evaluators=None,
                    names: Sequence[str] | None = None, i3d=None, clip=None, raft=None, data_cfg=None,
                    evaluator_preset: str = "quick", reference_id: str | None = None, fvd_protocol=None,
                    batch_size: int = 8,
                    device="cpu", level: float = 0.95, n_boot: int = 1000, n_boot_fvd: int = 200,
                    fvd_subsets: int = 5, motion_threshold: float | None = None, seed: int = 0,
                    progress: bool = True, cache_dir=None, motion_protocol: str = "suite",
                    fps: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Evaluate N generated videos (N,3,T,H,W) in [0,1] with their prompts.

    ``reference_videos`` (M,3,T',H',W') are real videos for FVD (required for ``fvd``); for ``fvd_syn`` the
    default reference is the synthetic test split rendered at the evaluators' config. ``fvd_protocol``
    (``FVDProtocol``) applies when ``i3d`` is loaded here. Detectors not given
    (``i3d``, ``clip``, ``raft``, ``evaluators``) are loaded from ``$KV_WEIGHTS_DIR`` / trained-and-cached.
    ``motion_protocol`` ("suite" or "vbench") is the protocol of ``dynamic_degree`` (``motion.dynamic_degree``;
    "vbench" needs the clips' native ``fps``); its summary entry records it under ``protocol``.
    Returns ``per_video`` (column ``video``, then one column per per-video metric, then ``prompt``) and
    ``summary`` = {"n_videos", "video_shape", "ci_level", "metrics": {name: {"value", "ci_low", "ci_high", "n",
    "detector", "detector_sha256", ...}}}.
    """
    from .bootstrap import bootstrap_ci

    metrics = _check_inputs(videos, prompts, requested_motion, reference_videos, metrics, names)
    if motion_protocol not in ("suite", "vbench"):
        raise ValueError(f"unknown motion_protocol {motion_protocol!r}; known: suite, vbench")
    if motion_protocol == "vbench" and "dynamic_degree" in metrics:
        from .motion import vbench_frame_indices
        kept = vbench_frame_indices(videos.shape[2], fps)
        if len(kept) < 2:
            raise ValueError(f"motion_protocol 'vbench' at {fps:g} fps keeps frames {kept} of T={videos.shape[2]}; "
                             "dynamic_degree needs >= 2 (longer clips, or the suite protocol)")
    n = videos.shape[0]
    names = list(names) if names is not None else [f"video_{i:04d}" for i in range(n)]
    prompts = list(prompts)

    # ---- build each distinct extractor once (loading weights here, before any heavy work on videos)
    extractors: dict[str, nn.Module] = {}
    if "fvd" in metrics:
        if i3d is None or isinstance(i3d, (str, bytes)) or hasattr(i3d, "__fspath__"):
            from .fvd import load_i3d
            i3d = load_i3d(i3d, device=device, protocol=fvd_protocol)
        extractors["i3d"] = I3DMetric(i3d)
    if {"fvd_syn", "clipsim_syn", "attr_acc"} & set(metrics):
        if evaluators is None:
            from .evaluators import load_or_train_evaluators
            evaluators = load_or_train_evaluators(data_cfg, evaluator_preset, cache_dir=cache_dir, progress=progress)
        if {"fvd_syn", "attr_acc"} & set(metrics):
            extractors["synvideo"] = SynVideoMetric(evaluators)
        if "clipsim_syn" in metrics:
            extractors["clipsim_syn"] = ClipSimMetric(evaluators.clip, "clipsim_syn")
    if "clipsim" in metrics:
        if clip is None or isinstance(clip, str) or hasattr(clip, "__fspath__"):
            from .clipsim import load_clip_vitb32
            clip = load_clip_vitb32(clip, device=device)
        extractors["clipsim"] = ClipSimMetric(clip, "clipsim")
    if set(MOTION_METRICS) & set(metrics):
        vbench = motion_protocol == "vbench" and "dynamic_degree" in metrics
        extractors["motion"] = MotionMetric(raft, device=device, dynamic_protocol="vbench" if vbench else "suite",
                                            fps=fps if vbench else None,
                                            suite_pass=bool({"motion", "flow_score"} & set(metrics)))

    # ---- the one loop over generated videos
    out = run_extractors(list(extractors.values()), videos, prompts, batch_size, device, progress)

    per_video = pd.DataFrame({"video": names})
    summary: dict = {"n_videos": n, "video_shape": list(videos.shape[2:]), "ci_level": level, "metrics": {}}
    rng_seed = seed

    def per_video_entry(values: np.ndarray, info: dict) -> dict:
        v = values[np.isfinite(values)]
        lo, hi = bootstrap_ci(v, np.mean, n_boot=n_boot, level=level, seed=rng_seed)
        return {"value": float(v.mean()) if v.size else float("nan"), "ci_low": lo, "ci_high": hi, "n": int(v.size),
                **info}

    for col in ("clipsim", "clipsim_syn"):
        if col in metrics:
            ex = extractors[col].extractor
            per_video[col] = out[col][col]
            summary["metrics"][col] = per_video_entry(
                out[col][col], {**ex.describe(), "definition": "mean over frames of raw cosine(frame, prompt), "
                                                              "then mean over videos (no x100, no clamp)"})
    if "attr_acc" in metrics:
        syn = out["synvideo"]
        info = {"detector": extractors["synvideo"].info.name, "detector_sha256": extractors["synvideo"].info.sha256}
        checks = {a: syn[f"attr_{a}"] for a in ("color", "shape", "direction", "speed", "background")}
        with np.errstate(all="ignore"):
            acc = np.nanmean(np.stack([checks[a] for a in ("color", "shape", "direction", "speed")]), axis=0)
        per_video["attr_acc"] = acc
        for a, v in checks.items():
            per_video[f"attr_{a}"] = v
        entry = per_video_entry(acc, {**info, "definition": "mean of colour/shape/direction/speed checks of the "
                                                            "prompt's first object, found by its colour among the "
                                                            "synthetic video net's detections"})
        entry["per_attribute"] = {a: per_video_entry(v, {}) for a, v in checks.items()}
        entry["evaluator_quality"] = evaluators.report.get("quality", {}).get("videonet", {})
        summary["metrics"]["attr_acc"] = entry
    if "clipsim_syn" in metrics:
        summary["metrics"]["clipsim_syn"]["evaluator_quality"] = evaluators.report.get("quality", {}).get("clip", {})
    if "motion" in metrics:
        measured = out["motion"]["motion"]
        per_video["motion"] = measured
        entry = per_video_entry(measured, {"detector": extractors["motion"].name,
                                           "detector_sha256": extractors["motion"].sha256,
                                           "units": "mean |flow| px per frame at a 256-px short side",
                                           "protocol": {"name": "kv_research motion score (metrics/motion.py)",
                                                        "definition": "mean over consecutive-frame pairs of the "
                                                                      "mean |flow|, at a 256-px short side"}})
        if requested_motion is not None:
            from .agreement import motion_agreement
            req = np.asarray(requested_motion, dtype=np.float64)
            per_video["requested_motion"] = req
            entry["agreement"] = motion_agreement(measured, req, threshold=motion_threshold, level=level,
                                                  n_boot=n_boot, seed=seed)
        summary["metrics"]["motion"] = entry
    if "dynamic_degree" in metrics:
        from .motion import dynamic_protocol_info
        per_video["dynamic_degree"] = out["motion"]["dynamic_degree"]
        per_video["dynamic_pairs"] = out["motion"]["dynamic_pairs"].astype(np.int64)
        summary["metrics"]["dynamic_degree"] = per_video_entry(out["motion"]["dynamic_degree"], {
            "detector": extractors["motion"].name, "detector_sha256": extractors["motion"].sha256,
            "units": "fraction of videos that are dynamic",
            "protocol": dynamic_protocol_info(motion_protocol, fps)})
    if "flow_score" in metrics:
        per_video["flow_score"] = out["motion"]["flow_score"]
        summary["metrics"]["flow_score"] = per_video_entry(out["motion"]["flow_score"], {
            "detector": extractors["motion"].name, "detector_sha256": extractors["motion"].sha256,
            "units": "mean |flow| px per frame of the input video",
            "protocol": {"name": "EvalCrafter flow score",
                         "definition": "mean |flow| over all pixels and consecutive-frame pairs, in input pixels "
                                       "(= motion * min(H, W) / 256)",
                         "differences": "flow from RAFT-small (6 updates, 128-px working size) rescaled to input "
                                        "pixels; EvalCrafter runs RAFT-things, 20 updates, at native size"}})

    # ---- set-level metrics against reference statistics
    if "fvd" in metrics:
        summary["metrics"]["fvd"] = _fvd_entry(out["i3d"]["features"], extractors["i3d"], reference_videos,
                                               reference_id, batch_size, device, progress, cache_dir, level,
                                               n_boot_fvd, fvd_subsets, seed)
    if "fvd_syn" in metrics:
        ref_videos, ref_id = reference_videos, reference_id
        if ref_videos is None:
            ref_videos, ref_id = _synthetic_reference(evaluators, n)
        summary["metrics"]["fvd_syn"] = _fvd_entry(out["synvideo"]["features"], extractors["synvideo"], ref_videos,
                                                   ref_id, batch_size, device, progress, cache_dir, level,
                                                   n_boot_fvd, fvd_subsets, seed)
    per_video["prompt"] = prompts
    return per_video, summary


# ----------------------------------------------------------------------------------------------- helpers
def _check_inputs(videos, prompts, requested_motion, reference_videos, metrics, names) -> list[str]:
    """All the errors a user can get, raised before any model is loaded or any video is processed."""
    metrics = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    if not metrics:
        raise ValueError("no metrics requested")
    if not isinstance(videos, torch.Tensor) or videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be a float tensor (N,3,T,H,W) in [0,1], got "
                         f"{getattr(videos, 'shape', type(videos).__name__)}")
    if videos.is_floating_point() and (videos.min() < -1e-3 or videos.max() > 1 + 1e-3):
        raise ValueError(f"videos must be in [0,1], got range [{videos.min():.3f}, {videos.max():.3f}] "
                         "(uint8 or [-1,1] input?)")
    n = videos.shape[0]
    if len(prompts) != n:
        raise ValueError(f"{n} videos but {len(prompts)} prompts")
    if names is not None and len(names) != n:
        raise ValueError(f"{n} videos but {len(names)} names")
    if requested_motion is not None and len(requested_motion) != n:
        raise ValueError(f"{n} videos but {len(requested_motion)} requested motion values")
    if "fvd" in metrics and reference_videos is None:
        raise ValueError("metric 'fvd' needs reference_videos (real videos; FVD is a distance between sets)")
    if reference_videos is not None and (not isinstance(reference_videos, torch.Tensor)
                                         or reference_videos.dim() != 5 or reference_videos.shape[1] != 3):
        raise ValueError("reference_videos must be a tensor (M,3,T,H,W) in [0,1]")
    if any(m in SET_METRICS for m in metrics) and n < 2:
        raise ValueError(f"FVD needs at least 2 generated videos, got {n}")
    return metrics


def _tensor_id(videos: torch.Tensor) -> str:
    """Content hash of a reference tensor: caches stay valid exactly as long as the videos are the same."""
    h = hashlib.sha256()
    h.update(str(tuple(videos.shape)).encode())
    h.update(videos.detach().cpu().contiguous().float().numpy().tobytes())
    return "tensor-" + h.hexdigest()[:16]


def _synthetic_reference(evaluators, n: int):
    """Default FVD-syn reference: test-split clips (held-out law), at least 4N of them for equal-N subsets."""
    from ..data.synthetic import make_clip
    from ..utils import config_hash
    cfg = evaluators.data_cfg
    m = max(cfg.n_test, 4 * n)

    def render():
        return torch.stack([make_clip(i, cfg, "test").video for i in range(m)])
    return render, f"synthetic-{config_hash(cfg)}-test-{m}"


def _fvd_entry(gen_feats, extractor, reference_videos, reference_id, batch_size, device, progress, cache_dir,
               level, n_boot_fvd, fvd_subsets, seed) -> dict:
    from .bootstrap import bootstrap_fvd, fvd_reference_subsets
    from .fvd import compute_fvd, reference_stats

    def ref_feature_fn(batch):
        return extractor(batch)["features"]

    ref_feature_fn.info = extractor.info  # reference_stats keys its cache on the detector identity
    if reference_id is None and isinstance(reference_videos, torch.Tensor):
        reference_id = _tensor_id(reference_videos)
    ref = reference_stats(reference_videos, ref_feature_fn, reference_id, cache_dir=cache_dir, batch_size=batch_size,
                          device=device, progress=progress)
    res = compute_fvd(gen_feats, ref, extractor.info)
    ddof = int(extractor.info.protocol.get("cov_ddof", 0))
    boot = bootstrap_fvd(gen_feats, ref.feats, n_boot=n_boot_fvd, level=level, seed=seed, ddof=ddof)
    entry = {"value": res.fvd, "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "n": res.n_gen,
             "n_ref": res.n_ref, "frames": res.frames, "resolution": res.resolution, "detector": res.detector,
             "detector_sha256": res.detector_sha256, "sqrt_method": res.sqrt_method, "protocol": res.protocol,
             "reference_id": reference_id, "bootstrap": boot}
    if fvd_subsets and ref.n >= res.n_gen:
        entry["reference_subsets"] = fvd_reference_subsets(gen_feats, ref.feats, n_subsets=fvd_subsets, seed=seed,
                                                           ddof=ddof)
    else:
        entry["reference_subsets"] = {"note": f"reference pool ({ref.n}) smaller than N ({res.n_gen}); not computed"}
    return entry
