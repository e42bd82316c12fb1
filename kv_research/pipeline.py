"""The Kandinsky Video 1.1 keyframe pipeline around a KeyframeUNet: losses for image pretraining and video
fine-tuning, and generation (first frame in text-to-image mode, then keyframes conditioned on it).

Text follows the checkpoint's conventions (``unet.conventions``, see ``loaders.Conventions``): the suite's own
models zero the padded tokens of the hashed-word encoder and use the empty prompt as the unconditional text;
diffusers' Kandinsky 3.0 cuts to the longest prompt + 1 token and uses all-zero embeddings with an all-zero mask;
the Kandinsky Video release projects first, zeroes the projected padding, and uses its stored null embedding.
Generation projects every text once and passes the projected tokens to the UNet (``text_projected=True``), so
conditional and unconditional rows of any convention share one batch.

Latent space: the pipeline holds a ``codec`` (``models/codec.py``): ``PixelCodec`` (x -> 2x - 1, the CPU default) or
Kandinsky 3.0's MoVQ. The losses take ``x0`` already in that space (the trainer encodes, or reads cached latents),
and generation decodes with it, so the same pipeline trains in pixels on a laptop and in MoVQ latents on GPUs.

Generation is seeded per sample: ``sample_seed(prompt, index, base_seed)`` gives each sample its own generator, and
every random draw of that sample (first-frame noise, its noise augmentation, keyframe noise) comes from it in a fixed
order. A sample therefore does not depend on the batch it was generated in.
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

from .config import DiffusionConfig, Preset
from .diffusion import Diffusion, cfg_combine, three_way_combine
from .loaders import Conventions
from .models.text import TextEncoder, cut_context
from .models.unet import KeyframeUNet, inflate


def sample_seed(prompt: str, index: int, base_seed: int = 0) -> int:
    return zlib.crc32(f"{base_seed}|{index}|{prompt}".encode()) & 0x7FFFFFFF


class TextConditionedPipeline(nn.Module):
    """What the keyframe and interpolation pipelines share: a UNet, its text encoder under the checkpoint's
    conventions (prompts and unconditional rows), the diffusion, and the codec whose space the UNet works in."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, diffusion_cfg: DiffusionConfig,
                 null_embedding: torch.Tensor | None = None, codec: nn.Module | None = None):
        super().__init__()
        from .models.codec import PixelCodec
        self.unet = unet
        # not a registered submodule: its (frozen, foreign) weights stay out of the pipeline's checkpoints
        object.__setattr__(self, "codec", codec if codec is not None else PixelCodec())
        if self.codec.latent_channels != unet.config.in_channels:
            raise ValueError(f"the codec ({self.codec.name}) gives {self.codec.latent_channels}-channel latents but "
                             f"the UNet takes {unet.config.in_channels} channels")
        self.text_encoder = text_encoder
        self.diffusion_cfg = diffusion_cfg
        self.diffusion = Diffusion(diffusion_cfg)
        self.conventions = getattr(unet, "conventions", None) or Conventions()
        if self.conventions.unconditional == "null_embedding" and null_embedding is None:
            raise ValueError(f"{self.conventions.source} uses a stored null embedding as the unconditional text; "
                             "pass null_embedding= (the loaded checkpoint's .null_embedding)")
        self.null_embedding = null_embedding

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def encode(self, video01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (B, 3, [T,] H, W) -> the codec's latents: what the losses take as ``x0``."""
        return self.codec.encode(video01.to(self.device))

    def encode_text(self, prompts: list[str]):
        """Raw tokens and mask as the UNet takes them under this checkpoint's conventions."""
        tokens, mask = self.text_encoder(prompts)
        conv = self.conventions
        if conv.cut_context:
            return cut_context(tokens, mask, zero_padding=conv.text != "kandinsky_video")
        if conv.text == "kandinsky_video":
            return tokens, mask
        return tokens * mask[..., None].to(tokens.dtype), mask

    def encode_prompts_and_null(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected tokens ``(2B, L, d)`` and masks: the prompts, then B unconditional rows (convention's own)."""
        B, conv = len(prompts), self.conventions
        if conv.unconditional == "empty_prompt":
            raw, mask = self.encode_text(list(prompts) + [""] * B)
            return self.unet.project_text(raw, mask), mask
        raw, mask = self.encode_text(list(prompts))
        cond = self.unet.project_text(raw, mask)
        L, d = cond.shape[1], cond.shape[2]
        null = torch.zeros(B, L, d, device=cond.device, dtype=cond.dtype)
        null_mask = torch.zeros(B, L, dtype=mask.dtype, device=mask.device)
        if conv.unconditional == "zeros":   # diffusers: zero raw embeddings, all-masked row -> LayerNorm bias tokens
            null = self.unet.project_text(torch.zeros(B, L, raw.shape[2], device=raw.device, dtype=raw.dtype),
                                          null_mask)
        else:                               # the release: its null embedding at token 0, mask 1
            null[:, 0] = self.null_embedding.to(cond.device, cond.dtype).reshape(1, d)
            null_mask[:, 0] = True
        return torch.cat([cond, null]), torch.cat([mask, null_mask])


class KeyframePipeline(TextConditionedPipeline):
    @classmethod
    def from_preset(cls, preset: Preset, variant: str = "Spatial") -> "KeyframePipeline":
        import dataclasses
        unet = KeyframeUNet(dataclasses.replace(preset.unet, variant="Spatial"))
        pipe = cls(unet, TextEncoder(preset.text), preset.diffusion)
        return pipe if variant == "Spatial" else pipe.inflated(variant)

    def inflated(self, variant: str, train_spatial: bool = False) -> "KeyframePipeline":
        """A new pipeline whose UNet is this (image) UNet inflated; the text encoder is shared and frozen."""
        vid = KeyframePipeline(inflate(self.unet, variant, train_spatial=train_spatial), self.text_encoder,
                               self.diffusion_cfg, self.null_embedding, self.codec)   # the deep copy keeps .conventions
        for p in vid.text_encoder.parameters():
            p.requires_grad_(train_spatial)
        return vid

    # -------------------------------------------------------------------------------------------- losses
    def forward(self, mode: str, x0: torch.Tensor, captions: list[str], motion: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of ``mode`` ('image' | 'video'): the pipeline's forward, so that
        ``DistributedDataParallel(pipe)`` covers every trainable weight (UNet and text encoder alike)."""
        if mode == "image":
            return self.image_loss(x0, captions, generator)
        return self.video_loss(x0, captions, motion, generator)

    def image_loss(self, x0: torch.Tensor, captions: list[str], generator: torch.Generator | None = None):
        """Text-to-image loss on single frames ``x0`` (B, C, h, w) in the codec's space (``encode``): the image
        model is the UNet called with T = 1."""
        x0 = x0[:, :, None]                                                    # (b, c, h, w) -> (b, c, 1, h, w)
        captions = self._drop_text(captions, generator)
        text, mask = self.encode_text(captions)
        t = self.diffusion.sample_t(x0.shape[0], generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        out = self.unet(self.diffusion.q_sample(x0, t, noise), t, text, mask)
        return self.diffusion.loss(out, x0, t, noise)

    def video_loss(self, x0: torch.Tensor, captions: list[str], motion: torch.Tensor,
                   generator: torch.Generator | None = None):
        """Keyframe loss with KV 1.1 conditioning on clips ``x0`` (B, C, T, h, w) in the codec's space: the clip's
        first frame, noise-augmented to a random level (passed as a condition), is concatenated on channels; the
        motion score label is a condition too."""
        cfg = self.diffusion_cfg
        B = x0.shape[0]
        captions = self._drop_text(captions, generator)
        text, mask = self.encode_text(captions)
        level = torch.randint(0, cfg.noise_aug_max + 1, (B,), generator=generator)
        aug_noise = torch.randn(x0[:, :, 0].shape, generator=generator).to(x0.device)
        first = self.diffusion.augment_first_frame(x0[:, :, 0], level, noise=aug_noise)
        keep_image = (torch.rand(B, generator=generator) >= cfg.p_uncond_image).to(x0.device)
        t = self.diffusion.sample_t(B, generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = self.diffusion.q_sample(x0, t, noise)
        # dropping the image = the "no image" branch of three-way guidance: zero condition and zero mask
        out = self._video_forward(x_t, t, text, mask, first, keep_image, motion.to(x0.device),
                                  level.to(x0.device).float())
        return self.diffusion.loss(out, x0, t, noise)

    def _video_forward(self, x_t, t, text, mask, first, keep_image, motion, level):
        # one call: clips that drop their first frame get a zero condition and a zero mask (= first_frame=None)
        return self.unet(x_t, t, text, mask, first_frame=first, motion_score=motion, noise_level=level,
                         first_frame_keep=keep_image)

    def _drop_text(self, captions: list[str], generator) -> list[str]:
        drop = torch.rand(len(captions), generator=generator) < self.diffusion_cfg.p_uncond_text
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_images(self, prompts: list[str], generators: list[torch.Generator], size: int,
                        steps: int | None = None) -> torch.Tensor:
        """Text-to-image mode with classifier-free guidance; returns latents (B, C, h, w) in the codec's space
        (pixels: [-1, 1]); ``size`` is the latent size."""
        B, dev = len(prompts), self.device
        text, mask = self.encode_prompts_and_null(prompts)
        w = self.diffusion_cfg.guidance_text

        def denoise(x, t):
            out = self.unet(torch.cat([x, x]), torch.cat([t, t]), text, mask, text_projected=True)
            return cfg_combine(*out.chunk(2), w)

        x = self.diffusion.sample(denoise, (B, self.unet.config.in_channels, 1, size, size), generators, dev,
                                  steps=steps)
        return x[:, :, 0]

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], motion: torch.Tensor | list[float] | None,
                 frames: int, size: int, first_frames01: torch.Tensor | None = None, steps: int | None = None,
                 progress: bool = False, first_latents: torch.Tensor | None = None,
                 decode: bool = True) -> torch.Tensor:
        """Text-to-video as in KV 1.1. Returns videos (B, 3, T, H, W) in [0, 1] (``decode=False``: the latents).
        ``size`` is the latent size (pixels: the video size).

        1. the first frame by the text-to-image mode (unless ``first_frames01`` pixels or ``first_latents`` are
           given: image-to-video);
        2. its noise augmentation at ``noise_aug_level``, the level passed as a condition;
        3. the keyframes conditioned on it with three-way guidance [text+image, image, nothing].
        """
        cfg, dev, B = self.diffusion_cfg, self.device, len(prompts)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if first_latents is not None:
            first = first_latents.to(dev)
        elif first_frames01 is not None:
            first = self.encode(first_frames01)
        else:
            first = self.generate_images(prompts, gens, size, steps)
        if self.unet.video_in_conv is None:  # a bare text-to-image model: every frame independently
            frames_out = [first] + [self.generate_images(prompts, gens, size, steps) for _ in range(frames - 1)]
            x = torch.stack(frames_out, dim=2)
            return self.codec.decode(x) if decode else x
        level = torch.full((B,), float(cfg.noise_aug_level), device=dev)
        first_aug = self.diffusion.augment_first_frame(first, level, gens)
        motion_t = torch.zeros(B) if motion is None else torch.as_tensor(motion, dtype=torch.float32).reshape(B)
        motion_t = motion_t.to(dev)
        text, mask = self.encode_prompts_and_null(prompts)
        null_text, null_mask = text[B:], mask[B:]
        wt, wi = cfg.guidance_text, cfg.guidance_image

        def denoise(x, t):
            if wi == 1.0:  # e_0 + 1 (e_I - e_0) + w_T (e_TI - e_I): the image-free branch cancels, skip it
                out = self.unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text[:B], null_text]),
                                torch.cat([mask[:B], null_mask]), first_frame=torch.cat([first_aug, first_aug]),
                                motion_score=torch.cat([motion_t, motion_t]), noise_level=torch.cat([level, level]),
                                text_projected=True)
                e_ti, e_i = out.chunk(2)
                return cfg_combine(e_ti, e_i, wt)
            x3 = torch.cat([x, x, x])
            t3 = torch.cat([t, t, t])
            txt = torch.cat([text[:B], null_text, null_text])
            msk = torch.cat([mask[:B], null_mask, null_mask])
            out_img = self.unet(x3[: 2 * B], t3[: 2 * B], txt[: 2 * B], msk[: 2 * B],
                                first_frame=torch.cat([first_aug, first_aug]),
                                motion_score=torch.cat([motion_t, motion_t]), noise_level=torch.cat([level, level]),
                                text_projected=True)
            out_none = self.unet(x3[2 * B:], t3[2 * B:], txt[2 * B:], msk[2 * B:], first_frame=None,
                                 motion_score=motion_t, noise_level=level, text_projected=True)
            e_ti, e_i = out_img.chunk(2)
            return three_way_combine(e_ti, e_i, out_none, wt, wi)

        x = self.diffusion.sample(denoise, (B, self.unet.config.in_channels, frames, size, size), gens, dev,
                                  steps=steps, progress=progress)
        return self.codec.decode(x) if decode else x
