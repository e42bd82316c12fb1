"""The FusionFrames interpolation UNet: the release's interpolation.pt reproduced, the paper's initialisation from a
text-to-image UNet, the release's parameter count at Kandinsky 3.0 width."""
import hashlib
import json
import shutil

import pytest
import torch
from einops import rearrange, repeat
from safetensors.torch import load_file

import kv_research as kv
from kv_research.checkpoint import CheckpointError
from kv_research.loaders import kandinsky_interpolation_key, load_kandinsky_video_interpolation
from kv_research.models.interpolation import InterpolationUNet, insert_between
from kv_research.models.text import TextEncoder, cut_context


# --------------------------------------------------------------------------------------- release fixture
@pytest.fixture(scope="module")
def release(shared_data):
    folder = shared_data / "fixtures" / "kandinsky_video_1_1"
    fx = json.loads((folder / "fixture.json").read_text())
    ck = load_kandinsky_video_interpolation(folder, unet_kwargs=fx["models"]["interpolation_unet"]["kwargs"])
    return folder, fx, ck, load_file(str(folder / "interpolation_io.safetensors"))


def test_release_files_unchanged(release):
    folder, fx, *_ = release
    for name in ("interpolation.pt", "interpolation_io.safetensors", "t5_projections.pt"):
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == fx["sha256"][name], name


def test_release_interpolation_unet_reproduced(release):
    folder, fx, ck, io = release
    u = ck.unet
    assert isinstance(u, InterpolationUNet) and u.conventions.prediction == "v"
    assert ck.null_embedding.shape == (1, 16)
    # the text as the 1.1 pipeline builds it: the keyframe model's T5 features through projection_base, padded
    # tokens zeroed after the projection, cut to longest + 1; the unconditional rows hold the null embedding
    kio = load_file(str(folder / "keyframe_io.safetensors"))
    h, m = cut_context(kio["t5_hidden"], kio["t5_mask"].bool(), zero_padding=False)
    ctx, cmask = io["context"], io["context_mask"].bool()
    with torch.no_grad():
        assert (u.project_text(h, m)[0] - ctx[0]).abs().max().item() <= 1e-6
    assert torch.equal(cmask[:3], m.expand(3, -1)) and (ctx[:3] == ctx[:1]).all()
    assert torch.equal(ctx[3:, 0], ck.null_embedding.expand(3, -1)) and ctx[3:, 1:].abs().max() == 0
    assert not cmask[3:].any()                   # all-masked rows: the release attends uniformly (see model doc)
    # the release's call: 3 groups conditional, then the same 3 with keyframes zeroed and temporal_mask 0
    x = io["x"]
    assert x[3:, :4].abs().max() == 0 and x[3:, 16:].abs().max() == 0 and torch.equal(x[:3, 4:16], x[3:, 4:16])
    assert io["temporal_mask"].tolist() == [1, 1, 1, 0, 0, 0]
    with torch.no_grad():
        out = u.forward_folded(x, io["t"], ctx, cmask, groups=3, perturbation_time=io["perturbation_time"],
                               skip_frames=io["skip_frames"], temporal_mask=io["temporal_mask"], text_projected=True)
    diff = (out - io["out"]).abs().max().item()
    print(f"max |ours - release| = {diff:.3g}")
    assert diff <= 1e-5
    # the file's count: ours without the text projection (kept in t5_projections.pt)
    assert u.parameter_counts()["params_release_layout"] == fx["models"]["interpolation_unet"]["n_params"]
    assert len(u.state_dict()) == 1723 + 3


def test_clip_interface_is_the_release_layout(release):
    """forward() on clips builds exactly the release's per-group input: [K_g, z_3g, z_3g+1, z_3g+2, K_g+1]."""
    _, _, ck, io = release
    u = ck.unet
    g = torch.Generator().manual_seed(0)
    B, C, G = 2, 4, 3
    keyframes = torch.randn(B, C, G + 1, 16, 16, generator=g)
    x = torch.randn(B, C, 3 * G, 16, 16, generator=g)
    t, tp, s = torch.tensor([900, 100]), torch.tensor([0, 40]), torch.tensor([3, 1])
    ctx, cmask = io["context"][[0, 3]], io["context_mask"][[0, 3]].bool()
    keep = torch.tensor([1.0, 0.0])
    rows, items = [], []
    for b in range(B):
        for gi in range(G):
            kl, kr = keyframes[b, :, gi] * keep[b], keyframes[b, :, gi + 1] * keep[b]
            rows.append(torch.cat([kl, x[b, :, 3 * gi], x[b, :, 3 * gi + 1], x[b, :, 3 * gi + 2], kr]))
            items.append(b)
    folded_x = torch.stack(rows)                                       # (B G, 20, h, w), clip-major
    idx = torch.tensor(items)
    with torch.no_grad():
        want = u.forward_folded(folded_x, t[idx], ctx[idx], cmask[idx], groups=G, perturbation_time=tp[idx],
                                skip_frames=s[idx], temporal_mask=keep[idx], text_projected=True)
        got = u(x, t, ctx, cmask, keyframes, perturbation_time=tp, skip_frames=s, keyframes_keep=keep,
                text_projected=True)
    assert got.shape == x.shape
    for b in range(B):
        for gi in range(G):
            for k in range(3):        # output channels (k c): frame k of group gi
                assert torch.equal(got[b, :, 3 * gi + k], want[b * G + gi, 4 * k:4 * k + 4])
    video = insert_between(keyframes, got)
    assert video.shape == (B, C, 4 * G + 1, 16, 16)
    assert torch.equal(video[:, :, ::4], keyframes) and torch.equal(video[:, :, 5:8], got[:, :, 3:6])


def test_loading_is_strict(release, tmp_path):
    folder, fx, ck, _ = release
    kwargs = fx["models"]["interpolation_unet"]["kwargs"]
    shutil.copy(folder / "t5_projections.pt", tmp_path / "t5_projections.pt")
    raw = torch.load(folder / "interpolation.pt", weights_only=True)
    sd = dict(raw["unet"])
    tp = "down_samples.1.resnet_attn_blocks.0.0.resnet_blocks.1.temporal_projection_new.temporal_projection.weight"
    assert kandinsky_interpolation_key(tp) == \
        "down_blocks.1.resnets_in.0.resnet_blocks.1.temporal_projection.conv.weight"
    del sd["skip_embeddings.weight"]
    del sd["up_samples.0.temporal_attention_block.temporal_merge2"]
    sd["temporal_conv_in.temporal_merge"] = torch.zeros(1)                # add_new_temporal_params=True's key
    sd[tp] = sd[tp][:, :, :1]                                            # (8, 8, 1, 1, 1) instead of (8, 8, 3, 1, 1)
    torch.save({"unet": sd, "null_embedding": raw["null_embedding"]}, tmp_path / "interpolation.pt")
    with pytest.raises(CheckpointError) as e:
        load_kandinsky_video_interpolation(tmp_path, unet_kwargs=kwargs)
    msg = str(e.value)
    assert str(tmp_path / "interpolation.pt") in msg
    for part in ("2 missing keys", "skip_embedding.weight", "up_blocks.0.temporal_attention_block.feed_forward_merge",
                 "1 unexpected keys", "temporal_conv_in.temporal_merge", "1 shape mismatches",
                 "resnet_blocks.1.temporal_projection.conv.weight: file (8, 8, 1, 1, 1) vs model (8, 8, 3, 1, 1)"):
        assert part in msg, part
    with pytest.raises(CheckpointError, match="add_new_temporal_params=True"):
        load_kandinsky_video_interpolation(folder, unet_kwargs={**kwargs, "add_new_temporal_params": True})
    with pytest.raises(FileNotFoundError, match="interpolation.pt"):
        load_kandinsky_video_interpolation(tmp_path / "nowhere")


# --------------------------------------------------------------------------- the paper's initialisation
@pytest.fixture(scope="module")
def smoke(smoke_image_unet):
    p = kv.get_preset("smoke")
    img = smoke_image_unet
    with torch.no_grad():
        text, mask = TextEncoder(p.text)(["a small red circle moves left quickly", "a big blue square stays still"])
    g = torch.Generator().manual_seed(1)
    G = 2                                            # 3 keyframes, 6 in-between frames per clip
    x = torch.randn(2, 3, 3 * G, p.size, p.size, generator=g)
    keyframes = torch.randn(2, 3, G + 1, p.size, p.size, generator=g)
    return img, text, mask, x, keyframes, torch.tensor([10, 700])


def test_init_predicts_the_image_model_three_times(smoke):
    """At initialisation: every output frame of group g = the image model's prediction for the group's first noisy
    frame x[:, :, 3g] (the zero-padded input conv sees only it, the replicated output conv gives three copies, all
    merges are 0), whatever the keyframes, t_p, s and temporal_mask. Bitwise here when the image model runs on the
    same batch (the B G groups as one batch); <= 1e-6 asserted (BLAS may round differently elsewhere)."""
    img, text, mask, x, keyframes, t = smoke
    m = InterpolationUNet.from_image(img).eval()
    assert m.conv_in.weight.shape[1] == 15 and m.conv_out.weight.shape[0] == 9
    B, G = x.shape[0], x.shape[2] // 3

    def image_model(frames):        # (b, c, g, h, w): each group's frame alone through the image model
        per = img(rearrange(frames, "b c g h w -> (b g) c 1 h w"), repeat(t, "b -> (b g)", g=G),
                  repeat(text, "b l d -> (b g) l d", g=G), repeat(mask, "b l -> (b g) l", g=G))
        return rearrange(per[:, :, 0], "(b g) c h w -> b c g h w", g=G)
    with torch.no_grad():
        ref = image_model(x[:, :, 0::3])
        for kw in (dict(temporal_mask=torch.zeros(B)),                    # keyframes given, temporal layers off
                   dict(temporal_mask=torch.ones(B), perturbation_time=torch.tensor([0, 250]),
                        skip_frames=torch.tensor([12, 1])),
                   dict(keyframes_keep=torch.tensor([0.0, 1.0]))):
            out = m(x, t, text, mask, keyframes, **kw)
            assert out.shape == x.shape
            frames = rearrange(out, "b c (g k) h w -> k b c g h w", k=3)
            for k in range(3):
                assert (frames[k] - frames[0]).abs().max().item() <= 1e-6      # three identical frames
                assert (frames[k] - ref).abs().max().item() <= 1e-6            # = the image model, frame by frame
        # and frame by frame in the plain sense: the image model called on one frame of one clip at a time
        one = img(x[:1, :, 3:4], t[:1], text[:1], mask[:1])[:, :, 0]
        assert (out[:1, :, 3:6] - one[:, :, None]).abs().max().item() <= 1e-5
    mean = InterpolationUNet.from_image(img, noisy_init="mean").eval()
    with torch.no_grad():
        out = mean(x, t, text, mask, keyframes, temporal_mask=torch.zeros(B))
        want = image_model(rearrange(x, "b c (g k) h w -> b c g k h w", k=3).mean(3))
    assert (out[:, :, 1::3] - want).abs().max().item() <= 1e-4      # W/3 on each noisy frame: rounding of the sum


def test_trained_temporal_layers_are_masked_off_and_trainable(smoke):
    img, text, mask, x, keyframes, t = smoke
    m = InterpolationUNet.from_image(img)
    assert all(p.requires_grad for p in m.parameters())
    out = m(x, t, text, mask, keyframes, temporal_mask=torch.ones(2))
    out.square().mean().backward()
    for name, p in m.named_parameters():              # every merge starts at 0 and gets a gradient
        if name.endswith("merge"):
            assert p.item() == 0 and p.grad is not None and p.grad.abs().item() > 0, name
    # as if trained: new parameters and the keyframe channels random
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "temporal" in name or name.split(".")[0] in ("perturbation_merge", "skip_merge"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        m.conv_in.weight.add_(torch.randn(m.conv_in.weight.shape, generator=g) * 0.1)
    m.eval()
    with torch.no_grad():
        off = m(x, t, text, mask, keyframes, temporal_mask=torch.zeros(2))
        on = m(x, t, text, mask, keyframes, temporal_mask=torch.ones(2))
        # temporal_mask 0: groups are predicted independently (the unconditional branch never mixes groups)
        alone = torch.cat([m(x[:, :, 3 * i:3 * i + 3], t, text, mask, keyframes[:, :, i:i + 2],
                             temporal_mask=torch.zeros(2)) for i in range(2)], dim=2)
        other_kf = m(x, t, text, mask, keyframes.flip(2), temporal_mask=torch.zeros(2))
    assert (off - alone).abs().max().item() <= 1e-5
    assert (on - off).abs().max().item() > 1e-3 and (other_kf - off).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="text-to-image"):
        InterpolationUNet.from_image(kv.inflate(img, "Conv1dAttn1dLayers"))


# ------------------------------------------------------------------------------------------ parameter count
def test_paper_width_parameter_count_matches_the_release():
    with torch.device("meta"):
        img = kv.build_unet("Spatial", preset="paper")
    m = InterpolationUNet.from_image(img)
    assert m.conv_in.weight.is_meta
    c = m.parameter_counts()
    print(c)
    proj = sum(p.numel() for p in m.encoder_hid_proj.parameters())   # Linear(4096, 4096) + LayerNorm(4096)
    assert proj == 16_785_408
    assert c["params_release_layout"] == c["params_total"] - proj == 3_979_941_530
    assert c["params_temporal"] == 938_649_228
    assert len(m.state_dict()) == 1723 + 3
