import os
from pathlib import Path

# MKL's conditional numerical reproducibility: without it, matrix products may round differently depending on the
# memory alignment of their operands, which differs between processes, and two identical CPU runs of the CLI
# (e.g. the kill/resume test's) were seen to end 1e-9 apart in the fine-tuning loss. Set before torch loads MKL;
# the CLI subprocesses inherit it.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("KV_SHARED_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("KV_WEIGHTS_DIR", str(Path(os.environ["KV_SHARED_DATA"]) / "weights"))
torch.set_num_threads(1)  # tiny models gain nothing from threads; oversubscribed OpenMP spins


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = Path(os.environ["KV_SHARED_DATA"])
    if not p.is_dir():
        pytest.fail(f"shared data folder not found: {p} (set KV_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def videos_dir(shared_data) -> Path:
    return shared_data / "videos"


@pytest.fixture(scope="session")
def weights_dir(shared_data) -> Path:
    return Path(os.environ["KV_WEIGHTS_DIR"])


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # keep every cache inside pytest's tmp folder unless a test sets its own
    if "KV_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("KV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kv_cache"))


@pytest.fixture(scope="module")
def smoke_image_unet():
    """The smoke text-to-image UNet (seed 0) as if trained: its conditional norms (zero at initialisation) respond
    to the time embedding, so equalities at initialisation are not trivially zero. Callers must not modify it."""
    import kv_research as kv
    torch.manual_seed(0)
    img = kv.build_unet("Spatial", preset="smoke").eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, prm in img.named_parameters():
            if "context_mlp" in name:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
    return img


# the smallest complete ablate_blocks run folder: one variant, 2 + 2 training steps, 2 prompts (motion-control pairs,
# Untrained and Real rows included), so it holds one file of every kind a run writes. Tests copy it, never modify it.
TINY_RUN_ARGS = ["--preset", "smoke", "--variants", "Conv1dAttn1dBlocks", "--set", "train.image_steps=2",
                 "--set", "train.video_steps=2", "--prompt-limit", "2", "--no-progress", "--threads", "1",
                 "--jobs", "1"]   # rows in this process: a row takes less than starting a worker would


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, str(REPO / "experiments" / "ablate_blocks.py"), *TINY_RUN_ARGS,
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ------------------------------------------------------------------ helpers of the bad-input tests (one per command)
def one_error_line(err: str, *needles) -> str:
    """stderr is exactly one ``error: ...`` line, and it contains every needle (file names, values)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def never(what):
    """A stand-in for a function that must not be reached (work started before the input was checked)."""
    def fail(*a, **k):
        raise AssertionError(f"{what} should not have been reached")
    return fail
