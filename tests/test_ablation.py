"""The main job end to end on the smoke preset: table, figures, notebook, resumption, bad input."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "ablate_blocks.py"
SMALL = ["--variants", "Spatial", "Conv1dAttn1dBlocks", "--no-untrained", "--set", "train.image_steps=30",
         "--set", "train.video_steps=12", "--no-progress", "--threads", "1"]
METRIC_COLS = ["FVD-syn", "CLIPSIM-syn", "attr acc", "motion MAE", "motion Spearman"]


def run_cli(args, timeout=600, check=True):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"ablate_blocks failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke preset (every default variant, Untrained and Real rows), as a user runs it."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    t = time.perf_counter()
    run_cli(["--preset", "smoke", "--out", str(out), "--no-progress"])
    print(f"smoke preset wall time: {time.perf_counter() - t:.1f} s")
    return out


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "run"
    run_cli(["--preset", "smoke", "--out", str(out), *SMALL])
    return out


def test_smoke_preset_writes_the_table(smoke_run):
    from kv_research.models.temporal import DEFAULT_STUDY
    table = pd.read_csv(smoke_run / "ablate_blocks.csv")
    assert table["variant"].tolist() == [*DEFAULT_STUDY, "Untrained", "Real clips"]
    for col in METRIC_COLS:
        assert table[col].notna().all(), col
        assert {f"{col} ci_low", f"{col} ci_high"} <= set(table.columns)
    for f in ("ablate_blocks.md", "ablate_blocks.tex", "ablate_blocks.png", "samples.png", "run.json"):
        assert (smoke_run / f).is_file(), f
    md = (smoke_run / "ablate_blocks.md").read_text()
    assert "Published numbers (not ours)" in md and "545.184" in md and "N = 12 generated videos" in md
    run = json.loads((smoke_run / "run.json").read_text())
    assert run["protocol"]["frames"] == 4 and run["protocol"]["resolution"] == 16 and run["protocol"]["N"] == 12
    assert all(len(h or "") == 64 for h in run["protocol"]["detectors"].values())
    # the real clips are the best row on FVD-syn; the untrained model is not
    real = table.set_index("variant").loc["Real clips"]
    assert real["FVD-syn"] < table.set_index("variant").loc["Untrained"]["FVD-syn"]
    # paired motion control: the Spatial control has no motion-score input, so its two videos per prompt are
    # identical and it scores exactly chance (0.5, gain 0); every inflated variant is measured; no control pairs
    # exist for the untrained model or the real clips
    rows = table.set_index("variant")
    assert rows.loc["Spatial", "motion control"] == 0.5 and rows.loc["Spatial", "motion gain"] == 0.0
    assert rows.loc[list(DEFAULT_STUDY), "motion control"].notna().all()
    assert rows.loc[["Untrained", "Real clips"], "motion control"].isna().all()
    ctl = sorted((smoke_run / "variants" / "Conv1dAttn1dBlocks" / "motion_control" / "videos").glob("*.npz"))
    assert len(ctl) == 6 and ctl[0].name == "test-00000_00.npz"
    per_video = pd.read_csv(smoke_run / "variants" / "Conv1dAttn1dBlocks" / "per_video.csv")
    assert per_video["control_motion"].notna().sum() == 6


def test_notebook_executes_on_smoke_outputs(smoke_run):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(REPO / "notebooks" / "ablation_analysis.ipynb", as_version=4)
    os.environ["KV_RESULTS"] = str(smoke_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        del os.environ["KV_RESULTS"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("protocol" in o.get("text", "") for o in outputs)


def _videos(folder):
    folder = Path(folder)   # the main videos and the motion-control ones (variants/<v>/motion_control/videos)
    return {str(p.relative_to(folder)): np.load(p)["video"] for p in sorted(folder.glob("variants/**/videos/*.npz"))}


def test_killed_runs_resume_to_the_same_table(small_run, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(1234)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    kills = 0
    for _ in range(3):          # kill at random points, at most three times
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--preset", "smoke", "--out", str(out), *SMALL],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        try:
            proc.wait(timeout=rng.uniform(4.0, 15.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    run_cli(["--preset", "smoke", "--out", str(out), *SMALL])
    assert kills >= 1
    a = pd.read_csv(small_run / "ablate_blocks.csv").set_index("variant")
    b = pd.read_csv(out / "ablate_blocks.csv").set_index("variant")
    cols = [c for c in a.columns if c.split(" ci_")[0] in METRIC_COLS + ["motion binary acc", "motion (measured)",
                                                                      "motion control", "motion gain"]]
    va, vb = _videos(small_run), _videos(out)
    assert va.keys() == vb.keys()
    same = sum(np.array_equal(va[k], vb[k]) for k in va)
    print(f"\nkilled {kills}x and resumed: {same}/{len(va)} videos bit-identical to the uninterrupted run")
    # Resumption itself is exact (fixed label groups, fixed generation batches, step-seeded training). What can
    # remain is CPU rounding that differs between processes (MKL_CBWR, set in conftest, removes most of it): it
    # may flip a pixel by one level, and RAFT on these tiny flickering smoke videos can amplify that in the
    # motion columns. Anything larger is a resumption bug.
    for k in va:
        diff = np.abs(va[k].astype(np.int16) - vb[k])
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (k, int(diff.max()), float((diff > 0).mean()))
    if same == len(va):
        pd.testing.assert_frame_equal(a[cols], b[cols])
    else:
        pd.testing.assert_frame_equal(a[cols], b[cols], rtol=0.05)
    # stage times add up over invocations; a finishing invocation that skipped finished work does not erase them
    first = json.loads((small_run / "run.json").read_text())["timings_s"]
    run_cli(["--preset", "smoke", "--out", str(small_run), *SMALL])
    again = json.loads((small_run / "run.json").read_text())
    assert len(again["invocations_s"]) == 2 and again["timings_s"]["image pretraining"] >= first["image pretraining"]
    assert again["timings_s"]["total (all invocations)"] == pytest.approx(sum(again["invocations_s"]))


def test_batch_size_does_not_change_videos(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from test_diffusion import tiny_pipe
    from kv_research.harness import generate_prompt_set, load_samples
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks").eval()
    prompts = pd.DataFrame({"id": ["a", "b", "c"], "prompt": ["a red square", "a blue circle", "a green cross"],
                            "motion": [1.0, 10.0, 30.0]})
    names = {}
    for bs in (1, 3):
        names[bs] = generate_prompt_set(pipe, prompts, tmp_path / f"bs{bs}", frames=3, size=8, batch_size=bs,
                                        first_frames_dir=tmp_path / f"ff{bs}", progress=False, preview=False)
    v1, v3 = load_samples(tmp_path / "bs1", names[1]), load_samples(tmp_path / "bs3", names[3])
    assert (v1 - v3).abs().max() <= 1 / 255 + 1e-6           # at most one quantisation step
    # oneDNN picks conv algorithms by batch size (~2e-7 per layer on Kandinsky 3.0's deeper net), which rounds a
    # few pixels to the neighbouring level; the harness's fixed generation batches make resumed runs exact
    assert (v1 == v3).float().mean() > 0.95
    again = generate_prompt_set(pipe, prompts, tmp_path / "again", frames=3, size=8, batch_size=3,
                                first_frames_dir=tmp_path / "ff_again", progress=False, preview=False)
    assert torch.equal(load_samples(tmp_path / "again", again), v3)   # same seed, same videos


def test_bad_input_fails_before_any_work(small_run, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()}
    p = run_cli(["--preset", "smoke", "--out", str(tmp_path / "x"), "--variants", "Conv2dAttn1dBlocks"], check=False)
    assert p.returncode == 2 and "unknown variant 'Conv2dAttn1dBlocks'" in p.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt\n")
    p = run_cli(["--preset", "smoke", "--out", str(tmp_path / "y"), "--prompts", str(empty)], check=False)
    assert p.returncode == 2 and "holds no prompts" in p.stderr and str(empty) in p.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("caption,motion\nhello,3\n")
    p = run_cli(["--preset", "smoke", "--out", str(tmp_path / "z"), "--prompts", str(bad)], check=False)
    assert p.returncode == 2 and "no 'prompt' column" in p.stderr
    # the folder of another run (different seed) is refused, and nothing in it changes
    p = run_cli(["--preset", "smoke", "--out", str(small_run), *SMALL, "--seed", "7"], check=False)
    assert p.returncode == 2 and "holds a different run" in p.stderr
    p = run_cli(["--preset", "smoke", "--out", str(tmp_path / "q"), "--set", "eval.motion_control_quantiles=[0.9, 0.1]"],
                check=False)
    assert p.returncode == 2 and "motion_control_quantiles" in p.stderr and not (tmp_path / "q").exists()
    # a checkpoint of another variant in a variant's folder is refused before training
    ck = small_run / "variants" / "Spatial" / "checkpoints" / "last.json"
    meta = json.loads(ck.read_text())
    (tmp_path / "saved.json").write_text(ck.read_text())
    ck.write_text(json.dumps({**meta, "variant": "Conv3dAttn1dBlocks"}))
    try:
        p = run_cli(["--preset", "smoke", "--out", str(small_run), *SMALL], check=False)
        assert p.returncode == 2 and "checkpoint of variant 'Conv3dAttn1dBlocks'" in p.stderr
    finally:
        ck.write_text((tmp_path / "saved.json").read_text())
    after = {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()}
    changed = [p for p in before if before[p] != after.get(p) and p != ck]
    assert not changed, changed


def test_dry_run_prints_the_plan(tmp_path):
    p = run_cli(["--preset", "smoke", "--out", str(tmp_path / "dry"), "--dry-run"])
    plan = json.loads(p.stdout)
    assert plan["preset"]["name"] == "smoke" and not (tmp_path / "dry").exists()


def test_parallel_row_jobs_give_the_same_table(small_run, tmp_path):
    """The rows of ``small_run`` were trained in two worker processes (``row_jobs``: auto = one per core, at
    ``--threads 1`` each); one after the other in this process they give the same videos and metrics."""
    jobs = json.loads((small_run / "run.json").read_text())["jobs"]
    if jobs["jobs"] < 2:
        pytest.skip(f"one CPU core here: small_run ran its rows one after the other ({jobs})")
    out = tmp_path / "sequential"
    run_cli(["--preset", "smoke", "--out", str(out), *SMALL, "--jobs", "1"])
    assert json.loads((out / "run.json").read_text())["jobs"] == {"jobs": 1, "threads_per_job": 1,
                                                                   "side_lane": False}
    va, vb = _videos(small_run), _videos(out)
    assert va.keys() == vb.keys() and len(va) > 0
    assert all(np.array_equal(va[k], vb[k]) for k in va), "parallel rows changed a video"
    a = pd.read_csv(small_run / "ablate_blocks.csv").set_index("variant")
    b = pd.read_csv(out / "ablate_blocks.csv").set_index("variant")
    cols = [c for c in a.columns if c != "train clips/s" and not c.startswith("train clips/s")]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_row_jobs_policy():
    from kv_research.ablation import AblationConfig, row_jobs
    from kv_research.harness import Dist
    cores = len(os.sched_getaffinity(0))
    assert row_jobs(AblationConfig(), Dist(), 7) == (min(cores, 7), max(1, cores // min(cores, 7)))
    assert row_jobs(AblationConfig(jobs=3, threads=2), Dist(), 7) == (3, 2)
    assert row_jobs(AblationConfig(jobs=9), Dist(), 2)[0] == 2              # never more jobs than rows
    assert row_jobs(AblationConfig(device="cuda"), Dist(), 7)[0] == 1      # GPU runs: one process per device
    assert row_jobs(AblationConfig(), Dist(rank=0, world=2), 7)[0] == 1    # under torchrun: ranks, not jobs


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing" in cmd and b"resource_tracker" not in cmd


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"    # a zombie is gone
    except (OSError, IndexError):
        return False


def _wait_for_workers(proc, n: int, timeout: float = 120.0) -> list[int]:
    """The row workers of ``proc`` (spawned processes running multiprocessing's entry point), once n exist."""
    t = time.monotonic()
    while time.monotonic() - t < timeout and proc.poll() is None:
        kids = [k for k in _children(proc.pid) if _is_worker(k)]
        if len(kids) >= n:
            return kids
        time.sleep(0.2)
    raise AssertionError(f"no {n} row workers appeared (exit {proc.poll()})")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux /proc and 2 cores")
def test_a_dead_worker_fails_the_run_a_dead_parent_ends_its_workers_and_ctrl_c_is_one_line(tmp_path):
    from conftest import TINY_RUN_ARGS
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # two trained rows, so that two workers run at once (Untrained and Real clips go to the side lane, which then
    # serves a row: spawned workers start on demand)
    cmd = [sys.executable, str(SCRIPT), *TINY_RUN_ARGS, "--variants", "Spatial", "Conv1dAttn1dBlocks", "--jobs", "2",
           "--out", str(tmp_path / "run")]
    # a worker killed by the system (OOM killer): the run stops with a message instead of hanging
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    os.kill(_wait_for_workers(proc, 2)[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "row worker process died" in err, err[-2000:]
    assert "re-run the same command to resume" in err
    # the parent killed: its workers end too, so no orphan keeps writing into the folder a re-run resumes
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    workers = _wait_for_workers(proc, 2)
    proc.kill()
    proc.wait()
    t = time.monotonic()
    while time.monotonic() - t < 30 and any(_alive(w) for w in workers):   # a worker may still be importing
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    assert not alive, f"row workers {alive} outlived their parent"
    # Ctrl-C in a terminal (SIGINT to the whole process group) while the workers train: one line, exit 130
    from kv_research.cli import INTERRUPTED
    proc = subprocess.Popen([*cmd[:-1], str(tmp_path / "ctrl_c"), "--set", "train.video_steps=400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    workers = _wait_for_workers(proc, 2)
    stats = tmp_path / "ctrl_c" / "variants" / "Conv1dAttn1dBlocks" / "config.json"
    t = time.monotonic()
    while not stats.is_file() and time.monotonic() - t < 120:     # a worker is fine-tuning
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().endswith(INTERRUPTED), err[-3000:]
    t = time.monotonic()
    while time.monotonic() - t < 30 and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)]
