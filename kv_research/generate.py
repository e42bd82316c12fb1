"""Text-to-video (and image-to-video) from the command line: keyframes -> 0-2 interpolation passes -> frames.

    python -m kv_research.generate --run results/ablate_blocks --prompt "a red circle moves left" --out gen/
    python -m kv_research.generate --kandinsky-video kv11/ --text-encoder flan-ul2/ --prompt "..." \
        --motion high --passes 2 --out gen/
    python -m kv_research.generate --run RUN --image picture.png --prompt "..." --out gen/   # animate a picture

Model sources (exactly one):

* ``--run DIR``: an ``experiments/interpolation.py`` folder (its keyframe model and its FusionFrames interpolation
  model, ``--passes`` 0-2 at the study's s = 4, 1; ``--motion`` presets are quantiles of the clips' ground-truth
  motion it trained with), or an ``experiments/ablate_blocks.py`` run folder (``DIR/run.json``,
  ``DIR/variants/<name>/checkpoints/last.safetensors``); ``--variant NAME`` (default: the first variant of the run
  that has a checkpoint). Its codec (and video decoder) is the one the run recorded in ``run.json``. Those folders
  hold keyframe models only, so ``--passes`` above 0 is refused before any work.
* ``--kandinsky-video DIR``: the Kandinsky Video 1.1 release's files (``t2v.pt``, ``interpolation.pt``,
  ``t5_projections.pt``, ``movq.pt``, optional ``video_movq.pt``, ``configs.json`` or ``--unet-kwargs JSON``) with
  ``--text-encoder DIR`` (T5). Library users (and tests) can pass any text encoder module instead:
  ``main(argv, text_encoder=module)`` or ``load_kandinsky_video_pipeline(folder, text_encoder)``.

Outputs: ``OUT/<id>.mp4``, ``OUT/<id>.gif`` and a lossless ``OUT/<id>.npz`` per prompt, and ``OUT/generate.json``
(sources with their SHA-256, seeds, motion, steps, passes, frame counts, fps, sizes).

Motion (``--motion``): a number is passed to the keyframe model as it is; the presets live in ``MOTION_PRESETS``
(the one place) and are resolved per source, in the units the model was trained with:

* a run folder (the suite's motion score, ``kv_research/metrics/motion.py``, px/frame at a 256-px short side):
  the preset's quantile of the training motion recorded in the run folder: ``run.json['motion_labels']`` if a run
  recorded its labels, else the ``motion`` column of ``benchmark/train.csv`` (the motion score of each training
  prompt); if neither exists, the preset's fixed value. The quantiles 10/50/90 % are the ones the study itself
  requests (``study_inputs.requested_motion``); 99 % for "extreme". The fixed values (0.5, 2, 6, 12) are this
  module's own assumption (a still, a gentle, a fast and a very fast scene in those units), not from the paper.
* the release: its own numbers (low 1, medium 10, high 50, extreme 100, from the release's ``t2v_pipeline.py``);
  the release's motion statistic is unpublished, so they are not in the suite's units.

Frame rate: keyframes at 2 fps (paper section 5); each pass multiplies it by 4 (the paper's 2 -> 8 -> 30 fps; the
exact rate of T -> 4T - 3 over the same duration is 32, which is written). Errors: one line, exit 2
(``kv_research.cli.run``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cli import DEBUG_HELP, run

# name: (quantile of the run's training motion, the release's value, fixed value in the suite's units)
MOTION_PRESETS = {
    "low": (0.10, 1.0, 0.5),
    "medium": (0.50, 10.0, 2.0),
    "high": (0.90, 50.0, 6.0),
    "extreme": (0.99, 100.0, 12.0),
}
KEYFRAME_FPS = 2.0
RELEASE_FRAMES = 12          # KV 1.1 keyframes
RELEASE_SIZE = 512           # pixels
RELEASE_INTERPOLATION_STEPS = 10


def parse_motion(spec: str) -> str | float:
    """A preset name or a number; anything else is a ValueError naming the choices."""
    s = str(spec).strip().lower()
    if s in MOTION_PRESETS:
        return s
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"--motion {spec!r}: not a number and not a preset ({', '.join(MOTION_PRESETS)})") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"--motion {spec!r}: must be a finite number >= 0 (a motion score) or a preset "
                         f"({', '.join(MOTION_PRESETS)})")
    return v


def resolve_motion(spec: str | float, kind: str, labels: np.ndarray | None) -> tuple[float, str]:
    """(value given to the model, how it was obtained)."""
    spec = parse_motion(spec) if isinstance(spec, str) else float(spec)
    if isinstance(spec, float):
        return spec, "given number"
    q, release, fixed = MOTION_PRESETS[spec]
    if kind == "kandinsky_video":
        return release, f"'{spec}' = the release's value (t2v_pipeline.py MOTION_SCORES)"
    if labels is not None and len(labels):
        return float(np.quantile(labels, q)), f"'{spec}' = {int(q * 100)} % quantile of {len(labels)} training labels"
    return fixed, f"'{spec}' = fixed value (no training motion recorded in the run folder)"


# --------------------------------------------------------------------------------------------------- inputs
def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str]:
    """The prompts of ``--prompt`` and of ``--prompts FILE`` (UTF-8, one per line, blank lines ignored); an empty
    ``--prompt``, a missing / empty / non-UTF-8 file (file and line named) is a ``ValueError``."""
    from .utils import InputFileError, read_text_file
    out = list(prompt or [])
    empty = [i + 1 for i, p in enumerate(out) if not p.strip()]
    if empty:
        raise ValueError(f"--prompt {out[empty[0] - 1]!r}: an empty prompt (--prompt number {empty[0]})")
    if prompts_file:
        p = Path(prompts_file)
        if p.is_dir():
            raise IsADirectoryError(f"--prompts {prompts_file}: is a folder, expected a text file (one prompt per line)")
        if not p.is_file():
            raise FileNotFoundError(f"--prompts {prompts_file}: no such file")
        try:
            lines = [line.strip() for line in read_text_file(p, "--prompts file").splitlines() if line.strip()]
        except OSError as e:
            raise InputFileError(f"--prompts file {p}: cannot be read ({e.strerror or e})") from None
        if not lines:
            raise InputFileError(f"--prompts file {p} holds no prompts (it is empty or blank); one prompt per line")
        out += lines
    if not out:
        raise ValueError("no prompt: give --prompt TEXT or --prompts FILE (one prompt per line)")
    return out


def check_image(path: str) -> None:
    from PIL import Image
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"--image {path}: is a folder, expected an image file (PNG, JPEG, ...)")
    if not p.is_file():
        raise FileNotFoundError(f"--image {path}: no such file")
    if p.stat().st_size == 0:
        raise ValueError(f"--image {path}: not a readable image (empty file, 0 bytes)")
    try:
        with Image.open(p) as im:
            im.verify()
        from PIL import ImageSequence
        with Image.open(p) as im:           # every frame: a truncated animation is damaged, not a still image
            for frame in ImageSequence.Iterator(im):
                frame.load()
    except Exception as e:       # PIL raises many types for broken files
        raise ValueError(f"--image {path}: not a readable image ({type(e).__name__}: {e})") from None


def read_image(path: str, size: int) -> torch.Tensor:
    """An image file -> (1, 3, size, size) in [0, 1]: short side scaled to ``size``, centre crop (no resampling
    when the image already is size x size, so its pixels pass unchanged)."""
    from PIL import Image
    check_image(path)
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC if s > 1 else Image.LANCZOS)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255


def _slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].strip("-") or "video"


def _file_entry(path) -> dict:
    from .weights import sha256_file
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


# --------------------------------------------------------------------------------------------------- sources
@dataclass
class Loaded:
    pipe: object                           # TextToVideoPipeline
    kind: str                              # "run" | "kandinsky_video"
    sources: dict = field(default_factory=dict)
    motion_labels: np.ndarray | None = None
    frames: int = RELEASE_FRAMES           # default keyframe count
    size: int = RELEASE_SIZE               # default pixel size
    interpolation_steps: int | None = None


def is_interpolation_study(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is an ``experiments/interpolation.py`` folder (keyframe + interpolation models)."""
    rj = Path(run_dir) / "run.json"
    if not rj.is_file():
        return False
    return _read_run_json(rj).get("kind") == "interpolation"


def _read_run_json(rj: Path) -> dict:
    """A run folder's run.json (a JSON object), or a ``ValueError`` naming it."""
    from .utils import file_damage
    damage = file_damage(rj)
    if damage:
        raise ValueError(f"--run {rj.parent}: {rj} is damaged ({damage}); delete it and re-run the command that "
                         "wrote the folder with the same --out to recompute it")
    return json.loads(rj.read_text(encoding="utf-8"))


def check_interpolation_study(run_dir: str | Path, variant: str | None) -> None:
    """Every file ``load_interpolation_study`` reads exists (checked before any work)."""
    if variant:
        raise ValueError(f"--variant {variant!r}: an interpolation study folder has one keyframe model "
                         "(Conv1dAttn1dBlocks); leave --variant out")
    from .checkpoint import check_checkpoint
    run_dir = Path(run_dir)
    for what, f in (("image", run_dir / "image"), ("keyframe", run_dir / "keyframe"),
                    ("interpolation", run_dir / "rows" / "FusionFrames")):
        ck = f / "checkpoints" / "last.safetensors"
        for file in (ck, ck.with_suffix(".json")):
            if not file.is_file():
                raise FileNotFoundError(f"--run {run_dir}: the {what} model is missing ({file}); has the study "
                                        "finished training? Re-run experiments/interpolation.py with the same --out")
        check_checkpoint(ck)


def load_interpolation_study(run_dir: str | Path, device="cpu") -> Loaded:
    """The keyframe model and the FusionFrames interpolation model of an ``experiments/interpolation.py`` folder."""
    from .config import get_preset
    from .interpolation_pipeline import TextToVideoPipeline
    from .interpolation_study import load_study_models
    run_dir = Path(run_dir)
    keyframe, ff, files, cfg = load_study_models(run_dir, device=device)
    meta = json.loads((run_dir / "run.json").read_text())
    labels = np.asarray(meta["motion_labels"], dtype=np.float64) if meta.get("motion_labels") else None
    sources = {"kind": "run", "run": str(run_dir.resolve()), "variant": keyframe.unet.config.variant,
               "files": {k: _file_entry(f) for k, f in files.items()} | {"run.json": _file_entry(run_dir / "run.json")},
               "codec": keyframe.codec.name, "codec_spec": "pixels", "video_decoder": None,
               "motion_labels": f"{run_dir / 'run.json'} ['motion_labels']" if labels is not None else None,
               "interpolation": "FusionFrames", "skip_schedule": list(ff.skip_schedule)}
    p = get_preset(cfg.preset)
    return Loaded(TextToVideoPipeline(keyframe, ff), "run", sources, labels, cfg.data.keyframes,
                  p.size * keyframe.codec.scale_factor, interpolation_steps=cfg.eval.steps)


def run_checkpoint(run_dir: str | Path, variant: str | None = None) -> tuple[Path, str, dict]:
    """(checkpoint, variant, run.json) of an ablate_blocks run folder; every problem is one ValueError /
    FileNotFoundError naming the folder."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise NotADirectoryError(f"--run {run_dir}: is a file, expected a run folder")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--run {run_dir}: no such folder")
    rj = run_dir / "run.json"
    if not rj.is_file():
        raise FileNotFoundError(f"--run {run_dir}: no run.json (not an experiments/ablate_blocks.py run folder)")
    meta = _read_run_json(rj)
    listed = list((meta.get("config") or {}).get("variants") or [])
    vroot = run_dir / "variants"
    on_disk = sorted(p.name for p in vroot.iterdir() if p.is_dir()) if vroot.is_dir() else []
    trained = [v for v in listed + [v for v in on_disk if v not in listed]
               if (vroot / v / "checkpoints" / "last.safetensors").is_file()]
    if variant is None:
        if not trained:
            raise FileNotFoundError(f"--run {run_dir}: no trained variant (no variants/<name>/checkpoints/"
                                    "last.safetensors); has the run finished fine-tuning?")
        variant = trained[0]
    ck = vroot / variant / "checkpoints" / "last.safetensors"
    if not ck.is_file():
        raise FileNotFoundError(f"--run {run_dir}: variant {variant!r} has no checkpoint ({ck}); trained: "
                                f"{', '.join(trained) or 'none'}")
    if not ck.with_suffix(".json").is_file():
        raise FileNotFoundError(f"checkpoint {ck} has no config file beside it ({ck.with_suffix('.json').name})")
    from .checkpoint import CheckpointError, check_checkpoint
    try:
        check_checkpoint(ck)         # complete and consistent, before any model is built
    except CheckpointError as e:
        raise CheckpointError(f"--run {run_dir}: damaged checkpoint: {e}; delete {ck.parent}{os.sep} and "
                              f"{ck.parent.parent / 'stats.jsonl'}, then re-run experiments/ablate_blocks.py with "
                              "the same --out to retrain it") from None
    return ck, variant, meta


def run_motion_labels(run_dir: Path, meta: dict) -> tuple[np.ndarray | None, str | None]:
    if meta.get("motion_labels"):
        from .utils import check_motion_values
        labels = meta["motion_labels"]
        if not isinstance(labels, list):
            raise ValueError(f"{run_dir / 'run.json'}: 'motion_labels' must be a list of numbers")
        labels = check_motion_values(labels, run_dir / "run.json", [f"motion_labels[{i}]" for i in range(len(labels))],
                                     "run folder file")
        return labels, f"{run_dir / 'run.json'} ['motion_labels']"
    csv = run_dir / "benchmark" / "train.csv"
    if csv.is_file():
        from .utils import check_motion_values, read_csv_file
        df = read_csv_file(csv, "run folder file")
        if "motion" in df.columns and len(df):
            labels = check_motion_values(df["motion"].tolist(), csv, [f"row {i + 1}" for i in range(len(df))],
                                         "run folder file")
            return labels, f"{csv} ['motion']"
    return None, None


def load_run(run_dir: str | Path, variant: str | None = None, device="cpu") -> Loaded:
    from .checkpoint import pipeline_from_checkpoint
    from .interpolation_pipeline import TextToVideoPipeline
    from .models.codec import load_codec
    run_dir = Path(run_dir)
    ck, variant, meta = run_checkpoint(run_dir, variant)
    cfg = meta.get("config") or {}
    pipe = pipeline_from_checkpoint(ck, use_ema=True).to(device).eval()
    codec_spec, decoder = cfg.get("codec"), cfg.get("decoder")
    if codec_spec not in (None, "pixels"):
        codec = load_codec(codec_spec, device=device)
        if decoder:
            codec = codec.with_video_decoder(decoder)
        object.__setattr__(pipe, "codec", codec)
    labels, labels_from = run_motion_labels(run_dir, meta)
    proto = meta.get("protocol") or {}
    preset = meta.get("preset") or {}
    frames = int(proto.get("frames") or preset.get("frames") or 8)
    # the run's own size (protocol of a finished run, else the preset's latent size) in pixels
    size = int(proto.get("resolution") or (proto.get("latent_resolution") or preset.get("size") or 32)
               * pipe.codec.scale_factor)
    sources = {"kind": "run", "run": str(run_dir.resolve()), "variant": variant,
               "files": {"checkpoint": _file_entry(ck), "checkpoint_config": _file_entry(ck.with_suffix(".json")),
                         "run.json": _file_entry(run_dir / "run.json")},
               "codec": pipe.codec.name, "codec_spec": codec_spec or "pixels", "video_decoder": decoder,
               "motion_labels": labels_from, "interpolation": None}
    return Loaded(TextToVideoPipeline(pipe, None), "run", sources, labels, frames, size)


def parse_unet_kwargs(spec: str | dict | None) -> dict:
    """``--unet-kwargs``: inline JSON or a JSON file; a fixture.json-like ``{"models": {...}}``, a dict with
    ``keyframe`` / ``interpolation`` / ``movq`` / ``video_movq`` entries, or one kwargs dict for both UNets."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        raw = spec
    else:
        p = Path(spec)
        try:
            raw = json.loads(p.read_text()) if p.is_file() else json.loads(spec)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--unet-kwargs {spec!r}: neither a JSON file nor inline JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--unet-kwargs {spec!r}: expected a JSON object")
    if "models" in raw:
        m = raw["models"]
        return {"keyframe": m.get("keyframe_unet", {}).get("kwargs"),
                "interpolation": m.get("interpolation_unet", {}).get("kwargs"),
                "movq": m.get("movq", {}).get("params"), "video_movq": m.get("movq", {}).get("video_params")}
    if {"keyframe", "interpolation", "movq", "video_movq"} & set(raw):
        return {k: raw.get(k) for k in ("keyframe", "interpolation", "movq", "video_movq")}
    return {"keyframe": raw, "interpolation": raw}


def check_kandinsky_video(folder: str | Path, need_interpolation: bool) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--kandinsky-video {folder}: no such folder")
    need = ["t2v.pt", "t5_projections.pt", "movq.pt"] + (["interpolation.pt"] if need_interpolation else [])
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        why = " (needed for --passes > 0)" if missing == ["interpolation.pt"] else ""
        raise FileNotFoundError(f"--kandinsky-video {folder}: missing {', '.join(missing)}{why}")
    from .checkpoint import CheckpointError
    from .utils import file_damage
    for name in need + [n for n in ("video_movq.pt", "configs.json") if (folder / n).is_file()]:
        damage = file_damage(folder / name)      # archive structure only: cheap for any size
        if damage:
            raise CheckpointError(f"--kandinsky-video {folder}: {folder / name} is damaged ({damage}); "
                                  "download that file again")
    return folder


def load_kandinsky_video_pipeline(folder: str | Path, text_encoder: torch.nn.Module, unet_kwargs=None,
                                  interpolation: bool = True, device="cpu", steps: int | None = None,
                                  interpolation_steps: int | None = None, guidance: float | None = None) -> Loaded:
    """The release's files -> ``Loaded`` (a ``TextToVideoPipeline``: image MoVQ encoder, the video MoVQ decoder
    when ``video_movq.pt`` is there). ``text_encoder``: anything returning raw T5 hidden states and masks
    (``T5TextEncoder``, or a stand-in)."""
    from .interpolation_pipeline import PAPER_GUIDANCE, InterpolationPipeline, TextToVideoPipeline
    from .loaders import load_kandinsky_video, load_kandinsky_video_interpolation
    from .models.codec import MoVQCodec
    from .pipeline import KeyframePipeline
    folder = check_kandinsky_video(folder, interpolation)
    kw = parse_unet_kwargs(unet_kwargs)
    files = {n: _file_entry(folder / n) for n in ("t2v.pt", "t5_projections.pt", "movq.pt")}
    codec = MoVQCodec.from_release(folder / "movq.pt", kw.get("movq"), device=device)
    if (folder / "video_movq.pt").is_file():
        files["video_movq.pt"] = _file_entry(folder / "video_movq.pt")
        if kw.get("video_movq") is not None:
            from .models.video_decoder import VideoMoVQDecoder
            codec = codec.with_video_decoder(VideoMoVQDecoder.from_release(folder / "video_movq.pt",
                                                                           kw["video_movq"], device=device))
        else:
            codec = codec.with_video_decoder(folder / "video_movq.pt")
    ck = load_kandinsky_video(folder, unet_kwargs=kw.get("keyframe"), device=device)
    dcfg = ck.conventions.diffusion_config(**({"sample_steps": steps} if steps else {}))
    kp = KeyframePipeline(ck.unet, text_encoder, dcfg, null_embedding=ck.null_embedding, codec=codec).eval()
    ip, isteps = None, interpolation_steps or RELEASE_INTERPOLATION_STEPS
    if interpolation:
        files["interpolation.pt"] = _file_entry(folder / "interpolation.pt")
        ik = load_kandinsky_video_interpolation(folder, unet_kwargs=kw.get("interpolation"), device=device)
        ip = InterpolationPipeline(ik.unet, text_encoder, ik.conventions.diffusion_config(sample_steps=isteps),
                                   null_embedding=ik.null_embedding, codec=codec,
                                   guidance=PAPER_GUIDANCE if guidance is None else guidance).eval()
    if (folder / "configs.json").is_file():
        files["configs.json"] = _file_entry(folder / "configs.json")
    sources = {"kind": "kandinsky_video", "folder": str(folder.resolve()), "files": files, "codec": codec.name,
               "text_encoder": getattr(text_encoder, "path", None) and str(text_encoder.path)
               or type(text_encoder).__name__,
               "unet_kwargs": kw or "configs.json / defaults",
               "interpolation_guidance": None if ip is None else ip.guidance}
    return Loaded(TextToVideoPipeline(kp, ip), "kandinsky_video", sources, None, RELEASE_FRAMES, RELEASE_SIZE, isteps)


# ---------------------------------------------------------------------------------------------- generation
def generate_videos(loaded: Loaded, prompts: list[str], out: str | Path, *, motion: str | float = "medium",
                    passes: int = 0, seed: int = 0, frames: int | None = None, size: int | None = None,
                    steps: int | None = None, interpolation_steps: int | None = None, image: str | None = None,
                    progress: bool = True, argv: list[str] | None = None) -> dict:
    """Generate one video per prompt into ``out``; returns (and writes) ``generate.json``'s content."""
    from tqdm.auto import tqdm

    from .data.video import save_video
    from .interpolation_pipeline import frames_after
    from .pipeline import sample_seed
    t0 = time.perf_counter()
    pipe = loaded.pipe
    if passes > pipe.max_passes:
        raise ValueError(f"--passes {passes}: the model source has no interpolation model"
                         if pipe.interpolation_pipe is None else f"--passes {passes}: at most {pipe.max_passes}")
    frames = int(frames or loaded.frames)
    size_px = int(size or loaded.size)
    scale = pipe.codec.scale_factor
    if frames < 2:
        raise ValueError(f"--frames {frames}: need at least 2 keyframes")
    if size_px <= 0 or size_px % scale:
        raise ValueError(f"--size {size_px}: must be a positive multiple of the codec's scale factor {scale}")
    value, how = resolve_motion(motion, loaded.kind, loaded.motion_labels)
    image01 = read_image(image, size_px) if image else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    isteps = interpolation_steps or loaded.interpolation_steps
    fps = KEYFRAME_FPS * 4 ** passes
    records = []
    for i, prompt in enumerate(tqdm(prompts, desc="prompts", unit="video", disable=not progress)):
        s = sample_seed(prompt, 0, seed)
        video = pipe([prompt], [s], [value], frames=frames, size=size_px // scale, passes=passes, image01=image01,
                     steps=steps, interpolation_steps=isteps, progress=progress)[0].float().cpu()
        vid = f"{i:03d}-{_slug(prompt)}"
        for ext in ("mp4", "gif", "npz"):
            save_video(out / f"{vid}.{ext}", video, fps=fps)
        records.append({"id": vid, "prompt": prompt, "seed": s, "files": [f"{vid}.{e}" for e in ("mp4", "gif", "npz")],
                        "shape": list(video.shape)})
    kp = pipe.keyframe_pipe
    meta = {"command": ["python", "-m", "kv_research.generate", *(argv or [])], "source": loaded.sources,
            "prompts": records, "base_seed": seed,
            "seeding": "seed of prompt i = pipeline.sample_seed(prompt, 0, base_seed); first frame: seed ^ 0x5EED; "
                       "interpolation pass k: interpolation_pipeline.pass_seed(seed, k)",
            "motion": {"requested": motion if isinstance(motion, str) else float(motion), "value": value, "how": how},
            "steps": steps or kp.diffusion_cfg.sample_steps, "sampler": kp.diffusion_cfg.sampler,
            "interpolation_steps": (isteps or pipe.interpolation_pipe.diffusion_cfg.sample_steps) if passes else None,
            "passes": passes, "skip_frames": list(pipe.interpolation_pipe.skip_schedule[:passes]) if passes else [],
            "frames": {"keyframes": frames, "output": frames_after(frames, passes)}, "fps": fps,
            "size": {"pixels": size_px, "latent": size_px // scale},
            "image": None if image is None else _file_entry(image),
            "time_s": round(time.perf_counter() - t0, 3), "torch": torch.__version__}
    from .utils import atomic_write_json
    atomic_write_json(out / "generate.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser
    ap = ArgumentParser(prog="python -m kv_research.generate", description=__doc__.split("\n\n")[0],
                        epilog=DEBUG_HELP)
    ap.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    ap.add_argument("--prompts", default=None, metavar="FILE", help="text file, one prompt per line")
    ap.add_argument("--motion", default="medium", help=f"{'|'.join(MOTION_PRESETS)}|NUMBER (default medium)")
    ap.add_argument("--image", default=None, metavar="FILE", help="animate this picture (image-to-video)")
    ap.add_argument("--passes", type=int, default=0, choices=[0, 1, 2], help="interpolation passes (s = 3, then 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=None, help="keyframes (default: the run's / 12)")
    ap.add_argument("--size", type=int, default=None, help="pixels (default: the run's / 512)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps of the first frame and keyframes")
    ap.add_argument("--interpolation-steps", type=int, default=None, help="sampling steps of each pass")
    ap.add_argument("--out", required=True, metavar="DIR")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default=None, metavar="DIR", help="an experiments/ablate_blocks.py run folder")
    src.add_argument("--kandinsky-video", default=None, metavar="DIR", help="the Kandinsky Video 1.1 release files")
    ap.add_argument("--variant", default=None, help="with --run: the variant (default: the first trained one)")
    ap.add_argument("--text-encoder", default=None, metavar="DIR", help="with --kandinsky-video: the T5 folder")
    ap.add_argument("--unet-kwargs", default=None, metavar="JSON", help="with --kandinsky-video: UNet / MoVQ options")
    ap.add_argument("--guidance", type=float, default=None, help="interpolation context guidance w (default 0.25)")
    ap.add_argument("--decoder", default=None, metavar="NAME|FILE",
                    help="decode with a Table 3 video decoder: a registry name or a video_movq.pt (MoVQ codecs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None, text_encoder: torch.nn.Module | None = None) -> int:
    """The command line; ``text_encoder`` replaces ``--text-encoder`` (library use: a T5 stand-in)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # every check on the inputs first, before any model is loaded
    prompts = read_prompts(args.prompt, args.prompts)
    parse_motion(args.motion)
    if args.image:
        check_image(args.image)
    for name, lo in (("frames", 2), ("size", 1), ("steps", 1), ("interpolation_steps", 1), ("seed", 0)):
        v = getattr(args, name)
        if v is not None and v < lo:
            raise ValueError(f"--{name.replace('_', '-')} {v}: must be a whole number >= {lo}")
    if args.guidance is not None and not np.isfinite(args.guidance):
        raise ValueError(f"--guidance {args.guidance}: must be a finite number")
    from .cli import check_device, check_out_dir
    check_device(args.device)
    check_out_dir(args.out)
    if args.run:
        if args.text_encoder or args.unet_kwargs:
            raise ValueError("--text-encoder / --unet-kwargs are for --kandinsky-video (a run folder has its own)")
        if is_interpolation_study(args.run):
            check_interpolation_study(args.run, args.variant)
        else:
            _, _, run_meta = run_checkpoint(args.run, args.variant)
            if args.passes > 0:
                raise ValueError(f"--passes {args.passes}: run folder {args.run} has no interpolation model "
                                 "(experiments/ablate_blocks.py trains keyframe models only; an "
                                 "experiments/interpolation.py folder has one); use --passes 0")
            run_motion_labels(Path(args.run), run_meta)      # the motion presets' source is readable
    else:
        if args.variant:
            raise ValueError("--variant is for --run")
        check_kandinsky_video(args.kandinsky_video, args.passes > 0)
        if text_encoder is None:
            if not args.text_encoder:
                raise ValueError("--kandinsky-video needs --text-encoder DIR (the T5 encoder folder)")
            if not Path(args.text_encoder).is_dir():
                raise FileNotFoundError(f"--text-encoder {args.text_encoder}: no such folder")
        parse_unet_kwargs(args.unet_kwargs)
    if args.decoder:
        from .models.video_decoder import DECODER_VARIANTS
        if args.decoder not in DECODER_VARIANTS and not Path(args.decoder).is_file():
            raise FileNotFoundError(f"--decoder {args.decoder!r}: neither a Table 3 decoder "
                                    f"({', '.join(DECODER_VARIANTS)}) nor an existing video_movq.pt")
    # loading
    if args.run:
        loaded = (load_interpolation_study(args.run, device=args.device) if is_interpolation_study(args.run)
                  else load_run(args.run, args.variant, device=args.device))
    else:
        if text_encoder is None:
            from .models.text import T5TextEncoder
            text_encoder = T5TextEncoder(args.text_encoder, device=args.device)
        loaded = load_kandinsky_video_pipeline(args.kandinsky_video, text_encoder, args.unet_kwargs,
                                               interpolation=args.passes > 0, device=args.device, steps=args.steps,
                                               interpolation_steps=args.interpolation_steps, guidance=args.guidance)
    if args.decoder:           # every sub-pipeline decodes through the same codec
        if not hasattr(loaded.pipe.codec, "with_video_decoder"):
            raise ValueError(f"--decoder needs a MoVQ codec; this model decodes with {loaded.pipe.codec.name}")
        codec = loaded.pipe.codec.with_video_decoder(args.decoder)
        for sub in (loaded.pipe.keyframe_pipe, loaded.pipe.interpolation_pipe):
            if sub is not None:
                object.__setattr__(sub, "codec", codec)
        loaded.sources["video_decoder"] = args.decoder
        loaded.sources["codec"] = codec.name
    meta = generate_videos(loaded, prompts, args.out, motion=args.motion, passes=args.passes, seed=args.seed,
                           frames=args.frames, size=args.size, steps=args.steps,
                           interpolation_steps=args.interpolation_steps, image=args.image,
                           progress=not args.no_progress, argv=argv)
    print(f"wrote {len(meta['prompts'])} video(s) of {meta['frames']['output']} frames at {meta['fps']:g} fps "
          f"to {args.out} (+ generate.json)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
