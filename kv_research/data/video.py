"""Real video files -> (3, T, H, W) float tensors in [0, 1], with one documented, deterministic policy (PyAV).

``read_video`` policy, in order:

1. **Streams.** Only the first video stream is demuxed; audio (even a broken audio track) is never decoded.
2. **Frame order and times.** Frames are kept in decoder output order, which FFmpeg guarantees to be
   presentation order (it reorders B-frames; the packets of ``decord_unordered_pts.mov`` are stored out of order
   and come out sorted). Frame ``i`` gets the ``i``-th smallest packet timestamp. We do *not* sort frames by
   their own pts: XviD AVIs with packed B-frames report pts 1,2,4,3,5,7,6,... on correctly ordered frames, and
   sorting by them scrambles the clip (measured on ``mmaction2_ucf101_applyeyemakeup.avi``). No container
   duration is used, so files without one (``EDGE_moviepy_no_duration.webm``) work.
3. **Sampling.** ``stride=s``: frames 0, s, 2s, ...; ``fps=f``: for target times 0, 1/f, 2/f, ... up to the last
   frame time, the frame whose time is nearest (ties to the earlier; frames repeat when f exceeds the native
   rate); neither: every frame. ``num_frames=n`` then keeps the first n samples and raises
   ``VideoTooShortError`` if there are fewer (clips are never padded: padding would fake stillness).
   ``start``/``end`` (seconds, measured from the first frame, like ``info["times"]``) first restrict the
   frames to those with start <= time <= end (1 us tolerance, so a frame stored at 0.9999999 s counts as 1 s);
   stride then counts from the first kept frame and fps targets are start, start + 1/f, ... (not 0, 1/f, ...),
   so a trimmed clip samples the same grid wherever it sits in the file. No frame in the window raises
   ``VideoTooShortError``. The window is applied to frame times only: decoding still starts at the file's
   first packet (no seeking), which keeps one decoding path for all files at the cost of decoding the head.
4. **Rotation.** A display-matrix rotation (``frame.rotation``, counter-clockwise degrees) is applied, so
   ``decord_rotated_90.mov`` (stored 568x320, rotation -90) comes out 320 wide and 568 high, upright.
5. **Resize + crop.** ``size=None``: native resolution. ``size=S`` (int): the short side becomes S (long side
   scaled by the same factor, rounded), then ``crop="center"`` takes the central SxS square (``crop=None``
   keeps the aspect ratio). ``size=(H, W)``: scaled to cover HxW and center-cropped (``crop=None``: squashed to
   exactly HxW). Scaling is done by swscale on the selected frames only: AREA when shrinking, BICUBIC when
   enlarging (a 1x1 video becomes a flat SxS image).
6. **Integrity.** With ``verify=True`` (default) the whole stream is decoded even when fewer frames are needed,
   so a file that is corrupt anywhere (``BROKEN_decord_corrupted.mp4`` fails after 28 of 50 frames) always raises
   ``VideoDecodeError`` naming the file instead of being half-used. ``verify=False`` stops early (faster).

Stored videos (``save_video``): ``.npz`` lossless (key ``video``: uint8 (T,H,W,3), plus ``fps``), ``.mp4``
(libx264, yuv420p, odd sizes padded to even by repeating the last row/column) and ``.gif`` (PIL) previews.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from einops import rearrange
from tqdm.auto import tqdm

from kv_research.utils import atomic_save_npz, atomic_write_bytes

__all__ = ["VideoDecodeError", "VideoTooShortError", "read_video", "sample_indices", "save_video", "to_uint8",
           "VideoFolderDataset", "UCF101Dataset", "camel_to_words", "parse_seconds", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".npz")


class VideoDecodeError(RuntimeError):
    """A video file cannot be used; the message starts with the file's path and says why."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class VideoTooShortError(VideoDecodeError):
    """Fewer frames than ``num_frames`` remain after sampling."""


# ----------------------------------------------------------------------------------------------- sampling
_WINDOW_EPS = 1e-6   # seconds; container time bases (1/90000, 1001/30000, ...) put frames a few ulps off


def sample_indices(times: np.ndarray, *, stride: int | None = None, fps: float | None = None,
                   num_frames: int | None = None, path="<video>", start: float | None = None,
                   end: float | None = None) -> np.ndarray:
    """Indices (into ``times``) of the frames to keep, given sorted frame times in seconds (policy step 3).

    ``start``/``end`` are measured from ``times[0]``; without them the result is exactly the untrimmed policy.
    """
    if stride is not None and fps is not None:
        raise ValueError("give either stride or fps, not both")
    lo = 0.0 if start is None else float(start)
    hi = np.inf if end is None else float(end)
    if lo < 0 or np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"start must be a number >= 0 and end a number, got start={start}, end={end}")
    if hi <= lo:
        raise ValueError(f"start must be < end, got start={start}, end={end}")
    t_all = np.asarray(times, dtype=np.float64) - times[0]
    if start is None and end is None:
        keep = np.arange(len(t_all))
    else:
        keep = np.flatnonzero((t_all >= lo - _WINDOW_EPS) & (t_all <= hi + _WINDOW_EPS))
        if len(keep) == 0:
            raise VideoTooShortError(path, f"no frames between start={lo:g} s and end={hi:g} s "
                                           f"(frames span 0-{t_all[-1]:.3f} s)")
    t, n = t_all[keep], len(keep)
    if stride is not None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        idx = np.arange(0, n, stride)
    elif fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        targets = lo + np.arange(max(0, int(np.floor((t[-1] - lo) * fps + 1e-6))) + 1) / fps
        right = np.clip(np.searchsorted(t, targets), 1, max(n - 1, 1))
        left = right - 1
        # ties go to the earlier frame; 1 ns of slack so that rounding (start + k/f) cannot break a tie
        closer = np.abs(t[right] - targets) < np.abs(t[left] - targets) - 1e-9
        idx = np.where(closer, right, left) if n > 1 else left * 0
    else:
        idx = np.arange(n)
    if num_frames is not None:
        if len(idx) < num_frames:
            window = "" if start is None and end is None else f" in [{lo:g}, {hi:g}] s"
            raise VideoTooShortError(path, f"only {len(idx)} frames after sampling (stride={stride}, fps={fps}) "
                                           f"from {n} decodable frames{window}; {num_frames} needed")
        idx = idx[:num_frames]
    return keep[idx]


def _target_size(h: int, w: int, size, crop) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(scaled (H, W), crop (H, W) or None) in display orientation (policy step 5)."""
    if size is None:
        return (h, w), None
    if crop not in ("center", None, "none"):
        raise ValueError(f"crop must be 'center' or None, got {crop!r}")
    center = crop == "center"
    if isinstance(size, int):
        s = size / min(h, w)
        scaled = (max(size, round(h * s)), max(size, round(w * s)))
        return scaled, ((size, size) if center else None)
    th, tw = size
    if not center:
        return (th, tw), None
    s = max(th / h, tw / w)
    return (max(th, round(h * s)), max(tw, round(w * s))), (th, tw)


def _center_crop(a: np.ndarray, hw) -> np.ndarray:
    if hw is None:
        return a
    top, left = (a.shape[-3] - hw[0]) // 2, (a.shape[-2] - hw[1]) // 2
    return a[..., top:top + hw[0], left:left + hw[1], :]


# ----------------------------------------------------------------------------------------------- reading
def read_video(path, num_frames: int | None = None, stride: int | None = None, fps: float | None = None,
               size=None, crop="center", *, start: float | None = None, end: float | None = None,
               verify: bool = True, return_info: bool = False):
    """Decode ``path`` into a (3, T, H, W) float32 tensor in [0, 1] following the module's policy.

    ``start``/``end``: keep only frames whose time (s, from the first frame) is in [start, end] (policy step 3).

    Raises ``VideoDecodeError`` (naming the file) for missing, unreadable, corrupt or too-short videos.
    ``return_info=True`` also returns a dict: native_fps, times (s, of the returned frames), decoded (count),
    rotation, source_hw (display orientation, before resizing).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.suffix.lower() == ".npz":
        frames, info = _read_npz(path, num_frames, stride, fps, size, crop, (start, end))
    else:
        try:
            frames, info = _read_av(path, num_frames, stride, fps, size, crop, verify, (start, end))
        except VideoDecodeError:
            raise
        except (av.error.FFmpegError, OSError, EOFError) as e:   # FFmpegError covers InvalidDataError etc.
            raise VideoDecodeError(path, f"decoding failed ({type(e).__name__}: {e})") from e
    video = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255)   # (T, H, W, 3)
    video = rearrange(video, "t h w c -> c t h w").contiguous()
    return (video, info) if return_info else video


def _read_npz(path, num_frames, stride, fps, size, crop, window=(None, None)):
    try:
        with np.load(path) as z:
            arr = z["video"]
            native = float(z["fps"]) if "fps" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        raise VideoDecodeError(path, f"not a video .npz with key 'video' ({e})") from e
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise VideoDecodeError(path, f"'video' must be uint8 (T,H,W,3), got {arr.dtype} {arr.shape}")
    if fps is not None and native is None:
        raise VideoDecodeError(path, "fps sampling needs a stored 'fps' entry; use stride instead")
    times = np.arange(len(arr)) / (native or 1.0)
    idx = sample_indices(times, stride=stride, fps=fps, num_frames=num_frames, path=path,
                         start=window[0], end=window[1])
    arr = arr[idx]
    if size is not None:
        scaled, crop_hw = _target_size(arr.shape[1], arr.shape[2], size, crop)
        x = rearrange(torch.from_numpy(arr).float(), "t h w c -> t c h w")
        x = torch.nn.functional.interpolate(x, size=scaled, mode="bilinear", align_corners=False,
                                            antialias=scaled[0] < arr.shape[1])
        arr = _center_crop(rearrange(x.round().clamp(0, 255).byte(), "t c h w -> t h w c").numpy(), crop_hw)
    return arr, {"native_fps": native, "times": times[idx], "decoded": len(times), "rotation": 0,
                 "source_hw": tuple(arr.shape[1:3])}


def _read_av(path, num_frames, stride, fps, size, crop, verify, window=(None, None)):
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else None
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        pts = [p.pts for p in container.demux(stream) if p.size > 0]     # pass 1: packets only, no decoding
    if not pts:
        raise VideoDecodeError(path, "the video stream has no packets")
    if tb is not None and all(p is not None for p in pts):
        times = np.sort(np.asarray(pts, dtype=np.float64)) * tb
        times -= times[0]
    elif rate:
        times = np.arange(len(pts)) / rate
    else:
        raise VideoDecodeError(path, "frames have no timestamps and the stream has no frame rate")
    idx = sample_indices(times, stride=stride, fps=fps, num_frames=num_frames, path=path,
                         start=window[0], end=window[1])
    wanted = {int(i) for i in idx}
    last_needed = int(idx.max()) if len(idx) else -1
    got: dict[int, np.ndarray] = {}
    n, rotation, source_hw = 0, 0, None
    with av.open(str(path)) as container:                               # pass 2: decode
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in wanted:
                rotation = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
                got[n], source_hw = _convert(frame, rotation, size, crop)
            n += 1
            if not verify and n > last_needed:
                break
    missing = sorted(wanted - set(got))
    if missing:
        raise VideoDecodeError(path, f"only {n} frames decoded but frame {missing[0]} was needed "
                                     f"({len(pts)} packets in the stream)")
    info = {"native_fps": rate, "times": times[idx], "decoded": n, "rotation": rotation * 90,
            "source_hw": source_hw}
    return np.stack([got[int(i)] for i in idx]), info


def _convert(frame, rotation: int, size, crop) -> tuple[np.ndarray, tuple[int, int]]:
    """One decoded frame -> (H, W, 3) uint8, rotated upright, resized and cropped (policy steps 4-5)."""
    sh, sw = frame.height, frame.width
    dh, dw = (sw, sh) if rotation % 2 else (sh, sw)                     # display orientation
    (th, tw), crop_hw = _target_size(dh, dw, size, crop)
    rh, rw = (tw, th) if rotation % 2 else (th, tw)                      # scale in stored orientation
    interp = "AREA" if rh * rw < sh * sw else "BICUBIC"
    rgb = frame.reformat(width=rw, height=rh, format="rgb24", interpolation=interp).to_ndarray()
    rgb = np.rot90(rgb, k=rotation) if rotation else rgb                 # rotation: counter-clockwise quarters
    return _center_crop(rgb, crop_hw), (dh, dw)


# ----------------------------------------------------------------------------------------------- writing
def to_uint8(video) -> np.ndarray:
    """(3,T,H,W) float in [0,1] (tensor or array) or (T,H,W,3) uint8 -> (T,H,W,3) uint8 (rounded, clipped)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"uint8 video must be (T,H,W,3), got {video.shape}")
        return video
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"float video must be (3,T,H,W) in [0,1], got {video.shape}")
    return np.round(np.clip(rearrange(video, "c t h w -> t h w c"), 0, 1) * 255).astype(np.uint8)


def save_video(path, video, fps: float = 8.0) -> Path:
    """Write a video by extension: .npz (lossless), .mp4 (libx264 yuv420p, crf 18) or .gif; atomic."""
    path = Path(path)
    arr = to_uint8(video)
    ext = path.suffix.lower()
    if ext == ".npz":
        atomic_save_npz(path, video=arr, fps=np.float32(fps))
    elif ext == ".mp4":
        atomic_write_bytes(path, _encode_mp4(arr, fps))
    elif ext == ".gif":
        from PIL import Image
        buf = io.BytesIO()
        imgs = [Image.fromarray(f) for f in arr]
        imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=round(1000 / fps), loop=0)
        atomic_write_bytes(path, buf.getvalue())
    else:
        raise ValueError(f"{path}: unsupported extension {ext!r}; use .npz, .mp4 or .gif")
    return path


def _encode_mp4(arr: np.ndarray, fps: float) -> bytes:
    from fractions import Fraction
    ph, pw = arr.shape[1] % 2, arr.shape[2] % 2                          # yuv420p needs even sizes
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for f in arr:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- datasets
class _ClipList(torch.utils.data.Dataset):
    """Shared logic: a list of (path, caption, extra) read with one policy; errors raised or skipped+counted.

    on_error='raise': clips are decoded lazily in __getitem__ and errors propagate (naming the file).
    on_error='skip': every file is decoded once up front (progress bar); failures are listed in ``skipped``
    as (path, reason) and left out, and the decoded clips are kept in memory as uint8.
    An entry's ``extra`` may hold ``start``/``end`` (seconds): they trim that clip (read_video's window) and,
    like every extra, are also returned in the item.
    """

    def __init__(self, entries: list[tuple[Path, str, dict]], *, num_frames=8, fps=None, stride=None, size=32,
                 crop="center", on_error="raise", verify=True, progress=False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.read_kw = dict(num_frames=num_frames, fps=fps, stride=stride, size=size, crop=crop, verify=verify)
        self.on_error, self.skipped, self._cache = on_error, [], None
        self.entries = entries
        if on_error == "skip":
            kept, cache = [], []
            for e in tqdm(entries, desc="decoding videos", disable=not progress):
                try:
                    cache.append(to_uint8(self._read(e)))
                    kept.append(e)
                except VideoDecodeError as err:
                    self.skipped.append((str(e[0]), err.reason))
            self.entries, self._cache = kept, cache

    def _read(self, entry) -> torch.Tensor:
        path, _, extra = entry
        return read_video(path, **self.read_kw, start=extra.get("start"), end=extra.get("end"))

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        path, caption, extra = self.entries[index]
        if self._cache is not None:
            video = rearrange(torch.from_numpy(self._cache[index]).float() / 255, "t h w c -> c t h w")
        else:
            video = self._read(self.entries[index])
        return {"video": video, "caption": caption, "path": str(path), "index": index, **extra}


class VideoFolderDataset(_ClipList):
    """Videos listed in a CSV with columns ``path`` (relative to ``root`` or absolute) and ``caption``.

    Without ``captions_csv`` every video file directly in ``root`` is used, with an empty caption
    (e.g. a reference set for FVD). Items: dict(video (3,T,H,W), caption, path, index).
    Optional columns ``start``/``end`` (seconds from the first frame; an empty cell = the clip's own start/end)
    trim each clip; when present, items also carry ``start`` (float, 0.0 if empty) and ``end`` (float, inf if
    empty), always numbers so that the default collate works.
    """

    def __init__(self, root, captions_csv=None, **kw):
        root = Path(root)
        if captions_csv is None:
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            entries = [(p, "", {}) for p in files]
        else:
            df = pd.read_csv(captions_csv, keep_default_na=False)
            if not {"path", "caption"} <= set(df.columns):
                raise ValueError(f"{captions_csv}: needs columns 'path' and 'caption', found {list(df.columns)}")
            window = [c for c in ("start", "end") if c in df.columns]
            entries = []
            for row, (p, c) in enumerate(zip(df["path"], df["caption"])):
                extra = {}
                for col in window:
                    value = parse_seconds(df[col].iloc[row], f"{captions_csv} row {row + 2} column {col!r}")
                    extra[col] = value if value is not None else (0.0 if col == "start" else float("inf"))
                entries.append(((root / p) if not os.path.isabs(p) else Path(p), str(c), extra))
        super().__init__(entries, **kw)


def parse_seconds(value, where: str = "value") -> float | None:
    """A CSV cell -> seconds (float) or None for an empty cell / NaN; anything else raises ValueError(where)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected seconds, got {value!r}") from None
    return None if np.isnan(x) else x


_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def camel_to_words(name: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo', 'PlayingDhol' -> 'playing dhol'."""
    return " ".join(w.lower() for w in _CAMEL.findall(name))


class UCF101Dataset(_ClipList):
    """UCF-101 layout ``root/<ClassName>/v_<ClassName>_gXX_cXX.avi``; the class comes from the folder name.

    Prompt = ``template.format(action=camel_to_words(class))``, by default "a person {action}", e.g.
    'ApplyEyeMakeup' -> 'a person apply eye makeup' (the plain class words, no grammar fixing). Classes are
    indexed in sorted folder order. ``split_file`` (e.g. ucfTrainTestlist/testlist01.txt, lines
    'Class/v_....avi [label]') restricts the clips. Items add ``label`` (int) and ``class_name``.
    """

    def __init__(self, root, split_file=None, template: str = "a person {action}", **kw):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"UCF-101 root not found: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise ValueError(f"{root}: no class folders (expected root/<ClassName>/<video>)")
        self.classes = classes
        if split_file is not None:
            rels = [ln.split()[0] for ln in Path(split_file).read_text().splitlines() if ln.strip()]
            files = [root / r for r in rels]
        else:
            files = sorted(p for c in classes for p in (root / c).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        entries = []
        for p in files:
            cls = p.parent.name
            if cls not in classes:
                raise ValueError(f"{p}: class folder {cls!r} not under {root}")
            entries.append((p, template.format(action=camel_to_words(cls)),
                            {"label": classes.index(cls), "class_name": cls}))
        super().__init__(entries, **kw)
