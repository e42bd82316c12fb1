"""Diffusion core: cosine schedule (optionally rescaled to zero terminal SNR), eps / v targets, DDPM and DDIM
samplers, classifier-free guidance (text, and the three-way text/image guidance of Kandinsky Video 1.1), dynamic
thresholding, and the noise augmentation of the conditioning first frame.

Data are in [-1, 1] inside the diffusion (videos are [0, 1] at the API; ``to_model``/``from_model`` convert).
Everything schedule-related is float64 on the CPU, gathered per item, then cast: sampling is deterministic given
the per-item generators, whatever the batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .config import DiffusionConfig


def to_model(video01: torch.Tensor) -> torch.Tensor:
    return video01 * 2 - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def cosine_alphas_bar(n: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/n) + s)/(1 + s) * pi/2), for t = 1..n (Nichol & Dhariwal)."""
    t = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def rescale_zero_terminal_snr(alphas_bar: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step is pure noise (Lin et al. 2023, Algorithm 1)."""
    sq = alphas_bar.sqrt()
    first, last = sq[0].clone(), sq[-1].clone()
    sq = (sq - last) * first / (first - last)
    return sq ** 2


@dataclass
class Schedule:
    alphas_bar: torch.Tensor  # (n,) float64, index = timestep

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "Schedule":
        if cfg.schedule != "cosine":
            raise ValueError(f"unknown schedule '{cfg.schedule}' (only 'cosine' is implemented)")
        ab = cosine_alphas_bar(cfg.num_timesteps)
        if cfg.zero_terminal_snr:
            ab = rescale_zero_terminal_snr(ab)
            if cfg.prediction == "eps":
                # eps-prediction cannot recover x0 at SNR = 0; keep the last step just above it (as diffusers does)
                ab[-1] = max(ab[-1].item(), 2.0 ** -24)
        return cls(ab)

    def coeffs(self, t: torch.Tensor, ndim: int, device, dtype=torch.float32):
        ab = self.alphas_bar[t.cpu().long()]
        shape = (-1,) + (1,) * (ndim - 1)
        return (ab.sqrt().to(device, dtype).reshape(shape), (1 - ab).sqrt().to(device, dtype).reshape(shape))


class Diffusion:
    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.schedule = Schedule.from_config(cfg)
        self.n = cfg.num_timesteps

    # -------------------------------------------------------------------------------------------- training
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a, s = self.schedule.coeffs(t, x0.ndim, x0.device, x0.dtype)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.cfg.prediction == "eps":
            return noise
        if self.cfg.prediction == "v":
            a, s = self.schedule.coeffs(t, x0.ndim, x0.device, x0.dtype)
            return a * noise - s * x0
        raise ValueError(f"prediction must be 'eps' or 'v', got {self.cfg.prediction!r}")

    def predict_x0_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        a, s = self.schedule.coeffs(t, x_t.ndim, x_t.device, x_t.dtype)
        if self.cfg.prediction == "eps":
            return (x_t - s * out) / a, out
        x0 = a * x_t - s * out
        return x0, s * x_t + a * out

    def loss(self, model_out: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        err = (model_out.float() - self.target(x0, t, noise).float()) ** 2
        if weight is not None:  # e.g. exclude the conditioning first frame
            err = err * weight
            return err.sum() / (weight.expand_as(err).sum()).clamp_min(1)
        return err.mean()

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.n, (n,), generator=generator)

    # -------------------------------------------------------------------------------------- conditioning
    def augment_first_frame(self, frame: torch.Tensor, level: torch.Tensor,
                            generators: list[torch.Generator] | None = None,
                            noise: torch.Tensor | None = None) -> torch.Tensor:
        """Noise the conditioning frame to ``level`` (a timestep index) by the forward process.

        KV 1.1 does this with level 20 at inference and passes the level as a condition, so the keyframe model
        tolerates the gap between training first frames (from video) and sharp text-to-image frames. (The released
        code draws uniform noise with ``torch.rand_like``; we use Gaussian noise, the forward process proper.)
        """
        if noise is None:
            noise = randn_per_item(frame.shape, generators, frame.device, frame.dtype)
        return self.q_sample(frame, level.long(), noise)

    # ----------------------------------------------------------------------------------------- sampling
    def timesteps(self, steps: int) -> list[int]:
        """'trailing' spacing: always includes the last step (pure noise under zero terminal SNR)."""
        steps = min(steps, self.n)
        return sorted({int(round(self.n - 1 - i * self.n / steps)) for i in range(steps)}, reverse=True)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Imagen): clip x0 at the ratio-quantile of |x0| per item, at least 1, rescale."""
        r = self.cfg.threshold_ratio
        if not r:
            return x0.clamp(-1, 1)
        s = torch.quantile(x0.flatten(1).abs().float(), r, dim=1).clamp_min(1.0)
        s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0.dtype)
        return x0.clamp(-s, s) / s

    @torch.no_grad()
    def sample(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple,
               generators: list[torch.Generator] | None = None, device="cpu", sampler: str | None = None,
               steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """Run DDIM (eta = cfg.eta) or ancestral DDPM from pure noise; ``denoise(x_t, t) -> model output``.

        Each batch item draws its noise from its own generator, so a sample depends on its seed only.
        """
        sampler = sampler or self.cfg.sampler
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        ts = self.timesteps(steps or self.cfg.sample_steps)
        x = randn_per_item(shape, generators, device)
        ab_all = self.schedule.alphas_bar
        it = ts
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(ts, desc=f"{sampler} sampling", leave=False)
        for i, t in enumerate(it):
            tt = torch.full((shape[0],), t, dtype=torch.long)
            out = denoise(x, tt.to(device))
            x0, _ = self.predict_x0_eps(out.float(), x, tt)
            x0 = self.threshold(x0)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab = ab_all[t].item()
            ab_prev = ab_all[t_prev].item() if t_prev >= 0 else 1.0
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(max(1 - ab, 1e-12))
            if sampler == "ddim":
                sigma = self.cfg.eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0))
            else:  # DDPM posterior variance of the respaced chain (beta tilde)
                sigma = math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0))
            if sampler == "ddpm":
                beta = 1 - ab / ab_prev
                mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
            else:
                mean = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
            if t_prev >= 0 and sigma > 0:
                mean = mean + sigma * randn_per_item(shape, generators, device)
            x = mean
        return x


def randn_per_item(shape, generators: list[torch.Generator] | None, device="cpu", dtype=torch.float32):
    """Gaussian noise where item i comes from ``generators[i]`` (drawn on the CPU, then moved): batch-size free."""
    if generators is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch item: {len(generators)} for batch {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device, dtype)


# ----------------------------------------------------------------------------------------------- guidance
def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + w (cond - uncond); w = 1 is no guidance."""
    return uncond + w * (cond - uncond)


def three_way_combine(text_image: torch.Tensor, image: torch.Tensor, none: torch.Tensor, w_text: float,
                      w_image: float) -> torch.Tensor:
    """KV 1.1 / InstructPix2Pix guidance: e_0 + w_I (e_I - e_0) + w_T (e_TI - e_I)."""
    return none + w_image * (image - none) + w_text * (text_image - image)
