"""kv_research.memory: parameter-side figures, the measured activations, and gradient checkpointing on CPU."""
import copy
import dataclasses
import math

import pytest
import torch

import kv_research as kv
from kv_research.memory import GIB, SavedTensorRecorder, block_regions, estimate_training_memory, format_memory

B, T, S, L = 2, 4, 16, 24          # smoke preset: 3 pixel channels, 32-d text


def _randomize_inflation_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every inflation-added parameter (zero-initialised outputs included), so gradients reach
    the temporal modules (as tests/test_model.py does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if kv.models.is_inflation_param(n):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def vid():
    torch.manual_seed(0)
    m = kv.inflate(kv.build_unet("Spatial", preset="smoke"), "Conv1dAttn1dBlocks")
    _randomize_inflation_params(m)
    return m


def _inputs(b=B, t=T, s=S):
    return ((torch.zeros(b, 3, t, s, s), torch.zeros(b, dtype=torch.long), torch.zeros(b, L, 32),
             torch.ones(b, L, dtype=torch.bool)),
            dict(first_frame=torch.zeros(b, 3, s, s), motion_score=torch.zeros(b), noise_level=torch.zeros(b)))


def _real_saved(model, checkpointing):
    """The same measurement on a real CPU forward (real tensors, real storages)."""
    old = model.config
    model.config = dataclasses.replace(old, checkpointing=checkpointing)
    model.train()
    args, kwargs = _inputs()
    try:
        with SavedTensorRecorder(exclude=model.parameters(), regions=block_regions(model)) as rec:
            model(*args, **kwargs)
    finally:
        model.config = old
    return rec


def test_parameter_figures_are_exact_counts(vid):
    frozen = sum(p.numel() for p in vid.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in vid.parameters() if p.requires_grad)
    assert frozen and trainable
    est = estimate_training_memory(vid, frames=T, latent_size=S, batch=B, text_len=L)
    b = est["bytes"]
    assert est["params"] == {"total": frozen + trainable, "frozen": frozen, "trainable": trainable}
    assert b["weights_frozen"] == 2 * frozen                      # bf16
    assert b["weights_trainable"] == b["gradients"] == b["ema"] == 4 * trainable
    assert b["optimizer"] == 8 * trainable                       # AdamW: 2 fp32 states
    assert b["total"] == 2 * frozen + 20 * trainable + b["activations"]
    assert b["total_checkpointed"] == 2 * frozen + 20 * trainable + b["activations_checkpointed"]
    assert est["gib"]["total"] == b["total"] / GIB
    z = estimate_training_memory(vid, world=4, zero1=True, weight_dtype=torch.float32, activations=False)
    assert z["bytes"]["activations"] is None and z["bytes"]["total"] is None
    assert z["bytes"]["optimizer"] == 8 * math.ceil(trainable / 4)
    assert z["bytes"]["weights_frozen"] == 4 * frozen and z["bytes"]["gradients"] == 4 * trainable
    assert estimate_training_memory(vid, optimizer="sgd", activations=False)["bytes"]["optimizer"] == 0
    with pytest.raises(ValueError, match="optimizer"):
        estimate_training_memory(vid, optimizer="lion", activations=False)
    with pytest.raises(ValueError, match="frames and latent_size"):
        estimate_training_memory(vid)
    assert "activations, checkpointing" in format_memory(est)
    assert "not measured" in format_memory(z)


def test_activations_equal_a_real_cpu_run_and_its_meta_copy(vid):
    kw = dict(frames=T, latent_size=S, batch=B, text_len=L, weight_dtype=torch.float32, autocast_dtype=None,
              device="cpu")
    est = estimate_training_memory(vid, **kw)
    d = est["activation_detail"]
    plain, ckpt = _real_saved(vid, False), _real_saved(vid, True)
    assert est["bytes"]["activations"] == plain.nbytes() > 0
    assert d["saved_outside_blocks_checkpointed"] == ckpt.nbytes(None)
    assert d["seen_inside_checkpointed_blocks"] == 0 == sum(ckpt.nbytes(n) for n in block_regions(vid))
    for name in block_regions(vid):          # the real per-block sets are what the estimate took the largest of
        assert d["per_block"][name] <= plain.nbytes(name)
    meta = copy.deepcopy(vid).to("meta")
    assert next(meta.parameters()).is_meta
    assert estimate_training_memory(meta, **kw)["bytes"] == est["bytes"]
    # and the default (CUDA-policy) measurement does not depend on where the model lives either
    kw.update(weight_dtype=torch.bfloat16, autocast_dtype=torch.bfloat16, device=None)
    assert estimate_training_memory(meta, **kw)["bytes"] == estimate_training_memory(vid, **kw)["bytes"]


def test_checkpointing_lowers_activations_and_they_scale_linearly(vid):
    def act(frames=T, batch=1):
        e = estimate_training_memory(vid, frames=frames, latent_size=S, batch=batch, text_len=L)
        return e["bytes"]["activations"], e["bytes"]["activations_checkpointed"], e["activation_detail"]

    a, ac, d = act()
    assert 0 < ac < a
    assert d["seen_inside_checkpointed_blocks"] == 0
    assert d["largest_block"] in block_regions(vid)
    for key, value in (("frames", 3 * T), ("batch", 2)):
        k = value / (T if key == "frames" else 1)
        a2, ac2, _ = act(**{key: value})
        assert a2 / a == pytest.approx(k, rel=0.05) and ac2 / ac == pytest.approx(k, rel=0.05), key


def test_meta_fallback_counts_float32_at_the_autocast_size(vid):
    fp32 = estimate_training_memory(vid, frames=T, latent_size=S, text_len=L, weight_dtype=torch.float32,
                                    autocast_dtype=None, device="meta")
    half = estimate_training_memory(vid, frames=T, latent_size=S, text_len=L, device="meta")
    assert "meta" in half["activation_detail"]["activation_method"]
    assert 0.45 < half["bytes"]["activations"] / fp32["bytes"]["activations"] < 0.55


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(vid):
    a = copy.deepcopy(vid)
    b = copy.deepcopy(vid)
    b.config = dataclasses.replace(b.config, checkpointing=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, T, S, S, generator=g)
    target = torch.randn(B, 3, T, S, S, generator=g)
    text = torch.randn(B, L, 32, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 10:] = False
    kw = dict(first_frame=torch.randn(B, 3, S, S, generator=g), motion_score=torch.tensor([3.0, 30.0]),
              noise_level=torch.tensor([0.0, 20.0]))
    t = torch.tensor([10, 700])
    out = []
    for m in (a, b):
        m.train()
        loss = torch.nn.functional.mse_loss(m(x, t, text, mask, **kw), target)
        loss.backward()
        out.append((loss.item(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = out
    assert abs(la - lb) <= 1e-6
    assert ga.keys() == gb.keys() == {n for n, p in vid.named_parameters() if p.requires_grad}
    assert all(ga[n].abs().max() > 0 for n in ga if "temporal_resnet_blocks.3" in n)   # gradients reach them
    worst = max((ga[n] - gb[n]).abs().max().item() for n in ga)
    assert worst <= 1e-6, worst


def test_paper_preset_estimate_on_meta():
    est = estimate_training_memory("paper", variant="Conv1dAttn1dBlocks", frames=16, latent_size=64)
    with torch.device("meta"):
        unet = kv.inflate(kv.build_unet("Spatial", preset="paper"), "Conv1dAttn1dBlocks")
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert est["params"]["trainable"] == trainable
    assert est["params"]["frozen"] == 3_055_348_228                  # Kandinsky 3.0's UNet, frozen
    g = est["gib"]
    assert g["weights_frozen"] == pytest.approx(5.69, abs=0.01)     # 3.06e9 x 2 bytes
    assert g["optimizer"] == pytest.approx(2 * g["gradients"]) == pytest.approx(8 * trainable / GIB)
    assert 1 < g["activations_checkpointed"] < g["activations"] < 200
    assert g["total_checkpointed"] < 80                              # fits one 80 GB GPU with checkpointing
    s = est["setting"]
    assert (s["preset"], s["frames"], s["latent_size"], s["text_len"]) == ("paper", 16, 64, 128)
