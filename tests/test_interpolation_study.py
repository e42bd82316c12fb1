"""The interpolation study (the paper's Table 2 at CPU scale) end to end on the smoke preset, its metrics on inputs
with known answers, and ``generate --run`` on the study folder (keyframes -> two passes -> frames)."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kv_research import cli, generate
from kv_research.interpolation_study import (METHODS, apply_overrides, clip_bootstrap_fvd, motion_metrics,
                                             preset_config, run_study, validate)

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "interpolation.py"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("interp") / "run"
    with pytest.MonkeyPatch.context() as mp:
        if "KV_CACHE_DIR" not in os.environ:
            mp.setenv("KV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kv_cache"))
        cfg = preset_config("smoke", out=str(out), progress=False)
        table = run_study(cfg)
    return cfg, out, table


def test_smoke_study_writes_table_figure_and_protocol(study):
    cfg, out, table = study
    for f in ("interpolation.csv", "interpolation.md", "interpolation.tex", "interpolation.png", "per_clip.csv",
              "summary.json", "run.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert list(table.method) == [*METHODS, "Linear blend", "Truth"] * 2
    real = table[table.keyframes == "real"].set_index("method")
    gen = table[table.keyframes == "generated"].set_index("method")
    for m in METHODS:
        assert np.isfinite(real.loc[m, "PSNR"]) and real.loc[m, "PSNR ci_low"] <= real.loc[m, "PSNR"] \
            <= real.loc[m, "PSNR ci_high"]
        assert np.isfinite(real.loc[m, "FVD-syn"]) and np.isfinite(gen.loc[m, "FVD-syn"])
        assert pd.isna(gen.loc[m, "PSNR"])                       # no truth for generated keyframes
        assert real.loc[m, "s/video"] > 0
    # MFI runs the UNet on every frame, FusionFrames on one item per keyframe pair
    assert real.loc["MFI", "GFLOPs/frame"] / real.loc["FusionFrames", "GFLOPs/frame"] > 3
    md = (out / "interpolation.md").read_text()
    assert "550.932" in md and "433.054" in md and "Published numbers (not ours)" in md
    meta = json.loads((out / "run.json").read_text())
    proto = meta["protocol"]
    assert proto["N"] == {"real": cfg.data.n_real, "generated": cfg.data.n_generated}
    assert proto["output_frames"] == 16 * (cfg.data.keyframes - 1) + 1 and proto["passes_s"] == [4, 1]
    assert len(proto["detectors"]["raft"]["sha256"]) == 64 and proto["detectors"]["fvd_syn"]["sha256"]
    assert meta["timing"]["ratio_mfi_over_fusionframes"] > 0 and len(meta["motion_labels"]) > 10
    # the learning-free blend keeps the (real) keyframes, so its key frames are exact; it has no cost columns
    assert real.loc["Linear blend", "PSNR"] > 0 and pd.isna(real.loc["Linear blend", "s/video"])
    loss = proto["denoising_loss"]["values"]
    assert set(loss) == set(METHODS) and all(len(v) == 3 and min(v) > 0 for m in loss for v in loss[m].values())
    assert "Held-out denoising loss" in md and proto["training_s"]["MFI"] > 0
    # both methods interpolated the same keyframes: the keyframes are kept exactly in both outputs
    from safetensors.torch import load_file
    batch = load_file(str(out / "generation" / "real_000.safetensors"))
    assert torch.equal(batch["FusionFrames"][:, :, ::16], batch["MFI"][:, :, ::16])
    assert not torch.equal(batch["FusionFrames"], batch["MFI"])


def test_same_out_with_another_config_is_refused(study):
    cfg, out, _ = study
    validate(cfg)                                                    # the same config resumes
    other = apply_overrides(cfg, {"train.steps": 7})
    with pytest.raises(ValueError, match="another configuration"):
        validate(other)
    for key, value, msg in (("train.strides", [1, 2], "lacks \\[4\\]"), ("data.n_real", 1, ">= 2"),
                            ("train.steps", -3, "whole number"), ("eval.nope", 1, "no field"),
                            ("data.train_frames", 2, "shorter than a training window")):
        with pytest.raises(ValueError, match=msg):
            validate(apply_overrides(preset_config("smoke", out=str(out.parent / "x")), {key: value}))


def test_cli_dry_run_and_bad_set(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("interp_cli", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert cli.run(mod.main, ["--preset", "smoke", "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["output_frames"] == 33 and plan["methods"] == list(METHODS)
    assert not (tmp_path / "r").exists()                             # a dry run writes nothing
    assert cli.run(mod.main, ["--preset", "smoke", "--out", str(tmp_path / "r"), "--set", "train.batch=abc"]) == 2
    assert "train.batch" in capsys.readouterr().err


def test_motion_and_fvd_metrics_on_known_inputs():
    from kv_research.metrics.motion import load_raft
    raft = load_raft("small")
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(48, 48), mode="bilinear",
                                             align_corners=False)       # textured but smooth: warping is exact
    big = smooth
    still = smooth[:, :, None, 8:40, 8:40].expand(1, 3, 5, 32, 32).contiguous()
    moving = torch.stack([big[:, :, 4:36, 4 + k:36 + k] for k in range(5)], 2)        # 1 px per frame to the left
    cfg = preset_config("smoke")
    ms, mm = motion_metrics(still, raft, cfg), motion_metrics(moving, raft, cfg)
    assert ms["motion"][0] < 0.1 and ms["warp_error"][0] < 1.0
    assert 0.6 < mm["motion"][0] < 1.4
    feats = np.random.default_rng(0).normal(size=(6, 3, 4))
    same = clip_bootstrap_fvd(feats, feats, paired=True, n_boot=20, level=0.95)
    assert abs(same["value"]) < 1e-9 and same["ci_high"] <= 1e-6
    shifted = clip_bootstrap_fvd(feats + 2.0, feats, paired=True, n_boot=20, level=0.95)
    assert shifted["value"] == pytest.approx(16.0, rel=1e-6)          # |mu1 - mu2|^2 = 4 dims x 2^2


def test_generate_from_the_study_folder(study, tmp_path):
    from PIL import Image
    _, out, _ = study
    dst = tmp_path / "gen"
    assert cli.run(generate.main, ["--run", str(out), "--prompt", "a red circle moves left", "--passes", "2",
                                   "--motion", "high", "--out", str(dst), "--no-progress", "--steps", "2"]) == 0
    meta = json.loads((dst / "generate.json").read_text())
    assert meta["frames"] == {"keyframes": 3, "output": 33} and meta["skip_frames"] == [4, 1]
    assert meta["source"]["interpolation"] == "FusionFrames" and "quantile" in meta["motion"]["how"]
    assert "run.json" in meta["source"]["motion_labels"]              # presets resolved on the study's labels
    arr = np.load(dst / f"{meta['prompts'][0]['id']}.npz")["video"]                # uint8 (T, H, W, 3)
    assert arr.shape == (33, 16, 16, 3)
    # --image animates a given picture: the first frame is the picture (pixel codec: up to 8-bit rounding)
    pic = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pic).save(tmp_path / "pic.png")
    dst2 = tmp_path / "gen2"
    assert cli.run(generate.main, ["--run", str(out), "--prompt", "a red circle", "--passes", "1", "--image",
                                   str(tmp_path / "pic.png"), "--out", str(dst2), "--no-progress",
                                   "--steps", "2"]) == 0
    meta2 = json.loads((dst2 / "generate.json").read_text())
    a2 = np.load(dst2 / f"{meta2['prompts'][0]['id']}.npz")["video"]
    assert a2.shape == (9, 16, 16, 3)
    assert np.abs(a2[0].astype(np.int64) - pic).max() <= 1


def test_generate_refuses_a_study_folder_without_its_interpolation_model(study, tmp_path, capsys):
    import shutil
    _, out, _ = study
    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("generation", "rows"))
    assert cli.run(generate.main, ["--run", str(broken), "--prompt", "x", "--passes", "2",
                                   "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "interpolation model is missing" in err and "FusionFrames" in err
    assert not (tmp_path / "g").exists()                          # refused before any work


def test_linear_blend_cross_fades_neighbouring_keyframes():
    from kv_research.interpolation_study import linear_blend
    keys = torch.zeros(1, 3, 3, 2, 2)
    keys[:, :, 1] = 1.0                                                   # keyframes 0, 1, 0
    v = linear_blend(keys, 4)
    assert v.shape == (1, 3, 9, 2, 2) and v.dtype == torch.uint8
    expected = torch.tensor([0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25, 0])
    assert torch.equal(v[0, 0, :, 0, 0], (expected * 255).round().to(torch.uint8))
