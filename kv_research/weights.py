"""Finding pretrained weight files offline, with sha256 checks and one clear error.

Why a registry: every table must name the detector and its hash, and a wrong or truncated file must never
silently produce numbers. Each known file is described once in ``KNOWN``; ``find_weights`` searches

1. an explicit path given by the caller,
2. ``$KV_WEIGHTS_DIR`` (CI sets it to ``../shared/data/weights``),
3. ``$KV_SHARED_DATA/weights`` (default ``<repo>/../shared/data/weights``) when that folder exists,
4. the torch hub cache (``$TORCH_HOME/hub/checkpoints``),

and checks the sha256 where one is known. Downloading happens only when asked (``download=True``) and only
from the official source; on a machine without internet this raises the same clear ``MissingWeightsError``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WeightFile", "KNOWN", "MissingWeightsError", "find_weights", "sha256_file", "weights_dirs"]


@dataclass(frozen=True)
class WeightFile:
    key: str            # short name used in code and tables
    filenames: tuple    # accepted file names, first one preferred
    sha256: str | None  # None = unknown upstream hash (recorded, not checked)
    url: str | None     # official source, used only with download=True
    description: str


KNOWN: dict[str, WeightFile] = {
    "raft_small_princeton": WeightFile(
        "raft_small_princeton", ("raft-small.pth",),
        "c7d41b9cc88442bb8aa911dbb33086dac55a226394b142937ff22d5578717332",
        None,  # shipped inside princeton-vl's models.zip bundle; not a single-file download
        "RAFT-small, princeton-vl release (keys 'module.*'), mapped onto torchvision raft_small"),
    "raft_small_tv": WeightFile(
        "raft_small_tv", ("raft_small_C_T_V2-01064c6d.pth",),
        "01064c6dba73b0fc9fc8edf772248560a00a3acfd62ac6677e9eeebad9680e27",
        "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
        "RAFT-small, torchvision C_T_V2"),
    "raft_large_tv": WeightFile(
        "raft_large_tv", ("raft_large_C_T_SKHT_V2-ff5fadd5.pth",),
        None,
        "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        "RAFT-large, torchvision C_T_SKHT_V2"),
    # FVD detector. StyleGAN-V's TorchScript export of the TF-Hub i3d-kinetics-400/1 weights (~50 MB), distributed
    # from a Dropbox link in universome/stylegan-v (src/metrics/frechet_video_distance.py). No sha256 is published
    # and none was verified here, so it is recorded after loading rather than checked.
    "i3d_torchscript": WeightFile(
        "i3d_torchscript", ("i3d_torchscript.pt",),
        None,
        None,  # Dropbox share link from StyleGAN-V; not a stable single-file URL
        "I3D Kinetics-400 TorchScript for FVD (StyleGAN-V 'i3d_torchscript.pt', 400-d logits)"),
    # CLIPSIM backbone. OpenAI's original JIT archive: the URL path segment is the file's sha256 (OpenAI's clip
    # package and open_clip check it on download), hence the hash below.
    "clip_vit_b32_openai": WeightFile(
        "clip_vit_b32_openai", ("ViT-B-32.pt",),
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        "CLIP ViT-B/32 OpenAI weights (JIT archive), used as open_clip 'ViT-B-32-quickgelu'"),
    # The same weights converted by open_clip/timm (HF repo timm/vit_base_patch32_clip_224.openai, file
    # open_clip_model.safetensors or open_clip_pytorch_model.bin); renamed so that no other ViT-B-32 is picked up.
    "clip_vit_b32_openai_open_clip": WeightFile(
        "clip_vit_b32_openai_open_clip",
        ("vit_b32_openai_open_clip_model.safetensors", "vit_b32_openai_open_clip_pytorch_model.bin"),
        None,
        None,
        "CLIP ViT-B/32 OpenAI weights in open_clip format (timm/vit_base_patch32_clip_224.openai, renamed)"),
}


class MissingWeightsError(FileNotFoundError):
    """A weight file is absent or fails its checksum; the message says which file, which hash, where to put it."""


_HASH_CACHE: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def weights_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("KV_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["KV_WEIGHTS_DIR"]).expanduser())
    from .utils import shared_data_dir
    shared = shared_data_dir() / "weights"   # the checkout's ../shared/data/weights, when present
    if shared.is_dir() and shared not in dirs:
        dirs.append(shared)
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    dirs.append(torch_home / "hub" / "checkpoints")
    return dirs


def _missing_message(spec: WeightFile, searched: list[Path], extra: str = "") -> str:
    where = "\n".join(f"  - {d}" for d in searched) or "  (no directory set)"
    digest = spec.sha256 or "(no published sha256; recorded after loading)"
    src = f"official source: {spec.url}" if spec.url else "no single-file download exists"
    return (f"{extra}Missing weights '{spec.key}' ({spec.description}).\n"
            f"Expected file name: {spec.filenames[0]}\nExpected sha256: {digest}\n"
            f"Searched:\n{where}\n"
            f"Put the file in $KV_WEIGHTS_DIR (or pass its path explicitly); {src}.")


def find_weights(key: str, path: str | os.PathLike | None = None, *, download: bool = False,
                 check_hash: bool = True) -> Path:
    """Return the path of a verified weight file, or raise ``MissingWeightsError`` with a clear message."""
    if key not in KNOWN:
        raise KeyError(f"unknown weights '{key}'; known: {sorted(KNOWN)}")
    spec = KNOWN[key]
    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        candidates += [p / n for n in spec.filenames] if p.is_dir() else [p]
        if not p.exists():
            raise MissingWeightsError(_missing_message(spec, [p], f"Given path does not exist: {p}\n"))
    searched = weights_dirs()
    for d in searched:
        candidates += [d / n for n in spec.filenames]
    for c in candidates:
        if c.is_file():
            if check_hash and spec.sha256 is not None:
                got = sha256_file(c)
                if got != spec.sha256:
                    raise MissingWeightsError(
                        f"Checksum mismatch for {c}: sha256 {got}, expected {spec.sha256} ({spec.description}). "
                        "The file is corrupt or a different release; replace it.")
            return c
    if download and spec.url:
        target = searched[0] / spec.filenames[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            import torch.hub
            torch.hub.download_url_to_file(spec.url, str(target), hash_prefix=None, progress=True)
        except Exception as e:  # no network, 404, ...
            raise MissingWeightsError(_missing_message(spec, searched, f"Download failed ({e}).\n")) from e
        return find_weights(key, target, check_hash=check_hash)
    raise MissingWeightsError(_missing_message(spec, searched))
