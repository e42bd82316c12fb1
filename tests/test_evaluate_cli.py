"""``python -m kv_research.evaluate``: outputs, and clear errors before any work.

Reuses the session's 'smoke' evaluators (trained once by conftest's cache dir) and the I3D stand-in.
"""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from kv_research.data.synthetic import SyntheticConfig, make_clip, prompt_motion_score
from kv_research.data.video import save_video
from kv_research.evaluate import main
from kv_research.metrics import RankDeficientWarning
from kv_research.metrics.fvd import save_i3d_standin

warnings.filterwarnings("ignore", category=RankDeficientWarning)
CFG = SyntheticConfig()


def _uint8(video):
    return (video.permute(1, 2, 3, 0).clamp(0, 1) * 255).round().byte().numpy()          # (T,H,W,3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 generated videos (.npz, .npy, one .mp4), a prompts CSV with requested motion, and a .txt."""
    root = tmp_path_factory.mktemp("cli")
    vids = root / "videos"
    vids.mkdir()
    rows = []
    for i in range(6):
        clip = make_clip(i, CFG, "test")
        name = f"clip{i:02d}"
        if i == 0:
            save_video(vids / f"{name}.mp4", clip.video)
            name += ".mp4"
        elif i == 1:
            np.save(vids / f"{name}.npy", _uint8(clip.video))
            name += ".npy"
        else:
            np.savez(vids / f"{name}.npz", video=_uint8(clip.video))
        rows.append({"video": name, "prompt": clip.caption, "motion": prompt_motion_score(clip.attrs)})
    pd.DataFrame(rows).to_csv(root / "prompts.csv", index=False)
    (root / "prompts.txt").write_text("\n".join(r["prompt"] for r in rows) + "\n")
    ref = root / "reference"
    ref.mkdir()
    for i in range(6, 14):
        np.savez(ref / f"real{i:02d}.npz", video=_uint8(make_clip(i, CFG, "test").video))
    return root


def test_cli_writes_per_video_and_summary(folder, tmp_path, capsys):
    i3d = save_i3d_standin(tmp_path / "i3d_torchscript.pt")
    out = tmp_path / "out"
    rc = main(["--videos", str(folder / "videos"), "--prompts", str(folder / "prompts.csv"), "--out", str(out),
               "--metrics", "fvd,fvd_syn,clipsim_syn,attr_acc", "--reference", str(folder / "reference"),
               "--i3d", str(i3d), "--fvd-repeat-short", "--evaluator-preset", "smoke", "--n-boot", "100",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    per_video = pd.read_csv(out / "per_video.csv")
    assert per_video.columns[0] == "video" and len(per_video) == 6
    assert {"clipsim_syn", "attr_acc", "prompt"} <= set(per_video.columns)
    assert sorted(per_video["video"]) == sorted(p.name for p in (folder / "videos").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    for name in ("fvd", "fvd_syn", "clipsim_syn", "attr_acc"):
        m = summary["metrics"][name]
        assert {"value", "ci_low", "ci_high", "n", "detector", "detector_sha256"} <= set(m), name
        assert np.isfinite(m["value"])
    fvd = summary["metrics"]["fvd"]
    assert fvd["n"] == 6 and fvd["n_ref"] == 8 and fvd["frames"] == 16 and fvd["resolution"] == 224
    assert fvd["protocol"]["short_clips"] == "repeat" and "STAND-IN" in fvd["detector"]
    assert summary["metrics"]["fvd_syn"]["n_ref"] == 8                      # --reference also serves FVD-syn


def test_cli_txt_prompts_and_motion(folder, tmp_path):
    out = tmp_path / "out"
    rc = main(["--videos", str(folder / "videos"), "--prompts", str(folder / "prompts.txt"), "--out", str(out),
               "--metrics", "clipsim_syn", "--evaluator-preset", "smoke", "--n-boot", "50", "--no-progress"])
    assert rc == 0
    assert list(pd.read_csv(out / "per_video.csv").columns[:2]) == ["video", "clipsim_syn"]


@pytest.mark.parametrize("case, expect", [
    ("missing_row", "have no row"),
    ("txt_count", "has 5 prompts but"),
    ("unknown_metric", "unknown metrics"),
    ("fvd_no_reference", "needs --reference"),
    ("fvd_short", ">= 16 frames"),
    ("missing_weights", "i3d_torchscript.pt"),
    ("no_videos", "no video files"),
])
def test_cli_errors_before_any_work(folder, tmp_path, monkeypatch, capsys, case, expect):
    monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    videos, prompts, metrics, extra = folder / "videos", folder / "prompts.csv", "clipsim_syn", []
    if case == "missing_row":
        df = pd.read_csv(prompts).iloc[:-1]
        prompts = tmp_path / "p.csv"
        df.to_csv(prompts, index=False)
    elif case == "txt_count":
        prompts = tmp_path / "p.txt"
        prompts.write_text("\n".join(["a prompt"] * 5))
    elif case == "unknown_metric":
        metrics = "clipsim_syn,fvd_sin"
    elif case == "fvd_no_reference":
        metrics = "fvd"
    elif case == "missing_weights":
        metrics, extra = "fvd", ["--reference", str(folder / "reference")]
    elif case == "no_videos":
        videos = tmp_path / "empty_videos"
        videos.mkdir()
    if case == "fvd_short":   # needs the videos read (T is only known then), but still before any model
        monkeypatch.undo()
        monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path))
        save_i3d_standin(tmp_path / "i3d_torchscript.pt")
        monkeypatch.setattr("kv_research.metrics.core.evaluate_videos", _never("evaluate"))
        metrics, extra = "fvd", ["--reference", str(folder / "reference")]
    rc = main(["--videos", str(videos), "--prompts", str(prompts), "--metrics", metrics, "--out",
               str(tmp_path / "out"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err
    assert not (tmp_path / "out").exists()


def _never(what):
    def fail(*a, **k):
        raise AssertionError(f"{what} should not have been reached")
    return fail
