"""``python -m kv_research.variants [--preset P] [--json]``: every variant with its parameters and GFLOPs.

Counts are of the model ``kv.build_unet(name, preset)`` builds: ``Spatial`` is the text-to-image UNet (at the
``paper`` preset exactly diffusers' Kandinsky 3.0, 3,055,348,228), every other variant is it inflated (video
input conv + temporal modules). ``params_release_layout`` counts the same weights as the released Kandinsky Video
files hold them: without the text projection (kept in ``t5_projections.pt``) and with the image-mode input conv
at the video conv's 2C+1 input channels (``image_in_layer``); for ``Conv1dAttn1dBlocks`` at the ``paper`` preset
that is the released keyframe UNet's 4,149,077,956.

GFLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass of one clip
(batch 1, the preset's frames and resolution, video mode with a first frame; ``Spatial``: every frame through the
image model), on the meta device, so even the ``paper`` preset (about 4B parameters) is counted without allocating
it.
"""
from __future__ import annotations

import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import get_preset
from .models.temporal import VARIANTS
from .models.unet import KeyframeUNet, inflate


def variant_table(preset: str = "quick", variants: list[str] | None = None, device: str = "meta",
                  unet_config=None, size: int | None = None, text_len: int | None = None) -> list[dict]:
    """Parameters and GFLOPs of each variant at the preset's frames and size; ``unet_config`` / ``size`` /
    ``text_len`` replace the preset's (e.g. a loaded Kandinsky 3.0's widths, latent size, cut token count)."""
    import dataclasses
    p = get_preset(preset)
    ucfg = dataclasses.replace(unet_config or p.unet, variant="Spatial")
    rows = []
    with torch.device(device):
        img = KeyframeUNet(ucfg)
    C, T, S, L = ucfg.in_channels, p.frames, size or p.size, text_len or p.text.max_len
    for name in variants or list(VARIANTS):
        model = img if name == "Spatial" else inflate(img, name)
        counts = model.parameter_counts()
        with torch.device(device):
            x = torch.zeros(1, C, T, S, S)
            text = torch.zeros(1, L, ucfg.text_dim)
            mask = torch.ones(1, L, dtype=torch.bool)
            t = torch.zeros(1, dtype=torch.long)
            first = torch.zeros(1, C, S, S) if model.video_in_conv is not None else None
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(x, t, text, mask, first_frame=first, motion_score=torch.zeros(1, device=device),
                  noise_level=torch.zeros(1, device=device))
        rows.append({"name": name, "params_total": counts["params_total"],
                     "params_temporal": counts["params_temporal"], "params_release_layout": counts["params_release_layout"],
                     "gflops": fc.get_total_flops() / 1e9,
                     "preset": preset, "frames": T, "resolution": S})
        del model
    return rows


def main(argv: list[str] | None = None) -> int:
    from .cli import ArgumentParser, UsageError, debug_enabled
    ap = ArgumentParser(prog="python -m kv_research.variants", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick", help="smoke | quick | paper (default: quick)")
    ap.add_argument("--variants", nargs="*", default=None, help="subset of variant names (default: all)")
    ap.add_argument("--json", action="store_true", help="print JSON: list of {name, params_total, "
                                                         "params_temporal, gflops}")
    try:
        args = ap.parse_args(argv)
        get_preset(args.preset)
        for v in args.variants or []:
            if v not in VARIANTS:
                raise KeyError(f"unknown variant '{v}'; known: {', '.join(VARIANTS)}")
        if args.variants is not None and len(set(args.variants)) != len(args.variants):
            raise UsageError(f"--variants: a variant listed twice ({' '.join(args.variants)})")
    except (KeyError, UsageError) as e:
        if debug_enabled():
            raise
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    rows = variant_table(args.preset, args.variants)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"preset {args.preset}: one clip of {rows[0]['frames']} frames at {rows[0]['resolution']} px, video mode")
    print(f"{'variant':<22} {'params total':>15} {'params temporal':>16} {'release layout':>15} {'GFLOPs':>10}")
    for r in rows:
        print(f"{r['name']:<22} {r['params_total']:>15,} {r['params_temporal']:>16,} "
              f"{r['params_release_layout']:>15,} {r['gflops']:>10.3f}")
    return 0


if __name__ == "__main__":
    from kv_research.cli import run
    sys.exit(run(main))
