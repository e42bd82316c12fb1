"""Model side: every variant's shape, identity at initialisation, image mode, receptive fields, parameter facts."""
import dataclasses
import json

import pytest
import torch

import kv_research as kv
from kv_research.config import UNetConfig
from kv_research.models import temporal as T
from kv_research.models.layers import ConditionalGroupNorm, Context
from kv_research.models.text import TextEncoder, tokenize, word_id

ALL = list(kv.VARIANTS)


@pytest.fixture(scope="module")
def smoke():
    torch.manual_seed(0)
    p = kv.get_preset("smoke")
    img = kv.build_unet("Spatial", preset="smoke")
    te = TextEncoder(p.text)
    with torch.no_grad():
        text, mask = te(["a small red circle moves left quickly", "a big blue square stays still"])
    x = torch.randn(2, 3, p.frames, p.size, p.size)
    t = torch.tensor([10, 700])
    return p, img, text, mask, x, t


def randomize_zero_outputs(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every inflation-added parameter random values (the zero-initialised outputs included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if kv.models.is_inflation_param(n):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)


def test_registry_has_grammar_and_paper_names():
    names = {f"Conv{c}Attn{a}{p}" for c in ("1d", "3d") for a in ("1d", "3d") for p in ("Blocks", "Layers")}
    assert names | {"Spatial"} == set(kv.VARIANTS)
    assert {n for n, s in kv.VARIANTS.items() if s.in_paper} == {
        "Conv1dAttn1dLayers", "Conv1dAttn1dBlocks", "Conv1dAttn3dBlocks", "Conv3dAttn1dBlocks"}
    with pytest.raises(KeyError, match="conv1dattn1dblocks.*Did you mean 'Conv1dAttn1dBlocks'"):
        kv.get_variant("conv1dattn1dblocks")


@pytest.mark.parametrize("variant", ALL)
def test_shape_and_identity_at_init(smoke, variant):
    p, img, text, mask, x, t = smoke
    vid = kv.inflate(img, variant)
    assert vid.config.variant == variant and img.config.variant == "Spatial"
    with torch.no_grad():
        ref = img(x, t, text, mask)
        out = vid(x, t, text, mask, motion_score=torch.tensor([3.0, 40.0]), noise_level=torch.tensor([0.0, 20.0]))
    assert out.shape == x.shape
    assert (out - ref).abs().max().item() < 1e-5
    # frame by frame: the image model on each frame alone gives the same frames
    with torch.no_grad():
        per_frame = torch.cat([img(x[:, :, i:i + 1], t, text, mask) for i in range(x.shape[2])], dim=2)
    assert (per_frame - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", ALL)
def test_image_mode_equals_image_model_even_after_training(smoke, variant):
    p, img, text, mask, x, t = smoke
    vid = kv.inflate(img, variant)
    randomize_zero_outputs(vid)          # as if the temporal modules had been trained
    x1 = x[:, :, :1]
    with torch.no_grad():
        # equal up to float rounding: inflate() deep-copies the weights, and on AMD EPYC even MKL_CBWR=AUTO,STRICT
        # rounds matrix products differently with the operands' memory alignment (seen: 3.6e-7; exact with
        # MKL_CBWR=COMPATIBLE); a temporal path leaking into image mode would be orders of magnitude larger
        assert (vid(x1, t, text, mask) - img(x1, t, text, mask)).abs().max() <= 1e-6
        if kv.get_variant(variant).temporal:  # and video mode really uses the temporal modules now
            assert (vid(x, t, text, mask) - img(x, t, text, mask)).abs().max() > 1e-3


def test_spatial_control_keeps_frames_independent(smoke):
    p, img, text, mask, x, t = smoke
    ctrl = kv.inflate(img, "Spatial")
    randomize_zero_outputs(ctrl)
    x = x.clone().requires_grad_(True)
    out = ctrl(x, t, text, mask, first_frame=x[:, :, 0].detach())
    out[:, :, 0].sum().backward()
    assert x.grad[:, :, 1:].abs().max() == 0          # frame 0's output never sees other frames
    assert x.grad[:, :, 0].abs().max() > 0


def test_spatial_weights_frozen_by_default(smoke):
    _, img, *_ = smoke
    vid = kv.inflate(img, "Conv1dAttn1dBlocks")
    for n, prm in vid.named_parameters():
        assert prm.requires_grad == kv.models.is_inflation_param(n), n
    vid2 = kv.inflate(img, "Conv1dAttn1dBlocks", train_spatial=True)
    assert all(prm.requires_grad for prm in vid2.parameters())
    with pytest.raises(ValueError, match="already inflated"):
        kv.inflate(vid, "Conv3dAttn1dBlocks")


# ------------------------------------------------------------------------------------- receptive fields
def _ctx(b, t, e=16):
    emb = torch.zeros(b * t, e)
    return Context(emb=emb, text=torch.zeros(b, 1, 8), text_mask=torch.zeros(b, 1, 1, 1), frames=t,
                   temb=torch.randn(b * t, e))


def _influence(module, frames=7, hw=8, c=8, src_frame=0, dst_frame=3, pixel=(3, 4)):
    """|d out[dst_frame, :, pixel] / d in[src_frame, :, h, w]| summed over channels -> (h, w) map, and per frame."""
    # GroupNorm statistics span the whole frame by design; remove them to isolate the operator's own reach
    for m in module.modules():
        if isinstance(m, ConditionalGroupNorm):
            m.norm = torch.nn.Identity()
    randomize_all(module)
    x = torch.randn(frames, c, hw, hw, requires_grad=True)          # (b t) c h w with b = 1
    out = module(x, _ctx(1, frames))
    out[dst_frame, :, pixel[0], pixel[1]].sum().backward()
    g = x.grad.abs().sum(1)                                           # (t, h, w)
    return g[src_frame], g.flatten(1).amax(1)


def randomize_all(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in module.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)


def _nonzero_pixels(m):
    return {tuple(i) for i in (m > 0).nonzero().tolist()}


def test_attn1d_reaches_every_frame_at_the_same_pixel_only():
    rf, per_frame = _influence(T.TemporalAttentionBlock("1d", 8, 16, 4, 4))
    assert _nonzero_pixels(rf) == {(3, 4)}
    assert (per_frame > 0).all()                       # full attention across all 7 frames


def test_attn3d_reaches_the_2x2_window():
    rf, per_frame = _influence(T.TemporalAttentionBlock("3d", 8, 16, 4, 4))
    assert _nonzero_pixels(rf) == {(2, 4), (2, 5), (3, 4), (3, 5)}  # window of pixel (3, 4)
    assert (per_frame > 0).all()
    a1, a3 = T.TemporalAttentionBlock("1d", 8, 16, 4, 4), T.TemporalAttentionBlock("3d", 8, 16, 4, 4)
    assert sum(q.numel() for q in a1.parameters()) == sum(q.numel() for q in a3.parameters())


def test_conv1d_block_reach_is_two_frames_and_one_pixel():
    rf, per_frame = _influence(T.TemporalResNetBlock("1d", 8, 16, 4))
    assert (per_frame > 0).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]   # two 3x1x1 convs: +-2 frames
    rf_src1, _ = _influence(T.TemporalResNetBlock("1d", 8, 16, 4), src_frame=1)
    assert _nonzero_pixels(rf_src1) == {(3, 4)}


def test_conv3d_block_reach_is_two_frames_and_5x5_pixels():
    _, per_frame = _influence(T.TemporalResNetBlock("3d", 8, 16, 4))
    assert (per_frame > 0).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
    rf, _ = _influence(T.TemporalResNetBlock("3d", 8, 16, 4), src_frame=1)
    assert _nonzero_pixels(rf) == {(h, w) for h in range(1, 6) for w in range(2, 7)}   # two 3x3x3: +-2 px


def test_conv_layers_reach_one_frame_each():
    _, per_frame = _influence(T.TemporalConvLayer("1d", 8, 16, 4))
    assert (per_frame > 0).nonzero().flatten().tolist() == [2, 3, 4]
    rf, per_frame = _influence(T.TemporalConvLayer("3d", 8, 16, 4), src_frame=2)
    assert (per_frame > 0).nonzero().flatten().tolist() == [2, 3, 4]
    assert _nonzero_pixels(rf) == {(h, w) for h in range(2, 5) for w in range(3, 6)}   # one 3x3x3: +-1 px


@pytest.mark.parametrize("variant", ["Conv1dAttn1dBlocks", "Conv1dAttn3dLayers", "Conv3dAttn1dBlocks"])
def test_inflated_model_mixes_frames(smoke, variant):
    p, img, text, mask, x, t = smoke
    vid = kv.inflate(img, variant)
    randomize_zero_outputs(vid)
    x = x.clone().requires_grad_(True)
    vid(x, t, text, mask)[:, :, -1].sum().backward()
    assert x.grad[:, :, 0].abs().max() > 0            # the last frame sees the first one


# ------------------------------------------------------------------------------------------ parameters
def test_parameter_facts_from_variants_json(capsys):
    from kv_research.variants import main
    assert main(["--preset", "quick", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(kv.VARIANTS)
    b = rows["Conv1dAttn1dBlocks"]
    assert rows["Conv1dAttn3dBlocks"]["params_total"] == b["params_total"]
    assert abs(rows["Conv3dAttn1dBlocks"]["params_temporal"] / b["params_temporal"] - 1) <= 0.25
    for c in ("1d", "3d"):
        for a in ("1d", "3d"):
            assert rows[f"Conv{c}Attn{a}Layers"]["params_temporal"] < rows[f"Conv{c}Attn{a}Blocks"]["params_temporal"]
    assert rows["Spatial"]["params_temporal"] == 0
    assert all(r["gflops"] > 0 for r in rows.values())
    assert rows["Conv1dAttn1dBlocks"]["gflops"] > rows["Spatial"]["gflops"]


def test_conv3d_width_matches_conv1d_parameters():
    def n(m):
        return sum(q.numel() for q in m.parameters())
    for c, e, g in ((64, 128, 8), (384, 1536, 32), (1536, 1536, 32)):     # quick and paper widths
        h = T.conv3d_hidden(c, e, g)
        assert h % g == 0
        n1 = n(T.TemporalResNetBlock("1d", c, e, g))
        n3 = {r: n(T.TemporalResNetBlock("3d", c, e, g, hidden=r)) for r in (h - g, h, h + g) if r > 0}
        assert abs(n3[h] / n1 - 1) < 0.15, (c, h, n1, n3)
        assert all(abs(v - n1) >= abs(n3[h] - n1) for v in n3.values())       # the closest multiple of g
        l1 = n(T.TemporalConvLayer("1d", c, e, g))
        l3 = n(T.TemporalConvLayer("3d", c, e, g))
        assert abs(l3 / l1 - 1) < 0.02, (c, l1, l3)


def test_kv11_temporal_block_is_the_released_bottleneck():
    blk = T.TemporalResNetBlock("1d", 384, 1536, 32)
    shapes = {n: tuple(p.shape) for n, p in blk.named_parameters()}
    assert shapes["temporal_resnet_blocks.0.2.weight"] == (192, 384, 1, 1, 1)
    assert shapes["temporal_resnet_blocks.1.2.weight"] == (192, 192, 3, 1, 1)
    assert shapes["temporal_resnet_blocks.3.2.weight"] == (384, 192, 1, 1, 1)
    assert shapes["temporal_resnet_blocks.0.0.context_mlp.1.weight"] == (768, 1536)


def test_paper_preset_parameter_facts():
    """Spatial = diffusers' Kandinsky 3.0 UNet; Conv1dAttn1dBlocks in the release's layout = the released t2v UNet."""
    from kv_research.variants import variant_table
    rows = {r["name"]: r for r in variant_table("paper", ["Spatial", "Conv1dAttn1dBlocks", "Conv3dAttn1dBlocks",
                                                          "Conv1dAttn1dLayers"])}
    assert rows["Spatial"]["params_total"] == 3_055_348_228
    assert rows["Conv1dAttn1dBlocks"]["params_release_layout"] == 4_149_077_956
    # temporal part of the release: 48 temporal ResNet blocks, 6 attention blocks, 3 embedding MLPs + in_layer
    assert rows["Conv1dAttn1dBlocks"]["params_temporal"] == 1_110_490_752 + 15_744
    assert abs(rows["Conv3dAttn1dBlocks"]["params_temporal"] / rows["Conv1dAttn1dBlocks"]["params_temporal"] - 1) < 0.01
    assert rows["Conv1dAttn1dLayers"]["params_temporal"] < rows["Conv1dAttn1dBlocks"]["params_temporal"]


# ------------------------------------------------------------------------------- attention chunking
def test_temporal_attention_chunks_huge_batches(monkeypatch):
    torch.manual_seed(0)
    attn = T.TemporalAttention(channels=4, head_dim=4, window=1)
    with torch.no_grad():
        attn.to_out[0].weight.normal_()
    x = torch.randn(2, 4, 260, 260)                       # b * h * w = 67,600 > 65,535 with t = 2
    ctx = Context(torch.zeros(2, 8), None, None, 2, torch.zeros(2, 8))
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[0]) or real(q, *a, **k))
    with torch.no_grad():
        out = attn(x, ctx)
    assert len(calls) >= 2 and max(calls) * attn.heads <= 65535
    attn.max_batch = 10 ** 9
    calls.clear()
    with torch.no_grad():
        ref = attn(x, ctx)
    assert len(calls) == 1 and torch.allclose(out, ref, atol=1e-6)


# --------------------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_equivalence(smoke):
    p, img, text, mask, x, t = smoke
    vid = kv.inflate(img, "Conv1dAttn1dBlocks")
    randomize_zero_outputs(vid)
    vid_ck = kv.inflate(img, "Conv1dAttn1dBlocks")
    vid_ck.load_state_dict(vid.state_dict())
    vid_ck.config = dataclasses.replace(vid_ck.config, checkpointing=True)
    grads = []
    for m in (vid, vid_ck):
        m.train()
        loss = m(x, t, text, mask).square().mean()
        loss.backward()
        grads.append((loss.item(), {n: q.grad.clone() for n, q in m.named_parameters() if q.grad is not None}))
    assert abs(grads[0][0] - grads[1][0]) < 1e-6
    assert grads[0][1].keys() == grads[1][1].keys()
    for n in grads[0][1]:
        assert torch.allclose(grads[0][1][n], grads[1][1][n], atol=1e-5), n


def test_text_tokens_of_synthetic_vocabulary_do_not_collide():
    from kv_research.data import synthetic as S
    vocab = set(S.SHAPES) | set(S.COLORS) | set(S.SIZES) | set(S.DIRECTIONS) | set(S.SPEEDS) | set(S.BACKGROUNDS)
    vocab |= {"a", "moves", "stays", "still", "and", "over", "background"}
    ids = {word_id(w, 4096) for w in vocab}
    assert len(ids) == len(vocab)
    ids_, m = tokenize(["", "a red circle"], kv.get_preset("smoke").text)
    assert m.sum(1).tolist() == [1, 4]                  # BOS only for the empty (unconditional) prompt


def test_bad_input_channels_message(smoke):
    _, img, text, mask, x, t = smoke
    with pytest.raises(ValueError, match="expected 3 input channels"):
        img(x[:, :2], t, text, mask)
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        UNetConfig(block_out_channels=(16, 32, 32, 64), groups=3, attention_head_dim=8, time_embedding_dim=64)
    with pytest.raises(ValueError, match="attention_head_dim=5"):
        UNetConfig(block_out_channels=(16, 32, 32, 64), groups=4, attention_head_dim=5, time_embedding_dim=64)
    with pytest.raises(ValueError, match="layers_per_block must be >= 2"):
        UNetConfig(block_out_channels=(16, 32, 32, 64), groups=4, layers_per_block=1)
