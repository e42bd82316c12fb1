"""CLIPSIM as the text-to-video papers report it (GODIVA, Make-A-Video, Video LDM, FusionFrames).

    CLIPSIM(video, prompt) = mean_t cos(E_img(frame_t), E_txt(prompt))      raw cosine in [-1, 1]
    dataset CLIPSIM        = mean over videos

No x100 and no clamp (those belong to torchmetrics' CLIPScore, a different quantity), OpenAI ViT-B/32 with
QuickGELU (open_clip name ``ViT-B-32-quickgelu``; plain ``ViT-B-32`` would use GELU with OpenAI weights), and
CLIP's own preprocessing: each frame goes through uint8 -> PIL -> open_clip's ``preprocess`` (shortest side
to 224 bicubic, centre crop, OpenAI mean/std), exactly what a direct open_clip computation on saved frames does.

``ClipSimExtractor`` is generic over the CLIP model and image transform, so the small CLIP trained on the
synthetic benchmark (``evaluators.py``, 'CLIPSIM-syn') goes through the same code.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..weights import KNOWN, MissingWeightsError, find_weights, sha256_file
from .inputs import check_videos

__all__ = ["CLIP_MODEL_NAME", "ClipSimExtractor", "load_clip_vitb32", "pil_frame_transform", "clipsim_scores"]

CLIP_MODEL_NAME = "ViT-B-32-quickgelu"


def pil_frame_transform(preprocess: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap an open_clip PIL ``preprocess`` into (N,3,H,W) float [0,1] -> (N,3,224,224) model input."""
    from PIL import Image

    def transform(frames: torch.Tensor) -> torch.Tensor:
        arr = (frames.clamp(0, 1) * 255.0).round().to(torch.uint8)
        arr = rearrange(arr, "n c h w -> n h w c").cpu().numpy()              # PIL wants HWC uint8
        return torch.stack([preprocess(Image.fromarray(np.ascontiguousarray(a))) for a in arr])

    return transform


class ClipSimExtractor(nn.Module):
    """(B,3,T,H,W) videos, float in [0,1] or uint8, + B prompts -> (B,) mean-over-frames cosine; also embeddings.

    Other input (0-255 floats, [-1,1], NaN, wrong layout) is refused by ``inputs.check_videos``, not clamped.

    ``image_transform`` maps (N,3,H,W) [0,1] frames to the model's input; ``tokenizer`` maps a list of
    strings to token ids. ``max_frames`` (None = all) subsamples frames evenly for speed and is reported.
    """

    def __init__(self, model: nn.Module, image_transform: Callable, tokenizer: Callable, name: str, sha256: str,
                 max_frames: int | None = None, frame_batch: int = 64):
        super().__init__()
        self.model = model.eval()
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.name, self.sha256 = name, sha256
        self.max_frames, self.frame_batch = max_frames, frame_batch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B,) prompts -> (B, D) L2-normalised text embeddings (each distinct prompt encoded once)."""
        uniq = sorted(set(prompts))
        tokens = self.tokenizer(uniq).to(self.device)
        emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        index = {p: i for i, p in enumerate(uniq)}
        return emb[torch.tensor([index[p] for p in prompts], device=emb.device)]

    @torch.no_grad()
    def encode_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """(B,3,T,H,W) [0,1] or uint8 -> (B, T', D) L2-normalised image embeddings of (a subsample of) the frames."""
        videos = self._subsample(check_videos(videos, f"CLIPSIM ({self.name})", allow_uint8=True))
        b = videos.shape[0]
        frames = rearrange(videos, "b c t h w -> (b t) c h w")                # every frame is an image
        embs = []
        for chunk in torch.split(frames, self.frame_batch):
            x = self.image_transform(chunk.float()).to(self.device)
            embs.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return rearrange(torch.cat(embs), "(b t) d -> b t d", b=b)

    def _subsample(self, videos: torch.Tensor) -> torch.Tensor:
        t = videos.shape[2]
        if self.max_frames is None or t <= self.max_frames:
            return videos
        idx = torch.linspace(0, t - 1, self.max_frames).round().long()
        return videos[:, :, idx]

    @torch.no_grad()
    def forward(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        videos = check_videos(videos, f"CLIPSIM ({self.name})", allow_uint8=True)
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"{videos.shape[0]} videos but {len(prompts)} prompts")
        img = self.encode_frames(videos)                                       # (B, T, D)
        txt = self.encode_text(list(prompts))                                  # (B, D)
        return torch.einsum("btd,bd->bt", img, txt).mean(dim=1).cpu()          # mean over frames, raw cosine

    def describe(self) -> dict:
        return {"detector": self.name, "detector_sha256": self.sha256,
                "frames_used": "all" if self.max_frames is None else f"<= {self.max_frames} evenly spaced"}


def clipsim_scores(videos: torch.Tensor, prompts: list[str], extractor: ClipSimExtractor,
                   batch_size: int = 8) -> torch.Tensor:
    """Per-video CLIPSIM for a (N,3,T,H,W) tensor, batched."""
    out = [extractor(videos[i:i + batch_size], prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    return torch.cat(out)


def _is_torchscript(path: Path) -> bool:
    """OpenAI's ViT-B-32.pt is a TorchScript zip (has a code/ folder); state dicts are not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_clip_vitb32(path: str | Path | None = None, device: str | torch.device = "cpu", *,
                     pretrained: bool = True, max_frames: int | None = None) -> ClipSimExtractor:
    """open_clip ``ViT-B-32-quickgelu`` with OpenAI weights from a local file, as a ``ClipSimExtractor``.

    Looks for ``ViT-B-32.pt`` (OpenAI JIT archive, sha256-checked) or the open_clip-format conversion in
    ``$KV_WEIGHTS_DIR``; ``path`` may point to either. ``pretrained=False`` builds the same architecture with
    random weights (tests only; the name says so).
    """
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL_NAME, pretrained=None, device="cpu")
    tokenizer = open_clip.get_tokenizer(CLIP_MODEL_NAME)
    if not pretrained:
        name, digest = f"open_clip {CLIP_MODEL_NAME} RANDOM INIT (not a CLIPSIM detector)", "random-init"
    else:
        p = _find_clip_weights(path)
        digest = sha256_file(p)
        open_clip.load_checkpoint(model, str(p), weights_only=not _is_torchscript(p))
        name = f"open_clip {CLIP_MODEL_NAME} openai ({p.name})"
    model = model.to(device).eval()
    return ClipSimExtractor(model, pil_frame_transform(preprocess), tokenizer, name, digest, max_frames=max_frames)


def _find_clip_weights(path) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        jit = p.is_file() and _is_torchscript(p) or p.name == KNOWN["clip_vit_b32_openai"].filenames[0]
        key = "clip_vit_b32_openai" if jit else "clip_vit_b32_openai_open_clip"   # the JIT file's hash is known
        return find_weights(key, p)
    errors = []
    for key in ("clip_vit_b32_openai", "clip_vit_b32_openai_open_clip"):
        try:
            return find_weights(key)
        except MissingWeightsError as e:
            errors.append(str(e))
    raise MissingWeightsError("CLIPSIM needs OpenAI CLIP ViT-B/32 weights; provide one of these files.\n\n"
                              + "\n\n".join(errors))
