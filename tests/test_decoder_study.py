"""The Table 3 decoder study: the smoke preset end to end (table, figure, run.json, resumption, refusal), inflation
equals the image decoder, the flicker metric's zero and sign, PSNR/SSIM against torchmetrics, exact resumption."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from einops import rearrange

from kv_research.decoder_study import (PER_CLIP, ROWS, FinetuneConfig, build_vq, fit, flicker_metrics, frame_metrics,
                                       inflate_row, original_flows, preset_config, safe_name, valid_mask, warp)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "decoder.py"
SMOKE_ROWS = ["Image", "3x1x1 Conv (Temporal)", "3x3x3 Conv + Attn (Decoder)"]


def run_cli(args, cache, check=True):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "KV_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"decoder.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder") / "run"
    cache = tmp_path_factory.getbasetemp() / "kv_cache"
    args = ["--preset", "smoke", "--out", str(out), "--rows", *SMOKE_ROWS, "--no-progress", "--threads", "1"]
    t = time.perf_counter()
    proc = run_cli(args, cache)
    print(f"decoder smoke wall time: {time.perf_counter() - t:.1f} s")
    return {"out": out, "args": args, "cache": cache, "stdout": proc.stdout}


def test_smoke_table_rows_columns_and_files(smoke):
    out = smoke["out"]
    table = pd.read_csv(out / "decoder.csv")
    assert table["row"].tolist() == [r for r in SMOKE_ROWS for _ in ("real", "synthetic")]
    assert table["set"].tolist() == ["real", "synthetic"] * len(SMOKE_ROWS)
    metrics = ["PSNR", "SSIM", "MSE", "flicker", "flicker @ boundary", "residual flicker"]
    for col in metrics + ["FVD-syn"]:
        assert {col, f"{col} ci_low", f"{col} ci_high"} <= set(table.columns), col
    for col in metrics:
        assert table[col].notna().all(), col
    assert table.loc[table.set == "synthetic", "FVD-syn"].notna().all()
    assert table.loc[table.set == "real", "FVD-syn"].isna().all()
    for col in ("N", "frames", "resolution", "window", "params_total", "params_trainable"):
        assert table[col].notna().all(), col
    assert (table.window == 2).all() and (table.frames == 4).all() and (table.resolution == 32).all()
    t = table.set_index(["row", "set"])
    assert t.loc[("Image", "real"), "params_trainable"] == 0
    assert t.loc[("3x1x1 Conv (Temporal)", "real"), "params_trainable"] < t.loc[("3x1x1 Conv (Temporal)", "real"),
                                                                                  "params_total"]
    big = t.loc[("3x3x3 Conv + Attn (Decoder)", "real")]
    assert big.params_trainable == big.params_total > t.loc[("Image", "real"), "params_total"]
    assert pd.isna(t.loc[("Image", "real"), "Δflicker vs Image"])     # paired differences: the other rows only
    assert t.loc[(SMOKE_ROWS[1], "real"), ["Δflicker vs Image", "ΔPSNR vs Image"]].notna().all()
    for f in ("decoder.md", "decoder.tex", "decoder.png", "run.json", ".gitignore", "image_vq/vq.safetensors",
              "image_vq/stats.jsonl"):
        assert (out / f).is_file(), f
    for r in SMOKE_ROWS:
        folder = out / "rows" / safe_name(r)
        assert (folder / "summary.json").is_file() and (folder / "per_clip.csv").is_file()
        assert (folder / "stats.jsonl").is_file() == (ROWS[r].finetune is not None)
    md = (out / "decoder.md").read_text()
    assert "Published numbers (not ours)" in md and "33.8376" in md and "LPIPS" in md
    if table["LPIPS"].isna().all():
        assert "LPIPS not computed" in md            # the empty column says why
    run = json.loads((out / "run.json").read_text())
    assert run["config_hash"] and run["protocol"]["N"] == {"real": 2, "synthetic": 4}
    assert {"raft", "fvd_syn", "lpips"} <= set(run["protocol"]["detectors"])
    assert len(run["protocol"]["detectors"]["raft"]["sha256"]) == 64
    assert run["timings_s"]["total (all invocations)"] > 0 and "stage 1: image MoVQ" in run["timings_s"]
    assert "| Decoder" in smoke["stdout"]          # the CLI prints the table


def test_inflated_rows_equal_the_image_decoder(smoke):
    from safetensors.torch import load_file
    out = smoke["out"]
    for r in SMOKE_ROWS:
        assert json.loads((out / "rows" / safe_name(r) / "row.json").read_text())["init_max_abs_diff_vs_image"] <= 1e-5
    cfg = preset_config("smoke")
    vq = build_vq(cfg)
    vq.load_state_dict(load_file(str(out / "image_vq" / "vq.safetensors")))
    vq.eval()
    z = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = vq.decode(rearrange(z, "b c t h w -> (b t) c h w"), force_not_quantize=True).sample
        want = rearrange(want, "(b t) c h w -> b c t h w", b=2)
        for name in ROWS:                     # every row of the table, not only the ones the smoke run trained
            got = inflate_row(vq, name, cfg).decode(z)
            assert (got - want).abs().max().item() <= 1e-5, name


def test_flicker_zero_for_perfect_reconstruction_positive_for_per_frame_noise():
    from kv_research.data.synthetic import SyntheticConfig, make_clip
    from kv_research.metrics.motion import load_raft
    x = torch.stack([make_clip(i, SyntheticConfig(size=32, frames=4), "test").video for i in range(2)])
    fwd, bwd = original_flows(x, load_raft("small"), updates=4)
    assert fwd.shape == bwd.shape == (2, 3, 2, 32, 32)
    perfect = flicker_metrics(x.clone(), x, fwd, bwd, window=2)
    for k in ("flicker", "residual_flicker", "flicker_within", "flicker_boundary"):
        assert np.all(perfect[k] == 0.0), k
    assert np.all(perfect["valid_fraction"] > 0.5)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    bad = flicker_metrics(noisy, x, fwd, bwd, window=2)
    assert np.all(bad["flicker"] > 2.0) and np.all(bad["residual_flicker"] > 5.0)   # 8-bit levels
    # the same error in every frame of a still region does not flicker: a constant offset on a still clip
    still = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
    zero = torch.zeros(2, 3, 2, 32, 32)
    shifted = flicker_metrics((still + 0.1).clamp(0, 1), still, zero, zero)
    assert np.allclose(shifted["residual_flicker"], 0, atol=1e-4)


def test_warp_and_mask_on_a_known_translation():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    nxt = torch.roll(img, shifts=2, dims=-1)                      # content moved 2 px right
    fwd = torch.zeros(1, 2, 16, 16)
    fwd[:, 0] = 2.0
    bwd = -fwd
    assert torch.allclose(warp(nxt, fwd)[..., :14], img[..., :14], atol=1e-6)
    mask = valid_mask(fwd, bwd)
    assert mask[..., :14].all() and not mask[..., 14:].any()      # p + 2 leaves the frame in the last 2 columns
    wrong = valid_mask(fwd, torch.zeros_like(fwd))                # backward flow disagrees: occluded everywhere
    assert not wrong.any()


def test_psnr_ssim_agree_with_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 4, 24, 24, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    m = frame_metrics(y, x)
    for i in range(3):
        yf, xf = y[i].transpose(0, 1), x[i].transpose(0, 1)       # (T,3,H,W) frames
        psnr = np.mean([peak_signal_noise_ratio(a[None], b[None], data_range=1.0).item() for a, b in zip(yf, xf)])
        ssim = structural_similarity_index_measure(yf, xf, data_range=1.0, reduction="none").mean().item()
        assert abs(m["psnr"][i] - psnr) < 1e-4 and abs(m["ssim"][i] - ssim) < 1e-5
        assert abs(m["mse"][i] - (yf - xf).pow(2).mean().item()) < 1e-7
    same = frame_metrics(x, x.clone())
    assert np.all(same["psnr"] == 100.0) and np.allclose(same["ssim"], 1.0, atol=1e-6) and np.all(same["mse"] == 0)


def test_fit_resumes_to_the_same_weights(tmp_path):
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    def run(model, steps, folder):
        tcfg = FinetuneConfig(steps=steps, batch=1, lr=1e-2, warmup=3, log_every=2, ckpt_every=100)

        def loss_fn(step):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(8, 4, generator=g)
            return (model(x) - x[:, :3]).pow(2).mean(), {}
        return fit(model, loss_fn, tcfg, folder, {"test": 1}, False, "t")
    whole = run(make(), 10, tmp_path / "a")["weights"]
    m = make()
    run(m, 5, tmp_path / "b")                                     # "killed" after 5 steps (checkpoint at the end)
    resumed = run(m, 10, tmp_path / "b")
    assert resumed["steps_now"] == 5
    for k in whole:
        assert torch.equal(whole[k], resumed["weights"][k]), k
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5, 6, 8, 10]


def test_rerun_resumes_without_retraining(smoke):
    out = smoke["out"]
    before = {p: p.read_bytes() for p in out.rglob("stats.jsonl")}
    csv = (out / "decoder.csv").read_text()
    t = time.perf_counter()
    run_cli(smoke["args"], smoke["cache"])
    print(f"decoder smoke re-run wall time: {time.perf_counter() - t:.1f} s")
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2
    assert all(v == 0 for v in run["invocations"][-1]["steps_trained"].values())
    assert {p: p.read_bytes() for p in out.rglob("stats.jsonl")} == before
    assert (out / "decoder.csv").read_text() == csv


def test_folder_of_another_config_is_refused(smoke):
    proc = run_cli(smoke["args"] + ["--set", "finetune.steps=7"], smoke["cache"], check=False)
    assert proc.returncode == 2 and "holds a different run" in proc.stderr
    proc = run_cli(["--preset", "smoke", "--out", str(smoke["out"] / "x"), "--rows", "No Such Row"], smoke["cache"],
                   check=False)
    assert proc.returncode == 2 and "unknown rows" in proc.stderr


def test_per_clip_columns(smoke):
    df = pd.read_csv(smoke["out"] / "rows" / "Image" / "per_clip.csv")
    assert list(df.columns) == ["set", "clip", *PER_CLIP]
    assert (df.set == "real").sum() == 2 and (df.set == "synthetic").sum() == 4
