"""Latent codecs: the pixel identity codec, diffusers' MoVQ (a tiny random VQModel in a Kandinsky 3.0 folder), and the
Kandinsky Video 1.1 release's image MoVQ (the shared fixture), plus the loaders' errors."""
import json

import pytest
import torch
from einops import rearrange

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file, save_file  # noqa: E402

from kv_research.checkpoint import CheckpointError  # noqa: E402
from kv_research.diffusion import from_model, to_model  # noqa: E402
from kv_research.models.codec import (MoVQCodec, PixelCodec, load_codec, release_movq_key,  # noqa: E402
                                      release_vq_config)
from kv_research.weights import sha256_file  # noqa: E402

# diffusers' own VQModel test config (spatial norms, as Kandinsky 3.0's MoVQ)
TINY = dict(in_channels=3, out_channels=3, block_out_channels=[32, 64],
            down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], layers_per_block=1, norm_num_groups=8,
            norm_type="spatial", num_vq_embeddings=12, latent_channels=4, vq_embed_dim=4)


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------- pixels
def test_pixel_codec_is_the_pipelines_mapping():
    c = PixelCodec()
    assert (c.latent_channels, c.scale_factor) == (3, 1)
    video = torch.rand(2, 3, 5, 8, 6)
    z = c.encode(video)
    assert z.shape == (2, 3, 5, 8, 6) and z.dtype == torch.float32
    assert torch.equal(z, to_model(video))                      # bit-identical to the pipeline's 2x - 1
    assert torch.equal(c.decode(z), video)                      # exact round trip (rand values are dyadic)
    assert torch.equal(c.decode(z * 3), from_model(z * 3))      # clamped like the pipeline
    img = torch.rand(4, 3, 8, 8)
    assert c.encode(img).shape == (4, 3, 8, 8) and torch.equal(c.decode(c.encode(img)), img)
    grid = torch.arange(256.0).div(255).expand(1, 3, 1, 2, 256)  # 8-bit frames: within 1 ulp
    assert maxdiff(c.decode(c.encode(grid)), grid) <= 6e-8
    assert c.encode(img.double()).dtype == torch.float32
    json.dumps(c.identity())
    assert load_codec(None).identity() == load_codec("pixels").identity() == c.identity()
    with pytest.raises(ValueError, match="expects"):
        c.encode(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="expects"):
        c.decode(torch.rand(3, 8, 8))


# -------------------------------------------------------------------------------- diffusers Kandinsky 3.0
@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    torch.manual_seed(0)
    vq = diffusers.VQModel(**TINY).eval()
    root = tmp_path_factory.mktemp("codec") / "kandinsky3"
    vq.save_pretrained(root / "movq")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "Kandinsky3Pipeline"}))
    return root, vq


def test_movq_from_diffusers_folder_matches_vqmodel(k3):
    root, vq = k3
    codec = MoVQCodec.from_pretrained(root)
    same = MoVQCodec.from_pretrained(root / "movq")
    assert isinstance(load_codec(str(root)), MoVQCodec)
    assert (codec.latent_channels, codec.scale_factor) == (4, 2)
    ident = codec.identity()
    assert json.loads(json.dumps(ident)) == ident == same.identity()  # path-free: root and movq/ agree
    assert ident["sha256"] == {"diffusion_pytorch_model.safetensors":
                               sha256_file(root / "movq" / "diffusion_pytorch_model.safetensors")}
    assert "scaling_factor" in ident["config"] and ident["dtype"] == "float32"

    torch.manual_seed(1)
    frames = torch.rand(6, 3, 16, 16)
    with torch.no_grad():  # the VQModel's own calls, as Kandinsky3Pipeline makes them
        ref_z = vq.encode(frames * 2 - 1).latents
        ref_y = ((vq.decode(ref_z, force_not_quantize=True).sample + 1) / 2).clamp(0, 1)
    for c in (codec, same):
        z = c.encode(frames)
        assert z.shape == (6, 4, 8, 8) and maxdiff(z, ref_z) == 0
        assert maxdiff(c.decode(ref_z), ref_y) == 0

    video = rearrange(frames, "(b t) c h w -> b c t h w", b=2)  # (B*T,3,H,W) -> (B,3,T,H,W), B=2, T=3
    zv = codec.encode(video)
    assert zv.shape == (2, 4, 3, 8, 8)
    per_frame = torch.stack([codec.encode(video[:, :, t]) for t in range(3)], 2)  # (B,4,h,w) x T -> (B,4,T,h,w)
    assert maxdiff(zv, per_frame) <= 1e-6
    yv = codec.decode(zv)
    assert yv.shape == (2, 3, 3, 16, 16) and yv.dtype == torch.float32 and 0 <= yv.min() <= yv.max() <= 1
    assert maxdiff(yv, torch.stack([codec.decode(zv[:, :, t]) for t in range(3)], 2)) <= 1e-6
    for n in (1, 4):  # chunks of 1 and 4 frames over B*T = 6: same results
        chunked = MoVQCodec(vq, "in memory", chunk_size=n)
        # another batch size changes BLAS blocking: equal up to float rounding (1.07e-6 seen on this AMD machine)
        assert maxdiff(chunked.encode(video), zv) <= 1e-5
        assert maxdiff(chunked.decode(zv), yv) <= 1e-5
    assert MoVQCodec(vq).identity()["sha256"].keys() == {"state_dict"}
    with pytest.raises(ValueError, match="multiple"):
        codec.encode(torch.rand(1, 3, 15, 16))


def test_movq_folder_with_missing_key_is_refused(k3, tmp_path):
    root, vq = k3
    bad = tmp_path / "movq"
    bad.mkdir()
    (bad / "config.json").write_text((root / "movq" / "config.json").read_text())
    state = load_file(str(root / "movq" / "diffusion_pytorch_model.safetensors"))
    state.pop("decoder.conv_out.bias")
    save_file(state, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(decoder\.conv_out\.bias\)"):
        MoVQCodec.from_pretrained(bad)
    (bad / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no VQModel weights in .*found: config.json"):
        MoVQCodec.from_pretrained(bad)


# --------------------------------------------------------------------------- Kandinsky Video 1.1 release
@pytest.fixture(scope="module")
def fixture_dir(shared_data):
    return shared_data / "fixtures" / "kandinsky_video_1_1"


@pytest.fixture(scope="module")
def release(fixture_dir):
    meta = json.loads((fixture_dir / "fixture.json").read_text())
    params = meta["models"]["movq"]["params"]
    codec = MoVQCodec.from_release(fixture_dir / "movq.pt", params)
    return codec, params, load_file(str(fixture_dir / "movq_io.safetensors")), meta


def test_release_movq_reproduces_fixture(release):
    codec, params, io, meta = release
    frames, latents, decoded = io["frames"], io["latents"], io["image_decoded"]  # frames in [-1, 1]: MoVQ.encode(x)
    assert frames.min() < -0.9 and frames.max() > 0.9
    assert (codec.latent_channels, codec.scale_factor) == (4, 2)
    with torch.no_grad():
        d_enc = maxdiff(codec.vq.encode(frames).latents, latents)
        d_dec = [maxdiff(codec.vq.decode(latents[i:i + 1], force_not_quantize=True).sample, decoded[i:i + 1])
                 for i in range(4)]
    d_if_enc = maxdiff(codec.encode((frames + 1) / 2), latents)
    d_if_dec = maxdiff(codec.decode(latents[:1]), ((decoded[:1] + 1) / 2).clamp(0, 1))
    print(f"\nfixture max abs diffs: raw encode {d_enc:.2e}, raw decode per item {[f'{d:.2e}' for d in d_dec]}, "
          f"[0,1] encode {d_if_enc:.2e}, [0,1] decode item 0 {d_if_dec:.2e}")
    assert d_enc <= 1e-5 and d_if_enc <= 1e-5
    assert d_dec[0] <= 1e-5 and d_if_dec <= 1e-5
    # Items 1..3 of the fixture's batched decode carry a quirk of the release's AttnBlock: it normalises each item
    # with SpatialNorm(h[i], zq), whose loop then takes zq[0], so in a batch every item's attention norms are
    # conditioned on the first item's latent. The release itself only decodes single images with the image MoVQ.
    # Our decode is per frame (diffusers); feeding the attention norms zq[0] reproduces the whole batch.
    assert min(d_dec[1:]) > 1e-3
    hooks = [m.register_forward_pre_hook(lambda mod, args: (args[0], args[1][:1].expand_as(args[1])))
             for n, m in codec.vq.named_modules() if n.endswith("spatial_norm") and ".attentions." in n]
    try:
        with torch.no_grad():
            d_batch = maxdiff(codec.vq.decode(latents, force_not_quantize=True).sample, decoded)
    finally:
        for h in hooks:
            h.remove()
    print(f"fixture batched decode with the release's zq[0] attention norms: {d_batch:.2e}")
    assert d_batch <= 1e-5
    ident = codec.identity()
    assert ident["sha256"] == {"movq.pt": meta["sha256"]["movq.pt"]} and ident["format"] == "kandinsky_video_release"


def test_release_params_from_configs_json(release, fixture_dir, tmp_path):
    codec, params, io, _ = release
    (tmp_path / "movq.pt").symlink_to(fixture_dir / "movq.pt")
    with pytest.raises(CheckpointError, match=r"movq\.pt: no MoVQ params given and no configs\.json"):
        MoVQCodec.from_release(tmp_path / "movq.pt")
    # the release's get_T2V_pipeline: get_movq(**configs["image_movq"]) -> MoVQ(configs["image_movq"]["configs"])
    (tmp_path / "configs.json").write_text(json.dumps({"image_movq": {"configs": params}}))
    c = load_codec(str(tmp_path / "movq.pt"))
    assert c.identity() == codec.identity()
    assert maxdiff(c.encode((io["frames"] + 1) / 2), codec.encode((io["frames"] + 1) / 2)) == 0


def test_release_key_map_and_full_size_config():
    assert release_movq_key("decoder.up.1.block.0.norm1.conv_y.weight", 2) == \
        "decoder.up_blocks.0.resnets.0.norm1.conv_y.weight"
    assert release_movq_key("decoder.up.0.upsample.conv.weight", 4) == "decoder.up_blocks.3.upsamplers.0.conv.weight"
    assert release_movq_key("encoder.down.1.attn.0.norm.norm_layer.weight", 2) == \
        "encoder.down_blocks.1.attentions.0.group_norm.weight"
    assert release_movq_key("decoder.mid.attn_1.norm.conv_b.bias", 2) == \
        "decoder.mid_block.attentions.0.spatial_norm.conv_b.bias"
    assert release_movq_key("decoder.mid.attn_1.proj_out.weight", 2) == "decoder.mid_block.attentions.0.to_out.0.weight"
    assert release_movq_key("encoder.down.1.block.0.nin_shortcut.bias", 2) == \
        "encoder.down_blocks.1.resnets.0.conv_shortcut.bias"
    assert release_movq_key("encoder.norm_out.norm_layer.weight", 2) == "encoder.conv_norm_out.weight"
    assert release_movq_key("decoder.norm_out.norm_layer.weight", 2) == "decoder.conv_norm_out.norm_layer.weight"
    for k in ("decoder.up.2.block.0.conv1.weight", "decoder.mid.temporal_attn_1.q.weight",
              "encoder.norm_out.conv_y.weight", "decoder.up.0.block.0.temporal_merge1", "foo.weight"):
        assert release_movq_key(k, 2) is None, k
    # Kandinsky 3.0's MoVQ (ch 256, ch_mult 1,2,2,4, 2 blocks, attention at 32) = the VQModel of its movq/config.json
    cfg = release_vq_config(dict(ch=256, ch_mult=[1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[32],
                                 resolution=256, z_channels=4, in_channels=3, out_ch=3, dropout=0.0, double_z=False))
    assert cfg["block_out_channels"] == [256, 512, 512, 1024] and cfg["layers_per_block"] == 2
    assert cfg["down_block_types"] == ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]
    assert cfg["up_block_types"] == ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3
    with torch.device("meta"):
        vq = diffusers.VQModel(**cfg)
    assert sum(p.numel() for p in vq.parameters()) == 270_669_103
    with pytest.raises(CheckpointError, match="video MoVQ"):
        release_vq_config(dict(ch=32, ch_mult=[1], num_res_blocks=1, attn_resolutions=[], resolution=8, z_channels=4,
                               temporal=True))


# ------------------------------------------------------------------------------------------------- errors
def test_loader_errors(k3, release, fixture_dir, tmp_path):
    _, params, _, _ = release
    unet = tmp_path / "k3" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"_class_name": "Kandinsky3UNet", "in_channels": 4}))
    with pytest.raises(CheckpointError, match=r"unet/config\.json describes a Kandinsky3UNet, not a VQModel .*movq/"):
        MoVQCodec.from_pretrained(unet)
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*k3 \(found: unet\)"):
        load_codec(tmp_path / "k3")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MoVQCodec.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_codec(str(tmp_path / "nowhere.pt"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected 'pixels'"):
        load_codec(tmp_path / "notes.txt")

    state = torch.load(fixture_dir / "movq.pt", map_location="cpu", weights_only=True)
    broken = dict(state)
    broken.pop("decoder.up.1.attn.0.q.bias")
    broken["decoder.mid.block_3.conv1.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as e:
        MoVQCodec.from_release(tmp_path / "broken.pt", params)
    msg = str(e.value)
    assert "broken.pt" in msg and "unmapped keys (decoder.mid.block_3.conv1.weight)" in msg
    assert "missing keys (diffusers names) (decoder.up_blocks.0.attentions.0.to_q.bias)" in msg
    shaped = dict(state, **{"encoder.conv_in.bias": torch.zeros(31)})
    torch.save(shaped, tmp_path / "shaped.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*encoder\.conv_in\.bias: file \(31,\)"):
        MoVQCodec.from_release(tmp_path / "shaped.pt", params)
    torch.save(dict(state, **{"decoder.mid.block_1.temporal_merge1": torch.zeros(1)}), tmp_path / "video.pt")
    with pytest.raises(CheckpointError, match="video MoVQ"):
        MoVQCodec.from_release(tmp_path / "video.pt", params)
    with pytest.raises(CheckpointError, match=r"missing \['z_channels'\]"):
        MoVQCodec.from_release(fixture_dir / "movq.pt", {k: v for k, v in params.items() if k != "z_channels"})


# ------------------------------------------------------------------------------------- video decoder in the codec
def test_codec_decodes_clips_with_the_release_video_decoder(release, fixture_dir, tmp_path):
    """The release's pair (image MoVQ encodes, video MoVQ decodes windows of frames) behind the codec interface."""
    codec, params, io, meta = release
    video_params = meta["models"]["movq"]["video_params"]
    for name in ("movq.pt", "video_movq.pt"):
        (tmp_path / name).symlink_to(fixture_dir / name)
    (tmp_path / "configs.json").write_text(json.dumps({"image_movq": {"configs": params},
                                                       "video_movq": {"configs": video_params}}))
    from kv_research.models.video_decoder import VideoMoVQDecoder
    video = load_codec(str(tmp_path / "movq.pt")).with_video_decoder(str(tmp_path / "video_movq.pt"))
    clip = rearrange(io["latents"], "t c h w -> 1 c t h w")                   # 4 frames = one window
    want = ((rearrange(io["video_decoded"], "t c h w -> 1 c t h w") + 1) / 2).clamp(0, 1)
    got = video.decode(clip)
    assert got.shape == (1, 3, 4, 16, 16) and maxdiff(got, want) > 1e-4       # per-frame norms: not the quirk
    quirk = VideoMoVQDecoder.from_release(fixture_dir / "video_movq.pt", video_params, release_attention_quirk=True)
    assert maxdiff(codec.with_video_decoder(quirk).decode(clip), want) <= 1e-5
    # images still go through the image decoder; encoding is the image encoder's; the identity tells them apart
    assert torch.equal(video.decode(io["latents"]), codec.decode(io["latents"]))
    assert torch.equal(video.encode(want), codec.encode(want))
    assert video.identity() != codec.identity() and codec.video_decoder is None


def test_table3_decoder_in_codec_equals_image_decoder_at_init(k3):
    root, vq = k3
    codec = MoVQCodec.from_pretrained(root)
    video = codec.with_video_decoder("3x3x3 Conv + Attn")
    z = torch.randn(2, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    assert maxdiff(video.decode(z), codec.decode(z)) <= 1e-6
    assert codec.with_video_decoder("3x3x3 Conv + Attn").identity() == video.identity()    # seeded: reproducible
    with pytest.raises(FileNotFoundError, match="Table 3 decoder name"):
        codec.with_video_decoder("3x3x3 conv")
