"""FVD with the StyleGAN-V I3D TorchScript detector, cached reference statistics, and a test stand-in.

Protocol (see /work/shared/research/eval.md §1 and ``FVDProtocol``): the first 16 frames of each clip,
quantised to uint8 levels like StyleGAN-V does for both sets, squashed to 224x224 with bilinear
interpolation on floats (TATS / cd-fvd convention; TF1 differs only in the upsampling kernel), scaled to
[-1, 1], then ``detector(x, rescale=False, resize=False, return_features=True)``: 400-d pre-softmax logits.
FD with population covariances (÷N), as StyleGAN-V's ``FeatureStats``.

Why every number carries N, frames, resolution and the detector hash: FVD at N=16 is ~15x its value at
N=2048 on the same distributions, and different I3D files give different numbers. An ``FVDResult`` without
those fields cannot be compared with anything.

The real detector file is ~50 MB and not available offline. ``save_i3d_standin`` writes a random-init
TorchScript module with the *same call interface* (``forward(x, rescale, resize, return_features)``,
(B,3,16,224,224) in [-1,1] -> (B,400)) so that the whole loading/preprocessing/caching path is tested.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from ..utils import atomic_save_npz, config_hash, default_cache_dir
from ..weights import find_weights, sha256_file
from .frechet import feature_stats, frechet_distance_with_method
from .inputs import check_videos

__all__ = ["FVDProtocol", "DetectorInfo", "FVDResult", "I3DFeatureExtractor", "load_i3d", "save_i3d_standin",
           "select_frames", "extract_features", "ReferenceStats", "reference_stats", "compute_fvd"]


@dataclass
class FVDProtocol:
    """Everything that changes an FVD value; hashed into the reference-statistics cache key."""
    frames: int = 16                 # clip length fed to I3D (StyleGAN-V fvd2048_16f)
    resolution: int = 224            # squash-resize target (no aspect-preserving crop)
    clip_start: str = "first"        # frames [0, frames) of every clip (StyleGAN-V: offset 0 for fakes)
    short_clips: str = "error"       # "error" | "repeat" (nearest-index temporal resampling, recorded)
    quantize_uint8: bool = True      # both sets go through uint8, as in StyleGAN-V / cd-fvd
    interpolation: str = "bilinear"  # on float frames, align_corners=False (TATS)
    value_range: str = "[-1,1]"      # detector called with rescale=False, resize=False
    cov_ddof: int = 0                # population covariance (StyleGAN-V FeatureStats)


@dataclass
class DetectorInfo:
    """Identity of a feature detector: reported next to every Fréchet distance."""
    name: str
    sha256: str
    feature_dim: int
    frames: int
    resolution: int
    protocol: dict = field(default_factory=dict)


@dataclass
class FVDResult:
    """One FVD value with what it takes to compare it with another one."""
    fvd: float
    n_gen: int
    n_ref: int
    frames: int
    resolution: int
    detector: str
    detector_sha256: str
    sqrt_method: str
    protocol: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- preprocessing
def select_frames(videos: torch.Tensor, frames: int, short_clips: str = "error") -> torch.Tensor:
    """First ``frames`` frames of (B,3,T,H,W); shorter clips raise unless ``short_clips='repeat'``."""
    t = videos.shape[2]
    if t >= frames:
        return videos[:, :, :frames]
    if short_clips == "repeat":
        idx = torch.div(torch.arange(frames) * t, frames, rounding_mode="floor")  # nearest-index resampling
        return videos[:, :, idx]
    raise ValueError(f"clips have {t} frames but the FVD protocol needs {frames} (I3D fails below ~10). "
                     "Generate longer clips, or pass FVDProtocol(short_clips='repeat') and report it.")


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


class I3DFeatureExtractor(nn.Module):
    """(B,3,T,H,W) float in [0,1] or uint8 -> (B,400) I3D logits, following ``FVDProtocol``.

    Anything else (0-255 floats, [-1,1], NaN, wrong layout) is refused by ``inputs.check_videos``, not clamped.
    """

    def __init__(self, detector: torch.jit.ScriptModule | nn.Module, sha256: str, name: str,
                 protocol: FVDProtocol | None = None):
        super().__init__()
        self.detector = detector
        self.protocol = protocol or FVDProtocol()
        self.info = DetectorInfo(name=name, sha256=sha256, feature_dim=400, frames=self.protocol.frames,
                                 resolution=self.protocol.resolution, protocol=dataclasses.asdict(self.protocol))

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """(B,3,T,H,W) [0,1] or uint8 -> (B,3,frames,224,224) [-1,1], float32 (never interpolate uint8)."""
        p = self.protocol
        videos = check_videos(videos, "I3D (FVD)", allow_uint8=True)
        x = select_frames(videos.float(), p.frames, p.short_clips)
        if p.quantize_uint8:
            x = _quantize(x)
        b = x.shape[0]
        x = rearrange(x, "b c t h w -> (b t) c h w")                           # frames as images
        if x.shape[-2:] != (p.resolution, p.resolution):
            x = F.interpolate(x, size=(p.resolution, p.resolution), mode=p.interpolation, align_corners=False)
        x = rearrange(x, "(b t) c h w -> b c t h w", b=b)                      # back to clips
        return x * 2.0 - 1.0

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(videos).to(_device_of(self.detector))
        out = self.detector(x, rescale=False, resize=False, return_features=True)
        if out.dim() != 2 or out.shape[1] != 400:
            raise RuntimeError(f"I3D returned shape {tuple(out.shape)}, expected (B, 400): a 4-D output means the "
                               f"input was not {self.protocol.resolution}x{self.protocol.resolution}")
        return out.float()


def _device_of(module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def load_i3d(path: str | Path | None = None, device: str | torch.device = "cpu",
             protocol: FVDProtocol | None = None, check_hash: bool = True) -> I3DFeatureExtractor:
    """Load StyleGAN-V's ``i3d_torchscript.pt`` from ``path`` or ``$KV_WEIGHTS_DIR`` (sha256-checked).

    Raises ``MissingWeightsError`` naming the file, its hash and where to put it.
    """
    p = find_weights("i3d_torchscript", path, check_hash=check_hash)
    digest = sha256_file(p)
    try:
        det = torch.jit.load(str(p), map_location=device).eval()
    except RuntimeError as e:
        raise RuntimeError(f"{p} is not a TorchScript archive (expected StyleGAN-V's i3d_torchscript.pt)") from e
    name = "i3d_torchscript (StyleGAN-V)"
    if getattr(det, "is_standin", False):  # attribute saved by save_i3d_standin
        name = f"i3d STAND-IN random init ({det.standin_arch})"
    return I3DFeatureExtractor(det, digest, name, protocol)


# ----------------------------------------------------------------------------------- stand-in detector
class _TinyVideoNet(nn.Module):
    """A few strided 3D convolutions: ~30 MFLOP per 16x224x224 clip, so CPU tests stay fast."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, kernel_size=(2, 8, 8), stride=(2, 8, 8)), nn.ReLU(),                      # 8x28x28
            nn.Conv3d(8, 32, kernel_size=3, stride=2, padding=1), nn.ReLU(),                         # 4x14x14
            nn.Conv3d(32, 64, kernel_size=3, stride=2, padding=1), nn.ReLU(),                        # 2x7x7
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class _I3DStandIn(nn.Module):
    """Same forward signature and semantics as StyleGAN-V's ``src.i3dpt_jit.I3D``; random weights."""

    def __init__(self, arch: str = "tiny"):
        super().__init__()
        if arch == "tiny":
            self.net = _TinyVideoNet(400)
        elif arch == "r3d_18":
            from torchvision.models.video import r3d_18
            self.net = r3d_18(weights=None, num_classes=400)
        else:
            raise ValueError(f"unknown stand-in arch {arch!r}; use 'tiny' or 'r3d_18'")
        self.is_standin = True
        self.standin_arch = arch

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:  # uint8 range -> [-1, 1]
            x = x / 255.0 * 2.0 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.net(x)
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


def save_i3d_standin(path: str | Path, arch: str = "tiny", seed: int = 0) -> Path:
    """Write a random-init TorchScript stand-in for ``i3d_torchscript.pt`` (for tests and benchmarks only)."""
    torch.manual_seed(seed)
    module = _I3DStandIn(arch).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script deprecation notice
        scripted = torch.jit.script(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(scripted, str(tmp))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------- features and stats
@torch.no_grad()
def extract_features(videos, extractor: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 8,
                     device: str | torch.device = "cpu", progress: bool = True, desc: str = "features") -> np.ndarray:
    """Run ``extractor`` over a (N,3,T,H,W) tensor or an iterable of such batches -> (N, D) float64."""
    batches = _batches(videos, batch_size)
    out = []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        out.append(extractor(batch.to(device)).double().cpu().numpy())
    if not out:
        raise ValueError("extract_features: no videos given")
    return np.concatenate(out, axis=0)


def _batches(videos, batch_size: int):
    if isinstance(videos, torch.Tensor):
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected videos (N,3,T,H,W), got {tuple(videos.shape)}")
        return list(torch.split(videos, batch_size))
    return videos


@dataclass
class ReferenceStats:
    """Reference features (kept for bootstrap / subsets) and their Gaussian, with where they came from."""
    feats: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    dataset_id: str
    detector: DetectorInfo
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.feats.shape[0])


def reference_stats(videos, extractor, dataset_id: str, *, cache_dir: str | Path | None = None,
                    batch_size: int = 8, device="cpu", progress: bool = True, ddof: int | None = None) -> ReferenceStats:
    """Reference statistics computed once and cached as an atomic npz.

    ``videos`` is a tensor, an iterable of batches, or a zero-argument callable returning either (so that
    nothing is loaded on a cache hit). The cache key is dataset id + protocol hash + detector sha256.
    """
    info: DetectorInfo = extractor.info
    ddof = info.protocol.get("cov_ddof", 0) if ddof is None else ddof
    key = f"{_safe(dataset_id)}__{config_hash(info.protocol)}__{info.sha256[:16]}__ddof{ddof}"
    path = Path(cache_dir or default_cache_dir()) / "fvd_reference" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            feats = z["feats"]
        mu, sigma = feature_stats(feats, ddof=ddof, warn=False)
        return ReferenceStats(feats, mu, sigma, dataset_id, info, path)
    if callable(videos) and not isinstance(videos, torch.Tensor):
        videos = videos()
    feats = extract_features(videos, extractor, batch_size, device, progress, desc=f"reference {dataset_id}")
    atomic_save_npz(path, feats=feats, detector_sha256=np.array(info.sha256), dataset_id=np.array(dataset_id))
    mu, sigma = feature_stats(feats, ddof=ddof, warn=False)
    return ReferenceStats(feats, mu, sigma, dataset_id, info, path)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def compute_fvd(gen_feats, ref: ReferenceStats | np.ndarray, info: DetectorInfo, method: str = "auto") -> FVDResult:
    """Fréchet distance between generated features (N, D) and a reference, as an ``FVDResult``."""
    gen_feats = np.asarray(gen_feats, dtype=np.float64)
    ddof = int(info.protocol.get("cov_ddof", 0))
    ref_feats = ref.feats if isinstance(ref, ReferenceStats) else np.asarray(ref, dtype=np.float64)
    if gen_feats.shape[1:] != ref_feats.shape[1:]:
        raise ValueError(f"feature dims differ: generated {gen_feats.shape}, reference {ref_feats.shape}")
    mu_g, s_g = feature_stats(gen_feats, ddof=ddof)
    mu_r, s_r = feature_stats(ref_feats, ddof=ddof, warn=False)
    value, used = frechet_distance_with_method(mu_g, s_g, mu_r, s_r, method)
    return FVDResult(fvd=value, n_gen=int(gen_feats.shape[0]), n_ref=int(ref_feats.shape[0]), frames=info.frames,
                     resolution=info.resolution, detector=info.name, detector_sha256=info.sha256,
                     sqrt_method=used, protocol=dict(info.protocol))
