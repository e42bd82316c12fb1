"""T5 text encoder (Kandinsky 3.0's), Kandinsky's context cutting and the on-disk text feature cache.

A tiny random T5 and a sentencepiece model trained here stand in for FLAN-UL2: nothing is downloaded.
"""
import random
import shutil

import pytest
import torch

pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from kv_research.models.text import (CachedTextEncoder, MissingTextFeatureError, T5EncoderConfig,  # noqa: E402
                                     T5TextEncoder, TextCacheError, TextFeatureCache, cut_context)

VOCAB = 80
WORDS = ("a small red circle moves left quickly big blue square stays still green triangle jumps up down slowly the "
         "camera pans over city at night dog runs on beach yellow purple orange star spins around rotates bounces "
         "forest river mountain sunset cat sleeps bird flies through clouds rain falls snow melts").split()
PROMPTS = ["a small red circle moves left quickly", "", "the camera pans over a city at night while snow falls",
           "a dog runs"]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """(flat folder with tokenizer.json, Kandinsky-3-style root with tokenizer/spiece.model only, model, sp)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    tmp = tmp_path_factory.mktemp("t5")
    rng = random.Random(0)
    (tmp / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
                                              for _ in range(60)))
    spm.SentencePieceTrainer.train(input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "sp"), vocab_size=VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))
    assert sp.get_piece_size() == VOCAB

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(vocab_size=VOCAB + 16, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                    feed_forward_proj="gated-silu", is_encoder_decoder=False)).eval()
    flat = tmp / "flat"
    model.save_pretrained(flat)
    # transformers 5: T5Tokenizer(vocab_file=...) ignores the file (4 specials + extra ids); it takes the pieces
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(VOCAB)], extra_ids=0)
    assert len(tok) == VOCAB
    tok.save_pretrained(flat)
    assert (flat / "tokenizer.json").is_file()

    root = tmp / "kandinsky3"
    shutil.copytree(flat, root / "text_encoder", ignore=shutil.ignore_patterns("tokenizer*"))
    (root / "tokenizer").mkdir()
    shutil.copy(tmp / "sp.model", root / "tokenizer" / "spiece.model")
    return flat, root, model, sp


def reference(model, sp, prompts, max_length=128):
    ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
    for i, p in enumerate(prompts):
        toks = sp.encode(p)[: max_length - 1] + [1]
        ids[i, : len(toks)] = torch.tensor(toks)
    mask = ids != 0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask


@pytest.mark.parametrize("layout", ["flat", "k3_root", "k3_text_encoder"])
def test_t5_encoder_equals_direct_call(t5, layout):
    flat, root, model, sp = t5
    path = {"flat": flat, "k3_root": root, "k3_text_encoder": root / "text_encoder"}[layout]
    enc = T5TextEncoder(path)
    assert enc.dim == 32 and enc.config == T5EncoderConfig(str(path.resolve()), 128, 32, "float32")
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training
    hidden, mask = enc(PROMPTS)
    ref, ref_mask = reference(model, sp, PROMPTS)
    assert hidden.dtype == torch.float32 and hidden.shape == (4, 128, 32) and mask.dtype == torch.bool
    assert torch.equal(mask, ref_mask)
    assert torch.equal(hidden, ref)
    assert mask.sum(-1).tolist() == [len(sp.encode(p)) + 1 for p in PROMPTS]


def test_sharded_variant_weights_and_from_config(t5, tmp_path):
    """The Kandinsky 3.0 repository ships text_encoder/model.fp16-0000k-of-0000n.safetensors only."""
    flat, root, model, sp = t5
    k3 = tmp_path / "k3"
    shutil.copytree(root / "tokenizer", k3 / "tokenizer")
    model.save_pretrained(k3 / "text_encoder", variant="fp16", max_shard_size="20KB")
    assert not (k3 / "text_encoder" / "model.safetensors").exists()
    enc = T5TextEncoder(k3)
    assert torch.equal(enc(PROMPTS)[0], reference(model, sp, PROMPTS)[0])
    again = T5TextEncoder.from_config(enc.config)
    assert again.config == enc.config and again.identity() == enc.identity()
    with pytest.raises(FileNotFoundError, match="variant 'bf16'"):
        T5TextEncoder(k3, variant="bf16")


def test_tokenizers_agree_and_truncate(t5):
    flat, root, model, sp = t5
    a, b = T5TextEncoder(flat, max_length=6), T5TextEncoder(root, max_length=6)
    ids_a, mask_a = a.tokenize(PROMPTS)
    ids_b, mask_b = b.tokenize(PROMPTS)
    assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    assert ids_a.shape == (4, 6) and ids_a[2, -1] == 1 and mask_a[2].all()   # truncated, </s> kept
    assert ids_a[1].tolist() == [1, 0, 0, 0, 0, 0]                             # "" is just </s>
    with pytest.raises(TypeError, match="list of prompts"):
        a("one string")


def test_bfloat16_encoder_returns_float32(t5):
    enc = T5TextEncoder(t5[0], dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.bfloat16 and enc.config.dtype == "bfloat16"
    hidden, _ = enc(PROMPTS[:2])
    assert hidden.dtype == torch.float32


def test_missing_files_name_the_path(t5, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: .*nowhere"):
        T5TextEncoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no T5 config.json in .*empty.*text_encoder"):
        (tmp_path / "empty").mkdir()
        T5TextEncoder(tmp_path / "empty")
    bare = tmp_path / "bare"
    shutil.copytree(t5[0], bare, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(FileNotFoundError, match=r"no T5 tokenizer .*bare"):
        T5TextEncoder(bare)
    (bare / "model.safetensors").unlink()
    shutil.copy(t5[0] / "tokenizer.json", bare)
    with pytest.raises(FileNotFoundError, match=r"no T5 weights in .*bare"):
        T5TextEncoder(bare)


def test_cut_context_lengths_and_zeroing():
    hidden = torch.randn(3, 10, 4) + 5
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :3], mask[1, :6], mask[2, :1] = True, True, True
    h, m = cut_context(hidden, mask)
    assert h.shape == (3, 7, 4) and torch.equal(m, mask[:, :7])
    assert torch.equal(h[m], hidden[:, :7][m]) and (h[~m] == 0).all()
    h, m = cut_context(hidden, mask, zero_padding=False)
    assert torch.equal(h, hidden[:, :7])
    full = torch.ones(2, 5, dtype=torch.bool)
    h, m = cut_context(torch.randn(2, 5, 4), full)
    assert h.shape == (2, 5, 4)                                                    # never more than L


def counted(enc):
    calls = []
    forward = enc.forward

    def wrapper(prompts):
        calls.append(list(prompts))
        return forward(prompts)
    enc.forward = wrapper
    return calls


def test_cache_round_trip_equals_encoder(t5, tmp_path):
    enc = T5TextEncoder(t5[0])
    calls = counted(enc)
    cache = TextFeatureCache(tmp_path / "cache", enc)
    assert cache.precompute(PROMPTS[:3], batch_size=2) == 3 and len(calls) == 2
    hidden, mask = cache.get(PROMPTS + [PROMPTS[0]])
    assert len(calls) == 3 and calls[-1] == [PROMPTS[3]]               # only the missing caption is computed
    want = cut_context(*enc(PROMPTS + [PROMPTS[0]]))
    got = cut_context(hidden, mask)
    assert hidden.shape == want[0].shape and torch.equal(got[1], want[1])
    assert torch.equal(got[0], want[0])
    raw = enc(PROMPTS[1:2])[0]                                         # "" = </s> + the one kept padding token
    assert torch.equal(hidden[1, :2], raw[0, :2]) and (hidden[1, 2:] == 0).all()
    # stored trimmed: real tokens + 1
    assert cache._read(cache.path(PROMPTS[0]), PROMPTS[0])[0].shape[0] == mask[0].sum() + 1

    again = TextFeatureCache(tmp_path / "cache", enc)
    n_calls = len(calls)
    h2, m2 = again.get(PROMPTS)                                        # all cached: the encoder is not called
    assert len(calls) == n_calls and torch.equal(h2, hidden[:4]) and torch.equal(m2, mask[:4])

    cached = CachedTextEncoder(tmp_path / "cache")                     # no encoder: reads only
    assert cached.config == enc.config and cached.dim == 32 and not list(cached.parameters())
    h3, m3 = cached(PROMPTS[1:2])
    assert h3.shape == (1, 2, 32) and m3.tolist() == [[True, False]]


def test_cache_bfloat16_features_stored_losslessly(t5, tmp_path):
    enc = T5TextEncoder(t5[0], dtype="bfloat16")
    cache = TextFeatureCache(tmp_path / "c", enc)
    hidden, mask = cache.get(PROMPTS)
    from safetensors import safe_open
    with safe_open(str(cache.path(PROMPTS[0])), framework="pt") as f:
        assert f.get_tensor("hidden").dtype == torch.bfloat16
    want = cut_context(*enc(PROMPTS))
    assert torch.equal(cut_context(hidden, mask)[0], want[0])


def test_cache_errors(t5, tmp_path):
    enc = T5TextEncoder(t5[0])
    folder = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="cache folder .*cache not found"):
        TextFeatureCache(folder)
    cache = TextFeatureCache(folder, enc)
    cache.precompute(PROMPTS[:1], progress=False)
    with pytest.raises(TextCacheError, match=r"made by encoder 't5:.*not by 'other'"):
        TextFeatureCache(folder, identity="other")
    other = T5TextEncoder(t5[0], max_length=64)
    with pytest.raises(TextCacheError, match="max_length=128.*max_length=64"):
        TextFeatureCache(folder, other)
    reader = TextFeatureCache(folder)
    assert reader.get(PROMPTS[:1])[0].shape[0] == 1
    with pytest.raises(MissingTextFeatureError, match=r"caption 'a dog runs'.*" + str(folder.name)):
        reader.get([PROMPTS[0], "a dog runs"])
    f = reader.path(PROMPTS[0])
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(TextCacheError, match=f"damaged text feature file {f}.*delete it to recompute"):
        reader.get(PROMPTS[:1])
