"""Training and test windows for the interpolation models: the synthetic benchmark rendered at a finer frame rate.

A clip of the benchmark (``synthetic.make_clip``: K keyframes at the base rate) is re-rendered at ``rate`` times the
frame rate: the same objects, start positions and background, every speed divided by ``rate``, so frame
``j * rate`` of the fine clip is keyframe ``j`` of the base clip and the true in-between frames are known exactly.

``InterpolationTrainData.draw`` (the trainer's interface) takes a window of ``4G + 1`` frames at a random stride
``s`` (the skip-frame label, paper section 5: "random skip") from a random clip at a random start: keyframes at
0, 4s, 8s, ... of the fine clip, targets between them.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from .synthetic import SyntheticConfig, _speed_fraction, make_clip, render_clip


def fine_clip(index: int, cfg: SyntheticConfig, rate: int, split: str = "train"):
    """Clip ``index`` of the benchmark at ``rate`` x its frame rate: (3, (cfg.frames - 1) * rate + 1, H, W) in
    [0, 1] and its caption; ``[:, ::rate]`` equals ``make_clip(index, cfg, split).video`` up to float rounding."""
    if rate < 1:
        raise ValueError(f"rate must be >= 1, got {rate}")
    base = make_clip(index, cfg, split)
    attrs = copy.deepcopy(base.attrs)
    for o in attrs["objects"]:
        o["speed"] = _speed_fraction(o["speed"]) / rate
    fine_cfg = dataclasses.replace(cfg, frames=(cfg.frames - 1) * rate + 1)
    return render_clip(attrs, fine_cfg, base.seed).video, base.caption


class InterpolationTrainData:
    """Fine-rate clips (N, 3, F, H, W) held in memory; windows of ``4 * groups + 1`` frames at strides ``strides``."""

    def __init__(self, clips: torch.Tensor, captions: list[str], groups: int, strides: tuple[int, ...]):
        if len(clips) != len(captions) or not len(clips):
            raise ValueError(f"{len(clips)} clips and {len(captions)} captions")
        need = 4 * groups * max(strides) + 1
        if clips.shape[2] < need:
            raise ValueError(f"clips of {clips.shape[2]} frames are too short for {groups} groups at stride "
                             f"{max(strides)} (need {need})")
        self.clips, self.captions, self.groups, self.strides = clips, list(captions), groups, tuple(strides)

    @classmethod
    def render(cls, cfg: SyntheticConfig, rate: int, groups: int, strides: tuple[int, ...], n: int | None = None,
               split: str = "train") -> "InterpolationTrainData":
        pairs = [fine_clip(i, cfg, rate, split) for i in range(cfg.n_train if n is None else n)]
        return cls(torch.stack([p[0] for p in pairs]), [p[1] for p in pairs], groups, strides)

    def __len__(self) -> int:
        return len(self.clips)

    def draw(self, mode: str, batch_size: int, g: torch.Generator, encode):
        """(windows (b, 3 -> codec, 4G+1, h, w), captions, stride labels (b,))."""
        if mode != "interpolation":
            raise ValueError(f"InterpolationTrainData serves mode 'interpolation', got {mode!r}")
        idx = torch.randint(0, len(self), (batch_size,), generator=g).tolist()
        s = torch.tensor(self.strides)[torch.randint(0, len(self.strides), (batch_size,), generator=g)]
        span = 4 * self.groups
        wins = []
        for i, st in zip(idx, s.tolist()):
            start = int(torch.randint(0, self.clips.shape[2] - span * st, (1,), generator=g))
            wins.append(self.clips[i, :, start:start + span * st + 1:st])            # (3, 4G+1, h, w)
        return encode(torch.stack(wins)), [self.captions[i] for i in idx], s.float()


__all__ = ["fine_clip", "InterpolationTrainData"]
