"""Diffusion core, the KV 1.1 pipeline, the trainer and checkpoints, on tiny CPU configs."""
import dataclasses

import pytest
import torch

import kv_research as kv
from kv_research.checkpoint import CheckpointMismatchError, load_checkpoint, pipeline_from_checkpoint, save_checkpoint
from kv_research.config import DiffusionConfig, TextConfig, UNetConfig
from kv_research.diffusion import Diffusion, cfg_combine, cosine_alphas_bar, three_way_combine
from kv_research.models.text import TextEncoder
from kv_research.models.unet import KeyframeUNet
from kv_research.pipeline import KeyframePipeline
from kv_research.train import Trainer, TrainData, read_stats

TINY_UNET = UNetConfig(in_channels=3, block_out_channels=(16, 16, 32, 32), layers_per_block=2, groups=4,
                       attention_head_dim=8, time_embedding_dim=32, cross_attention_dim=16, encoder_hid_dim=16)
TINY_TEXT = TextConfig(dim=16, layers=1, heads=2, max_len=12)


def tiny_pipe(seed=0, variant="Spatial", **diff):
    torch.manual_seed(seed)
    pipe = KeyframePipeline(KeyframeUNet(TINY_UNET), TextEncoder(TINY_TEXT), DiffusionConfig(sample_steps=4, **diff))
    return pipe if variant == "Spatial" else pipe.inflated(variant)


def toy_data(n=4, t=4, s=8):
    clips = torch.zeros(n, 3, t, s, s)
    for i in range(n):
        for f in range(t):
            clips[i, i % 3, f, 2:5, f:f + 3] = 1.0          # a square moving right one pixel per frame
    caps = [f"a {['red', 'green', 'blue'][i % 3]} square moves right" for i in range(n)]
    return TrainData(clips, caps, torch.full((n,), 10.0))


# ------------------------------------------------------------------------------------------- schedule
def test_zero_terminal_snr_and_targets():
    d = Diffusion(DiffusionConfig(zero_terminal_snr=True, prediction="v"))
    ab = d.schedule.alphas_bar
    assert ab[-1] == 0 and abs(ab[0] - cosine_alphas_bar(1000)[0]) < 1e-9 and (ab[1:] <= ab[:-1]).all()
    assert Diffusion(DiffusionConfig(zero_terminal_snr=True, prediction="eps")).schedule.alphas_bar[-1] > 0
    x0, noise = torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4)
    t = torch.tensor([0, 400, 998])
    for pred in ("eps", "v"):
        dd = Diffusion(DiffusionConfig(prediction=pred))
        xt = dd.q_sample(x0, t, noise)
        x0_hat, eps_hat = dd.predict_x0_eps(dd.target(x0, t, noise), xt, t)
        assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)


def test_guidance_formulas():
    c, u = torch.randn(5), torch.randn(5)
    assert torch.allclose(cfg_combine(c, u, 1.0), c) and torch.allclose(cfg_combine(c, u, 0.0), u)
    ti, i, n = torch.randn(5), torch.randn(5), torch.randn(5)
    assert torch.allclose(three_way_combine(ti, i, n, 1.0, 1.0), ti)
    assert torch.allclose(three_way_combine(ti, i, n, 5.0, 2.0), n + 2 * (i - n) + 5 * (ti - i))


def test_dynamic_thresholding():
    d = Diffusion(DiffusionConfig(threshold_ratio=0.9))
    x = torch.linspace(-3, 3, 100).reshape(1, 100)
    y = d.threshold(x)
    assert y.abs().max() <= 1 + 1e-6 and (y[:, 50:] >= 0).all()
    small = torch.full((1, 10), 0.5)
    assert torch.equal(d.threshold(small), small)          # never scales up content already inside [-1, 1]


# --------------------------------------------------------------------------------------------- training
def test_training_drives_the_loss_down_and_resumes_identically(tmp_path):
    data = toy_data()
    cfg = dataclasses.replace(kv.get_preset("smoke").train, batch_size=4, video_batch_size=2, lr=3e-3,
                              log_every=50, ckpt_every=100)
    pipe = tiny_pipe()
    tr = Trainer(pipe, "image", data, cfg, tmp_path / "img", steps=200, progress=False)
    tr.fit()
    losses = [r["loss"] for r in read_stats(tmp_path / "img")]
    assert losses[-1] < 0.75 * losses[0], losses        # mean over steps 1-50 vs 151-200
    # video fine-tuning; killed after 30 steps (checkpoint at 20), resumed -> same weights as straight through
    vcfg = dataclasses.replace(cfg, ckpt_every=20, log_every=10)
    straight = pipe.inflated("Conv1dAttn1dBlocks")
    Trainer(straight, "video", data, vcfg, tmp_path / "a", steps=40, progress=False).fit()
    broken = pipe.inflated("Conv1dAttn1dBlocks")
    Trainer(broken, "video", data, vcfg, tmp_path / "b", steps=40, progress=False).fit(stop_after=30)
    resumed = pipe.inflated("Conv1dAttn1dBlocks")
    Trainer(resumed, "video", data, vcfg, tmp_path / "b", steps=40, progress=False).fit()
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert [r["step"] for r in read_stats(tmp_path / "b")] == [10, 20, 30, 40]


def test_video_loss_uses_motion_and_first_frame():
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
    data = toy_data()
    g = torch.Generator().manual_seed(0)
    loss = pipe.video_loss(data.clips, data.captions, data.motion, g)
    loss.backward()
    grads = {n: p.grad for n, p in pipe.named_parameters() if p.grad is not None}
    assert any("temporal_embed.motion" in n for n in grads)
    assert any(n.startswith("unet.video_in_conv") for n in grads)
    assert not any("text_encoder" in n for n in grads)       # frozen after inflation


# ------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_video_and_batch_size_free(sampler):
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks", sampler=sampler).eval()
    prompts = ["a red square moves right", "a blue square moves right", "a green square moves right"]
    a = pipe.generate(prompts, [1, 2, 3], [10.0, 20.0, 30.0], frames=3, size=8)
    b = pipe.generate(prompts, [1, 2, 3], [10.0, 20.0, 30.0], frames=3, size=8)
    assert torch.equal(a, b)
    one = pipe.generate(prompts[1:2], [2], [20.0], frames=3, size=8)
    # the same seed alone or in a batch: equal up to CPU rounding (oneDNN picks conv algorithms by batch size,
    # ~2e-7 per layer), well under one 8-bit level; the harness generates in fixed batches for exact resumption
    assert (one[0] - a[1]).abs().max() < 0.25 / 255
    assert a.shape == (3, 3, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    c = pipe.generate(prompts, [4, 5, 6], [10.0, 20.0, 30.0], frames=3, size=8)
    assert (c - a).abs().max() > 1e-2


def test_three_way_guidance_path_runs():
    pipe = tiny_pipe(variant="Conv1dAttn3dBlocks", guidance_image=2.0).eval()
    v = pipe.generate(["a red square"], [0], [5.0], frames=2, size=8)
    assert torch.isfinite(v).all()


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_and_mismatch_messages(tmp_path):
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, pipe, extra={"step": 3})
    assert path.is_file() and path.with_suffix(".json").is_file()
    again = pipeline_from_checkpoint(path, use_ema=False)
    for (n, a), (_, b) in zip(pipe.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    other = tiny_pipe(variant="Conv3dAttn1dBlocks")
    with pytest.raises(CheckpointMismatchError, match="Conv1dAttn1dBlocks.*Conv3dAttn1dBlocks"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointMismatchError, match="is variant 'Conv1dAttn1dBlocks', but the model is 'Spatial'"):
        load_checkpoint(path, tiny_pipe())
    save_checkpoint(tmp_path / "img.safetensors", tiny_pipe())
    with pytest.raises(CheckpointMismatchError, match="holds a text-to-image model, but the model is an inflated"):
        load_checkpoint(tmp_path / "img.safetensors", tiny_pipe().inflated("Spatial"))
    wide = KeyframePipeline(KeyframeUNet(dataclasses.replace(TINY_UNET, block_out_channels=(32, 32, 32, 32))), TextEncoder(TINY_TEXT),
                            DiffusionConfig()).inflated("Conv1dAttn1dBlocks")
    with pytest.raises(CheckpointMismatchError, match="block_out_channels"):
        load_checkpoint(path, wide)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors", pipe)


def test_dropped_first_frames_in_one_call_equal_first_frame_none():
    """Guidance training drops some clips' first frame: one call with per-clip keep flags = separate calls."""
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
    with torch.no_grad():                         # as if trained: the zero-initialised temporal outputs random
        for n, prm in pipe.unet.named_parameters():
            if kv.models.is_inflation_param(n):
                prm.normal_(0, 0.2)
    g = torch.Generator().manual_seed(0)
    x, first = torch.randn(3, 3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    text, mask = pipe.encode_text(["a red square", "a blue square", ""])
    t, m, lv = torch.tensor([5, 300, 900]), torch.tensor([1.0, 5.0, 9.0]), torch.tensor([0.0, 20.0, 100.0])
    keep = torch.tensor([True, False, True])
    with torch.no_grad():
        one = pipe._video_forward(x, t, text, mask, first, keep, m, lv)
        kept = pipe.unet(x[keep], t[keep], text[keep], mask[keep], first_frame=first[keep], motion_score=m[keep],
                         noise_level=lv[keep])
        dropped = pipe.unet(x[1:2], t[1:2], text[1:2], mask[1:2], first_frame=None, motion_score=m[1:2],
                            noise_level=lv[1:2])
        alone = pipe.unet(x[1:2], t[1:2], text[1:2], mask[1:2], first_frame=first[1:2], motion_score=m[1:2],
                          noise_level=lv[1:2], first_frame_keep=torch.tensor([False]))
    assert torch.equal(alone, dropped)                  # same batch: exactly the no-image branch
    # mixed batch vs sub-batches: equal up to batch-size-dependent CPU rounding (the old code's two calls)
    assert (one[keep] - kept).abs().max() < 1e-4 and (one[1:2] - dropped).abs().max() < 1e-4
    assert (one[1:2] - pipe.unet(x[1:2], t[1:2], text[1:2], mask[1:2], first_frame=first[1:2], motion_score=m[1:2],
                                 noise_level=lv[1:2])).abs().max() > 1e-3      # the keep flag really matters


def _two_call_video_forward(pipe, x_t, t, text, mask, first, keep, motion, level):
    """The pre-issue-14 path, kept as the reference: kept clips and dropped clips in two UNet calls."""
    out = torch.empty_like(x_t)
    for sel, ff in ((keep, first), (~keep, None)):
        if sel.any():
            out[sel] = pipe.unet(x_t[sel], t[sel], text[sel], mask[sel], first_frame=None if ff is None else ff[sel],
                                 motion_score=motion[sel], noise_level=level[sel])
    return out


def test_one_call_video_loss_and_gradients_equal_the_two_call_path(monkeypatch):
    """Training through the one-call forward gives the loss and every gradient of the old two-call path.

    In float64, where batch-size-dependent BLAS rounding is negligible: in float32 the two paths' gradients differ by
    rounding only, but backward amplifies it (up to 1e-3 of a small tensor's largest gradient on this CPU)."""
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
    with torch.no_grad():                         # as if trained: the zero-initialised temporal outputs random
        for n, prm in pipe.unet.named_parameters():
            if kv.models.is_inflation_param(n):
                prm.normal_(0, 0.2)
    pipe = pipe.double()
    data = toy_data(n=4)
    clips = data.clips.double()
    pipe.diffusion_cfg.p_uncond_image = 0.5       # seed 3 draws keep = [F, T, T, F]: both branches in one batch

    def loss_and_grads():
        pipe.zero_grad(set_to_none=True)
        loss = pipe.video_loss(clips, data.captions, data.motion, torch.Generator().manual_seed(3))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in pipe.named_parameters() if p.grad is not None}

    seen = []
    one_call = pipe._video_forward
    monkeypatch.setattr(pipe, "_video_forward", lambda *a: seen.append(a[5].clone()) or one_call(*a))
    loss1, g1 = loss_and_grads()
    assert seen[0].tolist() == [False, True, True, False]
    monkeypatch.setattr(pipe, "_video_forward", lambda *a: _two_call_video_forward(pipe, *a))
    loss2, g2 = loss_and_grads()
    assert torch.allclose(loss1, loss2, rtol=1e-9, atol=0), (loss1, loss2)
    assert g1.keys() == g2.keys() and any(n.startswith("unet.video_in_conv") for n in g1)
    for n in g1:
        assert (g1[n] - g2[n]).abs().max() <= 1e-9 * g2[n].abs().max(), n


def _adamw_steps(pipe, ref, steps, fused):
    from kv_research.train import make_adamw
    with torch.no_grad():
        for n, p in pipe.named_parameters():
            p.copy_(ref[n])
    params = [p for p in pipe.parameters() if p.requires_grad]
    opt = make_adamw(params, 3e-3, 1e-2) if fused else torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
    assert opt.param_groups[0]["fused"] is (True if fused else None)        # CPU fused AdamW: torch >= 2.4
    data = toy_data()
    frames = data.clips[:, :, 0].to(params[0].dtype)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        pipe.image_loss(frames, data.captions, torch.Generator().manual_seed(step)).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in pipe.named_parameters()}


@pytest.mark.parametrize("dtype, steps, tol", [(torch.float32, 1, 1e-4), (torch.float64, 5, 1e-9)])
def test_fused_adamw_matches_the_per_tensor_loop(dtype, steps, tol):
    """``make_adamw`` (fused where supported) takes the same steps as AdamW's default loop, within rounding
    (difference relative to how far each tensor moved). Several steps in float64 only: in float32 the attention key
    biases get pure-rounding-noise gradients (softmax ignores them) near Adam's eps, which Adam magnifies."""
    pipe = tiny_pipe().to(dtype)
    ref = {n: p.detach().clone() for n, p in pipe.named_parameters()}
    fused, loop = _adamw_steps(pipe, ref, steps, True), _adamw_steps(pipe, ref, steps, False)
    for n in ref:
        assert (fused[n] - loop[n]).abs().max() <= tol * (loop[n] - ref[n]).abs().max(), n


def test_resume_from_a_per_tensor_loop_checkpoint_stays_fused(tmp_path):
    """A checkpoint whose optimizer state was written by the loop AdamW resumes fused, at the same weights."""
    data = toy_data()
    cfg = dataclasses.replace(kv.get_preset("smoke").train, batch_size=4, lr=3e-3, log_every=5, ckpt_every=5)
    tr = Trainer(tiny_pipe(), "image", data, cfg, tmp_path / "run", steps=10, progress=False)
    tr.opt = torch.optim.AdamW(tr.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)     # as old runs did
    tr.fit(stop_after=5)
    assert torch.load(tr.ckpt.with_suffix(".optim.pt"), weights_only=True)["param_groups"][0]["fused"] is None
    resumed = Trainer(tiny_pipe(), "image", data, cfg, tmp_path / "run", steps=10, progress=False)
    assert resumed.resume() and resumed.step == 5
    assert resumed.opt.param_groups[0]["fused"] is True
    assert torch.equal(resumed.opt.state_dict()["state"][0]["exp_avg"], tr.opt.state_dict()["state"][0]["exp_avg"])
    resumed.fit()
    assert resumed.step == 10 and [r["step"] for r in read_stats(tmp_path / "run")] == [5, 10]
