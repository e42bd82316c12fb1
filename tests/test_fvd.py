"""FVD: detector loading and preprocessing, identities, sensitivity to corruption, caching, uncertainty.

The real StyleGAN-V I3D file is not available offline; a random-init TorchScript stand-in with the same call
interface (``save_i3d_standin``) exercises the whole path. Values are therefore not paper FVDs; what is tested
is that the pipeline passes content and temporal order through and that every number carries its context.
"""
import warnings

import numpy as np
import pytest
import torch

from kv_research.data.synthetic import SyntheticConfig, make_clip
from kv_research.metrics import RankDeficientWarning
from kv_research.metrics.bootstrap import bootstrap_fvd, fvd_reference_subsets
from kv_research.metrics.fvd import (FVDProtocol, compute_fvd, extract_features, load_i3d, reference_stats,
                                     save_i3d_standin, select_frames)
from kv_research.weights import MissingWeightsError, sha256_file

warnings.filterwarnings("ignore", category=RankDeficientWarning)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = save_i3d_standin(tmp_path_factory.mktemp("w") / "i3d_torchscript.pt")
    return load_i3d(path)


@pytest.fixture(scope="module")
def clips16():
    cfg = SyntheticConfig(frames=16)
    return torch.stack([make_clip(i, cfg, "test").video for i in range(10)])     # (10, 3, 16, 32, 32)


def _fd(det, a_feats, videos):
    return compute_fvd(extract_features(videos, det, progress=False), a_feats, det.info).fvd


def test_missing_i3d_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as e:
        load_i3d()
    msg = str(e.value)
    assert "i3d_torchscript.pt" in msg and "sha256" in msg and str(tmp_path) in msg and "KV_WEIGHTS_DIR" in msg


def test_standin_interface_and_identity(standin, tmp_path, monkeypatch):
    det = standin.detector
    x = torch.rand(2, 3, 16, 224, 224) * 2 - 1
    assert det(x, rescale=False, resize=False, return_features=True).shape == (2, 400)
    probs = det(x, rescale=False, resize=False, return_features=False)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)          # softmax without return_features
    assert standin.info.feature_dim == 400 and standin.info.frames == 16 and standin.info.resolution == 224
    assert "STAND-IN" in standin.info.name
    # found through $KV_WEIGHTS_DIR too, and the hash is the file's
    path = save_i3d_standin(tmp_path / "i3d_torchscript.pt")
    monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path))
    assert load_i3d().info.sha256 == sha256_file(path)


def test_preprocessing_follows_protocol(standin):
    v = torch.rand(2, 3, 20, 40, 56)
    x = standin.preprocess(v)
    assert x.shape == (2, 3, 16, 224, 224)                                  # first 16 frames, squashed to 224
    assert x.min() >= -1 and x.max() <= 1
    # uint8 quantisation happens before resizing: a constant frame maps to k/255 * 2 - 1 exactly
    c = torch.full((1, 3, 16, 8, 8), 0.5003)
    assert torch.allclose(standin.preprocess(c), torch.full((1, 3, 16, 224, 224), 128 / 255 * 2 - 1), atol=1e-6)
    with pytest.raises(ValueError, match="16"):
        select_frames(torch.rand(1, 3, 8, 4, 4), 16)
    rep = select_frames(torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 3, 8, 1, 1), 16, "repeat")
    assert rep[0, 0, :, 0, 0].tolist() == [i // 2 for i in range(16)]


def test_fvd_identity_and_growth_under_corruption(standin, clips16):
    a = extract_features(clips16, standin, progress=False)
    res = compute_fvd(a, a, standin.info)
    assert abs(res.fvd) < 1e-9
    assert (res.n_gen, res.n_ref, res.frames, res.resolution) == (10, 10, 16, 224)
    assert res.detector_sha256 == standin.info.sha256 and res.protocol["cov_ddof"] == 0

    g = torch.Generator().manual_seed(0)
    noise = [_fd(standin, a, (clips16 + s * torch.randn(clips16.shape, generator=g)).clamp(0, 1)) for s in (0.05, 0.2)]

    def freeze(k):                       # the last k frames repeat frame 15-k
        v = clips16.clone()
        v[:, :, 16 - k:] = clips16[:, :, 15 - k:16 - k]
        return v

    def shuffle(window):                 # random order inside windows of `window` frames (not a plain reversal:
        gp = torch.Generator().manual_seed(window)   # reversed synthetic clips are in-distribution)
        idx = torch.cat([s + torch.randperm(window, generator=gp) for s in range(0, 16, window)])
        return clips16[:, :, idx]
    frozen = [_fd(standin, a, freeze(k)) for k in (4, 15)]
    shuffled = [_fd(standin, a, shuffle(w)) for w in (4, 16)]
    for name, series in (("noise", noise), ("freeze", frozen), ("shuffle", shuffled)):
        assert all(v > 1e-6 * abs(noise[-1]) for v in series), (name, series)
        assert series == sorted(series), f"{name}: FVD should grow with the corruption, got {series}"


def test_reference_stats_cached_once(standin, clips16, tmp_path):
    calls = []

    def load():
        calls.append(1)
        return clips16
    r1 = reference_stats(load, standin, "toy-set", cache_dir=tmp_path, progress=False)
    r2 = reference_stats(load, standin, "toy-set", cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and r1.path == r2.path and r1.path.is_file()
    assert standin.info.sha256[:16] in r1.path.name
    np.testing.assert_allclose(r1.sigma, r2.sigma)
    # a different protocol is a different cache entry
    det2 = type(standin)(standin.detector, standin.info.sha256, standin.info.name, FVDProtocol(short_clips="repeat"))
    r3 = reference_stats(load, det2, "toy-set", cache_dir=tmp_path, progress=False)
    assert r3.path != r1.path and len(calls) == 2


def test_bootstrap_and_reference_subsets():
    rng = np.random.default_rng(0)
    gen, pool = rng.normal(size=(20, 5)), rng.normal(0.5, 1.0, size=(100, 5))
    boot = bootstrap_fvd(gen, pool, n_boot=50, seed=1)
    assert boot["ci_low"] < boot["ci_high"] and boot["n_boot"] == 50
    # duplicates in resamples inflate FVD (bias > 0); the reported interval is shifted back around the estimate
    from kv_research.metrics.frechet import frechet_distance_from_feats
    point = frechet_distance_from_feats(gen, pool, ddof=0)
    assert boot["point"] == pytest.approx(point, rel=1e-6)
    assert boot["bias"] > 0 and boot["ci_low_raw"] > boot["ci_low"]
    assert boot["ci_low"] < point < boot["ci_high"]
    assert boot["ci_high_raw"] - boot["ci_low_raw"] == pytest.approx(boot["ci_high"] - boot["ci_low"])
    sub = fvd_reference_subsets(gen, pool, n_subsets=5)
    assert sub["subset_size"] == 20 and len(sub["values"]) == 5 and not sub["overlap"] and sub["std"] > 0
    assert sub["mean"] == pytest.approx(np.mean(sub["values"]))
    with pytest.raises(ValueError, match="fewer than the subset size"):
        fvd_reference_subsets(gen, pool[:10])
