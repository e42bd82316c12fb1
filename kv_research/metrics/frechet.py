"""Fréchet distance between Gaussians fitted to features (the core of FID / FVD / FVD-syn).

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Why this file exists instead of calling one library function:

* Everything is float64. Feature sums in float32 lose digits at N = 2048, d = 400.
* ``tr((S1 S2)^{1/2})`` needs care. clean-fid's ``frechet_distance`` (``scipy.linalg.sqrtm``) is what most
  papers used, so we call it when it is safe: both covariances full rank. It has known failure modes:
  a singular product makes it add ``eps * I`` to both covariances (it changes the answer and prints),
  an imaginary part above 1e-3 raises ``ValueError`` in the PyPI wheel, and SciPy >= 1.18 drops the
  ``disp=`` argument it passes. In all of these cases, and whenever N <= d (rank-deficient covariances,
  the normal case for FVD with fewer than 400 videos), we use the symmetric eigen form of TF-GAN:
  ``sum(sqrt(clip(eigvalsh(sqrt(S1) S2 sqrt(S1)), 0)))``. ``S1 S2`` is similar to that PSD matrix, so the
  trace of the square root is the same number, and tiny negative eigenvalues from rounding are clipped
  instead of turning into complex numbers.
* N < 2 cannot give a covariance: clear error. N <= d gives a rank-deficient covariance and a strongly
  N-biased estimate: a warning says so (compare FDs only at equal N).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

__all__ = ["frechet_distance", "frechet_distance_with_method", "feature_stats", "frechet_distance_from_feats",
           "trace_sqrt_product", "RankDeficientWarning"]


class RankDeficientWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is singular and FD is strongly biased by N."""


def feature_stats(feats, ddof: int = 1, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``feats`` (N, D) in float64.

    ``ddof=1`` is the unbiased covariance (np.cov, TF-GAN, torchmetrics); ``ddof=0`` is the population one
    that StyleGAN-V's ``FeatureStats`` uses. The difference is a factor (N-1)/N: negligible at 2048, not at 16.
    """
    x = _as_float64(feats, "feats")
    if x.ndim != 2:
        raise ValueError(f"feature_stats expects a (N, D) array, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"feature_stats needs at least 2 samples to estimate a covariance, got N={n}. "
                         "A Fréchet distance from one video is undefined; evaluate more videos.")
    if not np.isfinite(x).all():
        raise ValueError("feature_stats: features contain NaN or inf (check the detector input range)")
    if warn and n <= d:
        warnings.warn(f"Fréchet statistics from N={n} samples of {d}-d features: the covariance has rank <= {n - 1} "
                      f"< {d}, so the distance is strongly biased upwards by small N. Compare values only at "
                      "equal N (2048 is the FVD convention).", RankDeficientWarning, stacklevel=2)
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False, ddof=ddof)
    return mu, np.atleast_2d(sigma)


def trace_sqrt_product(sigma1, sigma2) -> float:
    """``tr((S1 S2)^{1/2})`` by the symmetric eigen form; exact for PSD inputs, including singular ones."""
    s1 = _as_float64(sigma1, "sigma1")
    s2 = _as_float64(sigma2, "sigma2")
    w, v = np.linalg.eigh(_sym(s1))
    sqrt_s1 = (v * np.sqrt(_drop_rounding(w))) @ v.T              # (D, D) PSD square root of S1
    m = _sym(sqrt_s1 @ _sym(s2) @ sqrt_s1)                         # similar to S1 S2, symmetric PSD
    lam = _drop_rounding(np.linalg.eigvalsh(m))
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance_with_method(mu1, sigma1, mu2, sigma2, method: str = "auto") -> tuple[float, str]:
    """Fréchet distance and the name of the square-root method actually used.

    ``method``: ``"auto"`` (clean-fid sqrtm when both covariances are full rank, else eigh), ``"eigh"`` (fast,
    used by the bootstrap), ``"cleanfid"`` (sqrtm only; errors are re-raised).
    """
    mu1, mu2 = _as_float64(mu1, "mu1").reshape(-1), _as_float64(mu2, "mu2").reshape(-1)
    s1, s2 = np.atleast_2d(_as_float64(sigma1, "sigma1")), np.atleast_2d(_as_float64(sigma2, "sigma2"))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shape mismatch mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"frechet_distance: {name} contains NaN or inf")
    if method not in ("auto", "eigh", "cleanfid"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'eigh' or 'cleanfid'")
    diff = mu1 - mu2
    base = float(diff @ diff + np.trace(s1) + np.trace(s2))

    if method in ("auto", "cleanfid"):
        if method == "cleanfid" or (_full_rank(s1) and _full_rank(s2)):
            try:
                return _cleanfid(mu1, s1, mu2, s2), "cleanfid_sqrtm"
            except (ValueError, TypeError, np.linalg.LinAlgError, FloatingPointError) as e:
                if method == "cleanfid":
                    raise
                _ = e  # imaginary part, SciPy API change or non-finite result: use the symmetric form below
    return base - 2.0 * trace_sqrt_product(s1, s2), "eigh_symmetric"


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "auto") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) as a Python float (not clamped at 0).

    Identical inputs give ~0 up to rounding (possibly a tiny negative number: clamp only for display).
    """
    return frechet_distance_with_method(mu1, sigma1, mu2, sigma2, method)[0]


def frechet_distance_from_feats(feats1, feats2, ddof: int = 1, method: str = "auto") -> float:
    """Convenience: ``frechet_distance(*feature_stats(feats1), *feature_stats(feats2))``."""
    return frechet_distance(*feature_stats(feats1, ddof), *feature_stats(feats2, ddof), method=method)


# ----------------------------------------------------------------------------------------------- helpers
def _as_float64(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().double().numpy()
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot convert {type(a).__name__} to a float64 array") from e


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def _drop_rounding(w: np.ndarray) -> np.ndarray:
    """Zero eigenvalues below the rounding level of eigh (~ d * eps * max).

    They are the null space of a singular covariance. Taking their square root would add about
    sqrt(1e-13 * max) per dimension, a systematic positive bias (FD(A, A) = -1e-4 instead of 0 at N=16, d=400).
    """
    tol = 10.0 * w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 0.0)
    return np.where(w > tol, w, 0.0)


def _full_rank(sigma: np.ndarray, rtol: float = 1e-10) -> bool:
    w = np.linalg.eigvalsh(_sym(sigma))
    return bool(w.size and w.max() > 0 and w.min() > rtol * w.max())


def _cleanfid(mu1, s1, mu2, s2) -> float:
    """clean-fid's implementation, made silent and strict: any non-finite or fallback path raises."""
    from cleanfid.fid import frechet_distance as cf_frechet  # imports torch/torchvision: keep it lazy

    printed = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's deprecated ``disp=`` argument
        with contextlib.redirect_stdout(printed):
            value = float(np.real(cf_frechet(mu1, s1, mu2, s2)))
    if "singular product" in printed.getvalue():
        raise FloatingPointError("clean-fid had to add eps*I to the covariances (singular product)")
    if not np.isfinite(value):
        raise FloatingPointError(f"clean-fid returned a non-finite value {value}")
    return value
