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
from .utils import atomic_write_json, file_damage, to_jsonable


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
    """The JSON beside a checkpoint; a missing, unreadable or non-object file raises naming it."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not meta.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no config file beside it ({meta.name})")
    try:
        out = json.loads(meta.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint config {meta} is not valid JSON ({e})") from None
    if not isinstance(out, dict) or not isinstance(out.get("unet"), dict):
        raise CheckpointError(f"checkpoint config {meta} is not a checkpoint description of this suite "
                              "(expected a JSON object with 'variant', 'unet', 'text', 'diffusion')")
    return out


def safetensors_header(path: str | Path) -> dict:
    """The header of a safetensors file, checked against the file's size (a truncated or foreign file raises
    ``CheckpointError`` naming it); reads only the header, so it is cheap for any size."""
    import struct
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file ({size} bytes; truncated?)")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path} is not a safetensors file (header length {n} for a file of {size} "
                                  "bytes; truncated or another format?)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path} is not a safetensors file (tensor {name!r} has no data_offsets)") from None
        end = max(end, int(stop))
    if 8 + n + end != size:
        raise CheckpointError(f"{path} is truncated or padded: its header describes {8 + n + end} bytes, the file "
                              f"has {size}")
    return header


def check_checkpoint(path: str | Path) -> dict:
    """A suite checkpoint is complete and consistent without loading a tensor: the safetensors header covers the
    file, it holds ``model.`` tensors, its stored variant is the one its JSON names, and the optimizer state beside
    it (if any) is a complete archive. Returns the JSON; problems raise ``CheckpointError`` naming the file."""
    path = Path(path)
    meta = read_meta(path)
    header = safetensors_header(path)
    names = [k for k in header if k != "__metadata__"]
    if not any(k.startswith("model.") for k in names):
        raise CheckpointError(f"{path} holds no 'model.' tensors ({len(names)} tensors, e.g. "
                              f"{names[:3]}): not a checkpoint written by this suite")
    stored = (header.get("__metadata__") or {}).get("variant")
    if stored is not None and stored != meta.get("variant"):
        raise CheckpointError(f"{path} holds variant '{stored}' but {path.with_suffix('.json').name} beside it "
                              f"says '{meta.get('variant')}': the two files are of different checkpoints")
    optim = path.with_suffix(".optim.pt")
    damage = file_damage(optim) if optim.is_file() else None
    if damage:
        raise CheckpointError(f"optimizer state {optim} is damaged ({damage})")
    return meta


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
    tensors = _load_tensors(path)
    prefix = "ema." if use_ema else "model."
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if use_ema:
        state.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    try:
        pipe.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes: "
                              f"{' '.join(str(e).split())[:600]}") from None
    return meta


def _load_tensors(path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a damaged file reported as ``CheckpointError`` naming it."""
    safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as e:       # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None


def load_ema(path: str | Path) -> dict[str, torch.Tensor]:
    return {k[4:]: v for k, v in _load_tensors(path).items() if k.startswith("ema.")}


def pipeline_from_checkpoint(path: str | Path, use_ema: bool = True):
    """Rebuild the pipeline a checkpoint describes and load it (EMA weights by default)."""
    from .models.text import TextEncoder
    from .models.unet import KeyframeUNet
    from .pipeline import KeyframePipeline
    meta = read_meta(path)
    try:
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
    except (KeyError, TypeError, ValueError) as e:
        what = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise CheckpointError(f"checkpoint config {Path(path).with_suffix('.json')} does not describe a model of "
                              f"this suite ({what})") from None
    load_checkpoint(path, pipe, use_ema=use_ema)
    return pipe
