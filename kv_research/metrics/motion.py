"""RAFT-measured motion: THE one motion-score definition, used for training labels and for generated videos.

Definition (``motion_score``)::

    frames  -> resized so the short side is exactly ``work_size`` px (bilinear; antialiased when shrinking;
               the long side keeps the aspect ratio, rounded to an integer), values mapped [0,1] -> [-1,1]
    pair t  -> torchvision RAFT flow from frame t to t+1 (``num_flow_updates`` refinements), computed on the
               frames replicate-padded to a multiple of 8 and then unpadded back to the working size
    score   =  mean over pairs t of  mean over pixels of ||flow_t||_2   *   256 / min(H', W')

where (H', W') is the working size, so the score is in "pixels per frame at a 256-px short side" (the VBench
normalisation, eval.md 3.7) and does not depend on the input or working resolution for the same content.

Why a working size: RAFT's 4-level correlation pyramid needs feature maps of at least 16x16, i.e. frames of at
least 128 px (torchvision refuses smaller ones), and the 32-px synthetic clips are far below that. We upsample
them 4x to 128 px. Real videos are downsampled to the same 128-px short side, which also keeps the CPU cost
bounded. Defaults (``MotionConfig``): RAFT-small, work_size 128, num_flow_updates 6. Labels and measurements
must use the same MotionConfig; the label cache keys on it.

Accuracy with the princeton RAFT-small weights (tests/test_motion.py): integer shifts of real 128-px frames
have a median end-point error of 0.04-0.3 px; synthetic 32-px objects are tracked to within 0.2 px (median over
the object interior, at 32 px); on identical frames the score is about 0.1 (noise floor); the full-frame score is
about 1.4x the exact ground-truth score (RAFT-small's x8 bilinear upsampling smears flow past object edges);
Spearman(score, ground truth) = 0.97 over 64 random 8-frame benchmark clips (12 updates).

Why 6 refinements, not RAFT's usual 12: on 64 8-frame test clips (2026-11-26, idle 2-core machine) 6 updates
took 29 s instead of 45 s, Spearman(score, ground truth) was 0.958 instead of 0.963, the identical-frames floor
0.11-0.15 instead of 0.10-0.12, and the two scores ranked the clips alike (Spearman 0.997, mean |difference|
0.05). Motion labels and the motion columns are most of the CPU cost of an evaluation, so the cheaper setting
is the default; pass ``MotionConfig(num_flow_updates=12)`` (labels) and ``num_flow_updates=12`` (measurements)
for the slower one.

CPU cost: RAFT-small at 128x128 is 0.32 GFLOP of encoders plus 0.45 GFLOP per refinement, 5.7 GFLOP per pair at
12 updates. Pairs per RAFT call (``RAFT_BATCH_PAIRS`` = 28, i.e. 4 whole 8-frame clips): on the shared 2-core EPYC
of the study machine (1 thread, 112 pairs at 6 updates, 3 interleaved rounds, ``benchmarks/bench_metrics.py
--raft-batches 16,28,56``) 16, 28 and 56 pairs per call took 40, 38 and 44 ms/pair: the larger batches are not
faster (56 was 1.13x slower than 16 pair for pair; an earlier 2-thread measurement found it about 15 % slower
too), so the default is the smallest batch that is as fast, which also holds less memory. The flows, and so the
labels, do not depend on it beyond float rounding: 28 and 56 gave bit-identical per-pair statistics there
(``MKL_CBWR=AUTO,STRICT``; tests/test_motion.py).
With 2 threads and 12 updates a pair took 37 ms on an idle Xeon (512 clips x 7 pairs in 2.2 min) but about
300 ms on the study machine under a load of 4-6; ``num_flow_updates=4`` halves the time (Spearman 0.965 instead
of 0.969, noise floor 0.20 instead of 0.12).

The VBench (``dynamic_degree``) and EvalCrafter (``flow_score``) statistics are computed from the same flows,
for comparison with published numbers; their conventions are documented at each function.
Weights come from ``kv_research.weights.find_weights``: torchvision's files, or princeton-vl's raft-small.pth
mapped key by key onto torchvision ``raft_small`` (eval.md 3.2) and loaded strictly.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from kv_research.metrics.inputs import VideoInputError, check_videos
from kv_research.utils import atomic_write_json, config_hash, default_cache_dir
from kv_research.weights import MissingWeightsError, find_weights, sha256_file

__all__ = ["MotionConfig", "load_raft", "princeton_to_torchvision", "flow_pairs", "motion_stats", "motion_score",
           "flow_statistics", "working_size",
           "dynamic_degree", "dynamic_from_stats", "flow_score", "MotionLabelCache", "weights_fingerprint",
           "DYNAMIC_PROTOCOLS", "vbench_frame_indices", "vbench_motion_stats", "dynamic_protocol_info"]


@dataclass
class MotionConfig:
    kind: str = "small"           # torchvision raft_small / raft_large
    work_size: int = 128          # short side (px) of the frames the flow is computed on
    num_flow_updates: int = 6     # RAFT refinement iterations (see the module docstring for 6 vs 12)
    statistic: str = "mean_flow_magnitude_256px_v1"   # bump to invalidate cached labels if the definition changes


_DEFAULT = MotionConfig()
RAFT_BATCH_PAIRS = 28             # frame pairs per RAFT call (measured: see the module docstring)


# ----------------------------------------------------------------------------------------------- weights
_PRINCETON_RULES = [  # (regex on the key without 'module.', replacement), applied in order (eval.md 3.2)
    (r"^fnet\.", "feature_encoder."), (r"^cnet\.", "context_encoder."),
    (r"^(feature_encoder|context_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(feature_encoder|context_encoder)\.conv2\.", r"\1.conv."),
    (r"(layer\d\.\d)\.conv(\d)\.", r"\1.convnormrelu\2.0."),
    (r"^update_block\.encoder\.convc1\.", "update_block.motion_encoder.convcorr1.0."),
    (r"^update_block\.encoder\.convf1\.", "update_block.motion_encoder.convflow1.0."),
    (r"^update_block\.encoder\.convf2\.", "update_block.motion_encoder.convflow2.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.", "update_block.recurrent_block.convgru1."),
]


def princeton_to_torchvision(state: dict) -> dict:
    """Rename a princeton-vl RAFT-small state dict ('module.fnet.conv1.weight', ...) to torchvision names."""
    out = {}
    for k, v in state.items():
        new = k.removeprefix("module.")
        for pat, rep in _PRINCETON_RULES:
            new = re.sub(pat, rep, new)
        out[new] = v
    return out


def load_raft(kind: str = "small", path=None, device="cpu") -> torch.nn.Module:
    """torchvision RAFT in eval mode with verified weights (sha256 via find_weights), loaded with strict=True.

    kind='small': torchvision ``raft_small_C_T_V2`` if present, else princeton-vl ``raft-small.pth`` (mapped).
    kind='large': torchvision ``raft_large_C_T_SKHT_V2``. ``path`` may name a file or a folder.
    The model gets ``model.kv_weights = {key, path, sha256}`` so results can name their detector.
    """
    from torchvision.models.optical_flow import raft_large, raft_small
    keys = {"small": ["raft_small_tv", "raft_small_princeton"], "large": ["raft_large_tv"]}.get(kind)
    if keys is None:
        raise ValueError(f"unknown RAFT kind {kind!r}; use 'small' or 'large'")
    errors, file, key = [], None, None
    for key in keys:
        try:
            file = find_weights(key, path)
            break
        except MissingWeightsError as e:
            errors.append(str(e))
    if file is None:
        raise MissingWeightsError("No RAFT-%s weights found. Tried:\n\n%s" % (kind, "\n\n".join(errors)))
    state = torch.load(file, map_location="cpu", weights_only=True)
    if any(k.startswith(("module.", "fnet.")) for k in state):
        state = princeton_to_torchvision(state)
    model = (raft_small if kind == "small" else raft_large)(weights=None, progress=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{file}: weights do not fit torchvision raft_{kind}: {e}") from e
    model.kv_weights = {"key": key, "path": str(file), "sha256": sha256_file(file)}
    return model.eval().requires_grad_(False).to(device)


def weights_fingerprint(raft: torch.nn.Module) -> str:
    """sha256 of the weight file if known (load_raft sets it), else of the parameters themselves."""
    info = getattr(raft, "kv_weights", None)
    if info:
        return info["sha256"]
    h = hashlib.sha256()
    for k, v in sorted(raft.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_RAFT_CACHE: dict = {}


def _default_raft(kind: str, device) -> torch.nn.Module:
    key = (kind, str(device))
    if key not in _RAFT_CACHE:
        _RAFT_CACHE[key] = load_raft(kind, device=device)
    return _RAFT_CACHE[key]


# ----------------------------------------------------------------------------------------------- flows
def working_size(h: int, w: int, work_size: int) -> tuple[int, int]:
    """(H', W'): short side = work_size, long side scaled by the same factor (rounded)."""
    s = work_size / min(h, w)
    return (work_size, max(work_size, round(w * s))) if h <= w else (max(work_size, round(h * s)), work_size)


def _prepare(frames: torch.Tensor, work_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N,3,H,W) in [0,1] -> (N,3,Hp,Wp) in [-1,1], resized to the working size and padded to a multiple of 8."""
    h, w = frames.shape[-2:]
    hw = working_size(h, w, work_size)
    if (h, w) != hw:
        frames = F.interpolate(frames, size=hw, mode="bilinear", align_corners=False, antialias=min(h, w) > work_size)
    ph, pw = (-hw[0]) % 8, (-hw[1]) % 8
    if ph or pw:
        frames = F.pad(frames, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    return frames * 2 - 1, hw


def _as_batch(video: torch.Tensor) -> torch.Tensor:
    """(B,3,T,H,W) or (3,T,H,W) float in [0,1], T >= 2 (one pair), else ``inputs.VideoInputError``.

    Floats only: RAFT inputs are mapped from [0,1] to [-1,1] here, so a pre-normalised, 0-255 or uint8 tensor
    would otherwise give a plausible but wrong flow."""
    return check_videos(video, "RAFT motion", min_frames=2, allow_single=True)


def _iter_flows(video: torch.Tensor, raft, work_size: int, num_flow_updates: int, batch_size: int, device,
                progress: bool):
    """Yield (clip index (P,), pair index (P,), flows (P,2,H',W')) over chunks of consecutive-frame pairs."""
    b, _, t, h, w = video.shape
    per_chunk = max(1, batch_size // (t - 1))          # whole clips per chunk, so each frame is resized once
    bar = tqdm(total=b * (t - 1), desc="RAFT pairs", unit="pair", disable=not progress)
    for c0 in range(0, b, per_chunk):
        clips = video[c0:c0 + per_chunk].to(device, torch.float32)
        n = clips.shape[0]
        frames, hw = _prepare(rearrange(clips, "b c t h w -> (b t) c h w"), work_size)
        frames = rearrange(frames, "(b t) c h w -> b t c h w", b=n)
        img1 = rearrange(frames[:, :-1], "b t c h w -> (b t) c h w")     # (n*(t-1), 3, Hp, Wp)
        img2 = rearrange(frames[:, 1:], "b t c h w -> (b t) c h w")
        clip_idx = torch.arange(c0, c0 + n).repeat_interleave(t - 1)
        pair_idx = torch.arange(t - 1).repeat(n)
        for p0 in range(0, img1.shape[0], batch_size):
            flow = raft(img1[p0:p0 + batch_size], img2[p0:p0 + batch_size], num_flow_updates=num_flow_updates)[-1]
            top, left = (flow.shape[-2] - hw[0]) // 2, (flow.shape[-1] - hw[1]) // 2
            flow = flow[..., top:top + hw[0], left:left + hw[1]]          # unpad: (P, 2, H', W')
            bar.update(flow.shape[0])
            yield clip_idx[p0:p0 + batch_size], pair_idx[p0:p0 + batch_size], flow
    bar.close()


@torch.no_grad()
def flow_pairs(video: torch.Tensor, raft=None, *, work_size: int = _DEFAULT.work_size,
               num_flow_updates: int = _DEFAULT.num_flow_updates, batch_size: int = RAFT_BATCH_PAIRS, device=None,
               progress: bool = False) -> torch.Tensor:
    """Flows between consecutive frames, (B, T-1, 2, H', W') in working-size pixels (u = x, v = y).

    Holds every flow in memory; for statistics over many videos use ``motion_stats``, which does not.
    """
    video = _as_batch(video)
    raft, device = _resolve(raft, device)
    b, t = video.shape[0], video.shape[2]
    out = None
    for ci, pi, flow in _iter_flows(video, raft, work_size, num_flow_updates, batch_size, device, progress):
        if out is None:
            out = torch.empty(b, t - 1, *flow.shape[1:])
        out[ci, pi] = flow.float().cpu()
    return out


def _resolve(raft, device):
    if raft is None:
        raft = _default_raft(_DEFAULT.kind, device or "cpu")
    if device is None:
        device = next(raft.parameters()).device
    return raft, device


# ----------------------------------------------------------------------------------------------- statistics
@torch.no_grad()
def motion_stats(video: torch.Tensor, raft=None, *, work_size: int = _DEFAULT.work_size,
                 num_flow_updates: int = _DEFAULT.num_flow_updates, batch_size: int = RAFT_BATCH_PAIRS, device=None,
                 progress: bool = False, top_fraction: float = 0.05) -> dict[str, torch.Tensor]:
    """One RAFT pass, every statistic. Returns per-pair tensors (B, T-1), all normalised to a 256-px short side:

    ``mean`` (mean |flow| over pixels) and ``top`` (mean of the largest ``top_fraction`` of |flow|, VBench);
    plus ``motion_score`` (B,) = mean over pairs of ``mean`` and ``scale_to_input`` (B,) = min(H,W)/256,
    which converts a normalised value back to pixels of the input video.
    """
    video = _as_batch(video)
    raft, device = _resolve(raft, device)
    b, _, t, h, w = video.shape
    mean, top = torch.zeros(b, t - 1), torch.zeros(b, t - 1)
    for ci, pi, flow in _iter_flows(video, raft, work_size, num_flow_updates, batch_size, device, progress):
        mean[ci, pi], top[ci, pi] = _pair_stats(flow, top_fraction)
    return {"mean": mean, "top": top, "motion_score": mean.mean(dim=1),
            "scale_to_input": torch.full((b,), min(h, w) / 256.0)}


def _pair_stats(flow: torch.Tensor, top_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """flow (P, 2, H', W') in working px -> (mean |f|, mean of the top fraction of |f|), both (P,) at 256 px."""
    norm = 256.0 / min(flow.shape[-2:])
    mag = rearrange(flow.float().norm(dim=1), "p h w -> p (h w)")            # (P, H'*W')
    k = max(1, int(mag.shape[1] * top_fraction))
    return mag.mean(dim=1).cpu() * norm, mag.topk(k, dim=1).values.mean(dim=1).cpu() * norm


def flow_statistics(flows: torch.Tensor, top_fraction: float = 0.05) -> dict[str, torch.Tensor]:
    """The statistics of ``motion_stats`` from precomputed ``flow_pairs`` output (B, T-1, 2, H', W')."""
    b, p = flows.shape[:2]
    mean, top = _pair_stats(rearrange(flows, "b p c h w -> (b p) c h w"), top_fraction)
    mean, top = rearrange(mean, "(b p) -> b p", b=b), rearrange(top, "(b p) -> b p", b=b)
    return {"mean": mean, "top": top, "motion_score": mean.mean(dim=1)}


def motion_score(video: torch.Tensor, raft=None, **kw) -> torch.Tensor:
    """(B,) THE motion score: mean over consecutive pairs of the mean flow magnitude, px at a 256-px short side.

    Same function for training labels (via MotionLabelCache) and for generated videos. Keyword arguments as in
    ``motion_stats`` (work_size=128, num_flow_updates=6, batch_size, device, progress).
    """
    return motion_stats(video, raft, **kw)["motion_score"]


def flow_score(video: torch.Tensor, raft=None, **kw) -> torch.Tensor:
    """(B,) EvalCrafter flow score: mean |flow| over all pixels and pairs, in pixels of the INPUT video per frame.

    EvalCrafter runs princeton RAFT (raft-things, 20 iterations) at native resolution and fps; here the flow is
    computed at the working size and rescaled to input pixels (= motion_score * min(H, W) / 256). Its motion
    AC-score threshold is 5 px ("large" above).
    """
    s = motion_stats(video, raft, **kw)
    return s["motion_score"] * s["scale_to_input"]


def dynamic_degree(video: torch.Tensor, raft=None, *, threshold: float = 6.0, return_counts: bool = False,
                   protocol: str = "suite", fps: float | None = None, **kw):
    """(B,) bool, VBench dynamic degree: a video is dynamic when at least ``max(1, round(4 * T / 16))`` pairs have
    a top-5 % mean |flow| above ``threshold`` px at a 256-px short side (VBench: 6 * min(H,W)/256 native px).

    ``protocol="suite"`` (default): the frames as given, this module's flow settings (RAFT-small, 128-px working
    size, 6 refinements), so it shares the RAFT pass of ``motion_score``. ``protocol="vbench"``: VBench's own
    sampling and flow settings (``vbench_motion_stats``; needs the clips' native ``fps``), T = the frames kept.
    VBench itself uses raft-things (large); the benchmark score is the fraction of dynamic videos.
    ``max(1, .)`` avoids VBench's round(0.5) = 0, which would call every 2-frame video dynamic.
    """
    if protocol == "vbench":
        stats = vbench_motion_stats(video, raft, fps, **kw)
    elif protocol == "suite":
        if fps is not None:
            raise ValueError("fps is used only by protocol='vbench' (the suite protocol takes the frames as given)")
        stats = motion_stats(video, raft, **kw)
    else:
        raise ValueError(f"unknown dynamic_degree protocol {protocol!r}; known: {', '.join(DYNAMIC_PROTOCOLS)}")
    dynamic, counts = dynamic_from_stats(stats, threshold)
    return (dynamic, counts) if return_counts else dynamic


VBENCH_DYNAMIC_THRESHOLD = 6.0   # px at a 256-px short side, on the top-5 % mean |flow| of a pair
DYNAMIC_PROTOCOLS = ("suite", "vbench")
VBENCH_TARGET_FPS = 8            # VBench keeps every round(fps / 8)-th frame (Vchitect/VBench dynamic_degree.py)
VBENCH_FLOW_UPDATES = 20         # VBench's RAFT iters
RAFT_MIN_SIDE = 128              # torchvision RAFT refuses smaller frames (4-level correlation pyramid)


def vbench_frame_indices(num_frames: int, fps: float) -> list[int]:
    """VBench's frame sampling: every ``max(1, round(fps / 8))``-th native frame, starting at frame 0.

    Why not resample to 8 fps: VBench takes a fixed step, so a 12-fps clip keeps every 2nd frame (6 fps), while
    resampling would repeat frames of a slower source (zero-flow pairs). Python's round, as VBench (12/8 -> 2).
    """
    try:
        ok = not isinstance(fps, bool) and np.isfinite(float(fps)) and float(fps) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"the VBench protocol needs the clips' native frame rate, a finite fps > 0; got {fps!r}")
    fps = float(fps)
    step = max(1, round(fps / VBENCH_TARGET_FPS))
    return list(range(0, int(num_frames), step))


@torch.no_grad()
def vbench_motion_stats(video: torch.Tensor, raft=None, fps: float | None = None, *,
                        batch_size: int = RAFT_BATCH_PAIRS, device=None, progress: bool = False,
                        top_fraction: float = 0.05) -> dict[str, torch.Tensor]:
    """``motion_stats`` under VBench's protocol: frames ``vbench_frame_indices(T, fps)``, 20 RAFT refinements,
    native resolution (upsampled to RAFT's 128-px minimum short side only when smaller, as the suite does).

    Adds ``frame_indices`` (the native frames used). Refuses clips that keep fewer than 2 frames (no pair).
    """
    video = _as_batch(video)
    if fps is None:
        raise ValueError("the VBench protocol needs fps (the clips' native frame rate): it keeps every "
                         "round(fps/8)-th frame")
    t, (h, w) = video.shape[2], video.shape[-2:]
    idx = vbench_frame_indices(t, fps)
    if len(idx) < 2:
        raise VideoInputError(f"the VBench protocol at {fps:g} fps keeps every {max(1, round(fps / 8))}-th frame, "
                              f"so {t} frames give {len(idx)} frame (frames {idx}); it needs >= 2 (at least "
                              f"{max(1, round(fps / 8)) + 1} native frames)")
    stats = motion_stats(video[:, :, idx], raft, work_size=max(RAFT_MIN_SIDE, min(h, w)),
                         num_flow_updates=VBENCH_FLOW_UPDATES, batch_size=batch_size, device=device,
                         progress=progress, top_fraction=top_fraction)
    stats["frame_indices"] = torch.tensor(idx)
    return stats


def dynamic_protocol_info(protocol: str = "suite", fps: float | None = None) -> dict:
    """What ``dynamic_degree`` computed under ``protocol``, for summaries: name, settings, differences from VBench."""
    common = {"threshold": VBENCH_DYNAMIC_THRESHOLD,
              "threshold_units": "px at a 256-px short side (VBench: 6 * min(H,W)/256 native px)",
              "pair_statistic": "mean of the top 5 % of |flow| of a consecutive-frame pair",
              "rule": "dynamic when >= max(1, round(4 * T / 16)) pairs exceed the threshold"}
    if protocol == "suite":
        return {"name": "VBench dynamic degree", "variant": "suite", **common,
                "frames": "as given", "raft": f"RAFT-small, {_DEFAULT.num_flow_updates} updates, "
                                              f"{_DEFAULT.work_size}-px working size",
                "differences": f"flow from RAFT-small ({_DEFAULT.num_flow_updates} updates, {_DEFAULT.work_size}-px "
                               "working size) on the frames as given; VBench takes every round(fps/8)-th frame and "
                               "uses RAFT-things, 20 updates, native size (--motion-protocol vbench)"}
    if protocol == "vbench":
        step = None if fps is None else max(1, round(fps / VBENCH_TARGET_FPS))
        return {"name": "VBench dynamic degree", "variant": "vbench", **common, "fps": fps, "frame_step": step,
                "frames": "every max(1, round(fps/8))-th native frame from frame 0; T = frames kept",
                "raft": f"RAFT-small, {VBENCH_FLOW_UPDATES} updates, native resolution (short side upsampled to "
                        f"{RAFT_MIN_SIDE} px when smaller)",
                "differences": "RAFT-small (torchvision) instead of VBench's RAFT-things; flow unpadded before the "
                               f"statistics; frames below {RAFT_MIN_SIDE} px upsampled (torchvision minimum)"}
    raise ValueError(f"unknown dynamic_degree protocol {protocol!r}; known: {', '.join(DYNAMIC_PROTOCOLS)}")


def dynamic_from_stats(stats: dict, threshold: float = VBENCH_DYNAMIC_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """VBench's rule (see ``dynamic_degree``) applied to ``motion_stats`` output -> (dynamic (B,) bool, pair counts)."""
    t = stats["top"].shape[1] + 1
    need = max(1, round(4 * t / 16))
    counts = (stats["top"] > threshold).sum(dim=1)
    return counts >= need, counts


# ----------------------------------------------------------------------------------------------- label cache
class MotionLabelCache:
    """Per-clip motion labels on disk, keyed by clip id + motion config hash + weights hash.

    Layout: ``<root>/motion_labels/<config hash>-<weights sha256[:12]>/<clip id>.json`` with
    {clip_id, motion_score, config, weights}; one small file per clip, written atomically, so concurrent
    labelling processes never corrupt each other and a crash loses at most the current batch.
    The RAFT model is loaded only when a label is missing (the weights hash needs just the file).
    """

    def __init__(self, root=None, raft: torch.nn.Module | None = None, *, cfg: MotionConfig | None = None,
                 weights_path=None, batch_size: int = RAFT_BATCH_PAIRS, device="cpu", flush_every: int = 32):
        self.cfg = cfg or MotionConfig()
        self.flush_every = flush_every
        self.root = Path(root) if root is not None else default_cache_dir()
        self.batch_size, self.device, self._raft, self._weights_path = batch_size, device, raft, weights_path
        if raft is not None:
            self.weights_hash = weights_fingerprint(raft)
        else:
            keys = {"small": ["raft_small_tv", "raft_small_princeton"], "large": ["raft_large_tv"]}[self.cfg.kind]
            errors = []
            for key in keys:
                try:
                    self.weights_hash = sha256_file(find_weights(key, weights_path))
                    break
                except MissingWeightsError as e:
                    errors.append(str(e))
            else:
                raise MissingWeightsError("No RAFT weights for motion labels. Tried:\n\n" + "\n\n".join(errors))
        self.namespace = f"{config_hash(self.cfg)}-{self.weights_hash[:12]}"
        self.dir = self.root / "motion_labels" / self.namespace

    @property
    def raft(self) -> torch.nn.Module:
        if self._raft is None:
            self._raft = load_raft(self.cfg.kind, self._weights_path, self.device)
        return self._raft

    def _file(self, clip_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", clip_id)[:100]
        if safe != clip_id:
            safe += "-" + hashlib.sha1(clip_id.encode()).hexdigest()[:8]
        return self.dir / f"{safe}.json"

    def get(self, clip_id: str) -> float | None:
        import json
        f = self._file(clip_id)
        if not f.is_file():
            return None
        rec = json.loads(f.read_text())
        if rec.get("clip_id") != clip_id:       # a sanitised-name collision; treat as missing
            return None
        return float(rec["motion_score"])

    def put(self, clip_id: str, score: float) -> None:
        atomic_write_json(self._file(clip_id), {"clip_id": clip_id, "motion_score": float(score),
                                                "config": asdict(self.cfg), "weights_sha256": self.weights_hash})

    def labels(self, clip_ids: Sequence[str], videos: Sequence[torch.Tensor] | Callable[[str], torch.Tensor], *,
               progress: bool = True) -> np.ndarray:
        """Motion scores for ``clip_ids`` (float64 array), computing and storing only the missing ones.

        ``videos`` is a sequence aligned with ``clip_ids`` or a function clip_id -> (3,T,H,W) video in [0,1].
        Clips are labelled in fixed groups of ``flush_every`` consecutive ids (clips of equal shape batched
        together, ``batch_size`` pairs per RAFT call), and a group with any label missing is computed whole. Why:
        RAFT's float results depend slightly on which clips share a batch, so an interrupted run that resumed
        with the leftover clips batched differently would get labels a few ulps off, and a fine-tuned model, its
        videos and the table would differ from an uninterrupted run's. Fixed groups make resumption exact.
        """
        out = np.array([np.nan if (s := self.get(c)) is None else s for c in clip_ids], dtype=np.float64)
        groups = [range(g, min(g + self.flush_every, len(clip_ids))) for g in range(0, len(clip_ids), self.flush_every)]
        todo = [g for g in groups if np.isnan(out[list(g)]).any()]
        bar = tqdm(total=sum(len(g) for g in todo), desc="motion labels", unit="clip", disable=not progress or not todo)
        for group in todo:   # each group is written when done, so an interrupted run keeps its work
            by_shape: dict[tuple, list] = {}
            for i in group:
                v = videos(clip_ids[i]) if callable(videos) else videos[i]
                by_shape.setdefault(tuple(v.shape), []).append((i, v))
            for members in by_shape.values():
                scores = motion_score(torch.stack([v for _, v in members]), self.raft, work_size=self.cfg.work_size,
                                      num_flow_updates=self.cfg.num_flow_updates, batch_size=self.batch_size,
                                      device=self.device)
                for (i, _), s in zip(members, scores.tolist()):
                    if np.isnan(out[i]):
                        self.put(clip_ids[i], s)
                        out[i] = s
            bar.update(len(group))
        bar.close()
        return out

    def label_synthetic(self, cfg=None, split: str = "train", n: int | None = None, *,
                        progress: bool = True) -> np.ndarray:
        """Labels of the first ``n`` clips of a synthetic split (all of it by default)."""
        from kv_research.data.synthetic import SyntheticConfig, clip_id, make_clip
        cfg = cfg or SyntheticConfig()
        n = n if n is not None else {"train": cfg.n_train, "test": cfg.n_test}[split]
        ids = [clip_id(i, cfg, split) for i in range(n)]
        index = {c: i for i, c in enumerate(ids)}
        return self.labels(ids, lambda cid: make_clip(index[cid], cfg, split).video, progress=progress)
