"""Text encoders. The offline default is a small trainable transformer over hashed word tokens.

Why hashed words: the suite must run with no downloads, on captions from its own synthetic benchmark and on any
prompt file a user brings. Hashing words into a fixed number of buckets needs no vocabulary file, gives the same ids
on every machine (crc32, not Python's salted ``hash``), and the synthetic grammar's few dozen words do not collide
(checked in the tests). With real weights a user can swap in open_clip or T5 features of the same interface:
``encoder(prompts) -> (tokens (B, L, D), mask (B, L))``.

Kandinsky 3.0, and so Kandinsky Video, conditions on the encoder half of FLAN-UL2 (an 8.7 B parameter T5):
``T5TextEncoder`` loads it from a local folder only (nothing is downloaded; transformers is imported only when it is
used). Why a feature cache: the encoder is frozen, so a caption's features never change, and holding 8.7 B parameters
next to the UNet during training or generation only to re-encode the same captions wastes memory that the video
model needs. ``TextFeatureCache`` encodes each caption once into a safetensors file keyed by the encoder's identity
and the caption; ``CachedTextEncoder`` then serves those features through the same interface as the encoders.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zlib
from pathlib import Path

import torch
from torch import nn

from ..config import TextConfig
from ..utils import atomic_write_bytes, atomic_write_json

BOS, PAD, N_SPECIAL = 1, 0, 2


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


def word_id(word: str, buckets: int) -> int:
    return N_SPECIAL + zlib.crc32(word.encode()) % (buckets - N_SPECIAL)


def tokenize(prompts: list[str], cfg: TextConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids ``(B, L)`` with a BOS token first (so the empty prompt, used as the unconditional text, is valid)."""
    ids = torch.full((len(prompts), cfg.max_len), PAD, dtype=torch.long)
    for i, p in enumerate(prompts):
        toks = [BOS] + [word_id(w, cfg.vocab_buckets) for w in words(p)][: cfg.max_len - 1]
        ids[i, : len(toks)] = torch.tensor(toks)
    return ids, ids != PAD


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_buckets, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(list(prompts), self.config)
        ids, mask = ids.to(self.pos.device), mask.to(self.pos.device)
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


# ------------------------------------------------------------------------------------------------ T5 (Kandinsky 3.0)
@dataclasses.dataclass
class T5EncoderConfig:
    """What a checkpoint records about the T5 text encoder it was trained with (the weights stay in their folder)."""
    path: str
    max_length: int = 128
    d_model: int = 4096
    dtype: str = "float32"

    @property
    def dim(self) -> int:
        return self.d_model


_WEIGHT_FILE = re.compile(r"^(?:model|pytorch_model)(?:\.(?P<v1>[A-Za-z0-9_]+))?(?:-\d+-of-\d+)?\.(?:safetensors|bin)$"
                          r"|^(?:model|pytorch_model)\.(?:safetensors|bin)\.index(?:\.(?P<v2>[A-Za-z0-9_]+))?\.json$")


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise ValueError(f"unknown floating point dtype {dtype!r} (use e.g. 'float32', 'bfloat16', 'float16')")
    return d


def _t5_folders(path: Path, tokenizer: str | Path | None) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a T5 folder, a Kandinsky 3.0 root, or a root's ``text_encoder``."""
    if not path.is_dir():
        raise FileNotFoundError(f"T5 text encoder folder not found: {path}")
    if (path / "config.json").is_file():
        model_dir = path
    elif (path / "text_encoder" / "config.json").is_file():
        model_dir = path / "text_encoder"
    else:
        raise FileNotFoundError(f"no T5 config.json in {path}; expected a transformers T5EncoderModel folder "
                                f"(config.json, weights, tokenizer files) or a Kandinsky 3.0 root holding "
                                f"text_encoder/ and tokenizer/ (Kandinsky 3.0: <root>/text_encoder)")
    if tokenizer is not None:
        candidates = [Path(tokenizer).expanduser()]
    else:
        candidates = [model_dir, path / "tokenizer", model_dir.parent / "tokenizer"]
    for c in dict.fromkeys(candidates):
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return model_dir, c
    raise FileNotFoundError(f"no T5 tokenizer (tokenizer.json or spiece.model) in "
                            f"{', '.join(str(c) for c in dict.fromkeys(candidates))}; expected the tokenizer files "
                            f"beside config.json, or in <root>/tokenizer for Kandinsky 3.0")


def _weights_variant(model_dir: Path, variant: str | None) -> str | None:
    """The weights variant to load (None = plain ``model.safetensors``); only-``fp16`` folders are detected."""
    found = [m for m in (_WEIGHT_FILE.match(f.name) for f in model_dir.iterdir()) if m]
    variants = {m.group("v1") or m.group("v2") for m in found}
    if variant is not None:
        if variant not in variants:
            raise FileNotFoundError(f"no T5 weights of variant {variant!r} in {model_dir} "
                                    f"(found: {sorted(str(v) for v in variants) or 'none'})")
        return variant
    if not variants:
        raise FileNotFoundError(f"no T5 weights in {model_dir}; expected model.safetensors, pytorch_model.bin or a "
                                f"sharded *.index.json beside config.json")
    if None in variants:
        return None
    if len(variants) > 1:
        raise ValueError(f"{model_dir} holds T5 weights of several variants {sorted(variants)}; pass variant=")
    return variants.pop()


class _SentencePieceT5Tokenizer:
    """T5 tokenization straight from ``spiece.model``: the pieces, then ``</s>``, truncated and padded.

    This is what the slow ``T5Tokenizer`` that Kandinsky 3.0 was trained with did. Used when a folder has no
    ``tokenizer.json`` (the Kandinsky 3.0 repository has none): transformers 5 would have to convert the
    sentencepiece model, which needs protobuf, and ``T5Tokenizer(vocab_file=...)`` silently ignores the file there.
    """

    def __init__(self, model_file: Path):
        import sentencepiece

        self.file = model_file
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except Exception as e:  # noqa: BLE001 - sentencepiece raises bare RuntimeError/OSError
            raise ValueError(f"unreadable sentencepiece model {model_file}: {e}") from e
        self.pad_id, self.eos_id = self.sp.pad_id(), self.sp.eos_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise ValueError(f"sentencepiece model {model_file} defines no pad or eos piece (T5 uses pad 0, eos 1)")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def __call__(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            toks = self.sp.encode(p)[: max_length - 1] + [self.eos_id]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = True
        return ids, mask


class _TransformersTokenizer:
    """A transformers tokenizer read from ``tokenizer.json``, called as the Kandinsky3Pipeline calls it."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        self.file = folder / "tokenizer.json"
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def __len__(self) -> int:
        return len(self.tok)

    def __call__(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tok(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return t.input_ids, t.attention_mask.bool()


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("text encoders take a list of prompts, not one string")
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be strings, got {sorted({type(p).__name__ for p in prompts})}")
    return prompts


class T5TextEncoder(nn.Module):
    """Frozen T5 encoder (Kandinsky 3.0: FLAN-UL2's encoder) and its tokenizer, loaded from a local folder.

    ``path``: a folder with ``config.json``, weights and tokenizer files, or a Kandinsky 3.0 (diffusers) root with
    ``text_encoder/`` and ``tokenizer/``. Prompts are tokenized as the Kandinsky3Pipeline does (``</s>`` appended,
    padded and truncated to ``max_length``). ``forward`` returns the raw last hidden states in float32: the
    projection to the UNet's width lives in the UNet. Note that T5 is prone to overflow in float16; prefer bfloat16.
    """

    def __init__(self, path: str | Path, max_length: int = 128, dtype: torch.dtype | str = torch.float32,
                 device: torch.device | str | None = None, tokenizer: str | Path | None = None,
                 variant: str | None = None):
        super().__init__()
        path = Path(path).expanduser().resolve()
        model_dir, tok_dir = _t5_folders(path, tokenizer)
        variant = _weights_variant(model_dir, variant)
        dtype = _torch_dtype(dtype)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (one token and </s>), got {max_length}")
        try:
            from transformers import T5EncoderModel
        except ImportError as e:
            raise ImportError("T5TextEncoder needs transformers (pip install transformers sentencepiece)") from e

        if (tok_dir / "tokenizer.json").is_file():
            self.tokenizer = _TransformersTokenizer(tok_dir)
        else:
            self.tokenizer = _SentencePieceT5Tokenizer(tok_dir / "spiece.model")
        self.model = T5EncoderModel.from_pretrained(str(model_dir), dtype=dtype, variant=variant,
                                                    local_files_only=True)
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ValueError(f"tokenizer {self.tokenizer.file} has {len(self.tokenizer)} tokens but the T5 model in "
                             f"{model_dir} only {self.model.config.vocab_size}: not a matching pair")
        self.model.requires_grad_(False).eval()
        if device is not None:
            self.model.to(device)
        self.max_length = max_length
        self.config = T5EncoderConfig(path=str(path), max_length=max_length, d_model=self.model.config.d_model,
                                      dtype=str(dtype).removeprefix("torch."))

    @classmethod
    def from_config(cls, cfg: T5EncoderConfig, device: torch.device | str | None = None) -> "T5TextEncoder":
        return cls(cfg.path, max_length=cfg.max_length, dtype=cfg.dtype, device=device)

    @property
    def dim(self) -> int:
        return self.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identity(self) -> str:
        """What determines the features: keys the feature cache."""
        c = self.config
        return self.identity_for(c.path, c.max_length, c.dtype)

    @staticmethod
    def identity_for(path: str | Path, max_length: int = 128, dtype: str = "float32") -> str:
        """``identity()`` of the encoder that ``T5TextEncoder(path, max_length, dtype)`` would load, without
        loading it: a resumed study finds its cached features without reading 35 GB of T5 weights."""
        dtype = str(_torch_dtype(dtype)).removeprefix("torch.")
        return f"t5:{Path(path).expanduser().resolve()}:max_length={max_length}:dtype={dtype}"

    def train(self, mode: bool = True) -> "T5TextEncoder":
        super().train(mode)
        self.model.eval()  # frozen: no dropout, ever
        return self

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask ``(B, max_length)``, on the CPU."""
        return self.tokenizer(_check_prompts(prompts), self.max_length)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        dev = self.device
        mask = mask.to(dev)
        hidden = self.model(input_ids=ids.to(dev), attention_mask=mask.long()).last_hidden_state
        return hidden.float(), mask


def cut_context(hidden: torch.Tensor, mask: torch.Tensor, zero_padding: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kandinsky's text post-processing: keep ``mask.sum(-1).max() + 1`` tokens (one padding token, at most L).

    Two conventions for padded tokens exist:

    * diffusers' Kandinsky 3.0: the raw embeddings of padded tokens are zeroed (``zero_padding=True``), then the UNet
      projects them; the unconditional text is all-zero embeddings with an all-zero mask.
    * the released Kandinsky Video code: the UNet projects first, then zeroes the *projected* padded tokens; the
      unconditional text is a stored null embedding at token 0 with mask 1. That zeroing happens inside the UNet, so
      the pipeline calls ``cut_context(..., zero_padding=False)`` for it.

    Assumes right padding (the mask is a prefix of each row), as T5 tokenizers give. Returns ``(hidden, mask)``.
    """
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)} disagree on (B, L)")
    mask = mask.bool()
    n = min(int(mask.sum(-1).max()) + 1 if mask.numel() else 1, mask.shape[1])
    hidden, mask = hidden[:, :n], mask[:, :n]
    if zero_padding:
        hidden = hidden * mask[..., None].to(hidden.dtype)
    return hidden, mask


# -------------------------------------------------------------------------------------------------- feature cache
class TextCacheError(ValueError):
    """A text feature cache folder that cannot be used as asked (other encoder, damaged file)."""


class MissingTextFeatureError(LookupError):
    """A caption has no cached features and no encoder was given to compute them."""


@dataclasses.dataclass
class CachedTextConfig:
    """Describes cached features whose encoder recorded no T5 config."""
    identity: str
    dim: int


def _encoder_identity(encoder) -> str:
    fn = getattr(encoder, "identity", None)
    if not callable(fn):
        raise TypeError(f"{type(encoder).__name__} has no identity() method; pass identity= to TextFeatureCache")
    return str(fn())


def _encoder_dim(encoder) -> int | None:
    d = getattr(encoder, "dim", None)
    if d is None:
        d = getattr(getattr(encoder, "config", None), "dim", None)
    return None if d is None else int(d)


class TextFeatureCache:
    """Text features on disk, one safetensors file per caption, so that the big encoder need not stay resident.

    Layout: ``folder/cache.json`` records the encoder identity (and its config); each caption's features live in
    ``folder/<h[:2]>/<h>.safetensors`` with ``h = sha256(identity + "\\n" + caption)``, holding ``hidden (n, d)`` and
    ``mask (n,)`` trimmed to the caption's real tokens + 1 padding token (at most ``max_length``). Files are written
    atomically, so parallel writers (one per rank) are safe. ``get`` pads a batch to its longest item with
    zeros / False; after ``cut_context`` that equals what the encoder gives after ``cut_context``.
    """

    META = "cache.json"

    def __init__(self, folder: str | Path, encoder=None, identity: str | None = None):
        self.folder = Path(folder).expanduser()
        self.encoder = encoder
        if encoder is not None:
            own = _encoder_identity(encoder) if identity is None or hasattr(encoder, "identity") else identity
            if identity is not None and own != identity:
                raise TextCacheError(f"identity {identity!r} given for an encoder whose identity is {own!r}")
            identity = own
        meta_path = self.folder / self.META
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                meta["identity"]
            except (ValueError, KeyError, TypeError) as e:
                raise TextCacheError(f"damaged text feature cache description {meta_path}: {e!r}") from e
            if identity is not None and meta["identity"] != identity:
                raise TextCacheError(f"text feature cache {self.folder} was made by encoder {meta['identity']!r}, "
                                     f"not by {identity!r}; use another folder for this encoder")
            dim = _encoder_dim(encoder) if encoder is not None else None
            if meta.get("dim") is None and dim is not None:
                meta["dim"] = dim
                atomic_write_json(meta_path, meta)
        else:
            if identity is None:
                what = "not found" if not self.folder.exists() else "has no cache.json"
                raise FileNotFoundError(f"text feature cache folder {self.folder} {what}; pass encoder= (or "
                                        f"identity=) to create one")
            cfg = getattr(encoder, "config", None)
            meta = {"format": 1, "identity": identity, "dim": _encoder_dim(encoder) if encoder is not None else None,
                    "encoder_type": type(cfg).__name__ if dataclasses.is_dataclass(cfg) else None,
                    "encoder_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None}
            atomic_write_json(meta_path, meta)
        self.meta = meta
        self.identity: str = meta["identity"]

    # ---------------------------------------------------------------------------------------------- files
    def path(self, caption: str) -> Path:
        h = hashlib.sha256(f"{self.identity}\n{caption}".encode()).hexdigest()
        return self.folder / h[:2] / f"{h}.safetensors"

    def __contains__(self, caption: str) -> bool:
        return self.path(caption).is_file()

    @property
    def dim(self) -> int:
        if self.meta.get("dim") is not None:
            return int(self.meta["dim"])
        for f in self.folder.glob("*/*.safetensors"):
            return int(self._read(f, None)[0].shape[1])
        raise TextCacheError(f"text feature cache {self.folder} is empty and knows no feature width; "
                             f"open it with its encoder")

    def _read(self, f: Path, caption: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as st:
                meta = st.metadata() or {}
                hidden, mask = st.get_tensor("hidden"), st.get_tensor("mask")
            if hidden.ndim != 2 or mask.shape != hidden.shape[:1] or mask.dtype != torch.bool:
                raise ValueError(f"hidden {tuple(hidden.shape)} / mask {tuple(mask.shape)} {mask.dtype}")
            if caption is not None and meta.get("caption") != caption:
                raise ValueError(f"it holds the caption {meta.get('caption')!r}")
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for truncated files
            what = f" (caption {caption!r})" if caption is not None else ""
            raise TextCacheError(f"damaged text feature file {f}{what}: {e}; delete it to recompute") from e
        return hidden.float(), mask

    def _write(self, caption: str, hidden: torch.Tensor, mask: torch.Tensor) -> None:
        from safetensors.torch import save

        hidden = hidden.detach().float().cpu()
        cfg = getattr(self.encoder, "config", None)
        low = getattr(torch, str(getattr(cfg, "dtype", "float32")), torch.float32)
        if low in (torch.float16, torch.bfloat16) and torch.equal(hidden.to(low).float(), hidden):
            hidden = hidden.to(low)  # computed in low precision: storing it so is lossless and half the size
        data = save({"hidden": hidden.contiguous(), "mask": mask.detach().bool().cpu().contiguous()},
                    metadata={"caption": caption, "identity": self.identity})
        atomic_write_bytes(self.path(caption), data)

    # ---------------------------------------------------------------------------------------------- API
    def precompute(self, prompts: list[str], batch_size: int = 8, progress: bool = True) -> int:
        """Encode and store the captions not cached yet; returns how many were computed."""
        prompts = _check_prompts(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self]
        if not missing:
            return 0
        if self.encoder is None:
            raise MissingTextFeatureError(f"no cached text features for caption {missing[0]!r} "
                                          f"({len(missing)} missing) in {self.folder}, and no encoder to compute "
                                          f"them; pass encoder= or precompute them first")
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc="text features", unit="caption",
                   disable=None if progress else True)  # None: off when not a tty
        with bar:
            for i in range(0, len(missing), batch_size):
                chunk = missing[i:i + batch_size]
                hidden, mask = self.encoder(chunk)
                hidden, mask = hidden.detach().float().cpu(), mask.detach().bool().cpu()
                for j, c in enumerate(chunk):
                    n = min(int(mask[j].sum()) + 1, mask.shape[1])
                    if mask[j, n:].any():
                        raise ValueError("the encoder's mask is not right padded; the cache stores token prefixes")
                    self._write(c, hidden[j, :n], mask[j, :n])
                bar.update(len(chunk))
        return len(missing)

    def get(self, prompts: list[str], batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (B, Lmax, d) float32, mask (B, Lmax) bool)`` on the CPU, computing missing captions first."""
        prompts = _check_prompts(prompts)
        self.precompute(prompts, batch_size=batch_size, progress=len(prompts) > 16)
        items = {p: self._read(self.path(p), p) for p in dict.fromkeys(prompts)}
        dims = {h.shape[1] for h, _ in items.values()}
        if len(dims) > 1:
            raise TextCacheError(f"text feature cache {self.folder} holds features of widths {sorted(dims)}")
        L = max((h.shape[0] for h, _ in items.values()), default=1)
        d = dims.pop() if dims else self.dim
        hidden = torch.zeros(len(prompts), L, d)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, p in enumerate(prompts):
            h, m = items[p]
            hidden[i, : h.shape[0]], mask[i, : m.shape[0]] = h, m
        return hidden, mask


class CachedTextEncoder(nn.Module):
    """Serves a ``TextFeatureCache`` as a text encoder: ``forward(prompts) -> (hidden, mask)``, nothing to train.

    ``config`` is the cached encoder's own config when it recorded one (a ``T5EncoderConfig``), so a checkpoint
    trained on cached features describes the same text encoder as one trained with the encoder itself.
    """

    def __init__(self, cache: TextFeatureCache | str | Path, encoder=None, identity: str | None = None):
        super().__init__()
        self.cache = cache if isinstance(cache, TextFeatureCache) else TextFeatureCache(cache, encoder, identity)
        self.register_buffer("_where", torch.empty(0), persistent=False)  # follows .to(device)
        meta = self.cache.meta
        if meta.get("encoder_type") == "T5EncoderConfig" and meta.get("encoder_config"):
            self.config = T5EncoderConfig(**meta["encoder_config"])
        else:
            self.config = CachedTextConfig(identity=self.cache.identity, dim=self.cache.dim)

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self.cache.get(prompts)
        return hidden.to(self._where.device), mask.to(self._where.device)
