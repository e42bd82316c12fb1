"""Interpolation passes (FusionFrames section 4.2 / Kandinsky Video 1.1) and the whole text-to-video pipeline.

``InterpolationPipeline`` wraps an ``InterpolationUNet``. One pass turns T keyframe latents into 4T - 3 frames: the
T - 1 gaps are the UNet's groups, and the 3 frames of every gap are sampled jointly from pure noise, conditioned on
the two keyframes of the gap (clean: perturbation level t_p = 0, the paper's inference), the skip-frame count s and
the prompt. The UNet predicts v (the paper's parameterisation); the schedule and sampler are ``diffusion_cfg``'s.

Context guidance (paper section 4.2), per denoising step, in one batched call of 2B clips::

    v_c = v(x_t | keyframes,        text,      temporal_mask = 1)
    v_u = v(x_t | keyframes zeroed, null text, temporal_mask = 0)
    v   = (1 + w) v_c - w v_u  =  v_u + (1 + w) (v_c - v_u)        (w = 0.25, the paper's value)

i.e. ``cfg_combine(v_c, v_u, 1 + w)`` in the suite's convention. The released 1.1 pipeline uses w = 0.5
(``interpolation_guidance_scale``); pass ``guidance=0.5`` for it. The null text follows the checkpoint's
conventions: the suite's own models use the empty prompt; the release's interpolation model gets its stored null
embedding at token 0 with an all-zero mask, as its own sampler batches it (the UNet then attends uniformly over the
row, see ``InterpolationUNet._rows_without_tokens``).

``passes(latents, n)``: s = 3 for the first pass (2 fps keyframes -> 8 fps) and s = 1 for the second (-> 30 fps),
as the paper and the release do.

Seeding: every random draw of a sample comes from its own generator (``torch.Generator().manual_seed(seed)``); pass
``i`` of ``passes`` seeds it with ``pass_seed(seed, i)``, so a sample depends on its seed only, not on its batch.

``TextToVideoPipeline(keyframe_pipe, interpolation_pipe)``: the first frame (text-to-image, or the user's image), the
keyframes conditioned on it (``KeyframePipeline.generate``), 0-2 interpolation passes, and the decode by the codec
(its temporal video decoder if it has one). One deliberate difference from the release: the first keyframe is
replaced by the clean first frame (the release re-denoises frame 0 too), so an animated picture starts exactly with
the picture (up to the codec).
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

from .config import DiffusionConfig
from .diffusion import cfg_combine, randn_per_item
from .models.interpolation import FRAMES_PER_GROUP, InterpolationUNet, insert_between
from .pipeline import TextConditionedPipeline

PAPER_GUIDANCE = 0.25          # context guidance w (paper section 4.2), in the paper's (1 + w) c - w u convention
SKIP_FRAMES = (3, 1)           # skip-frame count s of pass 1 and pass 2 (paper section 5 "Inference", release)
MAX_PASSES = len(SKIP_FRAMES)


def pass_seed(seed: int, pass_index: int) -> int:
    """The seed of a sample's generator in interpolation pass ``pass_index`` (0-based)."""
    return zlib.crc32(f"{int(seed)}|interpolation|{pass_index}".encode()) & 0x7FFFFFFF


def frames_after(frames: int, n_passes: int) -> int:
    """Frame count after ``n_passes`` passes of T -> 4T - 3."""
    for _ in range(n_passes):
        frames = 4 * frames - 3
    return frames


def between_positions(frames: int) -> list[int]:
    """Positions of the in-between frames of a (4G + 1)-frame window (keyframes at 0, 4, ..., 4G)."""
    return [i for i in range(frames) if i % (FRAMES_PER_GROUP + 1)]


class _Interpolator(TextConditionedPipeline):
    """What FusionFrames' interpolation and the MFI baseline share: the training loss on (4G + 1)-frame windows
    (keyframes at 0, 4, ..., 4G; the three frames between each pair are the targets), the sampler with context
    guidance, and the passes. Subclasses say how one UNet call predicts the targets (``_predict``)."""
    noisy_key_slots = False      # whether the UNet reads the (noised) keyframe positions of x_t

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, diffusion_cfg: DiffusionConfig,
                 null_embedding: torch.Tensor | None = None, codec: nn.Module | None = None,
                 guidance: float = PAPER_GUIDANCE, skip_schedule: tuple[int, ...] = SKIP_FRAMES):
        if diffusion_cfg.prediction != "v":
            raise ValueError("the interpolation models predict v (paper section 4.2); diffusion_cfg.prediction is "
                             f"{diffusion_cfg.prediction!r}")
        super().__init__(unet, text_encoder, diffusion_cfg, null_embedding, codec)
        self.guidance = float(guidance)
        self.skip_schedule = tuple(int(s) for s in skip_schedule)   # s of pass 1, pass 2 (release: 3, 1)

    def encode_prompts_and_null(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected tokens (2B, L, d) and masks, as ``KeyframePipeline``'s (same conventions); only the release's
        null rows get an all-zero mask here, as the release's interpolation sampler passes them."""
        text, mask = super().encode_prompts_and_null(prompts)
        if self.conventions.unconditional == "null_embedding":
            mask = mask.clone()
            mask[len(prompts):] = False
        return text, mask

    # ------------------------------------------------------------------------------------------- training
    def forward(self, mode: str, x0: torch.Tensor, captions: list[str], skip_frames: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss on windows ``x0`` (B, C, 4G+1, h, w) in the codec's space; ``skip_frames`` (B,) the
        window's frame spacing label (the trainer's per-clip condition slot). Conditional frame perturbation: the
        keyframes are noised to a level drawn uniformly from [0, noise_aug_max] (0 = clean), the level is a
        condition; with probability ``p_uncond_image`` a clip's keyframes are dropped (the unconditional branch
        of context guidance) and with ``p_uncond_text`` its text. The loss covers the 3G in-between frames."""
        if mode != "interpolation":
            raise ValueError(f"an interpolation pipeline trains in mode 'interpolation', got {mode!r}")
        cfg = self.diffusion_cfg
        B, C, n, h, w = x0.shape
        step = FRAMES_PER_GROUP + 1
        if n < step + 1 or (n - 1) % step:
            raise ValueError(f"training windows must have 4G + 1 frames, got {tuple(x0.shape)}")
        tgt_idx = between_positions(n)
        keyframes, targets = x0[:, :, ::step], x0[:, :, tgt_idx]
        captions = ["" if d else c for c, d in
                    zip(captions, (torch.rand(B, generator=generator) < cfg.p_uncond_text).tolist())]
        text, mask = self.encode_text(captions)
        tp = torch.randint(0, cfg.noise_aug_max + 1, (B,), generator=generator)
        pnoise = torch.randn(keyframes.shape, generator=generator).to(x0.device)
        perturbed = torch.where((tp > 0).to(x0.device)[:, None, None, None, None],
                                self.diffusion.q_sample(keyframes, tp, pnoise), keyframes)
        keep = (torch.rand(B, generator=generator) >= cfg.p_uncond_image).float().to(x0.device)
        t = self.diffusion.sample_t(B, generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = self.diffusion.q_sample(x0, t, noise)                                  # every frame noised
        out = self._predict(x_t, t, text, mask, perturbed, tp.float().to(x0.device), skip_frames.to(x0.device),
                            keep, text_projected=False)
        return self.diffusion.loss(out, targets, t, noise[:, :, tgt_idx])

    def _predict(self, x_t, t, text, mask, keyframes, tp, skip, keep, text_projected):
        """v of the 3G in-between frames (B, C, 3G, h, w) from the noisy full window x_t (B, C, 4G+1, h, w)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def interpolate(self, keyframe_latents: torch.Tensor, prompts: list[str], seeds: list[int] | None = None,
                    skip_frames: int | list[int] = 1, steps: int | None = None, progress: bool = False,
                    generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """One pass: (B, C, T, h, w) latents in the codec's space -> (B, C, 4T - 3, h, w); the keyframes are kept
        as they are and 3 frames are sampled between every pair. ``seeds`` (one per sample) or ``generators``."""
        x_k = keyframe_latents.to(self.device)
        if x_k.dim() != 5 or x_k.shape[2] < 2:
            raise ValueError(f"keyframe latents must be (B, C, T >= 2, h, w), got {tuple(x_k.shape)}")
        B, C, T, h, w = x_k.shape
        if len(prompts) != B:
            raise ValueError(f"{len(prompts)} prompts for {B} clips")
        if generators is None:
            if seeds is None or len(seeds) != B:
                raise ValueError(f"need one seed per clip ({B}), got {seeds!r}")
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        G = T - 1
        text, mask = self.encode_prompts_and_null(list(prompts))
        skip = InterpolationUNet._per_clip(skip_frames, B, 1.0, x_k).float()
        keyframes2 = torch.cat([x_k, x_k])
        keep = torch.cat([torch.ones(B, device=x_k.device), torch.zeros(B, device=x_k.device)])
        zeros = torch.zeros(2 * B, device=x_k.device)
        wg = self.guidance
        # MFI's UNet also sees its keyframe positions noised to the current level (as in training); one noise per
        # sample, drawn first. FusionFrames never reads those slots and draws nothing here.
        key_noise = randn_per_item(x_k.shape, generators, x_k.device) if self.noisy_key_slots else None

        def denoise(x, t):
            # the sampler's state is the 3G in-between frames; the window puts them between the keyframes
            keys = x_k if key_noise is None else self.diffusion.q_sample(x_k, t, key_noise)
            full = insert_between(keys, x)
            out = self._predict(torch.cat([full, full]), torch.cat([t, t]), text, mask, keyframes2, zeros,
                                torch.cat([skip, skip]), keep, text_projected=True)
            v_cond, v_uncond = out.chunk(2)
            return cfg_combine(v_cond, v_uncond, 1.0 + wg)      # = (1 + w) v_c - w v_u

        inbetween = self.diffusion.sample(denoise, (B, C, FRAMES_PER_GROUP * G, h, w), generators, self.device,
                                          steps=steps, progress=progress)
        return insert_between(x_k, inbetween.to(x_k.dtype))

    @torch.no_grad()
    def passes(self, latents: torch.Tensor, n_passes: int, prompts: list[str], seeds: list[int],
               steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """``n_passes`` passes with ``skip_schedule`` (release: s = 3 then 1): T -> 4T - 3 -> 16T - 15 frames."""
        if not 0 <= int(n_passes) <= len(self.skip_schedule):
            raise ValueError(f"n_passes must be 0..{len(self.skip_schedule)} (s = {self.skip_schedule}), "
                             f"got {n_passes}")
        for i in range(int(n_passes)):
            latents = self.interpolate(latents, prompts, [pass_seed(s, i) for s in seeds], self.skip_schedule[i],
                                       steps=steps, progress=progress)
        return latents


class InterpolationPipeline(_Interpolator):
    """FusionFrames' interpolation (``InterpolationUNet``): the G gaps are the UNet's items, three frames each."""

    def __init__(self, unet: InterpolationUNet, *args, **kwargs):
        if not isinstance(unet, InterpolationUNet):
            raise TypeError(f"InterpolationPipeline needs an InterpolationUNet, got {type(unet).__name__}")
        super().__init__(unet, *args, **kwargs)

    def _predict(self, x_t, t, text, mask, keyframes, tp, skip, keep, text_projected):
        return self.unet(x_t[:, :, between_positions(x_t.shape[2])], t, text, mask, keyframes, perturbation_time=tp, skip_frames=skip,
                         temporal_mask=keep, keyframes_keep=keep, text_projected=text_projected)


class MFIPipeline(_Interpolator):
    """Masked frame interpolation (``models/mfi.py``): every frame of the 4G+1 window is a UNet item; the
    keyframe positions are denoised too (as in Video LDM) and replaced by the keyframes in the output."""
    noisy_key_slots = True

    def __init__(self, unet, *args, **kwargs):
        from .models.mfi import MaskedFrameInterpolationUNet
        if not isinstance(unet, MaskedFrameInterpolationUNet):
            raise TypeError(f"MFIPipeline needs a MaskedFrameInterpolationUNet, got {type(unet).__name__}")
        super().__init__(unet, *args, **kwargs)

    def _predict(self, x_t, t, text, mask, keyframes, tp, skip, keep, text_projected):
        out = self.unet(x_t, t, text, mask, keyframes, perturbation_time=tp, skip_frames=skip,
                        keyframes_keep=keep, text_projected=text_projected)
        return out[:, :, between_positions(x_t.shape[2])]


class TextToVideoPipeline:
    """Keyframes (``KeyframePipeline``) + interpolation passes (``InterpolationPipeline``, optional) + decode."""

    def __init__(self, keyframe_pipe, interpolation_pipe: InterpolationPipeline | None = None):
        self.keyframe_pipe = keyframe_pipe
        self.interpolation_pipe = interpolation_pipe
        if interpolation_pipe is not None:
            a, b = keyframe_pipe.codec, interpolation_pipe.codec
            if a.latent_channels != b.latent_channels or getattr(a, "name", a) != getattr(b, "name", b):
                raise ValueError(f"keyframe codec ({a.name}) and interpolation codec ({b.name}) differ")

    @property
    def codec(self):
        return self.keyframe_pipe.codec

    @property
    def max_passes(self) -> int:
        return len(self.interpolation_pipe.skip_schedule) if self.interpolation_pipe is not None else 0

    @torch.no_grad()
    def first_latents(self, prompts: list[str], seeds: list[int], size: int, image01: torch.Tensor | None = None,
                      steps: int | None = None) -> torch.Tensor:
        """The first frame in the codec's space (B, C, h, w): the given pixels encoded, else text-to-image with
        the generator ``seed ^ 0x5EED`` (the harness's first-frame seed)."""
        kp = self.keyframe_pipe
        if image01 is not None:
            img = image01.to(kp.device, torch.float32)
            if img.dim() == 3:
                img = img[None]
            if img.shape[0] == 1 and len(prompts) > 1:
                img = img.expand(len(prompts), -1, -1, -1)
            want = size * kp.codec.scale_factor
            if img.shape[1] != 3 or tuple(img.shape[-2:]) != (want, want) or img.shape[0] != len(prompts):
                raise ValueError(f"image01 must be ({len(prompts)} or 1, 3, {want}, {want}) pixels in [0, 1] for "
                                 f"latent size {size}, got {tuple(image01.shape)}")
            return kp.encode(img)
        gens = [torch.Generator().manual_seed(int(s) ^ 0x5EED) for s in seeds]
        return kp.generate_images(list(prompts), gens, size, steps)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], motion, frames: int, size: int, passes: int = 0,
                 image01: torch.Tensor | None = None, steps: int | None = None,
                 interpolation_steps: int | None = None, progress: bool = False, decode: bool = True,
                 keep_first_frame: bool = True) -> torch.Tensor:
        """Videos (B, 3, T', H, W) in [0, 1], T' = ``frames_after(frames, passes)`` (``decode=False``: latents).
        ``size`` is the latent size (pixels: ``size * codec.scale_factor``); ``motion`` the keyframe model's
        motion condition (one number per prompt, or one for all)."""
        from tqdm.auto import tqdm
        prompts = list(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if passes > self.max_passes:
            raise ValueError(f"{passes} interpolation passes requested but "
                             + ("there is no interpolation model" if self.interpolation_pipe is None
                                else f"at most {self.max_passes} are defined (s = {self.interpolation_pipe.skip_schedule})"))
        if motion is not None:
            motion = torch.as_tensor(motion, dtype=torch.float32).reshape(-1)
            motion = motion.expand(len(prompts)) if motion.numel() == 1 else motion
        bar = tqdm(total=2 + passes + int(decode), desc="text-to-video", disable=not progress)
        bar.set_postfix_str("first frame")
        first = self.first_latents(prompts, seeds, size, image01, steps)
        bar.update()
        bar.set_postfix_str("keyframes")
        x = self.keyframe_pipe.generate(prompts, seeds, motion, frames=frames, size=size, first_latents=first,
                                        steps=steps, decode=False, progress=progress)
        if keep_first_frame:
            x = x.clone()
            x[:, :, 0] = first.to(x.dtype)
        bar.update()
        for i in range(passes):
            skip = self.interpolation_pipe.skip_schedule[i]
            bar.set_postfix_str(f"interpolation pass {i + 1} (s = {skip})")
            x = self.interpolation_pipe.interpolate(x, prompts, [pass_seed(s, i) for s in seeds], skip,
                                                    steps=interpolation_steps, progress=progress)
            bar.update()
        if decode:
            bar.set_postfix_str("decode")
            x = self.codec.decode(x).clamp(0, 1)
            bar.update()
        bar.close()
        return x


__all__ = ["InterpolationPipeline", "MFIPipeline", "TextToVideoPipeline", "PAPER_GUIDANCE", "SKIP_FRAMES", "pass_seed",
           "frames_after"]
