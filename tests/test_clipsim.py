"""CLIPSIM through the harness equals a direct open_clip computation; missing weights fail clearly.

Uses the real ViT-B-32-quickgelu architecture and the real BPE tokenizer with random weights (no OpenAI
weights offline), so the numbers are meaningless but the code path is the one used with real weights.
"""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from kv_research.metrics.clipsim import load_clip_vitb32
from kv_research.metrics.core import evaluate_videos
from kv_research.weights import MissingWeightsError


@pytest.fixture(scope="module")
def random_clip():
    torch.manual_seed(0)
    return load_clip_vitb32(pretrained=False)


def _direct_clipsim(model, videos, prompts):
    """Independent reference: open_clip's own eval transform and tokenizer, frame by frame, plain numpy maths."""
    transform = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                          std=open_clip.OPENAI_DATASET_STD)
    scores = []
    with torch.no_grad():
        for video, prompt in zip(videos, prompts):
            frames = (video.permute(1, 2, 3, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (T,H,W,3)
            img = model.encode_image(torch.stack([transform(Image.fromarray(f)) for f in frames])).numpy()
            txt = model.encode_text(open_clip.tokenize([prompt])).numpy()[0]
            cos = img @ txt / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt))
            scores.append(cos.mean())
    return np.array(scores)


def test_harness_equals_direct_open_clip(random_clip):
    g = torch.Generator().manual_seed(1)
    videos = torch.rand(2, 3, 2, 40, 56, generator=g)          # 2 videos x 2 frames, non-square (crop path)
    prompts = ["a red circle moves left", "a blue square stays still"]
    per_video, summary = evaluate_videos(videos, prompts, metrics=["clipsim"], clip=random_clip, progress=False,
                                         n_boot=100)
    direct = _direct_clipsim(random_clip.model, videos, prompts)
    np.testing.assert_allclose(per_video["clipsim"].to_numpy(), direct, atol=2e-5)
    m = summary["metrics"]["clipsim"]
    assert m["value"] == pytest.approx(direct.mean(), abs=2e-5)             # mean over videos, raw cosine
    assert m["n"] == 2 and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert "RANDOM INIT" in m["detector"] and m["detector_sha256"] == "random-init"
    assert list(per_video.columns[:2]) == ["video", "clipsim"]


def test_frame_subsampling_is_reported(random_clip):
    random_clip.max_frames = 1
    try:
        videos = torch.rand(1, 3, 5, 32, 32)
        assert random_clip._subsample(videos).shape[2] == 1
        assert "<= 1" in random_clip.describe()["frames_used"]
    finally:
        random_clip.max_frames = None


def test_missing_clip_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KV_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as e:
        load_clip_vitb32()
    msg = str(e.value)
    assert "ViT-B-32.pt" in msg
    assert "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af" in msg   # OpenAI's published sha256
    assert str(tmp_path) in msg and "KV_WEIGHTS_DIR" in msg
