"""Published numbers of FusionFrames (arXiv 2311.13073v2), Table 1: temporal-block variants, UCF-101 (IS, FVD)
and MSR-VTT (CLIPSIM), 512 px, 16 keyframes, Kandinsky 3.0 spatial weights frozen. Copied from the paper so that
our tables can show them beside our own measurements; they are never mixed into our columns.
The 220k row was measured on the full pipeline output (keyframes + two interpolation passes, Table 2)."""

PAPER_TABLE1 = [
    # variant, training steps, IS (UCF-101), FVD (UCF-101), CLIPSIM (MSR-VTT)
    {"variant": "Conv1dAttn1dLayers", "steps": "100k", "IS": 19.663, "FVD": 659.612, "CLIPSIM": 0.2827},
    {"variant": "Conv1dAttn1dBlocks", "steps": "100k", "IS": 23.063, "FVD": 545.184, "CLIPSIM": 0.2955},
    {"variant": "Conv1dAttn3dBlocks", "steps": "100k", "IS": 23.381, "FVD": 573.569, "CLIPSIM": 0.2956},
    {"variant": "Conv3dAttn1dBlocks", "steps": "100k", "IS": 22.899, "FVD": 594.919, "CLIPSIM": 0.2953},
    {"variant": "Conv1dAttn1dBlocks", "steps": "220k", "IS": 24.325, "FVD": 433.054, "CLIPSIM": 0.2976},
]
PAPER_SOURCE = "FusionFrames (arXiv 2311.13073v2) Table 1: UCF-101 IS/FVD (StyleGAN-V protocol), MSR-VTT CLIPSIM"
