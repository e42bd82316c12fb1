"""Text encoders. The offline default is a small trainable transformer over hashed word tokens.

Why hashed words: the suite must run with no downloads, on captions from its own synthetic benchmark and on any
prompt file a user brings. Hashing words into a fixed number of buckets needs no vocabulary file, gives the same ids
on every machine (crc32, not Python's salted ``hash``), and the synthetic grammar's few dozen words do not collide
(checked in the tests). With real weights a user can swap in open_clip or T5 features of the same interface:
``encoder(prompts) -> (tokens (B, L, D), mask (B, L))``.
"""
from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from ..config import TextConfig

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
