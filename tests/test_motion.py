"""RAFT motion score with the real RAFT-small weights: known shifts, known synthetic speeds, cache, errors.

Run with ``-s`` to see the measured errors (they are also asserted). RAFT work is kept to a few dozen
128-px frame pairs so the file runs in seconds on 2 cores.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import kv_research.metrics.motion as M
from kv_research.data.synthetic import RENDER_VERSION, SyntheticConfig, clip_id, make_clip, render_clip
from kv_research.data.video import read_video
from kv_research.weights import KNOWN, MissingWeightsError

SHIFTS = [(0, 0), (1, 0), (0, -2), (3, 1), (-4, 2), (5, -3)]      # (dx, dy) px: content moves by +d


@pytest.fixture(scope="module")
def raft():
    return M.load_raft("small")


@pytest.fixture(scope="module")
def real_frame(videos_dir):
    """One real frame (256 x 340) of a textured scene, as (3, H, W) in [0, 1]."""
    return read_video(videos_dir / "mmaction2_kinetics_arm_wrestling.mp4", num_frames=1)[:, 0]


def test_princeton_weights_map_onto_torchvision_strictly(raft):
    assert raft.kv_weights["sha256"] == KNOWN["raft_small_princeton"].sha256
    state = torch.load(raft.kv_weights["path"], map_location="cpu", weights_only=True)
    mapped = M.princeton_to_torchvision(state)
    assert len(mapped) == len(state) == 106 and set(mapped) == set(raft.state_dict())
    loaded = raft.state_dict()
    for k, v in state.items():                                              # every tensor landed, unchanged
        assert torch.equal(loaded[next(iter(M.princeton_to_torchvision({k: v})))], v)
    assert not raft.training and not any(p.requires_grad for p in raft.parameters())


def test_missing_weights_give_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path))                    # every place find_weights looks
    monkeypatch.setenv("KV_SHARED_DATA", str(tmp_path / "shared"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(M, "_RAFT_CACHE", {})
    with pytest.raises(MissingWeightsError, match="raft-small.pth") as err:
        M.load_raft("small")
    assert str(tmp_path) in str(err.value) and KNOWN["raft_small_princeton"].sha256 in str(err.value)
    with pytest.raises(MissingWeightsError, match="raft-small.pth"):
        M.motion_score(torch.rand(3, 2, 32, 32))                            # raft=None -> default loader
    with pytest.raises(MissingWeightsError, match="raft_large"):
        M.load_raft("large")
    with pytest.raises(MissingWeightsError):
        M.MotionLabelCache(tmp_path / "cache")


def test_integer_shifts_of_real_frames(raft, real_frame):
    """Consecutive 128x172 crops of a real frame, displaced by known integer shifts (172 is padded to 176)."""
    h, w = 128, 172
    top, left = 64, 84
    frames = []
    for dx, dy in [(0, 0)] + SHIFTS:
        top, left = top - dy, left - dx                                # crop window moves opposite to content
        frames.append(real_frame[:, top:top + h, left:left + w])
    video = torch.stack(frames, dim=1)[:, 1:]                              # (3, T, H, W); pair k has SHIFTS[k+1]
    video = torch.cat([video[:, :1], video], dim=1)                        # prepend a repeat: pair 0 is still
    flows = M.flow_pairs(video, raft)                                      # (1, T-1, 2, 128, 172), one RAFT pass
    assert flows.shape == (1, len(SHIFTS), 2, h, w)
    inner = flows[0, ..., 8:-8, 8:-8]                                      # content entering at borders is unseen
    truth = torch.tensor(SHIFTS, dtype=torch.float32)[:, :, None, None]
    epe = (inner - truth).norm(dim=1).flatten(1).median(dim=1).values
    print("\nmedian end-point error per shift (px):", dict(zip(SHIFTS, epe.numpy().round(3))))
    assert (epe < 0.5).all(), epe
    stats = M.flow_statistics(flows)
    expected = np.mean([np.hypot(dx, dy) for dx, dy in SHIFTS]) * 256 / h
    print(f"motion score {stats['motion_score'].item():.3f} vs true {expected:.3f}")
    assert stats["motion_score"].item() == pytest.approx(expected, rel=0.1)
    assert stats["mean"][0, 0].item() < 0.2                                # the still pair


def test_motion_score_is_flow_statistics_of_flow_pairs(raft):
    video = torch.rand(2, 3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    kw = dict(num_flow_updates=2)
    flows = M.flow_pairs(video, raft, **kw)
    assert flows.shape == (2, 2, 2, 128, 192)                              # short side 32 -> 128, aspect kept
    by_hand = flows.norm(dim=2).mean(dim=(-2, -1)).mean(dim=1) * 256 / 128
    torch.testing.assert_close(M.motion_score(video, raft, batch_size=3, **kw), by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(M.flow_statistics(flows)["motion_score"], by_hand, rtol=1e-4, atol=1e-5)


def test_default_pairs_per_call_give_the_statistics_of_the_old_default(raft):
    """``RAFT_BATCH_PAIRS`` (28) was 56: per-pair statistics of 8-frame clips agree within float rounding."""
    video = torch.stack([make_clip(i, SyntheticConfig(), "test").video for i in range(8)])
    assert M.RAFT_BATCH_PAIRS == 28
    now, before = M.motion_stats(video, raft)["mean"], M.motion_stats(video, raft, batch_size=56)["mean"]
    torch.testing.assert_close(now, before, rtol=1e-5, atol=1e-6)


def test_synthetic_known_speeds_are_measured_and_ranked(raft):
    speeds = np.linspace(0, 0.08, 6)                                        # 0 to 2.56 px per frame at 32 px
    cfg = SyntheticConfig(size=32, frames=2)
    clips = [render_clip({"objects": [{"shape": "square", "color": "red", "size": "big", "direction": "right",
                                       "speed": float(s)}], "background": bg}, cfg, seed=11)
             for bg in ("textured", "plain") for s in speeds]
    flows = M.flow_pairs(torch.stack([c.video for c in clips]), raft)      # (12, 1, 2, 128, 128), 4x upsampled
    scale = 128 / cfg.size
    errors = []
    for c, f in zip(clips, flows):
        alpha = torch.from_numpy(c.extra["alpha"][0, :-1])                  # (1, 32, 32) object at frame 0
        inside = F.interpolate(alpha[:, None], scale_factor=scale, mode="nearest")[:, 0] >= 0.999
        true = torch.tensor([c.motion_px[0], 0.0])[None, :, None, None]
        errors.append((f / scale - true).norm(dim=1)[inside].median().item())   # px at 32-px resolution
    scores = M.flow_statistics(flows)["motion_score"].numpy()
    gt = np.array([c.gt_motion for c in clips])
    rho = spearmanr(scores, np.tile(speeds, 2)).statistic
    print(f"\nobject-interior median EPE (px at 32 px): max {max(errors):.3f}, median {np.median(errors):.3f}; "
          f"Spearman(score, speed) = {rho:.3f}; score/gt at top speed = {scores[5] / gt[5]:.2f} (textured), "
          f"{scores[11] / gt[11]:.2f} (plain); still scores {scores[0]:.3f}, {scores[6]:.3f}")
    assert max(errors) < 0.5
    assert rho >= 0.95


def test_benchmark_clips_rank_by_ground_truth(raft):
    cfg = SyntheticConfig(frames=2)
    clips = [make_clip(i, cfg) for i in range(16)]
    scores = M.motion_score(torch.stack([c.video for c in clips]), raft).numpy()
    rho = spearmanr(scores, [c.gt_motion for c in clips]).statistic
    print(f"\nSpearman(motion_score, gt_motion) on 16 random benchmark clips: {rho:.3f}")
    assert rho >= 0.85


def test_dynamic_degree_and_flow_score_conventions(raft, real_frame):
    a = real_frame[:, 60:188, 80:208]
    moved = real_frame[:, 60:188, 72:200]                                  # content moves 8 px right (x16 at 256)
    video = torch.stack([torch.stack([a, moved], 1), torch.stack([a, a], 1)])  # (2, 3, 2, 128, 128)
    kw = dict(num_flow_updates=4)
    dyn, counts = M.dynamic_degree(video, raft, return_counts=True, **kw)
    assert dyn.tolist() == [True, False] and counts.tolist() == [1, 0]
    fs = M.flow_score(video, raft, **kw)                                    # px of the 128-px input video
    assert fs[0].item() == pytest.approx(8.0, rel=0.1) and fs[1].item() < 0.2
    small = F.interpolate(video[0].transpose(0, 1), size=(64, 64), mode="bilinear", antialias=True)
    stats = M.motion_stats(small.transpose(0, 1), raft, **kw)               # same content at 64 px
    assert stats["motion_score"].item() == pytest.approx(16.0, rel=0.15)     # resolution-free normalisation
    assert (stats["motion_score"] * stats["scale_to_input"]).item() == pytest.approx(4.0, rel=0.15)


def test_input_checks(raft):
    assert M.working_size(1080, 1920, 128) == (128, 228) and M.working_size(200, 100, 128) == (256, 128)
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.motion_score(torch.rand(3, 1, 32, 32), raft)
    with pytest.raises(TypeError, match="uint8"):
        M.motion_score(torch.zeros(3, 2, 32, 32, dtype=torch.uint8), raft)
    with pytest.raises(ValueError, match=r"values in \[0,1\]"):
        M.motion_score(torch.rand(3, 2, 32, 32) * 255, raft)
    with pytest.raises(ValueError, match="B,3,T,H,W"):
        M.motion_score(torch.rand(2, 2, 32, 32), raft)


def test_motion_label_cache(raft, tmp_path, monkeypatch):
    cfg = SyntheticConfig(frames=2, n_train=3)
    cache = M.MotionLabelCache(tmp_path, cfg=M.MotionConfig(num_flow_updates=2))
    assert cache.weights_hash == KNOWN["raft_small_princeton"].sha256 and cache._raft is None
    first = cache.label_synthetic(cfg, progress=False)
    files = sorted(cache.dir.glob("*.json"))
    assert len(files) == 3 and np.all(first >= 0)
    rec = json.loads(files[0].read_text())
    assert rec["clip_id"].startswith(f"syn{RENDER_VERSION}-") and rec["weights_sha256"] == cache.weights_hash
    # direct computation with the same settings gives the cached values
    direct = M.motion_score(torch.stack([make_clip(i, cfg).video for i in range(3)]), raft, num_flow_updates=2)
    np.testing.assert_allclose(first, direct.numpy(), rtol=1e-5)
    # second call reads the files and runs no RAFT at all
    monkeypatch.setattr(M, "motion_score", lambda *a, **k: pytest.fail("RAFT ran on a cached clip"))
    again = M.MotionLabelCache(tmp_path, cfg=M.MotionConfig(num_flow_updates=2)).label_synthetic(cfg, progress=False)
    np.testing.assert_array_equal(first, again)
    other = M.MotionLabelCache(tmp_path, cfg=M.MotionConfig(num_flow_updates=3))
    assert other.dir != cache.dir and other.get(rec["clip_id"]) is None
    # a different model (weights) gets its own namespace too
    assert M.MotionLabelCache(tmp_path, raft=torch.nn.Linear(2, 2)).dir != cache.dir


def test_interrupted_labelling_resumes_to_identical_labels(raft, tmp_path):
    """A label lost to a crash is recomputed in its original group, so it equals the uninterrupted value exactly."""
    cfg = SyntheticConfig(frames=3, n_train=5)
    kw = dict(cfg=M.MotionConfig(num_flow_updates=2), raft=raft, flush_every=4)
    full = M.MotionLabelCache(tmp_path / "a", **kw).label_synthetic(cfg, progress=False)
    cache = M.MotionLabelCache(tmp_path / "b", **kw)
    cache.label_synthetic(cfg, progress=False)
    ids = [clip_id(i, cfg, "train") for i in range(5)]
    for i in (1, 4):                                  # lose one label inside the first group, one in the last
        cache._file(ids[i]).unlink()
    calls = []
    real = M.motion_score
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "motion_score", lambda v, *a, **k: calls.append(v.shape[0]) or real(v, *a, **k))
        resumed = cache.label_synthetic(cfg, progress=False)
    assert calls == [4, 1]                            # whole groups: clips 0-3 together, then clip 4
    np.testing.assert_array_equal(resumed, full)
