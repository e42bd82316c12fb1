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
