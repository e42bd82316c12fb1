"""Does the measured motion follow the requested motion score?

The measured score comes from ``kv_research.metrics.motion.motion_score`` (the one RAFT-based definition used
both for training labels and for measuring generated videos), so requested and measured values are in the
same units. What is reported, and why:

* Spearman rank correlation: the requested score is a conditioning knob; rank agreement is what a user can
  rely on even when the scale is off (SVD's motion buckets were never mapped to pixels either).
* Per-level means with bootstrap intervals and a monotonicity check: does "fast" move more than "slow",
  level by level?
* Paired control (``motion_control``): the same prompt, seed and first frame generated at two requested scores.
  Over a prompt set, Spearman mixes "does the condition do anything" with "are the videos coherent enough for
  RAFT to see it" (flicker reads as motion and swamps small differences). A paired test isolates the first: the
  fraction of prompts whose measured motion moves in the requested direction (0.5 = the condition is ignored).
* Mean absolute error: the scale matters too when the units are the same.
* EvalCrafter-style binary accuracy: ``(measured > tau) == (requested > tau)``. EvalCrafter uses tau = 5 px of
  mean flow at native resolution; here tau defaults to the midpoint between the lowest and highest requested
  level (our units are ``motion_score``'s), and is reported with the result.
"""
from __future__ import annotations

import numpy as np

__all__ = ["motion_agreement", "motion_control"]


def motion_agreement(measured, requested, *, threshold: float | None = None, level: float = 0.95,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Agreement statistics between measured (N,) and requested (N,) motion scores.

    Returns a JSON-friendly dict: ``spearman`` {value, ci_low, ci_high, p_value}, ``per_level`` (list of
    {requested, n, mean, ci_low, ci_high}), ``monotonic`` (bool, per-level means strictly increasing),
    ``monotonic_pairs`` (fraction of adjacent level pairs in the right order), ``mae`` {value, ci_low, ci_high},
    ``binary_accuracy`` {value, ci_low, ci_high, threshold}, and ``n``.
    """
    from scipy.stats import spearmanr
    from .bootstrap import bootstrap_ci

    m = np.asarray(measured, dtype=np.float64).reshape(-1)
    r = np.asarray(requested, dtype=np.float64).reshape(-1)
    if m.shape != r.shape:
        raise ValueError(f"measured has {m.size} values but requested has {r.size}")
    keep = np.isfinite(m) & np.isfinite(r)
    if not keep.all():
        m, r = m[keep], r[keep]
    if m.size < 2:
        raise ValueError(f"motion agreement needs at least 2 videos with a requested motion, got {m.size}")
    levels = np.unique(r)
    out: dict = {"n": int(m.size), "levels": [float(x) for x in levels]}

    def spearman(idx):
        if np.unique(r[idx]).size < 2 or np.unique(m[idx]).size < 2:
            return np.nan
        return spearmanr(m[idx], r[idx]).statistic

    if levels.size >= 2 and np.unique(m).size >= 2:
        res = spearmanr(m, r)
        lo, hi = bootstrap_ci(np.arange(m.size), spearman, n_boot=n_boot, level=level, seed=seed, index_input=True)
        out["spearman"] = {"value": float(res.statistic), "ci_low": lo, "ci_high": hi, "p_value": float(res.pvalue)}
    else:
        out["spearman"] = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                           "p_value": float("nan"), "note": "needs >= 2 distinct requested and measured values"}

    per_level = []
    for lv in levels:
        vals = m[r == lv]
        lo, hi = bootstrap_ci(vals, np.mean, n_boot=n_boot, level=level, seed=seed) if vals.size >= 2 else (np.nan, np.nan)
        per_level.append({"requested": float(lv), "n": int(vals.size), "mean": float(vals.mean()),
                          "ci_low": lo, "ci_high": hi})
    out["per_level"] = per_level
    means = np.array([p["mean"] for p in per_level])
    steps = np.diff(means)
    out["monotonic"] = bool(steps.size > 0 and np.all(steps > 0))
    out["monotonic_pairs"] = float(np.mean(steps > 0)) if steps.size else float("nan")

    abs_err = np.abs(m - r)
    lo, hi = bootstrap_ci(abs_err, np.mean, n_boot=n_boot, level=level, seed=seed)
    out["mae"] = {"value": float(abs_err.mean()), "ci_low": lo, "ci_high": hi}

    tau = float((levels.min() + levels.max()) / 2.0) if threshold is None else float(threshold)
    correct = ((m > tau) == (r > tau)).astype(np.float64)
    lo, hi = bootstrap_ci(correct, np.mean, n_boot=n_boot, level=level, seed=seed)
    out["binary_accuracy"] = {"value": float(correct.mean()), "ci_low": lo, "ci_high": hi, "threshold": tau,
                              "threshold_rule": "given" if threshold is not None else "midpoint of requested levels"}
    return out


def motion_control(measured_a, measured_b, requested_a, requested_b, *, level: float = 0.95, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """Paired response to the motion-score condition: videos a and b share prompt, seed and first frame.

    ``value`` (with a bootstrap interval over prompts): fraction of pairs whose measured motion moved in the
    direction of the requested change, ties counted 1/2, so a model that ignores the condition scores exactly
    0.5. ``gain``: mean of (measured_b - measured_a) / (requested_b - requested_a); 1 = the measured score moves
    by the requested amount, 0 = no response. Pairs with equal requests are dropped.
    """
    from .bootstrap import bootstrap_ci

    ma, mb, ra, rb = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (measured_a, measured_b, requested_a,
                                                                          requested_b))
    if not (ma.size == mb.size == ra.size == rb.size):
        raise ValueError(f"motion_control needs equal lengths, got {ma.size}, {mb.size}, {ra.size}, {rb.size}")
    keep = np.isfinite(ma) & np.isfinite(mb) & np.isfinite(ra) & np.isfinite(rb) & (ra != rb)
    ma, mb, ra, rb = ma[keep], mb[keep], ra[keep], rb[keep]
    if ma.size < 2:
        raise ValueError(f"motion_control needs at least 2 pairs with different requests, got {ma.size}")
    dm, dr = mb - ma, rb - ra
    hit = np.where(dm == 0, 0.5, (np.sign(dm) == np.sign(dr)).astype(np.float64))
    gain = dm / dr
    lo, hi = bootstrap_ci(hit, np.mean, n_boot=n_boot, level=level, seed=seed)
    glo, ghi = bootstrap_ci(gain, np.mean, n_boot=n_boot, level=level, seed=seed)
    return {"value": float(hit.mean()), "ci_low": lo, "ci_high": hi, "n": int(hit.size),
            "gain": {"value": float(gain.mean()), "ci_low": glo, "ci_high": ghi},
            "mean_requested_change": float(np.abs(dr).mean()),
            "definition": "fraction of prompts (same seed and first frame) whose measured motion moved in the "
                          "requested direction; ties 1/2"}
