"""The embedded synthetic text-to-video benchmark: coloured shapes moving over textured backgrounds.

Why synthetic: on a 2-core CPU we cannot train on real video, but we still need captions whose every word is
checkable (colour, shape, size, direction, speed, background) and motion whose true size is known in pixels.
Every clip is a pure function of ``(cfg, split, index)``, so the whole benchmark is reproducible from its seed.

A clip holds one or two objects (``cfg.max_objects``). Each moves in a straight line at constant velocity, so
the true forward flow is exactly the velocity on the object's visible pixels and zero elsewhere. Speeds are
fractions of the frame side per frame, which makes the 256-px-normalised motion score (see
``kv_research.metrics.motion``) independent of the rendering resolution.

Caption grammar (``parse_caption`` inverts it exactly)::

    clip   := object (" and " object)* " over a " BACKGROUND " background"
    object := "a " SIZE " " COLOR " " SHAPE (" moves " DIRECTION " " SPEED | " stays still")

e.g. "a small red circle moves left quickly and a big blue square stays still over a striped background".
Objects are listed top-most first: where they overlap, the first object hides the second.

Rendering is vectorised numpy over (T, H, W) with signed-distance shapes and a one-pixel linear edge ramp
(anti-aliasing), so sub-pixel motion is visible; a few ms per 8x32x32 clip (about 250 clips/s on the shared
2-core machine, see benchmarks/bench_loading.py).
"""
from __future__ import annotations

import argparse
import functools
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange

from kv_research.utils import atomic_write_text, config_hash

__all__ = ["SyntheticConfig", "SyntheticClip", "RENDER_VERSION", "SHAPES", "COLORS", "SIZES", "DIRECTIONS",
           "SPEEDS", "BACKGROUNDS",
           "sample_attrs", "caption_from_attrs", "parse_caption", "render_clip", "make_clip", "clip_id",
           "nominal_motion_score", "prompt_motion_score", "SyntheticVideoDataset", "collate_clips",
           "build_benchmark", "load_prompts"]


@dataclass
class SyntheticConfig:
    size: int = 32          # H = W in pixels
    frames: int = 8
    n_train: int = 512
    n_test: int = 64
    seed: int = 0
    max_objects: int = 2


# ----------------------------------------------------------------------------------------------- vocabulary
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[float, float, float]] = {   # saturated, so they stand out from the greyish backgrounds
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.75, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.60, 0.20, 0.80), "orange": (1.00, 0.55, 0.05)}
SIZES: dict[str, float] = {"small": 0.25, "medium": 0.33, "big": 0.42}   # bounding-box side / frame side
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Speed word -> displacement per frame as a fraction of the frame side. 'quickly' x 7 steps + a big object
# still fits in the frame (0.075 * 7 + 0.42 < 1), so 8-frame clips never lose their object at any size.
SPEEDS: dict[str, float] = {"still": 0.0, "slowly": 0.02, "steadily": 0.045, "quickly": 0.075}
BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "textured")
# Every background carries a faint static grain (+-GRAIN, uniform per pixel). Without it RAFT-small hallucinates
# a drifting flow over perfectly flat regions of identical frames: still clips scored 0.3-1.0 (256-px units) on
# plain/gradient backgrounds; with it the still-clip floor is about 0.1-0.2, and Spearman(score, ground truth)
# over random clips rose from 0.81 to 0.97 (40 clips, development measurement). "plain" still looks plain.
GRAIN = 0.04
# Objects carry a pattern that moves with them (radial darkening up to SHADE at the rim, times a smooth oblique
# texture of depth TEXTURE): RAFT cannot see a flat-coloured interior move (aperture problem) and measured big
# flat triangles over striped/checkered backgrounds at 0.3-0.5x their true motion; with the pattern 0.8-1.4x.
SHADE = 0.2
TEXTURE = 0.25
STILL_DIRECTION = "none"   # the direction attribute of an object whose speed is 'still'
# Bump whenever the pixels of a (cfg, split, index) clip change: it is part of every clip_id (so cached motion
# labels go stale) and should be part of any other cache built from rendered clips (evaluators, statistics).
RENDER_VERSION = 2

_ATTR_KEYS = ("size", "color", "shape", "direction", "speed")


# ----------------------------------------------------------------------------------------------- captions
def sample_attrs(rng: np.random.Generator, cfg: SyntheticConfig, *, speed: str | None = None,
                 n_objects: int | None = None) -> dict:
    """Draw caption attributes: {"objects": [{shape,color,size,direction,speed}, ...], "background": str}.

    ``speed`` forces the first object's speed word (the test split balances it); objects never share both
    shape and colour, so a caption always identifies each object.
    """
    n = int(rng.integers(1, cfg.max_objects + 1)) if n_objects is None else n_objects
    objects, used = [], set()
    while len(objects) < n:
        shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
        sp = list(SPEEDS)[rng.integers(len(SPEEDS))]
        size, direction = list(SIZES)[rng.integers(len(SIZES))], list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        if (shape, color) in used:
            continue
        if not objects and speed is not None:
            sp = speed
        used.add((shape, color))
        objects.append({"shape": shape, "color": color, "size": size,
                        "direction": STILL_DIRECTION if SPEEDS[sp] == 0 else direction, "speed": sp})
    return {"objects": objects, "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))]}


def _object_phrase(o: dict) -> str:
    head = f"a {o['size']} {o['color']} {o['shape']}"
    return f"{head} stays still" if o["speed"] == "still" else f"{head} moves {o['direction']} {o['speed']}"


def caption_from_attrs(attrs: dict) -> str:
    return " and ".join(_object_phrase(o) for o in attrs["objects"]) + f" over a {attrs['background']} background"


_ALT = lambda words: "|".join(re.escape(w) for w in words)  # noqa: E731
_OBJ_RE = re.compile(rf"a ({_ALT(SIZES)}) ({_ALT(COLORS)}) ({_ALT(SHAPES)}) "
                     rf"(?:moves ({_ALT(DIRECTIONS)}) ({_ALT([s for s in SPEEDS if s != 'still'])})|stays still)")
_CAP_RE = re.compile(rf"(.+) over a ({_ALT(BACKGROUNDS)}) background")


def parse_caption(caption: str) -> dict:
    """Inverse of ``caption_from_attrs``; raises ValueError quoting the caption if it is not in the grammar."""
    m = _CAP_RE.fullmatch(caption.strip())
    if m is None:
        raise ValueError(f"not a synthetic-benchmark caption (no 'over a <background> background'): {caption!r}")
    objects = []
    for phrase in m.group(1).split(" and "):
        o = _OBJ_RE.fullmatch(phrase)
        if o is None:
            raise ValueError(f"cannot parse object phrase {phrase!r} in caption {caption!r}")
        size, color, shape, direction, speed = o.groups()
        objects.append({"shape": shape, "color": color, "size": size,
                        "direction": direction or STILL_DIRECTION, "speed": speed or "still"})
    return {"objects": objects, "background": m.group(2)}


# ----------------------------------------------------------------------------------------------- rendering
def _sd_box(x, y, bx, by):
    qx, qy = np.abs(x) - bx, np.abs(y) - by
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _sdf(shape: str, x: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape whose bounding box has half-side ``h``."""
    if shape == "circle":
        return np.hypot(x, y) - h
    if shape == "square":
        return _sd_box(x, y, h, h)
    if shape == "diamond":   # a square rotated by 45 degrees, corners at +-h on the axes
        return _sd_box((x + y) / np.sqrt(2), (x - y) / np.sqrt(2), h / np.sqrt(2), h / np.sqrt(2))
    if shape == "cross":
        return np.minimum(_sd_box(x, y, h, h / 3), _sd_box(x, y, h / 3, h))
    if shape == "triangle":  # equilateral, pointing up, side 2h (exact SDF, after I. Quilez)
        k = np.sqrt(3.0)
        px, py = np.abs(x) - h, -y + h / k             # image y points down
        fold = px + k * py > 0
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * h, 0)
        return -np.hypot(px, py) * np.sign(py)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _background(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, n, 3) float background. Textures are static, so their true flow is zero everywhere."""
    g = rng.uniform(0.25, 0.75, size=2)                           # two greyish tones with a light tint
    c = np.clip(g[:, None] + rng.uniform(-0.08, 0.08, size=(2, 3)), 0, 1)
    if abs(g[0] - g[1]) < 0.15:                                   # keep some texture contrast
        c[1] = np.clip(c[1] + (0.2 if g[1] < 0.5 else -0.2), 0, 1)
    u = (np.arange(n) + 0.5) / n
    yy, xx = np.meshgrid(u, u, indexing="ij")
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    if kind == "plain":
        w = np.zeros((n, n))
    elif kind == "gradient":
        w = (along - along.min()) / (np.ptp(along) + 1e-9)
    elif kind == "striped":
        period = rng.uniform(0.12, 0.25)
        w = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * along / period), 0, 1)
    elif kind == "checkered":
        period = rng.uniform(0.18, 0.33)
        w = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period), 0, 1)
    elif kind == "textured":  # smooth value noise: random 8x8 lattice, bilinearly interpolated
        lat = rng.uniform(0, 1, size=(9, 9))
        t = u * 8
        i0 = np.minimum(t.astype(int), 7)
        f = t - i0
        rows = lat[i0] * (1 - f)[:, None] + lat[i0 + 1] * f[:, None]           # (n, 9)
        w = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]      # (n, n)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    grain = rng.uniform(-GRAIN, GRAIN, size=(n, n, 1))           # static per-pixel grain, identical in all frames
    return np.clip(c[0] * (1 - w[..., None]) + c[1] * w[..., None] + grain, 0, 1)


def _start_position(h: float, v: np.ndarray, n: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Centre at frame 0 (px). Along each axis the whole path stays inside the frame whenever it fits."""
    start = []
    for d in v:
        travel = abs(d) * (T - 1)
        lo, hi = h, n - h - travel
        p = rng.uniform(lo, hi) if hi > lo else (n - travel) / 2
        start.append(p + (travel if d < 0 else 0.0))
    return np.asarray(start)


@dataclass
class SyntheticClip:
    video: torch.Tensor          # (3, T, H, W) float32 in [0, 1]
    caption: str
    attrs: dict
    motion_px: np.ndarray        # (T-1,) true per-frame displacement (px at cfg.size) of the fastest object
    gt_motion: float = 0.0       # exact ground-truth analogue of motion_score (mean |true flow|, 256-px units)
    seed: int = 0                # render seed: render_clip(parse_caption(caption), cfg, seed) reproduces it
    clip_id: str = ""
    extra: dict = field(default_factory=dict)   # start_px (centres at frame 0), alpha (objects, T, H, W) coverage


def _object_shade(x: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """Brightness factor in (0, 1] from object coordinates (x, y relative to the centre, px), so the pattern
    moves exactly with the object, sub-pixel too: a radial darkening cone times two fixed oblique sinusoids."""
    u, v = x / h, y / h
    pattern = 0.5 + 0.25 * (np.sin(2 * np.pi * (1.3 * u + 0.7 * v) + 0.4)
                            + np.sin(2 * np.pi * (1.6 * v - 0.6 * u) + 1.9))
    return (1 - SHADE * np.minimum(np.hypot(u, v), 1.0)) * (1 - TEXTURE * pattern)


def _speed_fraction(speed) -> float:
    return SPEEDS[speed] if isinstance(speed, str) else float(speed)


def render_clip(attrs: dict, cfg: SyntheticConfig, seed: int) -> SyntheticClip:
    """Render ``attrs`` deterministically; ``seed`` picks positions and the background's nuisance parameters.

    An object's ``speed`` may also be a number (fraction of the side per frame) for calibration experiments;
    the caption then says e.g. "moves right 0.03" and is not in the grammar.
    """
    rng = np.random.default_rng(seed)
    n, T = cfg.size, cfg.frames
    bg = _background(attrs["background"], rng, n)
    coords = np.arange(n) + 0.5
    objs = attrs["objects"]
    half = [SIZES[o["size"]] * n / 2 for o in objs]
    vel = [_speed_fraction(o["speed"]) * n * np.asarray(DIRECTIONS.get(o["direction"], (0, 0)), float)
           for o in objs]
    for _ in range(50):   # redraw start positions until the objects' paths do not overlap (50 tries at most)
        starts = [_start_position(h, v, n, T, rng) for h, v in zip(half, vel)]
        paths = [s + np.arange(T)[:, None] * v for s, v in zip(starts, vel)]          # (T, 2) centres
        if all(np.linalg.norm(paths[i] - paths[j], axis=1).min() >= 0.9 * (half[i] + half[j])
               for i in range(len(objs)) for j in range(i)):
            break
    alphas, shades = [], []
    for o, h, p in zip(objs, half, paths):
        cx, cy = p[:, 0, None, None], p[:, 1, None, None]                                  # (T, 1, 1)
        sd = _sdf(o["shape"], coords[None, None, :] - cx, coords[None, :, None] - cy, h)  # (T, H, W)
        alphas.append(np.clip(0.5 - sd, 0.0, 1.0))
        shades.append(_object_shade(coords[None, None, :] - cx, coords[None, :, None] - cy, h))
    speeds_px = [float(np.linalg.norm(v)) for v in vel]
    video = np.broadcast_to(bg, (T, n, n, 3)).copy()
    for o, a, sh in reversed(list(zip(objs, alphas, shades))):        # first object is drawn last, i.e. on top
        col = np.clip(np.asarray(COLORS[o["color"]]) * sh[..., None], 0, 1)                     # (T, H, W, 3)
        video = video * (1 - a[..., None]) + col * a[..., None]
    # Ground truth: forward flow from frame t equals the object's velocity on its visible pixels at t.
    cover = np.ones((T, n, n))
    true_mag = np.zeros((T, n, n))
    for a, v in zip(alphas, speeds_px):
        true_mag += cover * a * v
        cover = cover * (1 - a)
    gt = float(true_mag[:-1].mean(axis=(1, 2)).mean() * 256.0 / n) if T > 1 else 0.0
    video_t = torch.from_numpy(rearrange(video.astype(np.float32), "t h w c -> c t h w").copy())  # (3,T,H,W)
    return SyntheticClip(video=video_t.clamp_(0, 1), caption=caption_from_attrs(attrs), attrs=attrs,
                         motion_px=np.full(max(T - 1, 0), max(speeds_px, default=0.0)), gt_motion=gt, seed=seed,
                         extra={"start_px": [tuple(map(float, p)) for p in starts],
                                "alpha": np.asarray(alphas, dtype=np.float32).reshape(len(objs), T, n, n)})


# ----------------------------------------------------------------------------------------------- splits
def _split_code(split: str) -> int:
    return {"train": 0, "test": 1}.get(split, zlib.crc32(split.encode()))


def clip_id(index: int, cfg: SyntheticConfig, split: str = "train") -> str:
    """Globally unique id (includes the config hash), used to key cached motion labels."""
    return f"syn{RENDER_VERSION}-{config_hash(cfg, 8)}-{split}-{index:05d}"


@functools.lru_cache(maxsize=8)
def _train_captions(seed: int, max_objects: int, n_train: int) -> frozenset:
    cfg = SyntheticConfig(seed=seed, max_objects=max_objects, n_train=n_train)
    return frozenset(caption_from_attrs(sample_attrs(np.random.default_rng([seed, 0, i]), cfg))
                     for i in range(n_train))


def make_clip(index: int, cfg: SyntheticConfig, split: str = "train") -> SyntheticClip:
    """Clip ``index`` of ``split``, seeded by (cfg.seed, split, index).

    The test split is held out: its first object's speed cycles through SPEEDS (balanced motion levels) and a
    prompt that also occurs as a train caption is redrawn.
    """
    if index < 0:
        raise IndexError(f"clip index must be >= 0, got {index}")
    rng = np.random.default_rng([cfg.seed, _split_code(split), index])
    if split == "test":
        speed = list(SPEEDS)[index % len(SPEEDS)]
        train = _train_captions(cfg.seed, cfg.max_objects, cfg.n_train)
        for _ in range(1000):
            attrs = sample_attrs(rng, cfg, speed=speed)
            if caption_from_attrs(attrs) not in train:
                break
    else:
        attrs = sample_attrs(rng, cfg)
    clip = render_clip(attrs, cfg, int(rng.integers(2**31 - 1)))
    clip.clip_id = clip_id(index, cfg, split)
    return clip


# ----------------------------------------------------------------------------------------------- motion levels
@functools.lru_cache(maxsize=None)
def _area_fraction(shape: str, size: str, n: int = 256) -> float:
    """Fraction of the frame covered by one object (rendered once at 256 px)."""
    c = np.arange(n) + 0.5 - n / 2
    return float(np.clip(0.5 - _sdf(shape, c[None, :], c[:, None], SIZES[size] * n / 2), 0, 1).mean())


def nominal_motion_score(speed_word: str, cfg: SyntheticConfig | None = None) -> float:
    """Requested motion score of a speed word, in motion_score units (mean |flow| over the frame, 256-px units).

    It is the score that a single object of average area (mean over SHAPES x SIZES, about 9 % of the frame)
    moving at that speed produces, i.e. ``speed * 256 * mean_area``. It does not depend on the resolution;
    ``cfg`` is accepted for symmetry with the rest of the API.
    """
    if speed_word not in SPEEDS:
        raise ValueError(f"unknown speed word {speed_word!r}; known: {list(SPEEDS)}")
    mean_area = float(np.mean([_area_fraction(s, z) for s in SHAPES for z in SIZES]))
    return SPEEDS[speed_word] * 256.0 * mean_area


def prompt_motion_score(attrs: dict, cfg: SyntheticConfig | None = None) -> float:
    """Requested motion of a whole prompt: the sum of its objects' nominal scores (what ``motion`` holds)."""
    return float(sum(nominal_motion_score(o["speed"], cfg) for o in attrs["objects"]))


# ----------------------------------------------------------------------------------------------- dataset
class SyntheticVideoDataset(torch.utils.data.Dataset):
    """Map-style dataset of rendered clips; items are dict(video, caption, attrs, index, clip_id, gt_motion).

    ``attrs`` hold a variable number of objects, so batch with ``collate_clips`` (default_collate cannot).
    """

    def __init__(self, cfg: SyntheticConfig | None = None, split: str = "train"):
        self.cfg = cfg or SyntheticConfig()
        self.split = split
        self.n = {"train": self.cfg.n_train, "test": self.cfg.n_test}.get(split)
        if self.n is None:
            raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.n} clips")
        c = make_clip(index, self.cfg, self.split)
        return {"video": c.video, "caption": c.caption, "attrs": c.attrs, "index": index,
                "clip_id": c.clip_id, "gt_motion": c.gt_motion}


def collate_clips(batch: list[dict]) -> dict:
    """Stack videos to (B, 3, T, H, W); keep captions/attrs/ids as lists."""
    out = {k: [b[k] for b in batch] for k in batch[0]}
    out["video"] = torch.stack(out["video"])
    out["index"] = torch.tensor(out["index"])
    if "gt_motion" in out:
        out["gt_motion"] = torch.tensor(out["gt_motion"], dtype=torch.float32)
    return out


# ----------------------------------------------------------------------------------------------- benchmark files
_COLUMNS = ["id", "split", "prompt", "seed", "motion", "gt_motion", "n_objects", "shape", "color", "size",
            "direction", "speed", "background", "shape2", "color2", "size2", "direction2", "speed2"]


def _rows(cfg: SyntheticConfig, split: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        c = make_clip(i, cfg, split)
        objs = c.attrs["objects"]
        row = {"id": f"{split}-{i:05d}", "split": split, "prompt": c.caption, "seed": c.seed,
               "motion": round(prompt_motion_score(c.attrs, cfg), 4), "gt_motion": round(c.gt_motion, 4),
               "n_objects": len(objs), "background": c.attrs["background"]}
        for j, o in enumerate(objs[:2]):
            row.update({f"{k}{'' if j == 0 else '2'}": o[k] for k in _ATTR_KEYS})
        rows.append(row)
    return rows


def build_benchmark(out_dir, cfg: SyntheticConfig | None = None) -> dict[str, Path]:
    """Write train.csv, test.csv and README.md (all human-readable, deterministic) and return their paths."""
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    paths = {}
    frames = {}
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        df = pd.DataFrame(_rows(cfg, split, n), columns=_COLUMNS)
        frames[split] = df
        paths[split] = out / f"{split}.csv"
        atomic_write_text(paths[split], df.to_csv(index=False, lineterminator="\n"))
    paths["readme"] = out / "README.md"
    atomic_write_text(paths["readme"], _readme(cfg, frames))
    return paths


def _readme(cfg: SyntheticConfig, frames: dict) -> str:
    levels = "\n".join(f"| {w} | {s:g} | {s * cfg.size:.2f} | {nominal_motion_score(w, cfg):.3f} |"
                       for w, s in SPEEDS.items())
    counts = {sp: {k: int((df["speed"] == k).sum()) for k in SPEEDS} for sp, df in frames.items()}
    two = {sp: int((df["n_objects"] == 2).sum()) for sp, df in frames.items()}
    sizes = ", ".join(f"{k} ({v:g} of the side)" for k, v in SIZES.items())
    return f"""# Synthetic text-to-video benchmark (generated; do not edit by hand)

Regenerate with `python -m kv_research.data.synthetic --out benchmarks/synthetic` (a test checks that these
files equal a fresh build). Config: `{cfg}` (hash `{config_hash(cfg)}`).

Each row is one clip: `prompt` is its caption, and `render_clip(parse_caption(prompt), cfg, seed)` re-renders
it exactly (also `make_clip(index, cfg, split)`). Clips are {cfg.frames} frames of {cfg.size}x{cfg.size} px.

* Vocabulary: shapes {", ".join(SHAPES)}; colours {", ".join(COLORS)};
  sizes {sizes}; directions {", ".join(DIRECTIONS)} (`none` when still);
  backgrounds {", ".join(BACKGROUNDS)} (all with a faint static grain).
  Columns `shape..speed` describe the first (top-most) object, `*2` the second.
* `motion`: requested motion score = sum over objects of `nominal_motion_score(speed word)`, in the units of
  `kv_research.metrics.motion.motion_score` (mean flow magnitude over the frame, px at a 256-px short side).
* `gt_motion`: the same statistic computed from the exact ground-truth flow of the rendered clip.
* Train: {len(frames["train"])} clips ({two["train"]} with two objects), speeds {counts["train"]}.
* Test (held out: no test prompt is a train caption; first-object speed balanced): {len(frames["test"])}
  prompts ({two["test"]} with two objects), speeds {counts["test"]}.

| speed word | fraction of side / frame | px / frame at {cfg.size} px | nominal motion score |
| --- | ---: | ---: | ---: |
{levels}
"""


def load_prompts(path) -> pd.DataFrame:
    """Read a benchmark CSV (train.csv / test.csv); columns id, prompt, seed, motion + attributes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path} (write it with build_benchmark)")
    df = pd.read_csv(path, keep_default_na=False, dtype={"id": str, "prompt": str})
    missing = [c for c in ("id", "prompt", "seed", "motion") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(df.columns)}")
    return df


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write the synthetic benchmark CSVs + README.")
    ap.add_argument("--out", default="benchmarks/synthetic")
    ap.add_argument("--size", type=int, default=SyntheticConfig.size)
    ap.add_argument("--frames", type=int, default=SyntheticConfig.frames)
    ap.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    a = ap.parse_args()
    for k, p in build_benchmark(a.out, SyntheticConfig(size=a.size, frames=a.frames, seed=a.seed)).items():
        print(f"{k}: {p}")
