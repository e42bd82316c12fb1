"""The text-to-video pipeline (keyframes -> interpolation passes -> frames) and ``python -m kv_research.generate``.

The release's fixture (tiny random copies of the Kandinsky Video 1.1 networks) runs end to end with a T5 stand-in
that returns the fixture's hidden states; a tiny ablate_blocks run folder (smoke preset, 2 + 2 steps) drives the
command line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kv_research import cli, generate
from kv_research.interpolation_pipeline import InterpolationPipeline, frames_after, pass_seed

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("diffusers")      # the release's MoVQ loads into diffusers' VQModel


@pytest.fixture(scope="module")
def release(shared_data):
    folder = shared_data / "fixtures" / "kandinsky_video_1_1"
    io = load_file(str(folder / "keyframe_io.safetensors"))

    class FixtureT5(torch.nn.Module):      # stands in for T5: the fixture's raw hidden states for every prompt
        def forward(self, prompts):
            n = len(prompts)
            return io["t5_hidden"].expand(n, -1, -1), io["t5_mask"].bool().expand(n, -1)

    loaded = generate.load_kandinsky_video_pipeline(folder, FixtureT5(), folder / "fixture.json", steps=2,
                                                    interpolation_steps=2)
    return folder, FixtureT5, loaded


def test_fixture_end_to_end_keyframes_interpolation_decode(release):
    folder, _, loaded = release
    pipe = loaded.pipe
    assert pipe.codec.video_decoder is not None and isinstance(pipe.interpolation_pipe, InterpolationPipeline)
    assert pipe.interpolation_pipe.guidance == 0.25
    kw = dict(frames=3, size=8, steps=2, interpolation_steps=2)
    video = pipe(["a red ball"], [7], 10.0, passes=1, **kw)
    assert video.shape == (1, 3, frames_after(3, 1), 16, 16) == (1, 3, 9, 16, 16)
    assert torch.isfinite(video).all() and 0 <= video.min() and video.max() <= 1
    assert torch.equal(video, pipe(["a red ball"], [7], 10.0, passes=1, **kw))            # same seed, same video
    assert not torch.equal(video, pipe(["a red ball"], [8], 10.0, passes=1, **kw))
    # the pass keeps the keyframes and puts 3 frames between each pair
    keys = pipe(["a red ball"], [7], 10.0, passes=0, decode=False, **kw)
    lat = pipe(["a red ball"], [7], 10.0, passes=1, decode=False, **kw)
    assert lat.shape == (1, 4, 9, 8, 8) and torch.equal(lat[:, :, ::4], keys)
    # the pass on its own, seeded like the pipeline's pass 0; the batch does not change a sample
    one = pipe.interpolation_pipe.interpolate(keys, ["a red ball"], [pass_seed(7, 0)], 3, steps=2)
    assert torch.equal(one, lat)
    two = pipe.interpolation_pipe.interpolate(torch.cat([keys, keys.flip(2)]), ["a red ball", "b"],
                                              [pass_seed(7, 0), 1], 3, steps=2)
    assert (two[:1] - one).abs().max() <= 1e-5


def test_context_guidance_is_one_plus_w_cond_minus_w_uncond(release):
    _, _, loaded = release
    ip = loaded.pipe.interpolation_pipe
    calls = []
    real = ip.unet.forward

    def spy(x, t, text, mask, keyframes, **kw):
        out = real(x, t, text, mask, keyframes, **kw)
        calls.append((kw["keyframes_keep"].tolist(), kw["temporal_mask"].tolist(), mask.any(-1).tolist(), out))
        return out
    keys = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    ip.unet.forward = spy
    try:
        ip.interpolate(keys, ["a"], [0], 3, steps=1)
    finally:
        del ip.unet.forward
    keep, tmask, has_text, out = calls[0]
    assert keep == [1.0, 0.0] and tmask == [1.0, 0.0] and has_text == [True, False]   # release: null row unmasked
    v_c, v_u = out.chunk(2)
    # the sampler's single step from t = 999 (zero SNR: x0 = -v); compare with (1 + w) v_c - w v_u
    from kv_research.diffusion import randn_per_item
    x = randn_per_item((1, 4, 3, 8, 8), [torch.Generator().manual_seed(0)])
    v = 1.25 * v_c - 0.25 * v_u
    x0, _ = ip.diffusion.predict_x0_eps(v, x, torch.tensor([999]))
    got = ip.interpolate(keys, ["a"], [0], 3, steps=1)[:, :, 1:4]
    assert (got - ip.diffusion.threshold(x0)).abs().max() <= 1e-5


def test_fixture_cli_writes_videos_and_record(release, tmp_path):
    folder, FixtureT5, _ = release
    out = tmp_path / "out"
    argv = ["--kandinsky-video", str(folder), "--unet-kwargs", str(folder / "fixture.json"), "--prompt", "a cat",
            "--passes", "1", "--frames", "3", "--size", "16", "--steps", "2", "--interpolation-steps", "2",
            "--motion", "high", "--out", str(out), "--no-progress"]
    assert generate.main(argv, text_encoder=FixtureT5()) == 0
    meta = json.loads((out / "generate.json").read_text())
    fx = json.loads((folder / "fixture.json").read_text())
    for name in ("t2v.pt", "interpolation.pt", "movq.pt", "video_movq.pt", "t5_projections.pt"):
        assert meta["source"]["files"][name]["sha256"] == fx["sha256"][name]
    assert meta["frames"] == {"keyframes": 3, "output": 9} and meta["passes"] == 1 and meta["fps"] == 8
    assert meta["motion"]["value"] == 50.0 and meta["skip_frames"] == [3]
    vid = meta["prompts"][0]["id"]
    from kv_research.data.video import read_video
    assert read_video(out / f"{vid}.mp4").shape == (3, 9, 16, 16)
    assert (out / f"{vid}.gif").stat().st_size > 0
    # --decoder: the same keyframes and passes decoded by a Table 3 decoder inflated from the image MoVQ decoder,
    # which equals the image decoder before fine-tuning: the release's video_movq.pt output differs from it
    out2 = tmp_path / "out2"
    argv2 = [a if a != str(out) else str(out2) for a in argv] + ["--decoder", "3x3x3 Conv + Attn"]
    assert generate.main(argv2, text_encoder=FixtureT5()) == 0
    meta2 = json.loads((out2 / "generate.json").read_text())
    assert meta2["source"]["video_decoder"] == "3x3x3 Conv + Attn" and "video decoder" in meta2["source"]["codec"]
    import numpy as np
    a, b = (np.load(o / f"{vid}.npz")["video"] for o in (out, out2))
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() > 0


# ------------------------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "experiments" / "ablate_blocks.py"), "--preset", "smoke", "--variants",
           "Conv1dAttn1dBlocks", "--no-untrained", "--set", "train.image_steps=2", "--set", "train.video_steps=2",
           "--set", "eval.motion_control_prompts=0", "--prompt-limit", "2", "--out", str(out), "--no-progress",
           "--threads", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _cli(argv, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kv_research.generate", *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_cli_run_folder_passes_0(run_dir, tmp_path):
    out = tmp_path / "gen"
    r = _cli(["--run", str(run_dir), "--prompt", "a red circle moves left", "--motion", "low", "--out", str(out),
              "--no-progress"])
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "generate.json").read_text())
    vid = meta["prompts"][0]["id"]
    assert (out / f"{vid}.mp4").is_file() and (out / f"{vid}.gif").is_file()
    assert meta["source"]["variant"] == "Conv1dAttn1dBlocks" and meta["passes"] == 0
    assert meta["frames"] == {"keyframes": 4, "output": 4} and meta["fps"] == 2
    labels = generate.run_motion_labels(run_dir, json.loads((run_dir / "run.json").read_text()))[0]
    assert meta["motion"]["value"] == pytest.approx(float(np.quantile(labels, 0.1)))
    assert len(meta["source"]["files"]["checkpoint"]["sha256"]) == 64
    from kv_research.data.video import read_video
    assert read_video(out / f"{vid}.mp4").shape == (3, 4, 16, 16)


def test_image_animates_the_picture(run_dir, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pic).save(tmp_path / "pic.png")
    out = tmp_path / "gen"
    assert cli.run(generate.main, ["--run", str(run_dir), "--prompt", "a cat", "--image", str(tmp_path / "pic.png"),
                                   "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "generate.json").read_text())
    with np.load(out / f"{meta['prompts'][0]['id']}.npz") as z:
        video = z["video"]                                              # (T, H, W, 3) uint8
    assert video.shape == (4, 16, 16, 3)
    assert np.array_equal(video[0], pic)                                # pixel codec: exact up to uint8
    assert meta["image"]["sha256"]


def test_bad_inputs_fail_with_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not an image")
    empty = tmp_path / "kv_empty"
    empty.mkdir()
    out = str(tmp_path / "o")
    cases = [
        (["--run", str(run_dir), "--prompt", "x", "--motion", "wild"], "--motion 'wild'"),
        (["--run", str(run_dir), "--prompt", "x", "--image", str(tmp_path / "broken.png")], "not a readable image"),
        (["--run", str(run_dir), "--prompt", "x", "--passes", "1"], "has no interpolation model"),
        (["--run", str(tmp_path), "--prompt", "x"], "no run.json"),
        (["--run", str(run_dir), "--prompt", "x", "--variant", "Nope"], "variant 'Nope' has no checkpoint"),
        (["--kandinsky-video", str(empty), "--text-encoder", str(empty), "--prompt", "x", "--passes", "2"],
         "missing t2v.pt, t5_projections.pt, movq.pt, interpolation.pt"),
        (["--run", str(run_dir), "--prompts", str(tmp_path / "none.txt")], "no such file"),
        (["--run", str(run_dir), "--prompt", "x", "--decoder", "4x4x4 Conv"], "neither a Table 3 decoder"),
    ]
    for argv, msg in cases:
        assert cli.run(generate.main, argv + ["--out", out, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], (argv, err)
    assert not Path(out).exists()                                       # nothing was started
    r = _cli(["--run", str(run_dir), "--prompt", "x", "--motion", "wild", "--out", out])
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --motion 'wild'")
