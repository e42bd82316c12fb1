"""Generation from a prompt set -> stored videos, resumable and sharded over ``torchrun`` ranks.

Each sample is named ``<prompt id>_<k>`` (k = sample index for that prompt) and seeded by
``sample_seed(prompt, k, base_seed)``, so what a sample looks like does not depend on the batch size, on the
rank that made it, or on whether the run was interrupted. Videos are written atomically as lossless
``videos/<name>.npz`` (uint8 ``(T, H, W, 3)``) plus a ``previews/<name>.gif``; a sample whose ``.npz`` exists is
skipped, so a killed run resumes where it stopped. Under torchrun, rank r makes samples r, r + W, r + 2W, ...
and every rank waits at a barrier before rank 0 reads the merged folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from einops import rearrange

from .pipeline import sample_seed
from .utils import atomic_save_npz


# ------------------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str = "cpu") -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# ------------------------------------------------------------------------------------------------ prompts
def load_prompt_table(path: str | Path) -> pd.DataFrame:
    """A prompt set: CSV with columns ``prompt`` (+ optional ``id``, ``motion``, ``seed``) or a .txt file with one
    prompt per line (blank lines ignored). Fails with a message naming the file (and the line or row) when it is
    missing, empty, not UTF-8, not a valid CSV, or has an empty prompt, a duplicate id, or a ``motion`` value that
    is not a finite number >= 0. The errors are ``ValueError`` subclasses (``utils.InputFileError``) or
    ``FileNotFoundError``, i.e. input errors for ``kv_research.cli``."""
    from .utils import InputFileError, check_motion_values, read_csv_file, read_text_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in read_text_file(path, "prompt file").splitlines() if ln.strip()]
        df = pd.DataFrame({"prompt": lines})
    elif path.suffix.lower() == ".csv":
        df = read_csv_file(path, "prompt file", keep_default_na=False, dtype={"prompt": str, "id": str})
        if "prompt" not in df.columns:
            raise InputFileError(f"prompt file {path} has no 'prompt' column (columns: {list(df.columns)})")
    else:
        raise InputFileError(f"prompt file {path}: expected .csv or .txt")
    if len(df) == 0:
        raise InputFileError(f"prompt file {path} holds no prompts")
    empty = [i + 1 for i, p in enumerate(df["prompt"]) if not str(p).strip()]
    if empty:
        raise InputFileError(f"prompt file {path}: empty prompt on row(s) {empty[:10]} (row 1 = first prompt)")
    if "id" not in df.columns:
        df["id"] = [f"p{i:05d}" for i in range(len(df))]
    if df["id"].duplicated().any():
        raise InputFileError(f"prompt file {path}: duplicate ids {df['id'][df['id'].duplicated()].tolist()[:5]}")
    if "motion" in df.columns:
        df["motion"] = check_motion_values(df["motion"].tolist(), path,
                                           [f"row {i + 1} (id {v})" for i, v in enumerate(df["id"])])
    return df.reset_index(drop=True)


def sample_names(prompts: pd.DataFrame, samples_per_prompt: int) -> list[tuple[str, str, int, float | None]]:
    """(name, prompt, k, requested motion) for every sample, in a fixed order."""
    out = []
    for row in prompts.itertuples(index=False):
        for k in range(samples_per_prompt):
            motion = float(row.motion) if hasattr(row, "motion") else None
            out.append((f"{row.id}_{k:02d}", row.prompt, k, motion))
    return out


# ------------------------------------------------------------------------------------------------- video io
def video_to_uint8(video01: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [0, 1] -> (T, H, W, 3) uint8."""
    return rearrange((video01.clamp(0, 1) * 255).round().to(torch.uint8), "c t h w -> t h w c").cpu().numpy()


def uint8_to_video(arr: np.ndarray) -> torch.Tensor:
    return rearrange(torch.from_numpy(np.ascontiguousarray(arr)).float() / 255, "t h w c -> c t h w")


def save_sample(out_dir: Path, name: str, video01: torch.Tensor, preview: bool = True) -> None:
    arr = video_to_uint8(video01)
    if preview:
        from .data.video import save_video
        (out_dir / "previews").mkdir(parents=True, exist_ok=True)
        save_video(out_dir / "previews" / f"{name}.gif", rearrange(torch.from_numpy(arr).float() / 255,
                                                                     "t h w c -> c t h w"))
    atomic_save_npz(out_dir / "videos" / f"{name}.npz", video=arr)   # last: its presence marks the sample done


def load_samples(out_dir: str | Path, names: list[str]) -> torch.Tensor:
    """Stored videos as (N, 3, T, H, W) float in [0, 1], in the order of ``names``."""
    vids = []
    for n in names:
        p = Path(out_dir) / "videos" / f"{n}.npz"
        if not p.is_file():
            raise FileNotFoundError(f"generated video missing: {p} (generation incomplete?)")
        with np.load(p) as z:
            vids.append(uint8_to_video(z["video"]))
    return torch.stack(vids)


# ------------------------------------------------------------------------------------------------ generate
@torch.no_grad()
def generate_prompt_set(pipe, prompts: pd.DataFrame, out_dir: str | Path, *, frames: int, size: int,
                        samples_per_prompt: int = 1, batch_size: int = 8, base_seed: int = 0,
                        first_frames_dir: str | Path | None = None, image_pipe=None, steps: int | None = None,
                        dist: Dist | None = None, progress: bool = True, preview: bool = True,
                        autocast_dtype: torch.dtype | None = None) -> list[str]:
    """Generate every missing sample of ``prompts`` into ``out_dir``; returns all sample names (in order).

    First frames (KV 1.1 step 1) come from ``image_pipe`` (default: ``pipe``) and are stored in
    ``first_frames_dir`` when given, so every variant inflated from the same image model is conditioned on the
    very same first frames, and they are generated once.
    """
    from tqdm.auto import tqdm
    dist = dist or Dist()
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    samples = sample_names(prompts, samples_per_prompt)
    mine = [s for i, s in enumerate(samples) if i % dist.world == dist.rank]

    def done(sample) -> bool:
        return (out_dir / "videos" / f"{sample[0]}.npz").is_file()

    # fixed batches (positions in this rank's list): a batch with anything missing is generated whole, so a
    # resumed run computes every video in the same company as an uninterrupted one (CPU kernels may round
    # differently at another batch size) and gets the very same pixels
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    todo = [c for c in chunks if not all(done(s) for s in c)]
    bar = tqdm(total=len(mine), initial=len(mine) - sum(len(c) for c in todo), desc=f"generate {out_dir.name}",
               unit="video", disable=not progress)
    dev = pipe.device
    ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else _null()
    for chunk in todo:
        names, texts, ks, motion = zip(*chunk)
        seeds = [sample_seed(p, k, base_seed) for p, k in zip(texts, ks)]
        with ctx:
            first = None
            if first_frames_dir is not None:
                first = first_frames(image_pipe or pipe, list(names), list(texts), seeds, Path(first_frames_dir),
                                     size, steps)
            mot = None if motion[0] is None else list(motion)
            vids = pipe.generate(list(texts), seeds, mot, frames=frames, size=size, first_latents=first,
                                 steps=steps)
        for s, v in zip(chunk, vids.float()):
            if not done(s):
                save_sample(out_dir, s[0], v, preview)
        bar.update(len(chunk))
    bar.close()
    dist.barrier()
    return [s[0] for s in samples]


def first_frames(image_pipe, names: list[str], prompts: list[str], seeds: list[int], folder: Path, size: int,
                 steps: int | None) -> torch.Tensor:
    """First frames (B, C, h, w) in the codec's space from the text-to-image mode, cached as float32 npz per sample
    (key ``latent``; files of earlier versions hold pixels in [0, 1] under ``frame`` and are encoded on reading).

    If any is missing the whole batch is generated (and only the missing ones written), for the reason given in
    ``generate_prompt_set``: the same company, the same pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{n}.npz" for n in names]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        gens = [torch.Generator().manual_seed(int(s) ^ 0x5EED) for s in seeds]
        imgs = image_pipe.generate_images(list(prompts), gens, size, steps)
        for i in missing:
            atomic_save_npz(paths[i], latent=image_pipe.codec.project(imgs[i:i + 1].float()).cpu()[0].numpy())
    out = []
    for p in paths:
        with np.load(p) as z:
            if "latent" in z.files:
                out.append(torch.from_numpy(z["latent"]))
            else:
                out.append(image_pipe.encode(torch.from_numpy(z["frame"])[None]).cpu()[0])
    return torch.stack(out).to(image_pipe.device)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
