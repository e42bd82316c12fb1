"""Domain evaluators for the synthetic benchmark, trained by the suite itself and cached by config hash.

No pretrained I3D or CLIP exists offline, and a Kinetics I3D would say little about 32-px coloured shapes
anyway. So the suite trains two small evaluators on its own synthetic clips and reports their quality:

(a) ``SynVideoNet``: spatio-temporal 3D convolutions (plus a 2D stream on the sharp middle frame) ending in
    an 8x8 grid. Its pooled grid features give **FVD-syn** (same Fréchet code as FVD); per-cell heads detect
    objects and classify each one's colour / shape / size / direction / speed (plus a background head),
    trained with the renderer's object positions. This gives **attribute accuracy**: the prompt's first
    object is looked up *by its colour* among the detections and its shape / direction / speed are checked.
    Why not "first object" heads: the renderer keeps object paths apart, so which object is "first"
    (top-most) is invisible in most two-object clips and such a classifier is capped near 50 % there.
    Looking the object up by colour also checks attribute *binding* (a blue circle does not count for
    "a red circle").
(b) A small CLIP built from open_clip's own classes (``open_clip.model.CLIP`` with tiny ``CLIPVisionCfg`` /
    ``CLIPTextCfg``, the real open_clip BPE tokenizer, ``open_clip.loss.ClipLoss``), trained contrastively on
    (frame, caption) pairs. It gives **CLIPSIM-syn** through the same ``ClipSimExtractor`` as real CLIPSIM.
    Being per-frame, it can only see appearance words (colour, shape, size, background), not motion words.

``load_or_train_evaluators(data_cfg, preset)`` returns both, training them only when no cached copy with the
same hash of (data config, preset, code version) exists under ``default_cache_dir()/evaluators``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from ..utils import atomic_write_bytes, atomic_write_json, config_hash, default_cache_dir
from ..weights import sha256_file
from .clipsim import ClipSimExtractor
from .fvd import DetectorInfo

__all__ = ["EvaluatorPreset", "PRESETS", "SynVideoNet", "SynFeatureExtractor", "Evaluators", "ATTRIBUTES",
           "load_or_train_evaluators", "attribute_checks", "build_small_clip"]

EVALUATOR_VERSION = 1          # bump when training code changes what a cached evaluator means
ATTRIBUTES = ("color", "shape", "direction", "speed")   # the ones averaged into attr_acc


@dataclass
class EvaluatorPreset:
    """Sizes and schedules of both evaluators (hashed into the cache key).

    Rendering a clip costs ~0.3 ms, far less than a training step, so training *streams* fresh clips of the
    train split (indices 0, 1, 2, ...; past ``cfg.n_train`` they are more draws from the same law) instead of
    looping over a small fixed set: no overfitting, and accuracy is bought with steps only.
    """
    name: str = "quick"
    net_clips: int = 4608       # distinct train clips streamed through the video net (one pass)
    clip_clips: int = 3072      # distinct train clips for the small CLIP (one random frame each)
    n_eval_clips: int = 256     # held-out clips from the *test* split used for the quality report
    seed: int = 0
    # video feature net
    net_channels: int = 8
    net_batch: int = 32
    net_lr: float = 1e-2
    # small CLIP
    clip_embed_dim: int = 64
    clip_width: int = 64
    clip_layers: int = 2
    clip_patch: int = 4
    clip_context: int = 40
    clip_batch: int = 48
    clip_lr: float = 3e-3


PRESETS: dict[str, EvaluatorPreset] = {
    "smoke": EvaluatorPreset(name="smoke", net_clips=512, clip_clips=2048, n_eval_clips=64, net_channels=8,
                             clip_layers=1, clip_batch=32, clip_lr=3e-3),
    "quick": EvaluatorPreset(name="quick"),
}


# ----------------------------------------------------------------------------------------------- vocabulary
def _vocab() -> dict[str, list[str]]:
    from ..data import synthetic as syn
    return {"color": list(syn.COLORS), "shape": list(syn.SHAPES), "direction": list(syn.DIRECTIONS) + [syn.STILL_DIRECTION],
            "speed": list(syn.SPEEDS), "size": list(syn.SIZES), "background": list(syn.BACKGROUNDS)}


OBJ_ATTRS = ("color", "shape", "size", "direction", "speed")   # predicted at each object's grid cell
GRID = 8                                                          # detection grid (cells of size/8 px)


# ----------------------------------------------------------------------------------------------- (a) video net
class SynVideoNet(nn.Module):
    """(B,3,T,H,W) in [0,1] -> (features (B, 24c), outputs dict). 3D convs see motion directly.

    A small dense detector (CenterNet-like): the last 3D-conv map (two temporal halves stacked as channels),
    with a 2D map of the sharp middle frame, is an 8x8 grid; at each cell small conv heads predict objectness and the object's colour/shape/size/direction/speed; a pooled head
    predicts the background. Why dense: supervision at the object's own cell binds attributes to objects and
    trains in a few hundred CPU steps, where global "first object" heads stalled (the first object is not
    visually distinguishable when objects do not overlap) and pooled colour-slot heads learned far slower.
    The stem folds 2x2 pixels into channels (space-to-depth, lossless): 3D convs on CPU are bound by
    activation size. FVD-syn features are [mean, max] pooled from the same map (the heads' input).
    """

    def __init__(self, vocab: dict, channels: int = 16, feat_dim: int | None = None):
        super().__init__()
        c = channels
        self.vocab = vocab

        def block(i, o, stride):
            return nn.Sequential(nn.Conv3d(i, o, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU())
        self.body = nn.Sequential(block(12, 2 * c, 1),             # T x 16 x 16 (after space-to-depth)
                                  block(2 * c, 4 * c, (2, 2, 2)),  # T/2 x 8 x 8
                                  block(4 * c, 4 * c, (2, 1, 1)))  # T/4 x 8 x 8
        # appearance stream: the sharp middle frame at full resolution (shape is blurred in a moving object's
        # spatio-temporal features); ~10 % of the 3D stream's cost
        self.frame_stem = nn.Sequential(
            nn.Conv2d(3, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),            # 32 x 32
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU(),  # 16 x 16
            nn.Conv2d(4 * c, 4 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU())  # 8 x 8
        self.sizes = {"objectness": 1, **{a: len(vocab[a]) for a in OBJ_ATTRS}}
        self.cell_head = nn.Sequential(nn.Conv2d(12 * c, 8 * c, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(8 * c, sum(self.sizes.values()), 1))
        self.bg_head = nn.Linear(24 * c, len(vocab["background"]))
        self.feature_dim = 24 * c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = (x - 0.5) / 0.25
        mid = self.frame_stem(x[:, :, x.shape[2] // 2])                  # (B, 4c, 8, 8) middle frame
        h = self.body(rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=2, q=2))  # space-to-depth first
        h = F.adaptive_avg_pool3d(h, (2, GRID, GRID)) if h.shape[2:] != (2, GRID, GRID) else h
        mid = F.adaptive_avg_pool2d(mid, GRID) if mid.shape[-1] != GRID else mid
        # the two temporal halves stay separate channels: averaging them would smear motion direction
        grid = torch.cat([rearrange(h, "b c t h w -> b (c t) h w"), mid], dim=1)    # (B, 12c, 8, 8)
        feats = torch.cat([grid.mean(dim=(2, 3)), grid.amax(dim=(2, 3))], dim=1)   # (B, 24c) FVD-syn features
        logits = self.cell_head(grid)                                    # (B, sum sizes, 8, 8)
        out, i = {"background": self.bg_head(feats)}, 0
        for k, n in self.sizes.items():
            out[k] = rearrange(logits[:, i:i + n], "b k h w -> b (h w) k")  # per cell
            i += n
        out["objectness"] = out["objectness"][..., 0]                    # (B, 64)
        return feats, out


def _object_cells(clip, data_cfg) -> list[int]:
    """Grid cell of each object's centre at mid-clip (positions from the renderer, velocities from attrs)."""
    from ..data.synthetic import DIRECTIONS, SPEEDS
    n, t_mid = data_cfg.size, (data_cfg.frames - 1) / 2.0
    cells = []
    for o, (x0, y0) in zip(clip.attrs["objects"], clip.extra["start_px"]):
        dx, dy = DIRECTIONS.get(o["direction"], (0, 0))
        v = SPEEDS[o["speed"]] * n
        x, y = x0 + dx * v * t_mid, y0 + dy * v * t_mid
        cx, cy = (min(max(int(c * GRID / n), 0), GRID - 1) for c in (x, y))
        cells.append(cy * GRID + cx)
    return cells


def _targets(clips, data_cfg, vocab: dict) -> dict[str, torch.Tensor]:
    """Objectness 1 at object cells, -1 (ignored) at their 8 neighbours, 0 elsewhere; attributes at object cells."""
    n = len(clips)
    obj = torch.zeros(n, GRID * GRID)
    attrs = {a: torch.full((n, GRID * GRID), -100, dtype=torch.long) for a in OBJ_ATTRS}
    bg = torch.empty(n, dtype=torch.long)
    for i, clip in enumerate(clips):
        cells = _object_cells(clip, data_cfg)
        for o, cell in reversed(list(zip(clip.attrs["objects"], cells))):   # the top-most object wins a shared cell
            cy, cx = divmod(cell, GRID)
            for yy in range(max(cy - 1, 0), min(cy + 2, GRID)):
                for xx in range(max(cx - 1, 0), min(cx + 2, GRID)):
                    if obj[i, yy * GRID + xx] == 0:
                        obj[i, yy * GRID + xx] = -1.0
            obj[i, cell] = 1.0
            for a in OBJ_ATTRS:
                attrs[a][i, cell] = vocab[a].index(o[a])
        bg[i] = vocab["background"].index(clip.attrs["background"])
    return {"objectness": obj, "background": bg, **attrs}


def _loss(out: dict, tgt: dict) -> torch.Tensor:
    keep = tgt["objectness"] >= 0
    w = torch.where(tgt["objectness"] > 0, 8.0, 1.0)[keep]              # ~1.5 positives among 64 cells
    loss = F.binary_cross_entropy_with_logits(out["objectness"][keep], tgt["objectness"][keep], weight=w)
    loss = loss + F.cross_entropy(out["background"], tgt["background"])
    for a in OBJ_ATTRS:
        loss = loss + F.cross_entropy(rearrange(out[a], "b n k -> (b n) k"), tgt[a].reshape(-1), ignore_index=-100)
    return loss


def detect_objects(out: dict, threshold: float = 0.5) -> list[list[dict]]:
    """Per video, the detected objects: cells that are 3x3 local maxima of objectness above ``threshold``."""
    prob = torch.sigmoid(out["objectness"])                              # (B, 64)
    grid = rearrange(prob, "b (h w) -> b 1 h w", h=GRID)
    peak = (grid == F.max_pool2d(grid, 3, stride=1, padding=1)) & (grid > threshold)
    peak = rearrange(peak, "b 1 h w -> b (h w)")
    labels = {a: out[a].argmax(-1) for a in OBJ_ATTRS}                   # (B, 64) each
    dets = []
    for b in range(prob.shape[0]):
        cells = torch.nonzero(peak[b]).flatten().tolist()
        cells.sort(key=lambda c: -float(prob[b, c]))
        dets.append([{"cell": c, "p": float(prob[b, c]), **{a: int(labels[a][b, c]) for a in OBJ_ATTRS}}
                     for c in cells])
    return dets


def attribute_checks(out: dict, prompts: list[str], vocab: dict) -> dict[str, np.ndarray]:
    """Per video: does the clip show what the prompt asked of its first object (1.0 / 0.0, NaN if unparseable)?

    colour: an object of the requested colour is detected; shape/direction/speed: the most confident detected
    object of that colour has them (wrong when none is detected, so a blue circle does not count for "a red
    circle"); background: the scene background.
    """
    from ..data.synthetic import parse_caption
    n = len(prompts)
    res = {k: np.full(n, np.nan) for k in (*ATTRIBUTES, "background")}
    dets = detect_objects(out)
    bg = out["background"].argmax(-1).cpu().numpy()
    for i, p in enumerate(prompts):
        try:
            attrs = parse_caption(p)
        except ValueError:
            continue
        o = attrs["objects"][0]
        same_colour = [d for d in dets[i] if d["color"] == vocab["color"].index(o["color"])]
        res["color"][i] = float(bool(same_colour))
        for a in ("shape", "direction", "speed"):
            res[a][i] = float(bool(same_colour) and same_colour[0][a] == vocab[a].index(o[a]))
        res["background"][i] = float(bg[i] == vocab["background"].index(attrs["background"]))
    return res


def _fit_to(videos: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """Bring (B,3,T,H,W) to the evaluator's (frames, size): nearest-index in time, antialiased bilinear in space."""
    b, _, t, h, w = videos.shape
    if t != frames:
        videos = videos[:, :, torch.div(torch.arange(frames) * t, frames, rounding_mode="floor")]
    if (h, w) != (size, size):
        x = rearrange(videos, "b c t h w -> (b t) c h w")                           # frames as images
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        videos = rearrange(x, "(b t) c h w -> b c t h w", b=b)
    return videos.clamp(0, 1)


class SynFeatureExtractor(nn.Module):
    """Wraps ``SynVideoNet`` for the harness: fits inputs to (frames, size); ``.info`` names it and its hash."""

    def __init__(self, net: SynVideoNet, frames: int, size: int, sha256: str, name: str):
        super().__init__()
        self.net = net.eval()
        self.frames, self.size = frames, size
        self.info = DetectorInfo(name=name, sha256=sha256, feature_dim=net.feature_dim, frames=frames,
                                 resolution=size, protocol={"frames": frames, "resolution": size, "cov_ddof": 0,
                                                            "resize": "nearest-time, bilinear-antialias-space"})

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dev = next(self.net.parameters()).device
        return self.net(_fit_to(videos.float(), self.frames, self.size).to(dev))


# ----------------------------------------------------------------------------------------------- (b) small CLIP
def build_small_clip(preset: EvaluatorPreset, image_size: int) -> nn.Module:
    """A tiny ``open_clip.model.CLIP`` (ViT image tower, transformer text tower, real BPE vocabulary)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    w = preset.clip_width
    vision = CLIPVisionCfg(layers=preset.clip_layers, width=w, head_width=32, patch_size=preset.clip_patch,
                           image_size=image_size, mlp_ratio=2.0)
    text = CLIPTextCfg(context_length=preset.clip_context, vocab_size=49408, width=w, heads=max(1, w // 32),
                       layers=preset.clip_layers, mlp_ratio=2.0)
    return CLIP(embed_dim=preset.clip_embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def _small_clip_transform(size: int):
    def transform(frames: torch.Tensor) -> torch.Tensor:                 # (N,3,H,W) [0,1] -> normalised
        if frames.shape[-2:] != (size, size):
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (frames.clamp(0, 1) - 0.5) / 0.5
    return transform


def _tokenizer(context: int):
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=context)


# ----------------------------------------------------------------------------------------------- bundle
@dataclass
class Evaluators:
    feature_net: SynFeatureExtractor      # FVD-syn features + attribute heads
    clip: ClipSimExtractor                # CLIPSIM-syn
    data_cfg: object
    preset: EvaluatorPreset
    vocab: dict
    report: dict                          # measured quality on held-out clips, training times
    path: Path

    def attribute_checks(self, out: dict, prompts: list[str]) -> dict[str, np.ndarray]:
        return attribute_checks(out, prompts, self.vocab)


def _render(data_cfg, split: str, n: int, progress: bool = False) -> list:
    from ..data.synthetic import make_clip
    return [make_clip(i, data_cfg, split) for i in tqdm(range(n), desc=f"render {split}", disable=not progress,
                                                         leave=False)]


def load_or_train_evaluators(data_cfg=None, preset: str | EvaluatorPreset = "quick", cache_dir=None,
                             progress: bool = True, device: str = "cpu") -> Evaluators:
    """Cached evaluators for ``data_cfg`` (a ``SyntheticConfig``); trains and caches them on a miss."""
    from ..data.synthetic import SyntheticConfig
    data_cfg = data_cfg or SyntheticConfig()
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown evaluator preset {preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    vocab = _vocab()
    from ..data.synthetic import RENDER_VERSION
    key = config_hash({"data": data_cfg, "preset": preset, "version": EVALUATOR_VERSION, "vocab": vocab,
                       "render": RENDER_VERSION})
    folder = Path(cache_dir or default_cache_dir()) / "evaluators" / f"{preset.name}-{key}"
    if not (folder / "config.json").is_file():
        _train_and_save(folder, data_cfg, preset, vocab, progress, device)
    return _load(folder, data_cfg, preset, vocab, key, device)


def _load(folder: Path, data_cfg, preset, vocab, key: str, device) -> Evaluators:
    from safetensors.torch import load_file
    report = json.loads((folder / "config.json").read_text())
    net = SynVideoNet(vocab, preset.net_channels)
    net.load_state_dict(load_file(folder / "featnet.safetensors"))
    clip = build_small_clip(preset, data_cfg.size)
    clip.load_state_dict(load_file(folder / "clip.safetensors"))
    fx = SynFeatureExtractor(net.to(device), data_cfg.frames, data_cfg.size, sha256_file(folder / "featnet.safetensors"),
                             name=f"syn-videonet {preset.name}-{key}")
    cx = ClipSimExtractor(clip.to(device), _small_clip_transform(data_cfg.size), _tokenizer(preset.clip_context),
                          name=f"syn-clip {preset.name}-{key}", sha256=sha256_file(folder / "clip.safetensors"))
    return Evaluators(fx, cx, data_cfg, preset, vocab, report, folder)


def _train_and_save(folder: Path, data_cfg, preset: EvaluatorPreset, vocab: dict, progress: bool, device) -> None:
    from safetensors.torch import save
    torch.manual_seed(preset.seed)
    held_out = _render(data_cfg, "test", preset.n_eval_clips, progress)

    t0 = time.perf_counter()
    net = _train_net(data_cfg, vocab, preset, progress, device)
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    clip = _train_clip(data_cfg, preset, progress, device)
    t_clip = time.perf_counter() - t0

    report = {"data_cfg": dataclasses.asdict(data_cfg), "preset": dataclasses.asdict(preset), "vocab": vocab,
              "version": EVALUATOR_VERSION, "torch_threads": torch.get_num_threads(),
              "train_seconds": {"videonet": round(t_net, 2), "clip": round(t_clip, 2), "total": round(t_net + t_clip, 2)},
              "quality": {"videonet": _net_quality(net, held_out, data_cfg, vocab),
                          "clip": _clip_quality(clip, held_out, preset, data_cfg.size),
                          "held_out": f"{preset.n_eval_clips} test-split clips (captions not in train)"}}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "featnet.safetensors", save({k: v.contiguous() for k, v in net.state_dict().items()}))
    atomic_write_bytes(folder / "clip.safetensors", save({k: v.contiguous() for k, v in clip.state_dict().items()}))
    atomic_write_json(folder / "config.json", report)      # written last: its presence marks a complete cache entry


def _stream(data_cfg, n_clips: int, batch: int):
    """Batches of freshly rendered train clips 0..n_clips-1: (videos (B,3,T,H,W), clips)."""
    from ..data.synthetic import make_clip
    for start in range(0, n_clips - batch + 1, batch):
        clips = [make_clip(i, data_cfg, "train") for i in range(start, start + batch)]
        yield torch.stack([c.video for c in clips]), clips


def _train_net(data_cfg, vocab, preset: EvaluatorPreset, progress: bool, device) -> SynVideoNet:
    net = SynVideoNet(vocab, preset.net_channels).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=preset.net_lr, weight_decay=1e-4)
    steps = max(preset.net_clips // preset.net_batch, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=preset.net_lr, total_steps=steps, pct_start=0.15)
    net.train()
    bar = tqdm(_stream(data_cfg, preset.net_clips, preset.net_batch), total=steps,
               desc=f"train videonet ({preset.name})", disable=not progress, leave=False)
    for x, clips in bar:
        _, out = net(x.to(device))
        loss = _loss(out, {k: v.to(device) for k, v in _targets(clips, data_cfg, vocab).items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval().cpu()


@torch.no_grad()
def _net_quality(net: SynVideoNet, clips, data_cfg, vocab) -> dict:
    """Held-out accuracy: attribute heads at true object cells, detection recall/precision, prompt checks."""
    x = torch.stack([c.video for c in clips])
    outs = [net(b)[1] for b in torch.split(x, 64)]
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    tgt = _targets(clips, data_cfg, vocab)
    q = {"background_acc": float((out["background"].argmax(-1) == tgt["background"]).float().mean())}
    for a in OBJ_ATTRS:
        m = tgt[a] >= 0
        q[f"{a}_acc_at_object"] = float((out[a].argmax(-1)[m] == tgt[a][m]).float().mean())
    dets = detect_objects(out)
    n_true = sum(len(c.attrs["objects"]) for c in clips)
    hits = sum(any(abs(d["cell"] // GRID - t // GRID) <= 1 and abs(d["cell"] % GRID - t % GRID) <= 1 for d in ds)
               for ds, c in zip(dets, clips) for t in _object_cells(c, data_cfg))
    q["detection_recall"] = hits / max(n_true, 1)
    q["detections_per_object"] = sum(map(len, dets)) / max(n_true, 1)
    checks = attribute_checks(out, [c.caption for c in clips], vocab)
    q["prompt_checks_on_real_clips"] = {k: float(np.nanmean(v)) for k, v in checks.items()}
    q["attr_acc_on_real_clips"] = float(np.nanmean(np.stack([checks[a] for a in ATTRIBUTES])))
    return q


def _train_clip(data_cfg, preset: EvaluatorPreset, progress: bool, device) -> nn.Module:
    from open_clip.loss import ClipLoss
    model = build_small_clip(preset, data_cfg.size).to(device)
    tok = _tokenizer(preset.clip_context)
    transform = _small_clip_transform(data_cfg.size)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=preset.clip_lr, weight_decay=0.05)
    steps = max(preset.clip_clips // preset.clip_batch, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=preset.clip_lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(preset.seed + 1)
    model.train()
    bar = tqdm(_stream(data_cfg, preset.clip_clips, preset.clip_batch), total=steps,
               desc=f"train small CLIP ({preset.name})", disable=not progress, leave=False)
    for x, clips in bar:
        captions = [c.caption for c in clips]
        frame = torch.randint(0, x.shape[2], (x.shape[0],), generator=g)
        images = rearrange(x, "b c t h w -> b t c h w")[torch.arange(x.shape[0]), frame]   # one frame per clip
        img = F.normalize(model.encode_image(transform(images).to(device)), dim=-1)
        txt = F.normalize(model.encode_text(tok(captions).to(device)), dim=-1)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100.0))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval().cpu()


@torch.no_grad()
def _clip_quality(model, clips, preset: EvaluatorPreset, size: int) -> dict:
    """Text->video retrieval on held-out clips and CLIPSIM-syn of real vs shuffled captions."""
    x, captions = torch.stack([c.video for c in clips]), [c.caption for c in clips]
    ex = ClipSimExtractor(model, _small_clip_transform(size), _tokenizer(preset.clip_context), "syn-clip", "")
    img = torch.cat([ex.encode_frames(b) for b in torch.split(x, 64)])      # (N, T, D)
    vid = F.normalize(img.mean(dim=1), dim=-1)                               # (N, D) video embedding
    txt = ex.encode_text(captions)                                           # (N, D)
    sim = txt @ vid.T                                                        # (N text, N video)
    rank = (sim > sim.diag()[:, None]).sum(dim=1)                            # videos scoring above the true one
    matched = torch.einsum("ntd,nd->nt", img, txt).mean(1)
    shuffled = torch.einsum("ntd,nd->nt", img, txt.roll(1, dims=0)).mean(1)
    n = len(captions)
    return {"retrieval_top1": float((rank == 0).float().mean()), "retrieval_top5": float((rank < 5).float().mean()),
            "retrieval_chance_top1": 1.0 / n, "n": n,
            "clipsim_syn_matched": float(matched.mean()), "clipsim_syn_shuffled": float(shuffled.mean()),
            "clipsim_syn_matched_beats_shuffled": float((matched > shuffled).float().mean())}
