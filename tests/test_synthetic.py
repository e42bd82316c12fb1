"""Synthetic benchmark: determinism, caption grammar, ground-truth motion, held-out test split, benchmark files."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kv_research.data import synthetic as S
from kv_research.data.synthetic import (SPEEDS, SyntheticConfig, SyntheticVideoDataset, build_benchmark,
                                        caption_from_attrs, collate_clips, load_prompts, make_clip,
                                        nominal_motion_score, parse_caption, render_clip, sample_attrs)

REPO = Path(__file__).resolve().parent.parent
SMALL = SyntheticConfig(size=16, frames=4, n_train=40, n_test=12)


def test_same_seed_identical_clips_and_different_seed_differs():
    cfg = SyntheticConfig()
    a, b = make_clip(7, cfg), make_clip(7, cfg)
    assert torch.equal(a.video, b.video) and a.caption == b.caption and a.seed == b.seed
    c = make_clip(7, SyntheticConfig(seed=1))
    assert not torch.equal(a.video, c.video)
    assert not torch.equal(a.video, make_clip(8, cfg).video)
    assert a.video.shape == (3, cfg.frames, cfg.size, cfg.size) and a.video.dtype == torch.float32
    assert 0 <= a.video.min() and a.video.max() <= 1


def test_captions_parse_back_to_attributes_exactly():
    rng = np.random.default_rng(0)
    for _ in range(500):
        attrs = sample_attrs(rng, SyntheticConfig())
        assert parse_caption(caption_from_attrs(attrs)) == attrs
    two = parse_caption("a small red circle moves left quickly and a big blue square stays still "
                        "over a striped background")
    assert two == {"objects": [
        {"shape": "circle", "color": "red", "size": "small", "direction": "left", "speed": "quickly"},
        {"shape": "square", "color": "blue", "size": "big", "direction": "none", "speed": "still"}],
        "background": "striped"}
    for bad in ["a red circle moves left", "a small red circle moves left still over a plain background",
                "a small red blob moves left slowly over a plain background"]:
        with pytest.raises(ValueError, match="caption|phrase"):
            parse_caption(bad)


def test_clip_caption_matches_attrs_and_rerenders_from_caption_and_seed():
    cfg = SyntheticConfig()
    for i in range(20):
        clip = make_clip(i, cfg, "test")
        again = render_clip(parse_caption(clip.caption), cfg, clip.seed)
        assert torch.equal(clip.video, again.video)


def _centroids(attrs, cfg, seed):
    """Object centroid per frame, from the difference to the same clip rendered without objects."""
    clip = render_clip(attrs, cfg, seed)
    empty = render_clip({"objects": [], "background": attrs["background"]}, cfg, seed)
    mask = (clip.video - empty.video).abs().amax(dim=0) > 0.02                       # (T, H, W)
    ys, xs = torch.meshgrid(torch.arange(cfg.size) + 0.5, torch.arange(cfg.size) + 0.5, indexing="ij")
    w = (clip.video - empty.video).abs().amax(dim=0) * mask
    return np.stack([[(w[t] * xs).sum() / w[t].sum(), (w[t] * ys).sum() / w[t].sum()] for t in range(cfg.frames)])


@pytest.mark.parametrize("direction,sign", [("right", (1, 0)), ("left", (-1, 0)), ("up", (0, -1)), ("down", (0, 1))])
def test_objects_move_by_the_true_displacement(direction, sign):
    cfg = SyntheticConfig(size=32, frames=8)
    for speed in ("slowly", "quickly"):
        attrs = {"objects": [{"shape": "square", "color": "red", "size": "medium", "direction": direction,
                              "speed": speed}], "background": "plain"}
        clip = render_clip(attrs, cfg, seed=3)
        step = np.diff(_centroids(attrs, cfg, 3), axis=0)                        # (T-1, 2) px per frame
        true = SPEEDS[speed] * cfg.size
        np.testing.assert_allclose(clip.motion_px, true)
        np.testing.assert_allclose(step, np.broadcast_to(np.multiply(sign, true), step.shape), atol=0.1)
        np.testing.assert_allclose(step.mean(axis=0), np.multiply(sign, true), atol=0.03)


def test_ground_truth_motion_score_is_area_times_speed():
    cfg = SyntheticConfig(size=64, frames=4)
    attrs = {"objects": [{"shape": "square", "color": "blue", "size": "big", "direction": "right",
                          "speed": "steadily"}], "background": "plain"}
    clip = render_clip(attrs, cfg, seed=0)
    side = S.SIZES["big"] * cfg.size                                              # square fully inside the frame
    expected = side ** 2 / cfg.size ** 2 * SPEEDS["steadily"] * cfg.size * 256 / cfg.size
    assert clip.gt_motion == pytest.approx(expected, rel=0.01)
    # resolution independent: same clip at 32 px gives the same normalised score (up to edge anti-aliasing)
    assert render_clip(attrs, SyntheticConfig(size=32, frames=4), 0).gt_motion == pytest.approx(expected, rel=0.03)
    still = dict(attrs, objects=[dict(attrs["objects"][0], speed="still", direction="none")])
    assert render_clip(still, cfg, 0).gt_motion == 0.0


def test_nominal_motion_scores_are_ordered_and_resolution_free():
    scores = [nominal_motion_score(w) for w in SPEEDS]
    assert scores[0] == 0.0 and all(a < b for a, b in zip(scores, scores[1:]))
    assert nominal_motion_score("quickly", SyntheticConfig(size=16)) == nominal_motion_score("quickly")
    # a single average object: the mean ground truth over many one-object clips is close to the nominal value
    cfg = SyntheticConfig()
    gts = [render_clip(sample_attrs(np.random.default_rng(i), cfg, speed="quickly", n_objects=1), cfg, i).gt_motion
           for i in range(200)]
    assert np.mean(gts) == pytest.approx(nominal_motion_score("quickly"), rel=0.1)
    with pytest.raises(ValueError, match="unknown speed"):
        nominal_motion_score("fast")


def test_test_split_is_held_out_and_balanced():
    cfg = SyntheticConfig()
    train = {make_clip(i, cfg).caption for i in range(cfg.n_train)}
    test = [make_clip(i, cfg, "test") for i in range(cfg.n_test)]
    assert not train & {c.caption for c in test}
    first = [c.attrs["objects"][0]["speed"] for c in test]
    assert {w: first.count(w) for w in SPEEDS} == {w: cfg.n_test // len(SPEEDS) for w in SPEEDS}


def test_configurable_sizes_frames_and_dataset_batching():
    ds = SyntheticVideoDataset(SMALL, "train")
    assert len(ds) == 40 and len(SyntheticVideoDataset(SMALL, "test")) == 12
    item = ds[3]
    assert item["video"].shape == (3, 4, 16, 16) and parse_caption(item["caption"]) == item["attrs"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_clips)))
    assert batch["video"].shape == (5, 3, 4, 16, 16) and len(batch["attrs"]) == 5
    with pytest.raises(IndexError):
        ds[40]
    with pytest.raises(ValueError, match="split"):
        SyntheticVideoDataset(SMALL, "val")


def test_rendering_is_fast():
    import time
    t = time.perf_counter()
    for i in range(300):
        make_clip(i, SyntheticConfig())
    assert time.perf_counter() - t < 10, "300 clips of 8x32x32 should render in well under 10 s"


def test_build_benchmark_matches_committed_files(tmp_path):
    paths = build_benchmark(tmp_path, SyntheticConfig())
    for key in ("train", "test", "readme"):
        committed = REPO / "benchmarks" / "synthetic" / paths[key].name
        assert committed.is_file(), f"{committed} missing: run python -m kv_research.data.synthetic"
        assert paths[key].read_text() == committed.read_text(), f"{committed} is stale; regenerate it"
    df = load_prompts(paths["test"])
    assert {"id", "prompt", "seed", "motion", "color", "shape", "direction", "speed", "background"} <= set(df.columns)
    assert len(df) == 64 and df["motion"].min() == 0.0
    row = df.iloc[5]
    clip = render_clip(parse_caption(row["prompt"]), SyntheticConfig(), int(row["seed"]))
    assert torch.equal(clip.video, make_clip(5, SyntheticConfig(), "test").video)
    assert parse_caption(row["prompt"])["objects"][0]["color"] == row["color"]


def test_load_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_prompts(tmp_path / "nothere.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="missing columns"):
        load_prompts(bad)
