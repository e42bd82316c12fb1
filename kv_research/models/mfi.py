"""Masked frame interpolation (MFI), the baseline of FusionFrames' Table 2, built from the same text-to-image UNet.

The paper re-implemented Video LDM's interpolation (paper section 10, Fig. 8): the UNet sees the *upsampled*
sequence, every output frame is one item of the folded batch, and the known keyframes enter on channels::

    input of frame n:  [ x_t[n] (C) | known[n] (C): the keyframe if n is a keyframe position, else 0 | mask[n] (1) ]

with keyframes at positions 0, 4, 8, ... of a ``4G + 1``-frame sequence (three unknown frames between each pair, the
same output as FusionFrames' one pass). This is exactly the keyframe model's ``[x_t, first frame, mask]`` input
(``KeyframeUNet.video_in_conv``) with more than one known frame, so MFI *is* an inflated ``KeyframeUNet``:

* the input conv copies the image conv on ``x_t`` and starts at zero on the known frames and the mask;
* temporal layers of a keyframe variant (default ``Conv1dAttn1dBlocks``, the released keyframe model's) run over
  the whole upsampled sequence, their outputs zero-initialised (the model equals the image model frame by frame);
* the perturbation level of the known frames (conditional frame perturbation) goes through the temporal
  embedding's noise-level slot, and the skip-frame count ``s`` through its motion slot, so MFI is told what
  FusionFrames is told (the paper does not say whether its MFI had ``s``; without it one model could not serve both
  passes of different frame spacing).

Where this differs from Video LDM (as the paper's re-implementation does): Video LDM also feeds the mask to its
temporal layers; here the mask enters at the UNet input only. Video LDM upsamples T -> 4T; here a pass gives
4T - 3 frames (keyframes kept at both ends), so both methods produce the same frames and are timed on equal output.

Cost, the reason for Table 2's speed claim: per denoising step MFI runs the UNet on 4G + 1 frame items, FusionFrames
on G group items (five latents stacked on channels, three frames out), about 4x fewer UNet calls at equal width.
"""
from __future__ import annotations

import dataclasses

import torch

from .interpolation import FRAMES_PER_GROUP
from .unet import KeyframeUNet, inflate

DEFAULT_VARIANT = "Conv1dAttn1dBlocks"


def keyframe_positions(frames: int) -> torch.Tensor:
    """Positions of the keyframes in a (4G + 1)-frame sequence: 0, 4, ..., 4G."""
    step = FRAMES_PER_GROUP + 1
    if frames < step + 1 or (frames - 1) % step:
        raise ValueError(f"an upsampled sequence has 4G + 1 frames (G >= 1), got {frames}")
    return torch.arange(0, frames, step)


class MaskedFrameInterpolationUNet(KeyframeUNet):
    """An inflated ``KeyframeUNet`` whose conditioning slot holds every known keyframe (see the module docstring).

    Keys are the keyframe model's (``video_in_conv``, ``temporal_*``, ``temporal_embed.noise_level`` = perturbation
    level, ``temporal_embed.motion`` = skip-frame count).
    """

    @classmethod
    def from_image(cls, image_unet: KeyframeUNet, variant: str = DEFAULT_VARIANT, seed: int = 0) -> \
            "MaskedFrameInterpolationUNet":
        """Inflate the text-to-image UNet (``inflate``: weights copied, new modules zero-output, drawn from
        ``seed``) with the first-frame slot, perturbation and skip conditions on; every parameter trainable, as
        FusionFrames' interpolation model (the paper trains both whole)."""
        if variant == "Spatial":
            raise ValueError("MFI needs temporal layers; 'Spatial' has none")
        img = KeyframeUNet(dataclasses.replace(image_unet.config, first_frame_cond=True, noise_augmentation=True,
                                               motion_conditioning=True))
        img.load_state_dict(image_unet.state_dict())
        vid = inflate(img, variant, train_spatial=True, seed=seed)
        vid.__class__ = cls
        return vid.to(image_unet.conv_in.weight.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                keyframes: torch.Tensor, perturbation_time: torch.Tensor | None = None,
                skip_frames: torch.Tensor | int | None = None, keyframes_keep: torch.Tensor | None = None,
                text_projected: bool = False) -> torch.Tensor:
        """x (B, C, 4G+1, H, W): the noisy upsampled sequence (keyframe positions included); keyframes
        (B, C, G+1, H, W), already perturbed by ``perturbation_time`` if used; ``keyframes_keep`` (B,) 0/1: 0 zeroes
        a clip's known frames and mask (the unconditional branch of context guidance). Returns v for all 4G+1
        frames (B, C, 4G+1, H, W)."""
        B, C, n, H, W = x.shape
        pos = keyframe_positions(n).to(x.device)
        G = len(pos) - 1
        if tuple(keyframes.shape) != (B, C, G + 1, H, W):
            raise ValueError(f"keyframes must be (B, C, G+1, H, W) = {(B, C, G + 1, H, W)} for x {tuple(x.shape)}, "
                             f"got {tuple(keyframes.shape)}")
        keep = torch.ones(B, device=x.device) if keyframes_keep is None else \
            torch.as_tensor(keyframes_keep, device=x.device, dtype=x.dtype).reshape(-1).expand(B)
        known = torch.zeros_like(x)
        known[:, :, pos] = keyframes.to(x.dtype)
        known_mask = torch.zeros(B, n, device=x.device, dtype=x.dtype)
        known_mask[:, pos] = 1.0
        known_mask = known_mask * keep[:, None]

        def per_clip(v, default):
            v = torch.full((B,), float(default), device=x.device) if v is None else \
                torch.as_tensor(v, device=x.device, dtype=torch.float32).reshape(-1)
            return v.expand(B) if v.numel() == 1 else v
        return super().forward(x, t, text, text_mask, motion_score=per_clip(skip_frames, 1),
                               noise_level=per_clip(perturbation_time, 0), text_projected=text_projected,
                               frame_cond=(known, known_mask))


__all__ = ["MaskedFrameInterpolationUNet", "keyframe_positions", "DEFAULT_VARIANT"]
