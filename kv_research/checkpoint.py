"""Checkpoints: weights in safetensors, the resolved config beside them as JSON.

A checkpoint names its variant and configs; loading it into a pipeline of another variant or config fails with a
message naming both, before any tensor is copied.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import DiffusionConfig, TextConfig, UNetConfig, config_from_dict
from .utils import atomic_write_json, to_jsonable


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, of another model, or not matching the config.
    The message always names the file."""


class CheckpointMismatchError(CheckpointError):
    """A suite checkpoint of another variant or config than the model it is loaded into."""


def describe(pipe) -> dict:
    return {"variant": pipe.unet.config.variant, "video_model": pipe.unet.video_in_conv is not None,
            "unet": to_jsonable(pipe.unet.config),
            "text": to_jsonable(pipe.text_encoder.config), "diffusion": to_jsonable(pipe.diffusion_cfg),
            "conventions": to_jsonable(getattr(pipe, "conventions", None))}


def save_checkpoint(path: str | Path, pipe, ema: dict[str, torch.Tensor] | None = None, extra: dict | None = None):
    """Write ``path`` (.safetensors) and ``path.json``; both atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in pipe.state_dict().items()}
    for k, v in (ema or {}).items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"variant": pipe.unet.config.variant})
    tmp.replace(path)
    atomic_write_json(path.with_suffix(".json"), {**describe(pipe), **(extra or {})})


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not meta.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no config file beside it ({meta.name})")
    return json.loads(meta.read_text())


def check_compatible(pipe, meta: dict, path) -> None:
    want = describe(pipe)
    for key in ("variant", "video_model", "unet", "text"):
        if json.dumps(meta.get(key), sort_keys=True) != json.dumps(want[key], sort_keys=True):
            if key in ("variant", "video_model"):
                kind = {True: "an inflated video model", False: "a text-to-image model"}
                if key == "video_model":
                    raise CheckpointMismatchError(f"checkpoint {path} holds {kind[bool(meta.get(key))]}, but the "
                                                  f"model is {kind[want[key]]}")
                raise CheckpointMismatchError(
                    f"checkpoint {path} is variant '{meta.get('variant')}', but the model is '{want['variant']}'")
            diff = {k: (meta[key].get(k), v) for k, v in want[key].items() if meta[key].get(k) != v}
            raise CheckpointMismatchError(
                f"checkpoint {path} has a different {key} config than the model "
                f"(field: (checkpoint, model)): {diff}")


def load_checkpoint(path: str | Path, pipe, use_ema: bool = False) -> dict:
    """Load weights into ``pipe`` after checking variant and configs; returns the metadata."""
    meta = read_meta(path)
    check_compatible(pipe, meta, path)
    tensors = load_file(str(path))
    prefix = "ema." if use_ema else "model."
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if use_ema:
        state.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    pipe.load_state_dict(state, strict=True)
    return meta


def load_ema(path: str | Path) -> dict[str, torch.Tensor]:
    return {k[4:]: v for k, v in load_file(str(path)).items() if k.startswith("ema.")}


def pipeline_from_checkpoint(path: str | Path, use_ema: bool = True):
    """Rebuild the pipeline a checkpoint describes and load it (EMA weights by default)."""
    from .models.text import TextEncoder
    from .models.unet import KeyframeUNet
    from .pipeline import KeyframePipeline
    meta = read_meta(path)
    ucfg = config_from_dict(UNetConfig, meta["unet"])
    unet = KeyframeUNet(dataclasses.replace(ucfg, variant="Spatial"))
    if meta.get("video_model"):
        unet.config = ucfg
        unet.add_temporal_modules()
    if meta.get("conventions"):
        from .loaders import Conventions
        unet.conventions = config_from_dict(Conventions, meta["conventions"])
    pipe = KeyframePipeline(unet, TextEncoder(config_from_dict(TextConfig, meta["text"])),
                            config_from_dict(DiffusionConfig, meta["diffusion"]))
    load_checkpoint(path, pipe, use_ema=use_ema)
    return pipe
