"""Evaluation metrics: Fréchet distances (FVD, FVD-syn), CLIPSIM, motion agreement, bootstrap intervals.

Importing this package is cheap on purpose: it loads no detector, no open_clip and no RAFT. Names are
resolved lazily on first access (PEP 562), so ``from kv_research.metrics import frechet_distance`` imports
only numpy, and ``kv_research.metrics.motion`` is imported only when someone asks for it.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # frechet.py (numpy only)
    "frechet_distance": "frechet", "feature_stats": "frechet", "frechet_distance_from_feats": "frechet",
    "frechet_distance_with_method": "frechet", "trace_sqrt_product": "frechet", "RankDeficientWarning": "frechet",
    # fvd.py
    "FVDProtocol": "fvd", "FVDResult": "fvd", "I3DFeatureExtractor": "fvd", "load_i3d": "fvd",
    "save_i3d_standin": "fvd", "compute_fvd": "fvd", "reference_stats": "fvd", "extract_features": "fvd",
    # clipsim.py
    "ClipSimExtractor": "clipsim", "load_clip_vitb32": "clipsim", "clipsim_scores": "clipsim",
    # agreement.py
    "motion_agreement": "agreement",
    # bootstrap.py
    "bootstrap_ci": "bootstrap", "bootstrap_fvd": "bootstrap", "fvd_reference_subsets": "bootstrap",
    # evaluators.py
    "load_or_train_evaluators": "evaluators", "EvaluatorPreset": "evaluators", "Evaluators": "evaluators",
    # core.py
    "evaluate_videos": "core",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
