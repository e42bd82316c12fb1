"""Domain evaluators on the synthetic benchmark: caching, and that their metrics separate real from wrong.

Trained once per test session with the 'smoke' preset (seconds) into the session cache of conftest.py; the
CLI tests reuse the same cache entry.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from kv_research.data.synthetic import SyntheticConfig, make_clip
from kv_research.metrics import RankDeficientWarning
from kv_research.metrics.core import evaluate_videos
from kv_research.metrics.evaluators import (GRID, PRESETS, attribute_checks, load_or_train_evaluators,
                                            _vocab)
from kv_research.metrics.fvd import compute_fvd

warnings.filterwarnings("ignore", category=RankDeficientWarning)
CFG = SyntheticConfig()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "kv_cache"        # the session cache of conftest.py (CLI tests reuse it)


@pytest.fixture(scope="module")
def smoke(cache):
    return load_or_train_evaluators(CFG, "smoke", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def real():
    a = [make_clip(i, CFG, "test") for i in range(64)]
    b = [make_clip(i, CFG, "test") for i in range(64, 128)]
    return torch.stack([c.video for c in a]), [c.caption for c in a], torch.stack([c.video for c in b])


def test_cached_by_config_hash(smoke, cache):
    assert (smoke.path / "featnet.safetensors").is_file() and (smoke.path / "clip.safetensors").is_file()
    cfg = json.loads((smoke.path / "config.json").read_text())
    assert cfg["preset"]["name"] == "smoke" and cfg["data_cfg"]["size"] == CFG.size
    again = load_or_train_evaluators(CFG, "smoke", cache_dir=cache, progress=False)   # loads, does not retrain
    assert again.path == smoke.path and again.feature_net.info.sha256 == smoke.feature_net.info.sha256
    assert again.report["train_seconds"] == smoke.report["train_seconds"]
    assert len(smoke.feature_net.info.sha256) == 64 and smoke.path.name in smoke.feature_net.info.name
    with pytest.raises(ValueError, match="unknown evaluator preset"):
        load_or_train_evaluators(CFG, "nope")


def test_quality_report_is_measured(smoke):
    q = smoke.report["quality"]
    for k in ("color_acc_at_object", "shape_acc_at_object", "direction_acc_at_object", "speed_acc_at_object",
              "detection_recall", "attr_acc_on_real_clips"):
        assert 0.0 <= q["videonet"][k] <= 1.0
    for k in ("retrieval_top1", "retrieval_top5", "clipsim_syn_matched", "clipsim_syn_shuffled"):
        assert k in q["clip"]
    assert q["clip"]["n"] == PRESETS["smoke"].n_eval_clips


def test_clipsim_syn_real_beats_shuffled_captions(smoke, real):
    videos, captions, _ = real
    matched = smoke.clip(videos, captions)
    shuffled = smoke.clip(videos, captions[1:] + captions[:1])
    assert matched.mean() - shuffled.mean() > 0.05, (matched.mean(), shuffled.mean())
    assert (matched > shuffled).float().mean() > 0.75


def test_fvd_syn_real_far_below_corrupted(smoke, real):
    """Real-vs-real FVD-syn is far below real-vs-corrupted, and FVD-syn grows with temporal corruption.

    The smoke net is trained for seconds: appearance corruptions are already far away; temporal ones (frozen,
    shuffled frames) move FVD-syn less for it (the 'quick' net, trained on direction and speed, separates them
    strongly) but must still increase it, and increase it more the stronger they are.
    """
    a, _, b = real
    fx = smoke.feature_net
    fa = fx(a)[0].double().numpy()

    def fd(v):
        return compute_fvd(fx(v)[0].double().numpy(), fa, fx.info).fvd
    g = torch.Generator().manual_seed(0)
    base = fd(b)                                                       # real vs other real clips
    assert abs(fd(a)) < 1e-6
    for name, v in {"noise": (b + 0.2 * torch.randn(b.shape, generator=g)).clamp(0, 1),
                    "colour-swapped": b[:, [2, 0, 1]]}.items():
        assert fd(v) > 2 * base, f"{name}: FVD-syn {fd(v):.3f} not far above real-vs-real {base:.3f}"
    for name, v in {"frozen": b[:, :, :1].expand_as(b).contiguous(),
                    "shuffled": b[:, :, torch.randperm(b.shape[2], generator=g)]}.items():
        assert fd(v) > base, f"{name}: FVD-syn {fd(v):.3f} not above real-vs-real {base:.3f}"

    def freeze(v, k):                                                  # last k frames repeat frame T-k-1
        v = v.clone()
        v[:, :, -k:] = v[:, :, -k - 1:-k]
        return v
    doses = [fd(freeze(a, k)) for k in (2, 4, 7)]
    assert 0 < doses[0] < doses[1] < doses[2], doses


def test_attribute_checks_logic():
    """Hand-made detector outputs: the first object's colour decides which detection is checked."""
    vocab = _vocab()
    n_cells = GRID * GRID
    out = {"objectness": torch.full((1, n_cells), -10.0), "background": torch.zeros(1, len(vocab["background"]))}
    for a in ("color", "shape", "size", "direction", "speed"):
        out[a] = torch.zeros(1, n_cells, len(vocab[a]))

    def put(cell, **attrs):
        out["objectness"][0, cell] = 10.0
        for a, v in attrs.items():
            out[a][0, cell, vocab[a].index(v)] = 5.0
    put(9, color="red", shape="circle", direction="left", speed="quickly", size="small")
    put(45, color="blue", shape="square", direction="none", speed="still", size="big")
    out["background"][0, vocab["background"].index("striped")] = 5.0
    prompts = ["a small red circle moves left quickly and a big blue square stays still over a striped background",
               "a small red square moves left quickly over a plain background",
               "a small green circle moves left quickly over a striped background",
               "not a benchmark prompt"]
    checks = attribute_checks({k: v.expand(len(prompts), *v.shape[1:]) for k, v in out.items()}, prompts, vocab)
    assert checks["color"][:3].tolist() == [1, 1, 0]
    assert checks["shape"][:3].tolist() == [1, 0, 0]        # red square asked, red circle shown; no green object
    assert checks["direction"][:3].tolist() == [1, 1, 0]
    assert checks["background"][:3].tolist() == [1, 0, 1]
    assert np.isnan(checks["color"][3])


def test_evaluate_videos_synthetic_metrics(smoke, real):
    videos, captions, _ = real
    n = 16
    per_video, summary = evaluate_videos(videos[:n], captions[:n], metrics=["fvd_syn", "clipsim_syn", "attr_acc"],
                                         evaluators=smoke, progress=False, n_boot=200, n_boot_fvd=20, fvd_subsets=3)
    assert list(per_video.columns[:1]) == ["video"] and {"clipsim_syn", "attr_acc", "attr_color"} <= set(per_video)
    for name in ("fvd_syn", "clipsim_syn", "attr_acc"):
        m = summary["metrics"][name]
        assert {"value", "ci_low", "ci_high", "n", "detector", "detector_sha256"} <= set(m)
        assert len(m["detector_sha256"]) == 64
    f = summary["metrics"]["fvd_syn"]
    assert f["n"] == n and f["n_ref"] == 4 * n and f["frames"] == CFG.frames and f["resolution"] == CFG.size
    assert f["reference_subsets"]["subset_size"] == n and len(f["reference_subsets"]["values"]) == 3
    assert summary["metrics"]["attr_acc"]["per_attribute"].keys() >= {"color", "shape", "direction", "speed"}


def test_motion_agreement_statistics():
    from kv_research.metrics.agreement import motion_agreement
    rng = np.random.default_rng(0)
    requested = np.repeat([0.0, 1.0, 2.5, 4.0], 8)
    good = requested * 0.9 + rng.normal(0, 0.1, requested.size)         # follows the request
    bad = rng.uniform(0, 4, requested.size)                             # ignores it
    a, b = motion_agreement(good, requested, n_boot=200), motion_agreement(bad, requested, n_boot=200)
    assert a["spearman"]["value"] > 0.9 and a["monotonic"] and a["monotonic_pairs"] == 1.0
    assert a["spearman"]["ci_low"] > b["spearman"]["ci_high"]
    assert a["binary_accuracy"]["value"] == 1.0 and a["binary_accuracy"]["threshold"] == 2.0
    assert a["mae"]["value"] == pytest.approx(np.abs(good - requested).mean())
    assert [lv["requested"] for lv in a["per_level"]] == [0.0, 1.0, 2.5, 4.0]
    assert all(lv["ci_low"] <= lv["mean"] <= lv["ci_high"] for lv in a["per_level"])
    assert abs(b["spearman"]["value"]) < 0.5
    with pytest.raises(ValueError, match="measured has 3 values but requested has 2"):
        motion_agreement([1, 2, 3], [1, 2])


def test_motion_control_paired_statistics():
    from kv_research.metrics.agreement import motion_control
    rng = np.random.default_rng(0)
    req_a, req_b = np.full(20, 0.5), np.where(np.arange(20) % 2 == 0, 3.0, 0.1)   # up for even, down for odd
    own = rng.uniform(1, 2, 20)
    follows = own + 0.8 * (req_b - req_a)                                 # moves by 80 % of the requested change
    ignores = own.copy()                                                  # the condition does nothing (ties)
    opposite = own - 0.5 * (req_b - req_a)
    f, i, o = (motion_control(own, m, req_a, req_b, n_boot=200) for m in (follows, ignores, opposite))
    assert f["value"] == 1.0 and f["gain"]["value"] == pytest.approx(0.8)
    assert i["value"] == 0.5 and i["gain"]["value"] == 0.0 and i["ci_low"] == i["ci_high"] == 0.5
    assert o["value"] == 0.0 and o["gain"]["value"] == pytest.approx(-0.5)
    half = motion_control(own, np.where(np.arange(20) < 10, follows, opposite), req_a, req_b, n_boot=200)
    assert half["value"] == 0.5 and half["ci_low"] < 0.5 < half["ci_high"] and half["n"] == 20
    with pytest.raises(ValueError, match="at least 2 pairs"):
        motion_control(own, follows, req_a, req_a)                        # no pair with a different request


def test_motion_through_the_harness():
    """RAFT-measured motion (the one motion_score) as a per-video column, with agreement against the request."""
    from kv_research.data.synthetic import prompt_motion_score
    from kv_research.metrics.motion import load_raft, motion_score
    clips = [make_clip(i, CFG, "test") for i in range(3)]
    videos = torch.stack([c.video for c in clips])[:, :, :4]              # 3 clips x 3 frame pairs: CPU-cheap
    requested = [prompt_motion_score(c.attrs) for c in clips]
    raft = load_raft()
    per_video, summary = evaluate_videos(videos, [c.caption for c in clips], metrics=["motion"], raft=raft,
                                         requested_motion=requested, progress=False, n_boot=50)
    np.testing.assert_allclose(per_video["motion"], motion_score(videos, raft=raft).numpy(), rtol=1e-5)
    m = summary["metrics"]["motion"]
    assert m["n"] == 3 and m["detector_sha256"] == raft.kv_weights["sha256"]
    assert m["agreement"]["n"] == 3 and "spearman" in m["agreement"] and "binary_accuracy" in m["agreement"]
    assert per_video["requested_motion"].tolist() == pytest.approx(requested)
