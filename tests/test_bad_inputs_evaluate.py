"""Issue 13 for ``python -m kv_research.evaluate``: every bad input gets a clear error or a visible skip.

Cases per category (each replayed in-process through ``cli.run(evaluate.main, argv)``):
  media skipped, exit 0 + notice: 16 (zero-byte .mp4, text as .mp4, real BROKEN_decord_corrupted.mp4, truncated
      .npz, .npz that is not a zip, .npz with no 'video' key among several, .npy garbage header, .npy absurd
      header, .npy truncated data, .npz member with absurd header, 0 frames, 1x1 .npy, real EDGE 1x1 .mp4,
      float32 .npy, 1 frame with a motion metric, shorter than --num-frames)
      + 1 mixed folder (real RAFT via the loader, 5 bad clips named and counted, good clips get numbers)
  media errors, exit 2: 5 (--strict x2, nothing usable, a.npy + a.npz for one row x2)
  prompt files, exit 2: 13 through evaluate (non-UTF-8 .csv/.txt, empty .csv/.txt, header only, unterminated
      quote, extra field, blank .txt line, motion nan/inf/negative/text/empty) + 6 through
      harness.load_prompt_table (non-UTF-8, empty, parse error, motion nan/negative, empty .txt)
  output folder: 8 (exit 2: --out is a file, --out under a file, --out not writable [EACCES simulated as root], other
      videos / prompts / metrics, unreadable summary.json, a failure after validation; earlier files stay
      byte-identical) + 2 exit 0 (--overwrite replaces, the same command again replaces)
  metric protocols: 2 (dynamic_degree + flow_score with protocols recorded, unknown metric exit 2)
  numeric options, exit 2: 14 (--batch-size 0, --n-boot 0 / 10^7, --num-frames 0, --num-frames 1 with motion,
      --size 0 / 5000, --data-size 0, --data-frames 1, --seed -1, --device nonsense, --device cuda:99,
      non-integer value, unknown option)
  policy: 1 (--debug shows the traceback)
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import pandas as pd
import pytest

from conftest import never as _never
from conftest import one_error_line as _one_error_line
from kv_research import cli
from kv_research.evaluate import main

GOOD = ("good0.npy", "good1.npy")


# ----------------------------------------------------------------------------------------------- helpers
def _clip(seed: int, t: int = 4, hw: int = 16) -> np.ndarray:
    """A tiny moving gradient, uint8 (T,H,W,3)."""
    y, x = np.mgrid[0:hw, 0:hw]
    frames = [(np.stack([(x + 2 * i + seed) * 9, (y + i) * 11, (x + y + 3 * seed) * 5], -1) % 256)
              for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def _npy_bytes(shape, dtype="|u1", data: bytes = b"") -> bytes:
    import io
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _folder(root: Path) -> Path:
    vids = root / "videos"
    vids.mkdir(parents=True)
    for i, name in enumerate(GOOD):
        np.save(vids / name, _clip(i))
    return vids


def _prompts(root: Path, vids: Path, motion=None) -> Path:
    names = sorted(p.name for p in vids.iterdir())
    df = pd.DataFrame({"video": names, "prompt": [f"a red circle moving left {i}" for i in range(len(names))]})
    if motion is not None:
        df["motion"] = motion
    path = root / "prompts.csv"
    df.to_csv(path, index=False)
    return path


def _run(argv, capsys):
    rc = cli.run(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.err, cap.out


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def raft():
    from kv_research.metrics.motion import load_raft
    return load_raft()


@pytest.fixture
def fast_raft(raft, monkeypatch):
    """The real RAFT weights, loaded once per module instead of once per command."""
    monkeypatch.setattr("kv_research.evaluate._load_raft", lambda path, device: raft)


# ----------------------------------------------------------------------------------------------- media: skipped
def _write_bad(vids: Path, case: str, videos_dir: Path) -> tuple[str, str]:
    """Write one bad clip into ``vids``; returns (file name, expected fragment of the reason)."""
    if case == "zero_bytes_mp4":
        (vids / "bad.mp4").write_bytes(b"")
        return "bad.mp4", "empty file (0 bytes)"
    if case == "text_as_mp4":
        (vids / "bad.mp4").write_text("this is not a video\n")
        return "bad.mp4", "decoding failed"
    if case in ("real_broken_mp4", "real_1x1_mp4"):
        name = {"real_broken_mp4": "BROKEN_decord_corrupted.mp4", "real_1x1_mp4": "EDGE_moviepy_1x1_5frames.mp4"}[case]
        src = videos_dir / name
        if not src.is_file():
            pytest.skip(f"shared clip missing: {src}")
        (vids / name).symlink_to(src)                      # a link, never a copy of shared data
        return name, "decoding failed" if case == "real_broken_mp4" else "frames are 1x1 px"
    if case == "truncated_npz":
        np.savez(vids / "bad.npz", video=_clip(5))
        data = (vids / "bad.npz").read_bytes()
        (vids / "bad.npz").write_bytes(data[:len(data) // 2])
        return "bad.npz", "BadZipFile"
    if case == "npz_not_zip":
        (vids / "bad.npz").write_bytes(b"PK\x03\x04 definitely not a zip archive")
        return "bad.npz", "cannot read the array"
    if case == "npz_ambiguous_keys":
        np.savez(vids / "bad.npz", a=_clip(5), b=_clip(6))
        return "bad.npz", "needs key 'video'"
    if case == "npy_garbage_header":
        (vids / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xffgarbage")
        return "bad.npy", "not a valid .npy header"
    if case == "npy_absurd_header":
        (vids / "bad.npy").write_bytes(_npy_bytes((10 ** 9, 4096, 4096, 3), data=b"\0" * 64))
        return "bad.npy", "header declares"
    if case == "npy_truncated_data":
        (vids / "bad.npy").write_bytes(_npy_bytes((4, 16, 16, 3), data=b"\0" * 100))
        return "bad.npy", "only 100 bytes of data"
    if case == "npz_absurd_member":
        import zipfile
        with zipfile.ZipFile(vids / "bad.npz", "w") as zf:
            zf.writestr("video.npy", _npy_bytes((10 ** 8, 1024, 1024, 3), data=b"\0" * 64))
        return "bad.npz", "member video.npy: header declares"
    if case == "zero_frames":
        np.save(vids / "bad.npy", np.zeros((0, 16, 16, 3), np.uint8))
        return "bad.npy", "0 frames"
    if case == "tiny_1x1_npy":
        np.save(vids / "bad.npy", np.zeros((4, 1, 1, 3), np.uint8))
        return "bad.npy", "frames are 1x1 px"
    if case == "float_npy":
        np.save(vids / "bad.npy", _clip(5).astype(np.float32))
        return "bad.npy", "expected uint8 (T,H,W,3)"
    if case == "one_frame_motion":
        np.save(vids / "bad.npy", _clip(5, t=1))
        return "bad.npy", "1 frame; motion need >= 2 frames"
    if case == "shorter_than_num_frames":
        np.save(vids / "bad.npy", _clip(5, t=3))
        return "bad.npy", "3 frames, 4 needed"
    raise AssertionError(case)


SKIP_CASES = ["zero_bytes_mp4", "text_as_mp4", "real_broken_mp4", "truncated_npz", "npz_not_zip", "npz_ambiguous_keys",
              "npy_garbage_header", "npy_absurd_header", "npy_truncated_data", "npz_absurd_member", "zero_frames",
              "tiny_1x1_npy", "real_1x1_mp4", "float_npy", "one_frame_motion", "shorter_than_num_frames"]


@pytest.mark.parametrize("case", SKIP_CASES)
def test_unusable_clip_is_skipped_named_and_counted(case, tmp_path, capsys, fast_raft, videos_dir):
    vids = _folder(tmp_path)
    name, reason = _write_bad(vids, case, videos_dir)
    out = tmp_path / "out"
    extra = ["--num-frames", 4] if case == "shorter_than_num_frames" else []
    rc, err, _ = _run(["--videos", vids, "--prompts", _prompts(tmp_path, vids), "--metrics", "motion", "--out", out,
                       "--n-boot", 20, "--no-progress", *extra], capsys)
    assert rc == 0, err
    notices = [ln for ln in err.splitlines() if ln.startswith(f"skipped {vids / name}: ")]
    assert len(notices) == 1 and reason in notices[0], err
    assert "skipped 1 of 3 video files" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"]["count"] == 1 and summary["n_files"] == 3
    assert summary["skipped"]["files"][0]["file"] == name and reason in summary["skipped"]["files"][0]["reason"]
    per_video = pd.read_csv(out / "per_video.csv")
    assert list(per_video["video"]) == list(GOOD) and np.isfinite(per_video["motion"]).all()
    assert summary["metrics"]["motion"]["n"] == 2


def test_mixed_folder_real_raft(tmp_path, capsys, videos_dir):
    """Good 4x16x16 clips get numbers (RAFT through the real loader); every bad clip is named once and counted."""
    vids = tmp_path / "videos"
    vids.mkdir()
    good = [f"clip{i}.npy" for i in range(3)]
    for i, n in enumerate(good):
        np.save(vids / n, _clip(i))
    (vids / "empty.mp4").write_bytes(b"")
    np.savez(vids / "corrupt.npz", video=_clip(7))
    data = (vids / "corrupt.npz").read_bytes()
    (vids / "corrupt.npz").write_bytes(data[:40] + b"\0" * 50 + data[90:])   # damaged local header / stream
    (vids / "huge.npy").write_bytes(_npy_bytes((10 ** 9, 2048, 2048, 3)))
    bad = ["corrupt.npz", "empty.mp4", "huge.npy"]
    for real in ("BROKEN_decord_corrupted.mp4", "EDGE_moviepy_1x1_5frames.mp4"):
        if (videos_dir / real).is_file():
            (vids / real).symlink_to(videos_dir / real)
            bad.append(real)
    out = tmp_path / "out"
    prompts = _prompts(tmp_path, vids, motion=[float(i) for i in range(len(list(vids.iterdir())))])
    rc, err, stdout = _run(["--videos", vids, "--prompts", prompts, "--metrics", "motion", "--out", out,
                            "--n-boot", 50, "--no-progress"], capsys)
    assert rc == 0, err
    for n in bad:
        assert sum(ln.startswith(f"skipped {vids / n}: ") for ln in err.splitlines()) == 1, (n, err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"]["count"] == len(bad)
    assert sorted(f["file"] for f in summary["skipped"]["files"]) == sorted(bad)
    assert all(f["reason"] for f in summary["skipped"]["files"])
    per_video = pd.read_csv(out / "per_video.csv")
    assert list(per_video["video"]) == good and np.isfinite(per_video["motion"]).all()
    m = summary["metrics"]["motion"]
    assert m["n"] == 3 and np.isfinite(m["value"]) and m["detector_sha256"]
    assert "agreement" in m                                   # requested motion of the kept clips only
    assert f"skipped {len(bad)} of {len(good) + len(bad)}" in err and "skipped clips listed" in stdout


# ----------------------------------------------------------------------------------------------- media: errors
@pytest.mark.parametrize("case", ["zero_bytes_mp4", "npy_absurd_header"])
def test_strict_makes_the_first_unusable_clip_an_error(case, tmp_path, capsys, monkeypatch, videos_dir):
    monkeypatch.setattr("kv_research.metrics.core.evaluate_videos", _never("evaluate"))
    vids = _folder(tmp_path)
    name, reason = _write_bad(vids, case, videos_dir)
    rc, err, _ = _run(["--videos", vids, "--prompts", _prompts(tmp_path, vids), "--metrics", "motion",
                       "--out", tmp_path / "out", "--strict", "--no-progress"], capsys)
    assert rc == 2
    _one_error_line(err, vids / name, reason, "--strict")
    assert not (tmp_path / "out").exists()


def test_nothing_usable_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.metrics.core.evaluate_videos", _never("evaluate"))
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mp4").write_bytes(b"")
    (vids / "b.npy").write_bytes(b"nonsense")
    rc, err, _ = _run(["--videos", vids, "--prompts", _prompts(tmp_path, vids), "--metrics", "motion",
                       "--out", tmp_path / "out", "--no-progress"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: none of the 2 videos files") and str(vids) in lines[-1]
    assert [ln.split(":")[0] for ln in lines[:-1]] == [f"skipped {vids / 'a.mp4'}", f"skipped {vids / 'b.npy'}"]


@pytest.mark.parametrize("row", ["a", "a.npy"])
def test_two_files_for_one_row_are_an_error_naming_both(row, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    vids = tmp_path / "videos"
    vids.mkdir()
    np.save(vids / "a.npy", _clip(0))
    np.savez(vids / "a.npz", video=_clip(1))
    np.save(vids / "b.npy", _clip(2))
    prompts = tmp_path / "p.csv"
    pd.DataFrame({"video": [row, "b.npy"], "prompt": ["x", "y"]}).to_csv(prompts, index=False)
    rc, err, _ = _run(["--videos", vids, "--prompts", prompts, "--metrics", "motion", "--out", tmp_path / "out",
                       "--no-progress"], capsys)
    assert rc == 2
    _one_error_line(err, "a.npy", "a.npz", "row 1", prompts)


# ----------------------------------------------------------------------------------------------- prompt files
PROMPT_CASES = {   # name: (file name, bytes, expected fragments)
    "non_utf8_csv": ("p.csv", b"video,prompt\ngood0,caf\xe9\ngood1,b\n", ["line 2", "not UTF-8", "0xe9"]),
    "non_utf8_txt": ("p.txt", b"first\nsecond \xff\n", ["line 2", "not UTF-8"]),
    "empty_csv": ("p.csv", b"", ["is empty"]),
    "empty_txt": ("p.txt", b"\n\n", ["is empty"]),
    "header_only": ("p.csv", b"video,prompt\n", ["header but no rows"]),
    "unterminated_quote": ("p.csv", b'video,prompt\ngood0,a\ngood1,"b, c\n', ["line 3", "not a valid CSV"]),
    "extra_field": ("p.csv", b"video,prompt\ngood0,a,b\ngood1,c\n", ["line 2", "3 fields", "header has 2"]),
    "blank_txt_line": ("p.txt", b"first\n\nsecond\n", ["line 2", "empty prompt"]),
    "motion_nan": ("p.csv", b"video,prompt,motion\ngood0,a,1\ngood1,b,nan\n", ["row 2", "good1.npy", "'nan'"]),
    "motion_inf": ("p.csv", b"video,prompt,motion\ngood0,a,inf\ngood1,b,1\n", ["row 1", "good0.npy", "'inf'"]),
    "motion_negative": ("p.csv", b"video,prompt,motion\ngood0,a,1\ngood1,b,-0.5\n", ["row 2", "'-0.5'"]),
    "motion_text": ("p.csv", b"video,prompt,motion\ngood0,a,fast\ngood1,b,1\n", ["row 1", "'fast'"]),
    "motion_empty": ("p.csv", b"video,prompt,motion\ngood0,a,\ngood1,b,1\n", ["row 1", "finite number >= 0"]),
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_bad_prompt_file_is_an_error_before_any_work(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    vids = _folder(tmp_path)
    name, data, needles = PROMPT_CASES[case]
    prompts = tmp_path / name
    prompts.write_bytes(data)
    rc, err, _ = _run(["--videos", vids, "--prompts", prompts, "--metrics", "motion", "--out", tmp_path / "out",
                       "--no-progress"], capsys)
    assert rc == 2
    _one_error_line(err, prompts, *needles)
    assert not (tmp_path / "out").exists()


HARNESS_CASES = {
    "non_utf8": ("p.csv", b"prompt\nna\xefve\n", ["line 2", "not UTF-8"]),
    "empty": ("p.csv", b"  \n", ["is empty"]),
    "parse_error": ("p.csv", b'prompt,motion\n"a dog,1\n', ["not a valid CSV"]),
    "motion_nan": ("p.csv", b"prompt,motion\na dog,1\na cat,NaN\n", ["row 2", "NaN"]),
    "motion_negative": ("p.csv", b"prompt,motion\na dog,-3\n", ["row 1", "got -3"]),
    "empty_txt": ("p.txt", b"\n \n", ["holds no prompts"]),
}


@pytest.mark.parametrize("case", sorted(HARNESS_CASES))
def test_load_prompt_table_bad_files(case, tmp_path, capsys):
    from kv_research.harness import load_prompt_table
    name, data, needles = HARNESS_CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(cli.input_errors()):                       # library users catch the same types
        load_prompt_table(path)
    rc = cli.run(lambda argv: load_prompt_table(argv[0]), [str(path)])   # a command line that reads prompts
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    _one_error_line(err, path, *needles)


# ----------------------------------------------------------------------------------------------- output folder
@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, raft):
    """A finished run: videos, prompts, and an --out with its outputs (copied by each test)."""
    root = tmp_path_factory.mktemp("earlier")
    vids = _folder(root)
    prompts = _prompts(root, vids)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr("kv_research.evaluate._load_raft", lambda path, device: raft)
    try:
        rc = cli.run(main, [str(a) for a in ["--videos", vids, "--prompts", prompts, "--metrics", "motion",
                                             "--out", out, "--n-boot", 20, "--no-progress"]])
    finally:
        mp.undo()
    assert rc == 0
    return root, vids, prompts, out


def _argv(vids, prompts, out, metrics="motion", *extra):
    return ["--videos", vids, "--prompts", prompts, "--metrics", metrics, "--out", out, "--n-boot", 20,
            "--no-progress", *extra]


@pytest.mark.parametrize("case", ["other_videos", "other_prompts", "other_metrics", "unreadable_summary",
                                  "failure_after_validation"])
def test_out_of_other_inputs_or_failed_rerun_leaves_files_byte_identical(case, earlier_run, tmp_path, capsys,
                                                                         monkeypatch, fast_raft):
    root, vids, prompts, earlier = earlier_run
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    if case == "unreadable_summary":
        (out / "summary.json").write_bytes(b"{ not json")
    before = _snapshot(out)
    metrics, expect = "motion", ["--out", str(out), "--overwrite"]
    if case == "other_videos":
        vids = tmp_path / "videos"
        shutil.copytree(earlier_run[1], vids)
        expect.append("videos")
    elif case == "other_prompts":
        prompts = tmp_path / "prompts.csv"
        shutil.copy(earlier_run[2], prompts)
        expect.append("prompts")
    elif case == "other_metrics":
        metrics = "motion,flow_score"
        expect.append("metrics")
    elif case == "unreadable_summary":
        expect.append("no input id")
    elif case == "failure_after_validation":   # same inputs, so allowed; fails mid-work, after decoding
        def boom(*a, **k):
            raise ValueError("simulated failure inside the evaluation")
        monkeypatch.setattr("kv_research.metrics.core.evaluate_videos", boom)
        expect = ["simulated failure"]
    if case != "failure_after_validation":                       # refused before any clip is read
        monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    rc, err, _ = _run(_argv(vids, prompts, out, metrics), capsys)
    assert rc == 2
    _one_error_line(err, *expect)
    assert _snapshot(out) == before


def test_overwrite_and_same_command_replace_outputs(earlier_run, tmp_path, capsys, fast_raft):
    root, vids, prompts, earlier = earlier_run
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    rc, err, _ = _run(_argv(vids, prompts, out), capsys)                     # the same command again
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["inputs"] == \
        json.loads((earlier / "summary.json").read_text())["inputs"]
    rc, err, _ = _run(_argv(vids, prompts, out, "flow_score"), capsys)       # other metrics: refused ...
    assert rc == 2
    rc, err, _ = _run(_argv(vids, prompts, out, "flow_score", "--overwrite"), capsys)   # ... unless --overwrite
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == ["flow_score"] and summary["inputs"]["metrics"] == ["flow_score"]
    assert not list(out.glob(".*.tmp"))                                       # atomic writes leave no temp files


@pytest.mark.parametrize("case", ["out_is_file", "out_under_file", "out_not_writable"])
def test_unusable_out_is_an_error_before_any_work(case, earlier_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    root, vids, prompts, _ = earlier_run
    target = tmp_path / "taken"
    target.write_text("an unrelated file\n")
    if case == "out_is_file":
        out, needles = target, [target, "is an existing file"]
    elif case == "out_under_file":
        out, needles = target / "sub", [target / "sub", "is a file"]
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        if os.geteuid() == 0:   # root writes through permission bits: simulate the EACCES a user would get
            def denied(*a, **k):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr("kv_research.cli.tempfile.TemporaryFile", denied)
        out, needles = ro / "out", [ro / "out", "cannot write in", "Permission denied"]
    rc, err, _ = _run(_argv(vids, prompts, out), capsys)
    assert rc == 2
    _one_error_line(err, *needles)
    assert target.read_text() == "an unrelated file\n"


# ----------------------------------------------------------------------------------------------- metrics
def test_dynamic_degree_and_flow_score_record_their_protocol(tmp_path, capsys, fast_raft):
    vids = _folder(tmp_path)
    out = tmp_path / "out"
    rc, err, _ = _run(_argv(vids, _prompts(tmp_path, vids), out, "motion,dynamic_degree,flow_score"), capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    dd, fs, mo = (summary["metrics"][k] for k in ("dynamic_degree", "flow_score", "motion"))
    assert dd["protocol"]["name"] == "VBench dynamic degree" and dd["protocol"]["threshold"] == 6.0
    assert fs["protocol"]["name"] == "EvalCrafter flow score" and "protocol" in mo
    assert 0.0 <= dd["value"] <= 1.0 and dd["n"] == fs["n"] == 2
    per_video = pd.read_csv(out / "per_video.csv")
    assert set(per_video["dynamic_degree"]) <= {0.0, 1.0}
    np.testing.assert_allclose(per_video["flow_score"], per_video["motion"] * 16 / 256, rtol=1e-6)   # input px


def test_unknown_metric_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    vids = _folder(tmp_path)
    rc, err, _ = _run(_argv(vids, _prompts(tmp_path, vids), tmp_path / "out", "motion,flowscore"), capsys)
    assert rc == 2
    _one_error_line(err, "--metrics", "flowscore", "flow_score")


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value, needle", [
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--n-boot", "0", "--n-boot must be in [1, 1000000], got 0"),
    ("--n-boot", "10000000", "got 10000000"),
    ("--num-frames", "0", "--num-frames must be >= 2, got 0"),
    ("--num-frames", "1", "--num-frames must be >= 2, got 1 (motion need >= 2 frames)"),
    ("--size", "0", "--size must be in [8, 4096], got 0"),
    ("--size", "5000", "--size must be in [8, 4096], got 5000"),
    ("--data-size", "0", "--data-size must be in [8, 1024], got 0"),
    ("--data-frames", "1", "--data-frames must be in [2, 256], got 1"),
    ("--seed", "-1", "--seed must be >= 0, got -1"),
    ("--device", "gpu0", "--device 'gpu0'"),
    ("--device", "cuda:99", "--device cuda:99"),
    ("--batch-size", "eight", "argument --batch-size: invalid int value: 'eight'"),
    ("--frames", "8", "unrecognized arguments: --frames"),
])
def test_bad_option_value_is_an_error_before_any_work(option, value, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    vids = _folder(tmp_path)
    rc, err, _ = _run(_argv(vids, _prompts(tmp_path, vids), tmp_path / "out", "motion", option, value), capsys)
    assert rc == 2
    _one_error_line(err, needle)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- policy
def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr("kv_research.evaluate.load_folder", _never("read videos"))
    vids = _folder(tmp_path)
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        cli.run(main, [str(a) for a in _argv(vids, _prompts(tmp_path, vids), tmp_path / "out", "motion",
                                             "--batch-size", "0", "--debug")])
