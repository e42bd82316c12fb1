"""Issue 13 for ``experiments/ablate_blocks.py`` (``kv_research.ablation``) and ``python -m kv_research.variants``:
every bad input is one line and exit 2 before any work, a damaged run folder is named and left byte-identical, and
Ctrl-C is one line and exit 130.

Cases per category (each replayed in-process through ``cli.run(main, argv)``; the run folder is one tiny smoke run,
``tiny_run`` in conftest, copied per case):
  options, exit 2 before any work (no --out created, run_ablation never reached), each with and without --dry-run:
      33 x 2 = 66 (--set: int given abc / -5 / 1.5, bool given 1, float -1, batch size 0, sample_steps 0, unknown
      sampler, unknown section, unknown field, no '=', GroupNorm groups 3 and 16 not dividing the widths, text
      heads not dividing the width, unet.variant; --variants unknown / twice; --device gpu0 / cuda:99;
      --samples-per-prompt 0, --seed -1, --prompt-limit 0, --fps nan, --threads -1; argparse: --preset unknown,
      --seed x, unknown option; --metrics unknown; --study not JSON / not an object; --out a file, under a file,
      not writable [EACCES simulated as root]) + 1 (main called directly returns 2; --debug raises)
      + 5 for python -m kv_research.variants (--preset, --variants unknown / twice, unknown option: exit 2;
      --json: exit 0)
  damaged run folders, exit 2, one line naming the file and what to delete, every file byte-identical: 29
      (variant checkpoint truncated / garbage / foreign safetensors / another checkpoint's tensors; image checkpoint
      empty / truncated; last.json truncated / a list / missing; last.safetensors missing; optimizer state
      truncated / garbage; run.json truncated / a list / empty / not UTF-8; video .npz truncated / foreign keys /
      float; motion-control video truncated; first frame truncated / foreign keys; Untrained first frame
      truncated; preview .gif truncated; summary.json truncated; per_video.csv truncated; stats.jsonl truncated /
      empty; Real-clips summary.json garbage) + 2 with --dry-run
      + 4 rewritten by every run, exit 0, restored byte-identical (ablate_blocks.csv, samples.png,
      benchmark/test.csv, image/config.json)
      + 5 where following the advice (delete) recomputes the same table (video, first frame, summary, run.json,
      a variant's checkpoints: retrained)
  interrupts, exit 130 and one line: 4 (during fine-tuning, generation, evaluation: files byte-identical and the
      re-run finishes the table; --debug re-raises) + 1 for variants
"""
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_RUN_ARGS
from conftest import never as _never
from conftest import one_error_line as _one_error_line
from kv_research import cli

REPO = Path(__file__).resolve().parent.parent
VARIANT = "Conv1dAttn1dBlocks"
VDIR = f"variants/{VARIANT}"
CKPT = f"{VDIR}/checkpoints/last.safetensors"
VIDEO = f"{VDIR}/videos/test-00000_00.npz"


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ablate_blocks_cli", REPO / "experiments" / "ablate_blocks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(main, argv, capsys):
    rc = cli.run(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return rc, cap.err


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _denied(*a, **k):
    raise PermissionError(13, "Permission denied")


# ----------------------------------------------------------------------------------------------- options
OPTION_CASES = {
    "set_int_text": (["--set", "train.video_steps=abc"], ['--set train.video_steps="abc"', "whole number >= 0"]),
    "set_int_negative": (["--set", "train.video_steps=-5"], ["train.video_steps=-5", "whole number >= 0"]),
    "set_int_fraction": (["--set", "train.image_steps=1.5"], ["train.image_steps=1.5", "whole number"]),
    "set_bool_int": (["--set", "unet.checkpointing=1"], ["unet.checkpointing=1", "true or false"]),
    "set_float_negative": (["--set", "train.lr=-1"], ["train.lr=-1", "> 0"]),
    "set_batch_zero": (["--set", "train.video_batch_size=0"], ["train.video_batch_size=0", ">= 1"]),
    "set_steps_zero": (["--set", "diffusion.sample_steps=0"], ["diffusion.sample_steps=0", ">= 1"]),
    "set_choice": (["--set", "diffusion.sampler=euler"], ["diffusion.sampler", "ddim, ddpm"]),
    "set_unknown_section": (["--set", "nope.x=1"], ["'nope.x'", "unet, text, diffusion, train, eval"]),
    "set_unknown_field": (["--set", "train.nope=1"], ["'train.nope'", "no field 'nope'", "video_steps"]),
    "set_no_equals": (["--set", "train.video_steps"], ["--set expects section.field=value", "--help"]),
    "set_groups_3": (["--set", "unet.groups=3"], ["unet.groups=3", "does not divide", "[8, 16, 32]"]),
    "set_groups_16": (["--set", "unet.groups=16"], ["unet.groups=16", "does not divide", "[8]"]),
    "set_heads": (["--set", "text.heads=5"], ["text.heads=5", "text.dim=32"]),
    "set_variant": (["--set", "unet.variant=Spatial"], ["unet.variant", "--variants"]),
    "variant_unknown": (["--variants", "Conv2dAttn1dBlocks"], ["unknown variant 'Conv2dAttn1dBlocks'",
                                                               "Conv1dAttn1dBlocks"]),
    "variant_twice": (["--variants", "Spatial", "Spatial"], ["variant listed twice"]),
    "device_name": (["--device", "gpu0"], ["--device 'gpu0'", "cpu"]),
    "device_index": (["--device", "cuda:99"], ["--device cuda:99"]),
    "samples_zero": (["--samples-per-prompt", "0"], ["--samples-per-prompt 0", ">= 1"]),
    "seed_negative": (["--seed", "-1"], ["--seed -1", ">= 0"]),
    "prompt_limit_zero": (["--prompt-limit", "0"], ["--prompt-limit 0", ">= 1"]),
    "fps_nan": (["--fps", "nan"], ["--fps nan", "> 0"]),
    "threads_negative": (["--threads", "-1"], ["--threads -1", ">= 0"]),
    "preset_unknown": (["--preset", "huge"], ["--preset", "'huge'", "smoke"]),
    "int_not_a_number": (["--seed", "x"], ["--seed", "invalid int value: 'x'"]),
    "unknown_option": (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    "metric_unknown": (["--metrics", "motion,nope"], ["unknown metrics ['nope']", "fvd_syn"]),
    "study_not_json": (["--study", "{study_bad}"], ["--study", "not valid JSON"]),
    "study_not_object": (["--study", "{study_list}"], ["--study", "JSON object", "list"]),
    "out_is_file": ([], ["is an existing file, not a folder"]),
    "out_under_file": ([], ["is a file, so the folder cannot be created"]),
    "out_not_writable": ([], ["cannot write in", "Permission denied"]),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_is_one_line_before_any_work(case, dry, ab, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ab, "run_ablation", _never("run_ablation"))
    monkeypatch.setattr("kv_research.ablation.dry_run_report", _never("the dry-run report"))
    extra, needles = OPTION_CASES[case]
    (tmp_path / "bad.json").write_text('{"seed": 1,')
    (tmp_path / "list.json").write_text('["seed", 1]')
    extra = [a.format(study_bad=tmp_path / "bad.json", study_list=tmp_path / "list.json") for a in extra]
    out = tmp_path / "out"
    taken = tmp_path / "taken"
    taken.write_text("an unrelated file\n")
    if case == "out_is_file":
        out = taken
    elif case == "out_under_file":
        out = taken / "sub"
    elif case == "out_not_writable":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
        if os.geteuid() == 0:      # root writes through permission bits: simulate the EACCES a user would get
            monkeypatch.setattr("kv_research.cli.tempfile.TemporaryFile", _denied)
    argv = ["--preset", "smoke", "--out", out, "--no-progress", *extra] + (["--dry-run"] if dry else [])
    rc, err = _run(ab.main, argv, capsys)
    assert rc == 2
    _one_error_line(err, *needles)
    assert taken.read_text() == "an unrelated file\n"
    if case not in ("out_is_file", "out_under_file"):
        assert not out.exists()


def test_main_called_directly_returns_2_and_debug_shows_the_traceback(ab, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ab, "run_ablation", _never("run_ablation"))
    argv = ["--preset", "smoke", "--out", str(tmp_path / "o"), "--set", "train.video_steps=-5"]
    assert ab.main(argv) == 2
    _one_error_line(capsys.readouterr().err, "train.video_steps=-5")
    with pytest.raises(ValueError, match="train.video_steps=-5"):
        cli.run(ab.main, argv + ["--debug"])


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--preset", "smoke", "--variants", "Nope"], "unknown variant 'Nope'"),
    (["--preset", "smoke", "--variants", "Spatial", "Spatial"], "listed twice"),
    (["--preset", "smoke", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_variants_bad_input(argv, needle, capsys, monkeypatch):
    from kv_research import variants
    monkeypatch.setattr(variants, "variant_table", _never("variant_table"))
    rc, err = _run(variants.main, argv, capsys)
    assert rc == 2
    _one_error_line(err, needle)


def test_variants_good_input_and_interrupt(capsys, monkeypatch):
    from kv_research import variants
    rc, _ = _run(variants.main, ["--preset", "smoke", "--variants", "Spatial", "--json"], capsys)
    assert rc == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(variants, "variant_table", interrupted)
    rc, err = _run(variants.main, ["--preset", "smoke"], capsys)
    assert rc == 130 and err.strip() == cli.INTERRUPTED


# ----------------------------------------------------------------------------------------------- damaged run folders
def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


def _foreign_safetensors(p: Path):
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(4, 4)}, str(p))


def _npz(**arrays):
    def write(p: Path):
        with open(p, "wb") as f:
            np.savez(f, **arrays)
    return write


DAMAGE = {   # case: (file relative to the run folder, how it is damaged or None to delete it, expected fragments)
    "ckpt_truncated": (CKPT, _truncate, ["truncated or padded", "retrain"]),
    "ckpt_garbage": (CKPT, lambda p: p.write_bytes(b"garbage " * 64), ["not a safetensors file"]),
    "ckpt_foreign": (CKPT, _foreign_safetensors, ["no 'model.' tensors", "not a checkpoint written by this suite"]),
    "ckpt_other_tensors": (CKPT, lambda p: shutil.copy(p.parents[3] / "image/checkpoints/last.safetensors", p),
                           ["holds variant 'Spatial'", "says 'Conv1dAttn1dBlocks'"]),
    "image_ckpt_empty": ("image/checkpoints/last.safetensors", lambda p: p.write_bytes(b""),
                         ["not a safetensors file (0 bytes", "retrain image"]),
    "image_ckpt_truncated": ("image/checkpoints/last.safetensors", _truncate, ["truncated or padded"]),
    "ckpt_json_truncated": (f"{VDIR}/checkpoints/last.json", _truncate, ["not valid JSON"]),
    "ckpt_json_list": (f"{VDIR}/checkpoints/last.json", lambda p: p.write_text("[1, 2]\n"),
                       ["not a checkpoint description"]),
    "ckpt_json_missing": (f"{VDIR}/checkpoints/last.json", None, ["has no config file beside it"]),
    "ckpt_missing": (CKPT, None, ["its checkpoint last.safetensors is missing"]),
    "optim_truncated": (f"{VDIR}/checkpoints/last.optim.pt", _truncate, ["optimizer state", "damaged"]),
    "optim_garbage": ("image/checkpoints/last.optim.pt", lambda p: p.write_bytes(b"\0" * 300),
                      ["not a complete torch archive"]),
    "run_json_truncated": ("run.json", _truncate, ["not valid JSON", "delete it to recompute"]),
    "run_json_list": ("run.json", lambda p: p.write_text("[]\n"), ["not a JSON object (a list)"]),
    "run_json_empty": ("run.json", lambda p: p.write_bytes(b""), ["empty file (0 bytes)"]),
    "run_json_binary": ("run.json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), ["not UTF-8"]),
    "video_truncated": (VIDEO, _truncate, ["not a readable .npz archive", "delete it to regenerate that video"]),
    "video_foreign": (VIDEO, _npz(x=np.zeros(3)), ["holds ['x'], not 'video'"]),
    "video_float": (VIDEO, _npz(video=np.zeros((4, 16, 16, 3), np.float32)), ["float32", "expected uint8"]),
    "control_video_truncated": (f"{VDIR}/motion_control/videos/test-00001_00.npz", _truncate,
                                ["not a readable .npz archive"]),
    "first_frame_truncated": ("first_frames/test-00000_00.npz", _truncate, ["delete it to recompute it"]),
    "first_frame_foreign": ("first_frames/test-00001_00.npz", _npz(image=np.zeros(3)), ["not 'latent' or 'frame'"]),
    "untrained_first_frame": ("variants/Untrained/first_frames/test-00001_00.npz", _truncate,
                              ["not a readable .npz archive"]),
    "preview_truncated": (f"{VDIR}/previews/test-00000_00.gif", _truncate, ["not a readable image",
                                                                            "to regenerate both"]),
    "summary_truncated": (f"{VDIR}/summary.json", _truncate, ["not valid JSON", "to re-evaluate"]),
    "per_video_truncated": (f"{VDIR}/per_video.csv", _truncate, ["is damaged", "to re-evaluate"]),
    "stats_truncated": (f"{VDIR}/stats.jsonl", _truncate, ["line 1: not valid JSON", "retrain"]),
    "stats_empty": ("image/stats.jsonl", lambda p: p.write_bytes(b""), ["empty file", "retrain image"]),
    "real_summary_garbage": ("variants/Real clips/summary.json", lambda p: p.write_bytes(b"\x00" * 40),
                             ["not valid JSON"]),
}


def _damage(run: Path, case: str) -> Path:
    rel, how, _ = DAMAGE[case]
    target = run / rel
    assert target.is_file(), target
    if how is None:
        target.unlink()
    else:
        how(target)
    return target


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_folder_is_named_and_left_unchanged(case, ab, tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    target = _damage(run, case)
    before = _hashes(run)
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)
    assert rc == 2
    line = _one_error_line(err, target if target.exists() else target.parent, "delete", "nothing was changed",
                           *DAMAGE[case][2])
    assert "Traceback" not in line
    assert _hashes(run) == before                                   # every file byte-identical, none added


@pytest.mark.parametrize("case", ["ckpt_truncated", "video_truncated"])
def test_dry_run_checks_the_run_folder_too(case, ab, tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kv_research.ablation.dry_run_report", _never("the dry-run report"))
    run = _copy(tiny_run, tmp_path)
    target = _damage(run, case)
    before = _hashes(run)
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run, "--dry-run"], capsys)
    assert rc == 2
    _one_error_line(err, target, "delete")
    assert _hashes(run) == before


@pytest.mark.parametrize("rel", ["ablate_blocks.csv", "samples.png", "benchmark/test.csv", "image/config.json"])
def test_outputs_rewritten_by_every_run_are_restored(rel, ab, tiny_run, tmp_path, capsys):
    """Files a run writes from its config every time (tables, figures, benchmark lists, trainer config) are not
    inputs of a re-run: a damaged copy is simply written again, byte-identical to the original."""
    run = _copy(tiny_run, tmp_path)
    _truncate(run / rel)
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)
    assert rc == 0, err
    assert (run / rel).read_bytes() == (tiny_run / rel).read_bytes()
    changed = {k for k, v in _hashes(run).items() if _hashes(tiny_run).get(k) != v}
    assert changed <= {"run.json"}, changed                         # run.json: this invocation's timings


def _table(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "ablate_blocks.csv").set_index("variant")


def _same_table(a: Path, b: Path):
    ta, tb = _table(a), _table(b)
    cols = [c for c in ta.columns if pd.api.types.is_numeric_dtype(ta[c]) and "clips/s" not in c]
    pd.testing.assert_frame_equal(ta[cols], tb[cols], rtol=0.05)   # CPU rounding may move a pixel (test_ablation)


@pytest.mark.parametrize("case, delete", [
    ("video_truncated", [VIDEO]),
    ("first_frame_truncated", ["first_frames/test-00000_00.npz"]),
    ("summary_truncated", [f"{VDIR}/summary.json", f"{VDIR}/per_video.csv"]),
    ("run_json_truncated", ["run.json"]),
    ("ckpt_truncated", [f"{VDIR}/checkpoints", f"{VDIR}/stats.jsonl"]),
])
def test_following_the_advice_recomputes_the_same_table(case, delete, ab, tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path)
    _damage(run, case)
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)
    assert rc == 2
    line = _one_error_line(err)
    for rel in delete:                                          # exactly what the message says to delete
        assert str(run / rel) in line, (rel, line)
        shutil.rmtree(run / rel) if (run / rel).is_dir() else (run / rel).unlink()
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)
    assert rc == 0, err
    _same_table(tiny_run, run)
    if case == "first_frame_truncated":    # read only to generate that sample's videos: recomputed with the next
        for rel in (VIDEO, f"variants/{VARIANT}/motion_control/videos/test-00000_00.npz"):
            (run / rel).unlink()
        rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)
        assert rc == 0, err
        a, b = (np.load(f / delete[0])["latent"] for f in (tiny_run, run))
        np.testing.assert_allclose(a, b, atol=1e-5)
    for rel in delete:
        assert (run / rel).exists(), rel                        # recomputed
    if case == "video_truncated":
        a, b = (np.load(f / VIDEO)["video"] for f in (tiny_run, run))
        assert np.abs(a.astype(np.int16) - b).max() <= 1
    if case == "run_json_truncated":
        assert json.loads((run / "run.json").read_text())["config_hash"] == \
            json.loads((tiny_run / "run.json").read_text())["config_hash"]


# ----------------------------------------------------------------------------------------------- interrupts
def _interrupt(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stage, target, remove", [
    ("fine-tuning", "kv_research.train.Trainer.train_step", [f"{VDIR}/checkpoints", f"{VDIR}/stats.jsonl"]),
    ("generation", "kv_research.harness.save_sample", [VIDEO]),
    ("evaluation", "kv_research.metrics.core.evaluate_videos", [f"{VDIR}/summary.json", f"{VDIR}/per_video.csv"]),
])
def test_ctrl_c_is_one_line_130_and_the_rerun_finishes(stage, target, remove, ab, tiny_run, tmp_path, capsys,
                                                       monkeypatch):
    run = _copy(tiny_run, tmp_path)
    for rel in remove:           # an unfinished stage for the interrupt to land in
        shutil.rmtree(run / rel) if (run / rel).is_dir() else (run / rel).unlink()
    before = _hashes(run)
    with monkeypatch.context() as m:    # patched in this process: the rows run here (--jobs 1), not in workers
        m.setattr(target, _interrupt)
        rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--jobs", "1", "--out", run], capsys)
    assert rc == 130 and err.strip() == cli.INTERRUPTED, err
    after = _hashes(run)
    assert {k: v for k, v in after.items() if k in before} == before   # nothing written earlier was changed
    rc, err = _run(ab.main, [*TINY_RUN_ARGS, "--out", run], capsys)  # the same command resumes
    assert rc == 0, err
    _same_table(tiny_run, run)


def test_ctrl_c_with_debug_raises(ab, tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    (run / f"{VDIR}/summary.json").unlink()
    monkeypatch.setattr("kv_research.metrics.core.evaluate_videos", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.run(ab.main, [*TINY_RUN_ARGS, "--jobs", "1", "--out", str(run), "--debug"])
