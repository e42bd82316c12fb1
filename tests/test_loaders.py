"""Real checkpoints: diffusers' Kandinsky3UNet and the released Kandinsky Video 1.1 files load exactly.

Equivalence, not resemblance: tiny diffusers models with every parameter randomised (the conditional norms start
at zero and would hide errors) must give the suite's numbers to <= 1e-6; the release's fixture (tiny random copies
of its networks with the outputs its own code computed) to <= 1e-5.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import kv_research as kv
from kv_research.checkpoint import CheckpointError
from kv_research.loaders import KANDINSKY_VIDEO_11, load_kandinsky3, load_kandinsky_video
from kv_research.models.text import cut_context
from kv_research.models.unet import is_inflation_param

diffusers = pytest.importorskip("diffusers")

TINY_K3 = dict(in_channels=4, time_embedding_dim=32, groups=2, attention_head_dim=4, layers_per_block=3,
               block_out_channels=(8, 16, 32, 64), cross_attention_dim=16, encoder_hid_dim=12)


def random_k3(seed=0, **kw):
    torch.manual_seed(seed)
    ref = diffusers.Kandinsky3UNet(**{**TINY_K3, **kw}).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    return ref


@pytest.fixture(scope="module")
def k3_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("kandinsky3")
    ref = random_k3()
    ref.save_pretrained(root / "unet")          # a Kandinsky 3.0 root folder with its unet/ subfolder
    return root, ref


def k3_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 16, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    ehs = torch.randn(3, 6, 12, generator=g) * mask[..., None]     # diffusers: padded raw tokens are zero
    return x, torch.tensor([3, 517, 999]), ehs, mask


@pytest.mark.parametrize("sub", ["", "unet"])
def test_kandinsky3_loads_strictly_and_matches_diffusers(k3_folder, sub):
    root, ref = k3_folder
    ours = load_kandinsky3(root / sub if sub else root)
    assert ours.config.variant == "Spatial" and ours.config.block_out_channels == (8, 16, 32, 64)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x, t, ehs, mask = k3_inputs()          # a padded mask, a full mask and the all-zero "negative" row
    with torch.no_grad():
        want = ref(x, t, ehs, mask).sample
        got = ours(x[:, :, None], t, ehs, mask.bool())[:, :, 0]
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= 1e-6, (got - want).abs().max()


def test_two_level_diffusers_config_with_its_attention_quirk(tmp_path):
    # diffusers' own test config: up block k takes the reversed 4-tuple's k-th flag, so up_blocks.1 has attention
    ref = random_k3(seed=3, block_out_channels=(32, 64), groups=2, attention_head_dim=4, time_embedding_dim=4,
                    cross_attention_dim=4, encoder_hid_dim=32)
    ref.save_pretrained(tmp_path)
    ours = load_kandinsky3(tmp_path)
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = ref(x, torch.tensor([10, 800]), ehs * mask[..., None], mask).sample
        got = ours(x[:, :, None], torch.tensor([10, 800]), ehs * mask[..., None], mask.bool())[:, :, 0]
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("variant", list(kv.VARIANTS))
def test_every_variant_inflates_kandinsky3_and_equals_it_at_init(k3_folder, variant):
    root, ref = k3_folder
    img = load_kandinsky3(root)
    vid = kv.inflate(img, variant)
    fresh = kv.inflate(kv.build_unet("Spatial", config=img.config), variant)
    res = fresh.load_state_dict(ref.state_dict(), strict=False)      # Kandinsky 3.0 weights into the variant
    assert res.unexpected_keys == []
    assert set(res.missing_keys) == {n for n in fresh.state_dict() if is_inflation_param(n)}
    x, t, ehs, mask = k3_inputs()
    video = torch.stack([x, x.flip(-1), x.roll(3, -2), x * 0.5], dim=2)    # (b, c, t=4, h, w)
    with torch.no_grad():
        per_frame = torch.stack([img(video[:, :, i:i + 1], t, ehs, mask.bool())[:, :, 0] for i in range(4)], 2)
        out = vid(video, t, ehs, mask.bool(), motion_score=torch.tensor([1.0, 10.0, 50.0]),
                  noise_level=torch.tensor([0.0, 20.0, 100.0]))
    assert (out - per_frame).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------- Kandinsky Video 1.1
@pytest.fixture(scope="module")
def kv_fixture(shared_data):
    folder = shared_data / "fixtures" / "kandinsky_video_1_1"
    fx = json.loads((folder / "fixture.json").read_text())
    ck = load_kandinsky_video(folder, unet_kwargs=fx["models"]["keyframe_unet"]["kwargs"])
    return folder, fx, ck, load_file(str(folder / "keyframe_io.safetensors"))


def test_release_files_unchanged(kv_fixture):
    import hashlib
    folder, fx, *_ = kv_fixture
    for name in ("t2v.pt", "t5_projections.pt", "keyframe_io.safetensors"):
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == fx["sha256"][name], name


def test_kandinsky_video_reproduces_the_release_image_and_video_mode(kv_fixture):
    folder, fx, ck, io = kv_fixture
    u = ck.unet
    assert u.config.variant == "Conv1dAttn1dBlocks" and u.conventions == KANDINSKY_VIDEO_11
    assert ck.null_embedding.shape == (1, 16)
    # text: raw T5 hidden states + mask in; the release projects, zeroes padding, cuts to longest + 1
    h, m = cut_context(io["t5_hidden"], io["t5_mask"].bool(), zero_padding=False)
    assert h.shape[1] == io["context"].shape[1]
    with torch.no_grad():
        assert (u.project_text(h, m) - io["context"]).abs().max().item() <= 1e-6
        image = u(io["image_x"][:, :, None], io["image_t"], h, m)[:, :, 0]
    assert (image - io["image_out"]).abs().max().item() <= 1e-5
    v = io["video_input_9ch"]                                     # (T, 9, H, W): [x_t, first frame in slot 0, mask]
    assert v[1:, 4:8].abs().max() == 0 and v[:, 8].flatten(1).amax(1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert io["video_positions"].tolist() == [0.0, 1.0, 2.0, 3.0]
    x = v[:, :4].permute(1, 0, 2, 3)[None]                        # (T, c, h, w) -> (1, c, T, h, w)
    with torch.no_grad():
        out = u(x, io["video_t"][:1], h, m, first_frame=v[:1, 4:8], motion_score=io["video_motion"][:1].float(),
                noise_level=io["video_noise_aug"][:1].float())
    got = out[0].permute(1, 0, 2, 3)                              # (c, T, h, w) -> (T, c, h, w)
    assert (got - io["video_out"]).abs().max().item() <= 1e-5
    # the released file's parameter count: ours without the projection, with the 9-channel image_in_layer
    assert u.parameter_counts()["params_release_layout"] == fx["models"]["keyframe_unet"]["n_params"]


def test_pipeline_applies_the_release_conventions(kv_fixture):
    folder, fx, ck, io = kv_fixture
    from kv_research.pipeline import KeyframePipeline

    class FixtureT5(torch.nn.Module):      # stands in for T5: returns the fixture's raw hidden states
        def forward(self, prompts):
            n = len(prompts)
            return io["t5_hidden"].expand(n, -1, -1), io["t5_mask"].bool().expand(n, -1)

    from kv_research.models.codec import MoVQCodec
    movq = MoVQCodec.from_release(folder / "movq.pt", fx["models"]["movq"]["params"])   # the release's image MoVQ
    pipe = KeyframePipeline(ck.unet, FixtureT5(), ck.conventions.diffusion_config(sample_steps=2),
                            null_embedding=ck.null_embedding, codec=movq)
    assert pipe.diffusion_cfg.guidance_text == 6.0          # the release's 5.0 in the (w + 1) convention
    text, mask = pipe.encode_prompts_and_null(["a", "b"])
    assert (text[:2] - io["context"]).abs().max() <= 1e-6
    assert torch.equal(text[2:, 0], ck.null_embedding.expand(2, -1)) and mask[2:].sum(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="null embedding"):
        KeyframePipeline(ck.unet, FixtureT5(), pipe.diffusion_cfg, codec=movq)
    with pytest.raises(ValueError, match="3-channel latents but the UNet takes 4"):
        KeyframePipeline(ck.unet, FixtureT5(), pipe.diffusion_cfg, null_embedding=ck.null_embedding)
    latents = pipe.generate(["a"], [0], [10.0], frames=2, size=8, steps=2, decode=False)
    assert latents.shape == (1, 4, 2, 8, 8) and torch.isfinite(latents).all()
    video = pipe.generate(["a"], [0], [10.0], frames=2, size=8, steps=2)       # decoded by the MoVQ: pixels
    assert video.shape == (1, 3, 2, 16, 16) and 0 <= video.min() and video.max() <= 1
    assert torch.equal(video, movq.decode(latents))


# ------------------------------------------------------------------------------------------- bad files
def _copy_release(shared_data, tmp_path):
    src = shared_data / "fixtures" / "kandinsky_video_1_1"
    dst = tmp_path / "kv11"
    dst.mkdir()
    for name in ("t2v.pt", "t5_projections.pt", "movq.pt"):
        shutil.copy(src / name, dst / name)
    kwargs = json.loads((src / "fixture.json").read_text())["models"]["keyframe_unet"]["kwargs"]
    return dst, kwargs


def test_bad_release_files_name_the_file(shared_data, tmp_path):
    dst, kwargs = _copy_release(shared_data, tmp_path)
    with pytest.raises(FileNotFoundError, match="kv11_missing"):
        load_kandinsky_video(tmp_path / "kv11_missing")
    t2v = dst / "t2v.pt"
    good = t2v.read_bytes()
    t2v.write_bytes(good[: len(good) // 2])                               # truncated download
    with pytest.raises(CheckpointError, match="t2v.pt could not be read"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)
    t2v.write_text("<html>404 not found</html>")                          # wrong format
    with pytest.raises(CheckpointError, match="t2v.pt could not be read"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)
    shutil.copy(dst / "movq.pt", t2v)                                      # another model under the name
    with pytest.raises(CheckpointError, match="t2v.pt has keys"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)
    torch.save({"unet": torch.load(dst / "movq.pt", weights_only=True), "null_embedding": torch.zeros(1, 16)}, t2v)
    with pytest.raises(CheckpointError, match="t2v.pt is not a Kandinsky Video keyframe UNet"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)
    t2v.write_bytes(good)
    sd = torch.load(t2v, weights_only=True)
    del sd["unet"]["down_samples.1.temporal_attention_block.temporal_norm.context_mlp.1.weight"]
    sd["unet"]["down_samples.1.extra.weight"] = torch.zeros(1)
    torch.save(sd, t2v)
    with pytest.raises(CheckpointError, match=r"t2v.pt.*1 missing keys \(down_blocks.1.temporal_attention.temporal_norm"
                                              r".*1 unexpected keys \(down_samples.1.extra.weight"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)
    t2v.write_bytes(good)
    (dst / "t5_projections.pt").unlink()
    with pytest.raises(FileNotFoundError, match="t5_projections.pt not found"):
        load_kandinsky_video(dst, unet_kwargs=kwargs)


def test_bad_kandinsky3_folders_name_the_file(k3_folder, tmp_path):
    root, ref = k3_folder
    with pytest.raises(FileNotFoundError, match="no Kandinsky 3.0 UNet config"):
        load_kandinsky3(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(root / "unet", bad)
    w = bad / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors could not be read"):
        load_kandinsky3(bad)
    w.write_bytes(data)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [8, 16, 32, 32]}))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_kandinsky3(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="expected Kandinsky3UNet"):
        load_kandinsky3(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not a readable JSON"):
        load_kandinsky3(bad)
