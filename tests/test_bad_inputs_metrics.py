"""Issue 13 items 6-7 for the library-level feature extractors and the motion protocols.

Cases per category (each extractor: I3D ``I3DFeatureExtractor``, CLIP ``ClipSimExtractor``, RAFT ``motion_stats`` /
``flow_pairs`` / ``dynamic_degree``), every one a ``VideoInputError`` whose message names what was given and
what is accepted:
  layout: 3 x 3 (wrong number of dims, 1 channel, channels-last) + 3 empty batches + not a tensor
  dtype/range: 3 x 4 (0-255 floats, [-1,1] floats, int64, just past the tolerance) + uint8 for RAFT
  NaN/inf: 3 x 2;  too few frames: 3 (0 frames I3D/CLIP, 1 frame RAFT);  tiny spatial size (1x1): 3
  valid input still passes: floats in [0,1] (and uint8 where documented, giving the same features), values within
      the 1e-3 rounding tolerance
  VBench protocol: frame indices for 6 frame rates, the frames RAFT actually sees (and 20 refinements, native
      size), too few kept frames, bad fps, the protocol recorded in evaluate_videos' summary, one real-RAFT run
  evaluate CLI: --motion-protocol vbench with --fps / without a frame rate / bad --fps / --fps without vbench /
      vbench without dynamic_degree / an unknown protocol; the default --metrics (fvd, clipsim skipped with a
      notice, motion computed; nothing runnable is an error)
"""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from kv_research import cli
from kv_research.evaluate import main
from kv_research.metrics import motion as M
from kv_research.metrics.clipsim import ClipSimExtractor
from kv_research.metrics.fvd import FVDProtocol, I3DFeatureExtractor, _I3DStandIn
from kv_research.metrics.inputs import VideoDTypeError, VideoInputError, check_videos


# ----------------------------------------------------------------------------------------------- stand-ins
class _StubClip(nn.Module):
    """Just enough of a CLIP for ``ClipSimExtractor``: mean colour as the image embedding."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def encode_image(self, x):
        return self.proj(x.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        return self.proj(tokens.float())


class _StubRaft(nn.Module):
    """Zero flow of the right shape; records the first pixel of every img1/img2 and the refinement count."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, img1, img2, num_flow_updates=12):
        self.calls.append({"first": img1[:, 0, 0, 0].clone(), "second": img2[:, 0, 0, 0].clone(),
                           "updates": num_flow_updates, "hw": tuple(img1.shape[-2:])})
        return [torch.zeros(img1.shape[0], 2, *img1.shape[-2:])]


@pytest.fixture(scope="module")
def i3d():
    torch.manual_seed(0)
    return I3DFeatureExtractor(_I3DStandIn("tiny").eval(), "standin", "i3d stand-in", FVDProtocol(frames=4,
                                                                                                  resolution=32))


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ClipSimExtractor(_StubClip(), lambda f: torch.nn.functional.interpolate(f, size=(8, 8)),
                            lambda texts: torch.tensor([[len(t), 1.0, 2.0] for t in texts]), "stub clip", "")


def _i3d_call(i3d):
    return lambda v: i3d(v)


def _clip_call(clip):
    return lambda v: clip(v, ["a prompt"] * (v.shape[0] if v.dim() == 5 else 1))


def _raft_call():
    raft = _StubRaft()
    return lambda v: M.motion_stats(v, raft)


def _good(t=4, hw=8, b=1):
    return torch.rand(b, 3, t, hw, hw, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------- refusals
BAD = {   # case -> (video, fragment of the message); t=4 frames, 8x8
    "dims_3d": (torch.rand(3, 4, 8), "got 3 dims"),
    "dims_6d": (torch.rand(1, 1, 3, 4, 8, 8), "got 6 dims"),
    "one_channel": (torch.rand(1, 1, 4, 8, 8), "got 1 channels"),
    "channels_last": (torch.rand(1, 4, 8, 8, 3), "channels-last"),
    "empty_batch": (torch.rand(0, 3, 4, 8, 8), "empty batch"),
    "uint8_range_floats": (torch.rand(1, 3, 4, 8, 8) * 255, "0-255 values? divide by 255"),
    "minus_one_to_one": (torch.rand(1, 3, 4, 8, 8) * 2 - 1, "[-1,1] values?"),
    "int64": (torch.randint(0, 255, (1, 3, 4, 8, 8)), "dtype int64"),
    "past_tolerance": (torch.full((1, 3, 4, 8, 8), 1.002), r"got [1.002, 1.002]"),
    "nan": (torch.rand(1, 3, 4, 8, 8).index_put_((torch.tensor([0]),) * 5, torch.tensor(float("nan"))),
            "1 NaN/inf values"),
    "inf": (torch.rand(1, 3, 4, 8, 8).index_put_((torch.tensor([0]),) * 5, torch.tensor(float("inf"))),
            "1 NaN/inf values"),
    "tiny_spatial": (torch.rand(1, 3, 4, 1, 1), "at least 2x2 px, got 1x1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("extractor", ["i3d", "clip", "raft"])
def test_extractor_refuses_bad_input_with_a_clear_message(extractor, case, i3d, clip):
    call = {"i3d": _i3d_call(i3d), "clip": _clip_call(clip), "raft": _raft_call()}[extractor]
    video, fragment = BAD[case]
    if extractor == "raft" and case == "dims_3d":
        video, fragment = torch.rand(4, 8), "got 2 dims"        # RAFT also takes one video (3,T,H,W)
    with pytest.raises(VideoInputError) as err:
        call(video)
    msg = str(err.value)
    assert fragment in msg, msg
    assert "(B,3,T,H,W)" in msg or "needs" in msg, msg             # says what would be accepted
    if case not in ("dims_3d", "dims_6d"):
        assert f"shape {tuple(video.shape)}" in msg, msg            # names what was given


@pytest.mark.parametrize("extractor,video,fragment", [
    ("i3d", torch.rand(1, 3, 0, 8, 8), "at least 1 frames, got T=0"),
    ("clip", torch.rand(1, 3, 0, 8, 8), "at least 1 frames, got T=0"),
    ("raft", torch.rand(1, 3, 1, 8, 8), "at least 2 frames, got T=1"),
    ("raft", torch.zeros(1, 3, 2, 8, 8, dtype=torch.uint8), "divide uint8 by 255"),
    ("raft", [[0.5]], "got a list"),
])
def test_too_few_frames_uint8_for_raft_and_non_tensors(extractor, video, fragment, i3d, clip):
    call = {"i3d": _i3d_call(i3d), "clip": _clip_call(clip), "raft": _raft_call()}[extractor]
    with pytest.raises(VideoInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call(video)


def test_uint8_for_raft_is_still_a_type_error_and_flow_pairs_checks_too():
    with pytest.raises(TypeError, match="uint8"):                   # VideoDTypeError is both, as before
        M.flow_pairs(torch.zeros(3, 2, 8, 8, dtype=torch.uint8), _StubRaft())
    assert issubclass(VideoDTypeError, ValueError)
    with pytest.raises(VideoInputError, match="at least 2 frames"):
        M.dynamic_degree(torch.rand(1, 3, 1, 8, 8), _StubRaft())


# ----------------------------------------------------------------------------------------------- valid input
def test_valid_inputs_pass_and_uint8_equals_its_float(i3d, clip):
    v8 = (torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    vf = v8.float() / 255
    torch.testing.assert_close(i3d(v8), i3d(vf))
    assert i3d(vf).shape == (2, 400)
    torch.testing.assert_close(clip(v8, ["a", "bb"]), clip(vf, ["a", "bb"]))
    edge = vf.clone()
    edge[0, 0, 0, 0, 0], edge[1, 0, 0, 0, 0] = -5e-4, 1 + 5e-4       # within the rounding tolerance
    assert torch.isfinite(i3d(edge)).all() and torch.isfinite(clip(edge, ["a", "b"])).all()
    s = M.motion_stats(edge, _StubRaft())
    assert s["mean"].shape == (2, 3) and torch.equal(s["motion_score"], torch.zeros(2))
    assert M.flow_pairs(vf[0], _StubRaft()).shape == (1, 3, 2, 128, 128)   # one video (3,T,H,W)
    assert check_videos(vf, "x") is vf                               # no copy for valid floats


# ----------------------------------------------------------------------------------------------- VBench protocol
@pytest.mark.parametrize("fps,t,expected", [
    (8, 5, [0, 1, 2, 3, 4]),          # step 1
    (12, 7, [0, 2, 4, 6]),            # round(1.5) = 2 (Python's round, as VBench)
    (20, 7, [0, 2, 4, 6]),            # round(2.5) = 2
    (24, 10, [0, 3, 6, 9]),           # step 3
    (30, 9, [0, 4, 8]),               # round(3.75) = 4
    (4, 3, [0, 1, 2]),                # slower than 8 fps: every frame, nothing repeated
])
def test_vbench_frame_indices(fps, t, expected):
    assert M.vbench_frame_indices(t, fps) == expected


def test_vbench_protocol_feeds_raft_the_documented_frames_20_updates_native_size():
    t, fps = 10, 24
    video = torch.stack([torch.full((3, 136, 144), i / 100) for i in range(t)], 1)[None]   # frame i holds i/100
    raft = _StubRaft()
    stats = M.vbench_motion_stats(video, raft, fps)
    assert stats["frame_indices"].tolist() == [0, 3, 6, 9] and stats["top"].shape == (1, 3)
    (call,) = raft.calls
    to_index = lambda x: ((x + 1) / 2 * 100).round().long().tolist()   # noqa: E731  [-1,1] pixel -> frame index
    assert to_index(call["first"]) == [0, 3, 6] and to_index(call["second"]) == [3, 6, 9]
    assert call["updates"] == M.VBENCH_FLOW_UPDATES == 20 and call["hw"] == (136, 144)   # native (136 is /8)
    dyn, counts = M.dynamic_degree(video, raft, protocol="vbench", fps=fps, return_counts=True)
    assert dyn.tolist() == [False] and counts.tolist() == [0]
    small = M.vbench_motion_stats(torch.rand(1, 3, 4, 32, 32), raft, 8)  # below RAFT's minimum: up to 128 px
    assert raft.calls[-1]["hw"] == (128, 128) and small["frame_indices"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("kw,fragment", [
    (dict(protocol="vbench", fps=30), "keeps every 4-th frame, so 4 frames give 1 frame"),
    (dict(protocol="vbench"), "needs fps"),
    (dict(protocol="vbench", fps=-1), "a finite fps > 0; got -1"),
    (dict(protocol="vbench", fps=math.nan), "a finite fps > 0; got nan"),
    (dict(protocol="suite", fps=24), "fps is used only by protocol='vbench'"),
    (dict(protocol="VBench"), "unknown dynamic_degree protocol 'VBench'; known: suite, vbench"),
])
def test_vbench_protocol_refusals(kw, fragment):
    with pytest.raises(ValueError) as err:
        M.dynamic_degree(torch.rand(1, 3, 4, 8, 8), _StubRaft(), **kw)
    assert fragment in str(err.value), str(err.value)


def test_evaluate_videos_records_the_protocol():
    from kv_research.metrics.core import evaluate_videos
    videos, prompts = torch.rand(2, 3, 7, 16, 16), ["a", "b"]
    raft = _StubRaft()
    per_video, summary = evaluate_videos(videos, prompts, metrics=["dynamic_degree"], raft=raft, progress=False,
                                         n_boot=20, motion_protocol="vbench", fps=24)
    proto = summary["metrics"]["dynamic_degree"]["protocol"]
    assert proto["variant"] == "vbench" and proto["fps"] == 24 and proto["frame_step"] == 3
    assert len(raft.calls) == 1 and raft.calls[0]["updates"] == 20      # no suite pass when only dynamic_degree
    assert per_video["dynamic_pairs"].tolist() == [0, 0]                 # frames 0, 3, 6: 2 pairs each
    _, summary = evaluate_videos(videos, prompts, metrics=["dynamic_degree", "motion"], raft=raft, progress=False,
                                 n_boot=20)
    assert summary["metrics"]["dynamic_degree"]["protocol"]["variant"] == "suite"
    with pytest.raises(ValueError, match="keeps frames"):
        evaluate_videos(videos[:, :, :3], prompts, metrics=["dynamic_degree"], raft=raft, progress=False,
                        motion_protocol="vbench", fps=24)


def test_vbench_protocol_with_the_real_raft(weights_dir, videos_dir):
    from kv_research.data.video import read_video
    raft = M.load_raft(path=weights_dir)
    frame = read_video(videos_dir / "mmaction2_kinetics_arm_wrestling.mp4", num_frames=1)[:, 0]   # (3, 256, 340)
    crops = [frame[:, 60:188, 100 - 2 * i:228 - 2 * i] for i in range(4)]   # content moves 2 px/frame right
    video = torch.stack(crops, 1)[None]                                 # (1, 3, 4, 128, 128)
    stats = M.vbench_motion_stats(video, raft, 24)                     # frames 0 and 3: a 6-px shift
    assert stats["frame_indices"].tolist() == [0, 3]
    assert stats["mean"].item() == pytest.approx(6 * 2, rel=0.2)       # at a 256-px short side (x2)
    assert M.dynamic_degree(video, raft, protocol="vbench", fps=24).tolist() == [True]
    assert M.dynamic_degree(video[:, :, [0, 0, 0, 0]], raft, protocol="vbench", fps=24).tolist() == [False]


# ----------------------------------------------------------------------------------------------- evaluate CLI
def _clips(root, n=2, t=7, hw=16):
    vids = root / "videos"
    vids.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(vids / f"c{i}.npy", rng.integers(0, 256, (t, hw, hw, 3), dtype=np.uint8))
    (root / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(n)))
    return vids, root / "p.txt"


def _run(argv, capsys):
    rc = cli.run(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.err


@pytest.fixture
def stub_raft(monkeypatch):
    raft = _StubRaft()
    monkeypatch.setattr("kv_research.evaluate._load_raft", lambda path, device: raft)
    return raft


def test_cli_vbench_protocol_recorded(tmp_path, capsys, stub_raft):
    vids, prompts = _clips(tmp_path)
    out = tmp_path / "out"
    rc, err = _run(["--videos", vids, "--prompts", prompts, "--metrics", "dynamic_degree,flow_score", "--out", out,
                    "--motion-protocol", "vbench", "--fps", 24, "--n-boot", 20, "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    proto = summary["metrics"]["dynamic_degree"]["protocol"]
    assert proto["variant"] == "vbench" and proto["frame_step"] == 3 and summary["inputs"]["motion_protocol"] == "vbench"
    assert sorted(c["updates"] for c in stub_raft.calls) == [6, 20]       # flow_score: suite pass; dynamic: vbench


@pytest.mark.parametrize("extra,fragment", [
    (["--motion-protocol", "vbench"], "store none (c0.npy, c1.npy): pass --fps"),
    (["--motion-protocol", "vbench", "--fps", "0"], "--fps must be a frame rate in (0, 1000], got 0.0"),
    (["--motion-protocol", "vbench", "--fps", "nan"], "--fps must be a frame rate in (0, 1000], got nan"),
    (["--motion-protocol", "vbench", "--fps", "60"], "keeps every 8-th frame: clips of 7 frames keep 1"),
    (["--fps", "24"], "--fps 24 is used only with --motion-protocol vbench"),
    (["--motion-protocol", "VBench"], "argument --motion-protocol: invalid choice: 'VBench'"),
])
def test_cli_vbench_protocol_refusals(extra, fragment, tmp_path, capsys, stub_raft):
    vids, prompts = _clips(tmp_path)
    rc, err = _run(["--videos", vids, "--prompts", prompts, "--metrics", "dynamic_degree", "--out", tmp_path / "o",
                    "--no-progress", *extra], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not (tmp_path / "o").exists() and not stub_raft.calls


def test_cli_vbench_needs_dynamic_degree(tmp_path, capsys, stub_raft):
    vids, prompts = _clips(tmp_path)
    rc, err = _run(["--videos", vids, "--prompts", prompts, "--metrics", "motion", "--out", tmp_path / "o",
                    "--motion-protocol", "vbench", "--fps", "24"], capsys)
    assert rc == 2 and "applies to dynamic_degree, which --metrics does not request (motion)" in err


def test_cli_default_metrics_are_the_real_ones_each_skipped_with_a_notice(tmp_path, capsys, stub_raft,
                                                                        monkeypatch):
    vids, prompts = _clips(tmp_path)
    out = tmp_path / "out"
    rc, err = _run(["--videos", vids, "--prompts", prompts, "--out", out, "--n-boot", 20, "--no-progress"], capsys)
    assert rc == 0, err
    notices = [ln for ln in err.splitlines() if ln.startswith("metric ")]
    assert notices == ["metric fvd skipped: no --reference folder of real videos (FVD is a distance to a reference "
                       "set)", "metric clipsim skipped: no OpenAI CLIP ViT-B/32 weights (ViT-B-32.pt or its "
                       "open_clip conversion) in $KV_WEIGHTS_DIR or --clip"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["motion"]
    assert [d["metric"] for d in summary["metrics_skipped"]] == ["fvd", "clipsim"]
    # nothing runnable: one error line naming each reason
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setattr("kv_research.weights.weights_dirs", lambda: [empty])
    rc, err = _run(["--videos", vids, "--prompts", prompts, "--out", tmp_path / "o2"], capsys)
    assert rc == 2 and "error: none of the default metrics (fvd,clipsim,motion) can run" in err
    assert "motion: no RAFT-small weights" in err and "--metrics synthetic" in err
