"""Issue 13 for ``python -m kv_research.generate``: every bad input fails with exit 2 and one line naming the file or
option and its value, before any model is loaded and before the output folder is created; Ctrl-C is one line, 130.

Cases per category (replayed in-process through ``cli.run(generate.main, argv)``; run folders are copies of the tiny
smoke run of conftest's ``tiny_run``, release folders links to $KV_SHARED_DATA/fixtures/kandinsky_video_1_1):
  options: 24 (--motion unknown preset / nan / inf / negative; --passes 3 / -1 (argparse choices) / 1 and 2 on a
      keyframe-only run folder; --frames 1, --steps 0, --seed -2, --steps abc, unknown option, no model source,
      --device gpu0 / cuda:7, --variant unknown, --decoder unknown, --unet-kwargs not JSON, --guidance nan, an
      empty --prompt, --out a file / under a file / not writable [EACCES simulated as root])
  media (--image): 6 (zero bytes, text, truncated PNG, missing, a folder, a GIF renamed .png that is truncated)
  prompt files (--prompts): 6 (empty, blank lines only, Latin-1 bytes [file and line named], UTF-16, missing,
      a folder)
  run folders: 15 (--run missing / a file / without run.json; checkpoint truncated / garbage / foreign safetensors /
      another checkpoint's tensors; last.json truncated; run.json truncated / a list; no trained variant;
      benchmark/train.csv not UTF-8 / negative motion; an interpolation-study folder with only run.json / without
      its interpolation model) + 1 through the real entry point (subprocess, no traceback)
  release folders (--kandinsky-video): 7 (missing, empty, without movq.pt, without interpolation.pt for --passes 2,
      truncated t2v.pt, no --text-encoder, --text-encoder missing)
  interrupts: 2 (Ctrl-C while writing the video: exit 130 + one line; --debug re-raises)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import never as _never
from conftest import one_error_line as _one_error_line
from kv_research import cli, generate

REPO = Path(__file__).resolve().parent.parent
VDIR = "variants/Conv1dAttn1dBlocks"
CKPT = f"{VDIR}/checkpoints/last.safetensors"


def _run(argv, capsys):
    rc = cli.run(generate.main, [str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.err


@pytest.fixture
def no_loading(monkeypatch):
    """Every case must fail before a model is loaded."""
    for name in ("load_run", "load_interpolation_study", "load_kandinsky_video_pipeline", "generate_videos"):
        monkeypatch.setattr(generate, name, _never(name))


def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def kv_fixture(shared_data) -> Path:
    folder = shared_data / "fixtures" / "kandinsky_video_1_1"
    if not (folder / "t2v.pt").is_file():
        pytest.skip(f"release fixture missing: {folder}")
    return folder


def _kv_links(src: Path, dst: Path, drop=(), truncate=()) -> Path:
    """A release folder of links to the fixture's files (never copies of shared data), minus ``drop``; the files in
    ``truncate`` are real, truncated copies."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name in drop:
            continue
        if f.name in truncate:
            data = f.read_bytes()
            (dst / f.name).write_bytes(data[:len(data) // 2])
        else:
            (dst / f.name).symlink_to(f)
    return dst


# ----------------------------------------------------------------------------------------------- options
OPTION_CASES = [
    ("motion_unknown", ["--motion", "wild"], ["--motion 'wild'", "low, medium, high, extreme"]),
    ("motion_nan", ["--motion", "nan"], ["--motion 'nan'", "finite number >= 0"]),
    ("motion_inf", ["--motion", "inf"], ["--motion 'inf'", "finite number >= 0"]),
    ("motion_negative", ["--motion", "-1"], ["--motion '-1'", "finite number >= 0"]),
    ("passes_3", ["--passes", "3"], ["argument --passes: invalid choice: 3", "0, 1, 2"]),
    ("passes_negative", ["--passes", "-1"], ["argument --passes: invalid choice: -1"]),
    ("passes_1_keyframe_run", ["--passes", "1"], ["--passes 1", "has no interpolation model", "--passes 0"]),
    ("passes_2_keyframe_run", ["--passes", "2"], ["--passes 2", "has no interpolation model"]),
    ("frames_1", ["--frames", "1"], ["--frames 1", ">= 2"]),
    ("steps_0", ["--steps", "0"], ["--steps 0", ">= 1"]),
    ("seed_negative", ["--seed", "-2"], ["--seed -2", ">= 0"]),
    ("steps_text", ["--steps", "abc"], ["argument --steps: invalid int value: 'abc'"]),
    ("unknown_option", ["--bogus"], ["unrecognized arguments: --bogus"]),
    ("device_name", ["--device", "gpu0"], ["--device 'gpu0'"]),
    ("device_index", ["--device", "cuda:7"], ["--device cuda:7"]),
    ("variant_unknown", ["--variant", "Nope"], ["variant 'Nope' has no checkpoint", "Conv1dAttn1dBlocks"]),
    ("decoder_unknown", ["--decoder", "4x4x4 Conv"], ["--decoder '4x4x4 Conv'", "neither a Table 3 decoder"]),
    ("guidance_nan", ["--guidance", "nan"], ["--guidance nan", "finite"]),
    ("prompt_empty", ["--prompt", ""], ["--prompt ''", "empty prompt"]),
]


@pytest.mark.parametrize("case, extra, needles", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_fails_before_any_work(case, extra, needles, tiny_run, tmp_path, capsys, no_loading):
    out = tmp_path / "out"
    prompt = [] if case == "prompt_empty" else ["--prompt", "a red circle moves left"]
    rc, err = _run(["--run", tiny_run, *prompt, *extra, "--out", out, "--no-progress"], capsys)
    assert rc == 2
    _one_error_line(err, *needles)
    assert not out.exists()


def test_no_model_source_and_unusable_out(tiny_run, tmp_path, capsys, no_loading, monkeypatch):
    rc, err = _run(["--prompt", "x", "--out", tmp_path / "o"], capsys)
    assert rc == 2
    _one_error_line(err, "one of the arguments --run --kandinsky-video is required")
    taken = tmp_path / "taken"
    taken.write_text("an unrelated file\n")
    for out, needle in ((taken, "is an existing file, not a folder"),
                        (taken / "sub", "is a file, so the folder cannot be created")):
        rc, err = _run(["--run", tiny_run, "--prompt", "x", "--out", out], capsys)
        assert rc == 2
        _one_error_line(err, out, needle)
    assert taken.read_text() == "an unrelated file\n"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:      # root writes through permission bits: simulate the EACCES a user would get
        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr("kv_research.cli.tempfile.TemporaryFile", denied)
    rc, err = _run(["--run", tiny_run, "--prompt", "x", "--out", ro / "out"], capsys)
    assert rc == 2
    _one_error_line(err, ro / "out", "cannot write in", "Permission denied")
    assert not (ro / "out").exists()


# ----------------------------------------------------------------------------------------------- media: --image
def _image(tmp_path: Path, case: str) -> tuple[Path, str]:
    from PIL import Image
    p = tmp_path / "pic.png"
    if case == "zero_bytes":
        p.write_bytes(b"")
        return p, "empty file, 0 bytes"
    if case == "text":
        p.write_text("not an image\n")
        return p, "not a readable image"
    if case == "truncated_png":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        _truncate(p)
        return p, "not a readable image"
    if case == "truncated_gif_as_png":
        frames = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(4)]
        frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:])
        _truncate(p)
        return p, "not a readable image"
    if case == "missing":
        return tmp_path / "none.png", "no such file"
    if case == "folder":
        return tmp_path, "is a folder"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["zero_bytes", "text", "truncated_png", "truncated_gif_as_png", "missing", "folder"])
def test_unreadable_image_fails_before_any_work(case, tiny_run, tmp_path, capsys, no_loading):
    path, needle = _image(tmp_path, case)
    out = tmp_path / "out"
    rc, err = _run(["--run", tiny_run, "--prompt", "a cat", "--image", path, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, f"--image {path}", needle)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- prompt files
PROMPT_CASES = {
    "empty": (b"", ["holds no prompts"]),
    "blank_lines": (b"\n   \n\t\n", ["holds no prompts"]),
    "latin1": ("a red circle\nun caf\xe9 qui bouge\n".encode("latin-1"), ["line 2", "not UTF-8", "0xe9"]),
    "utf16": ("a red circle\n".encode("utf-16"), ["line 1", "not UTF-8"]),
    "missing": (None, ["no such file"]),
    "folder": ("dir", ["is a folder"]),
}


@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_bad_prompt_file_names_file_and_line(case, tiny_run, tmp_path, capsys, no_loading):
    data, needles = PROMPT_CASES[case]
    path = tmp_path / "prompts.txt"
    if data == "dir":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    out = tmp_path / "out"
    rc, err = _run(["--run", tiny_run, "--prompts", path, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, path, *needles)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- run folders
def _foreign(p: Path):
    import torch
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(3)}, str(p))


RUN_CASES = {   # case: (how the copied run folder is changed, expected fragments; "{run}" is the folder)
    "missing": (None, ["--run {run}: no such folder"]),
    "a_file": ("file", ["--run {run}: is a file"]),
    "no_run_json": (lambda r: (r / "run.json").unlink(), ["no run.json"]),
    "ckpt_truncated": (lambda r: _truncate(r / CKPT), ["damaged checkpoint", "truncated or padded", "delete",
                                                       "ablate_blocks.py"]),
    "ckpt_garbage": (lambda r: (r / CKPT).write_bytes(b"garbage " * 40), ["not a safetensors file"]),
    "ckpt_foreign": (lambda r: _foreign(r / CKPT), ["no 'model.' tensors"]),
    "ckpt_other_tensors": (lambda r: shutil.copy(r / "image/checkpoints/last.safetensors", r / CKPT),
                           ["holds variant 'Spatial'"]),
    "ckpt_json_truncated": (lambda r: _truncate(r / f"{VDIR}/checkpoints/last.json"), ["not valid JSON"]),
    "run_json_truncated": (lambda r: _truncate(r / "run.json"), ["run.json is damaged", "not valid JSON"]),
    "run_json_list": (lambda r: (r / "run.json").write_text("[]"), ["not a JSON object"]),
    "no_trained_variant": (lambda r: shutil.rmtree(r / f"{VDIR}/checkpoints"), ["no trained variant"]),
    "train_csv_binary": (lambda r: (r / "benchmark/train.csv").write_bytes(b"\xff\xfe\x00garbage"),
                         ["train.csv line 1: not UTF-8"]),
    "train_csv_negative_motion": (lambda r: (r / "benchmark/train.csv").write_text("prompt,motion\na,1.0\nb,-3\n"),
                                  ["train.csv row 2", "finite number >= 0", "-3"]),
    "study_only_run_json": (lambda r: [shutil.rmtree(r / d) for d in ("image", "variants")]
                            and (r / "run.json").write_text('{"kind": "interpolation"}'),
                            ["the image model is missing"]),
    "study_without_interpolation": ("study", ["the interpolation model is missing", "rows/FusionFrames"]),
}


def _make_study_like(run: Path):
    """An interpolation-study layout with its image and keyframe models but no FusionFrames model."""
    shutil.copytree(run / VDIR, run / "keyframe")
    (run / "run.json").write_text('{"kind": "interpolation"}')


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_folder_fails_before_any_work(case, tiny_run, tmp_path, capsys, no_loading):
    how, needles = RUN_CASES[case]
    run = tmp_path / "run"
    if how == "file":
        run.write_text("not a folder\n")
    elif how is not None:
        shutil.copytree(tiny_run, run)
        _make_study_like(run) if how == "study" else how(run)
    out = tmp_path / "out"
    argv = ["--run", run, "--prompt", "a cat", "--out", out] + (["--passes", "2"] if how == "study" else [])
    rc, err = _run(argv, capsys)
    assert rc == 2
    _one_error_line(err, *[n.format(run=run) for n in needles])
    assert not out.exists()


def test_damaged_checkpoint_through_the_entry_point(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _truncate(run / CKPT)
    r = subprocess.run([sys.executable, "-m", "kv_research.generate", "--run", str(run), "--prompt", "x", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    _one_error_line(r.stderr, run / CKPT, "truncated")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- release folders
@pytest.mark.parametrize("case", ["missing", "empty", "no_movq", "no_interpolation", "t2v_truncated",
                                  "no_text_encoder", "text_encoder_missing"])
def test_bad_release_folder_fails_before_any_work(case, kv_fixture, tmp_path, capsys, no_loading):
    enc = tmp_path / "t5"
    enc.mkdir()
    folder, extra = tmp_path / "kv", []
    if case == "empty":
        folder.mkdir()
    elif case == "no_movq":
        _kv_links(kv_fixture, folder, drop=("movq.pt",))
    elif case in ("no_interpolation", "no_text_encoder", "text_encoder_missing"):
        _kv_links(kv_fixture, folder, drop=("interpolation.pt",) if case == "no_interpolation" else ())
    elif case == "t2v_truncated":
        _kv_links(kv_fixture, folder, truncate=("t2v.pt",))
    if case == "no_interpolation":
        extra = ["--passes", "2"]
    text = [] if case == "no_text_encoder" else ["--text-encoder", tmp_path / "nope" if case ==
                                                 "text_encoder_missing" else enc]
    needles = {"missing": [f"--kandinsky-video {folder}: no such folder"],
               "empty": ["missing t2v.pt, t5_projections.pt, movq.pt"],
               "no_movq": ["missing movq.pt"],
               "no_interpolation": ["missing interpolation.pt (needed for --passes > 0)"],
               "t2v_truncated": [folder / "t2v.pt", "is damaged"],
               "no_text_encoder": ["needs --text-encoder"],
               "text_encoder_missing": [f"--text-encoder {tmp_path / 'nope'}: no such folder"]}[case]
    out = tmp_path / "out"
    rc, err = _run(["--kandinsky-video", folder, *text, "--prompt", "a cat", *extra, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, *needles)
    assert not out.exists()


def test_bad_unet_kwargs(kv_fixture, tmp_path, capsys, no_loading):
    rc, err = _run(["--kandinsky-video", kv_fixture, "--text-encoder", tmp_path, "--prompt", "a cat",
                    "--unet-kwargs", "{not json", "--out", tmp_path / "out"], capsys)
    assert rc == 2
    _one_error_line(err, "--unet-kwargs '{not json'", "neither a JSON file nor inline JSON")


# ----------------------------------------------------------------------------------------------- interrupts
def test_ctrl_c_is_one_line_and_130(tiny_run, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("kv_research.data.video.save_video", interrupted)
    argv = ["--run", tiny_run, "--prompt", "a red circle", "--steps", "2", "--out", tmp_path / "out", "--no-progress"]
    rc, err = _run(argv, capsys)
    assert rc == 130 and err.strip() == cli.INTERRUPTED, err
    with pytest.raises(KeyboardInterrupt):
        cli.run(generate.main, [str(a) for a in argv] + ["--debug"])
