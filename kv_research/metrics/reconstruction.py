"""Per-clip comparisons of a video with its original: frame metrics, flow-based warping error / flicker, LPIPS,
paired FVD-syn, and the mean-with-interval summary, shared by the decoder study (Table 3) and the interpolation
study (Table 2).

Warping error E(v), for clips of which RAFT gave the forward flow f (t -> t+1) and the backward flow b: pixel p of
frame t is valid when p + f(p) lies inside the frame and the forward-backward check
|f + b(p+f)|^2 <= alpha (|f|^2 + |b(p+f)|^2) + beta passes (occlusions fail it); with W(v)(p) = v_t+1(p + f(p))
(bilinear), E(v) is the mean over valid p and RGB of |v_t(p) - W(v)(p)|. Why the flow of one clip (the original's)
for every compared clip: then every method is warped alike and differences are the methods', not RAFT's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .bootstrap import bootstrap_ci

__all__ = ["frame_metrics", "warp", "valid_mask", "original_flows", "flicker_metrics", "lpips_metric",
           "lpips_per_clip", "reconstruction_fvd", "summarise"]


def frame_metrics(decoded: torch.Tensor, original: torch.Tensor) -> dict[str, np.ndarray]:
    """PSNR, SSIM, MSE per clip: per frame on [0, 1], mean over frames. PSNR = 10 log10(1 / MSE), 100 when
    MSE < 1e-10 (a perfect frame); SSIM = torchmetrics' (Gaussian 11x11, sigma 1.5, k1 0.01, k2 0.03)."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    b = decoded.shape[0]
    y = rearrange(decoded.float(), "b c t h w -> (b t) c h w")  # every frame on its own
    x = rearrange(original.float(), "b c t h w -> (b t) c h w")
    mse = (y - x).pow(2).mean(dim=(1, 2, 3))
    psnr = torch.where(mse < 1e-10, torch.full_like(mse, 100.0), 10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    ssim = structural_similarity_index_measure(y, x, data_range=1.0, reduction="none")
    per = {"psnr": psnr, "ssim": ssim, "mse": mse}
    return {k: rearrange(v, "(b t) -> b t", b=b).mean(dim=1).double().numpy() for k, v in per.items()}


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``img`` (N,C,H,W) sampled at p + flow(p), bilinear, zeros outside: frame t+1 brought onto frame t by the
    forward flow (u = x, v = y, in pixels)."""
    _, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) * 2 / (w - 1) - 1, (ys + flow[:, 1]) * 2 / (h - 1) - 1], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def valid_mask(fwd: torch.Tensor, bwd: torch.Tensor, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """(N,H,W) bool: p + f(p) inside the frame and the forward-backward check passes (not occluded)."""
    _, _, h, w = fwd.shape
    b_at = warp(bwd, fwd)                                              # b(p + f(p))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=fwd.dtype), torch.arange(w, dtype=fwd.dtype), indexing="ij")
    tx, ty = xs + fwd[:, 0], ys + fwd[:, 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    fb = (fwd + b_at).pow(2).sum(1) <= alpha * (fwd.pow(2).sum(1) + b_at.pow(2).sum(1)) + beta
    return inside & fb


@torch.no_grad()
def original_flows(videos: torch.Tensor, raft, work_size: int = 128, updates: int = 12,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """RAFT flows of (B,3,T,H,W) clips in [0, 1]: forward t -> t+1 and backward t+1 -> t, each (B,T-1,2,H,W) in
    pixels of the input frames (computed at the working size, resized back and rescaled)."""
    from .motion import flow_pairs
    h, w = videos.shape[-2:]

    def at_frame_size(fl):
        b = fl.shape[0]
        x = rearrange(fl, "b p c h w -> (b p) c h w")  # pairs as images
        sh, sw = h / x.shape[-2], w / x.shape[-1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=sh < 1 or sw < 1)
        x = x * torch.tensor([sw, sh]).view(1, 2, 1, 1)
        return rearrange(x, "(b p) c h w -> b p c h w", b=b)  # back to (B,T-1,2,H,W)
    kw = dict(work_size=work_size, num_flow_updates=updates, progress=progress)
    fwd = flow_pairs(videos, raft, **kw)
    bwd = flow_pairs(videos.flip(2), raft, **kw).flip(1)              # reversed clip: pair k is (T-1-k -> T-2-k)
    return at_frame_size(fwd), at_frame_size(bwd)


def flicker_metrics(decoded: torch.Tensor, original: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor,
                    window: int | None = None, alpha: float = 0.01, beta: float = 0.5) -> dict[str, np.ndarray]:
    """Per clip (B,): ``flicker``, ``residual_flicker`` (module docstring), ``flicker_within`` / ``flicker_boundary``
    (pairs inside one decoding window of ``window`` frames / straddling two; NaN where there are none) and
    ``valid_fraction``. Pairs without a valid pixel are left out of the means."""
    b, _, t = original.shape[:3]
    mask = valid_mask(rearrange(fwd, "b p c h w -> (b p) c h w"), rearrange(bwd, "b p c h w -> (b p) c h w"),
                      alpha, beta).float()                             # (B*P, H, W)
    flow = rearrange(fwd, "b p c h w -> (b p) c h w")
    n_valid = mask.sum(dim=(1, 2))

    def warp_error(v):  # mean over valid pixels and RGB of |v_t - warp(v_t+1)|, (B, P)
        cur = rearrange(v[:, :, :-1], "b c p h w -> (b p) c h w")     # frames 0..T-2
        nxt = rearrange(v[:, :, 1:], "b c p h w -> (b p) c h w")      # frames 1..T-1
        err = (cur - warp(nxt, flow)).abs().mean(dim=1)
        e = (err * mask).sum(dim=(1, 2)) / n_valid.clamp_min(1)
        return rearrange(torch.where(n_valid > 0, e, torch.nan), "(b p) -> b p", b=b).double().numpy()
    y, x = decoded.float(), original.float()
    flick = 255 * (warp_error(y) - warp_error(x))
    resid = 255 * warp_error(y - x)
    boundary = np.array([window is not None and window < t and (k + 1) % window == 0 for k in range(t - 1)])

    def mean(a, cols=None):  # over pairs, NaN (no pair / no valid pixel) left out
        a = a if cols is None else a[:, cols]
        ok = np.isfinite(a)
        return np.where(ok.any(axis=1), np.where(ok, a, 0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1), np.nan)
    return {"flicker": mean(flick), "residual_flicker": mean(resid), "flicker_within": mean(flick, ~boundary),
            "flicker_boundary": mean(flick, boundary),
            "valid_fraction": rearrange(n_valid / mask[0].numel(), "(b p) -> b p", b=b).mean(1).double().numpy()}


def lpips_metric():
    """torchmetrics' LPIPS (AlexNet) when torchvision's ImageNet AlexNet weights are already on disk; nothing is
    downloaded. Returns (metric or None, description)."""
    from torchvision.models import AlexNet_Weights
    file = Path(torch.hub.get_dir()) / "checkpoints" / AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    if not file.is_file():
        return None, (f"LPIPS not computed: torchmetrics' LPIPS needs torchvision's ImageNet AlexNet weights "
                      f"({file.name}), which are not on this machine (looked in {file.parent}); nothing is downloaded")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    from ..weights import sha256_file
    m = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()
    return m, f"LPIPS: torchmetrics AlexNet ({file.name}, sha256 {sha256_file(file)[:16]}), frames in [0, 1]"


@torch.no_grad()
def lpips_per_clip(metric, decoded: torch.Tensor, original: torch.Tensor) -> np.ndarray:
    b = decoded.shape[0]
    y = rearrange(decoded, "b c t h w -> (b t) c h w")  # LPIPS per frame
    x = rearrange(original, "b c t h w -> (b t) c h w")
    v = torch.cat([metric.net(a, c, normalize=True).reshape(-1) for a, c in zip(y.split(64), x.split(64))])
    return rearrange(v, "(b t) -> b t", b=b).mean(1).double().numpy()


def reconstruction_fvd(gen: np.ndarray, ref: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    """Fréchet distance between synthetic-video-net features of the decoded clips and of the same original clips
    (ddof 0, the syn net's protocol), with a paired bootstrap over clips (the same indices in both sets), shifted by
    the bootstrap bias like ``bootstrap_fvd`` (resampling duplicates clips, which inflates FD)."""
    from .frechet import feature_stats, frechet_distance

    def fd(i):
        return frechet_distance(*feature_stats(gen[i], 0, warn=False), *feature_stats(ref[i], 0, warn=False),
                                method="eigh")
    n = len(gen)
    point = fd(np.arange(n))
    rng = np.random.default_rng(seed)
    boot = np.array([fd(rng.integers(0, n, n)) for _ in range(n_boot)])
    bias = float(boot.mean() - point)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"value": point, "ci_low": float(lo) - bias, "ci_high": float(hi) - bias, "n": n, "bias": bias,
            "n_boot": n_boot, "feature_dim": int(gen.shape[1])}


def summarise(values: np.ndarray, n_boot: int = 1000, level: float = 0.95) -> dict:
    """Mean over clips and its bootstrap interval; non-finite values (no valid pair, no frame) are left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = bootstrap_ci(v, n_boot=n_boot, level=level, seed=0)
    lo, hi = (None if not np.isfinite(x) else x for x in (lo, hi))   # fewer than 2 clips: no interval
    return {"value": float(v.mean()), "ci_low": lo, "ci_high": hi, "n": int(v.size)}
