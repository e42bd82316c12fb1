"""Fréchet distance: agreement with independent computations, identities, and failure modes."""
import warnings

import numpy as np
import pytest
import scipy.linalg

from kv_research.metrics import RankDeficientWarning, feature_stats, frechet_distance
from kv_research.metrics.frechet import frechet_distance_with_method, trace_sqrt_product


def _random_cov(rng, d, n=None):
    """A well-conditioned random covariance (Wishart with n > d samples) and a random mean."""
    n = n or 3 * d
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=d), np.cov(a, rowvar=False)


def _sqrtm_fd(mu1, s1, mu2, s2):
    """Independent reference: the textbook formula with scipy's general matrix square root."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [2, 16, 64])
@pytest.mark.parametrize("method", ["auto", "eigh"])
def test_matches_scipy_sqrtm(d, method):
    rng = np.random.default_rng(d)
    for _ in range(3):
        mu1, s1 = _random_cov(rng, d)
        mu2, s2 = _random_cov(rng, d)
        ours = frechet_distance(mu1, s1, mu2, s2, method=method)
        ref = _sqrtm_fd(mu1, s1, mu2, s2)
        assert ours == pytest.approx(ref, rel=1e-6)


def test_auto_uses_cleanfid_when_full_rank_and_eigh_when_singular():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_cov(rng, 8)
    mu2, s2 = _random_cov(rng, 8)
    assert frechet_distance_with_method(mu1, s1, mu2, s2)[1] == "cleanfid_sqrtm"
    with pytest.warns(RankDeficientWarning):
        m, s = feature_stats(rng.normal(size=(5, 8)))            # rank 4 < 8
    assert frechet_distance_with_method(m, s, mu2, s2)[1] == "eigh_symmetric"


def test_identity_and_symmetry():
    rng = np.random.default_rng(1)
    mu1, s1 = _random_cov(rng, 32)
    mu2, s2 = _random_cov(rng, 32)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_known_closed_form():
    """N(0, I) vs N(m, c^2 I) in d dims: FD = d m^2 + d (1 - c)^2."""
    d, m, c = 10, 0.3, 1.5
    fd = frechet_distance(np.zeros(d), np.eye(d), np.full(d, m), c ** 2 * np.eye(d))
    assert fd == pytest.approx(d * m ** 2 + d * (1 - c) ** 2, rel=1e-12)


def test_rank_deficient_is_exact_and_zero_for_identical_sets():
    """N < d: compare with the exact sample-space form tr sqrt(S1 S2) = ||A1 A2^T||_* / (N - 1)."""
    rng = np.random.default_rng(2)
    n, d = 16, 100
    a, b = rng.normal(size=(n, d)), rng.normal(0.1, 1.1, size=(n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        (ma, sa), (mb, sb) = feature_stats(a), feature_stats(b)
    exact = np.linalg.svd((a - ma) @ (b - mb).T, compute_uv=False).sum() / (n - 1)
    assert trace_sqrt_product(sa, sb) == pytest.approx(exact, rel=1e-10)
    assert abs(frechet_distance(ma, sa, ma, sa)) < 1e-9 * np.trace(sa)  # sqrtm gives ~-1e-5 here


def test_cleanfid_failure_falls_back(monkeypatch):
    """An exception inside clean-fid (imaginary part, SciPy API change) must not break the metric."""
    import cleanfid.fid

    def broken(*a, **k):
        raise ValueError("Imaginary component 0.5")
    monkeypatch.setattr(cleanfid.fid, "frechet_distance", broken)
    rng = np.random.default_rng(3)
    mu1, s1 = _random_cov(rng, 8)
    mu2, s2 = _random_cov(rng, 8)
    value, method = frechet_distance_with_method(mu1, s1, mu2, s2)
    assert method == "eigh_symmetric"
    assert value == pytest.approx(_sqrtm_fd(mu1, s1, mu2, s2), rel=1e-6)
    with pytest.raises(ValueError, match="Imaginary"):
        frechet_distance(mu1, s1, mu2, s2, method="cleanfid")


def test_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.ones((1, 4)))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.warns(RankDeficientWarning, match="N=3"):
        feature_stats(np.random.default_rng(0).normal(size=(3, 10)))


def test_float64_and_torch_inputs():
    torch = pytest.importorskip("torch")
    feats = torch.randn(50, 6, dtype=torch.float32)
    mu, sigma = feature_stats(feats)
    assert mu.dtype == np.float64 and sigma.shape == (6, 6)
    np.testing.assert_allclose(sigma, np.cov(feats.double().numpy(), rowvar=False), rtol=1e-12)
