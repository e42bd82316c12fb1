"""Small shared helpers: atomic writes, paths to shared data, hashing of configs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Real data that the project must not commit: ``$KV_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("KV_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()


def default_cache_dir() -> Path:
    """Where trained domain evaluators, reference statistics and motion labels are cached."""
    return Path(os.environ.get("KV_CACHE_DIR", Path.home() / ".cache" / "kv_research")).expanduser()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n")


def config_hash(obj, n: int = 12) -> str:
    """Stable short hash of a (dataclass) config; used to key caches."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------- input text files
class InputFileError(ValueError):
    """A user's text input (prompt list, CSV) cannot be used; the message names the file and, where known, the line."""


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped). Non-UTF-8 bytes raise ``InputFileError``
    naming the file, the line and the byte, instead of a bare ``UnicodeDecodeError`` or a silent mis-decoding."""
    import codecs
    path = Path(path)
    data = path.read_bytes()
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[:e.start].count(b"\n") + 1
        raise InputFileError(f"{what} {path} line {line}: not UTF-8 text (byte 0x{body[e.start]:02x} at offset "
                             f"{e.start + len(data) - len(body)}); save the file as UTF-8") from None


def read_csv_file(path: str | os.PathLike, what: str = "file", **kw):
    """``pandas.read_csv`` of a UTF-8 file; non-UTF-8 bytes, an empty file and parse errors raise ``InputFileError``
    naming the file and the line (a record whose field count differs from the header's is a parse error, not
    silently padded or taken as an index column). A header without rows is returned (0 rows) for the caller
    to judge."""
    import csv
    import io
    import re

    import pandas as pd
    path = Path(path)
    text = read_text_file(path, what)
    if not text.strip():
        raise InputFileError(f"{what} {path} is empty")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)   # pandas would guess an index column for a
    try:                                                               # row with an extra field, or pad short ones
        header = next(r for r in reader if r)                        # pandas skips leading blank lines too
        for record in reader:
            if record and len(record) != len(header):
                raise InputFileError(f"{what} {path} line {reader.line_num}: {len(record)} fields, but the header "
                                     f"has {len(header)} ({', '.join(header)}); quote fields that hold commas")
    except csv.Error as e:
        raise InputFileError(f"{what} {path} line {reader.line_num}: not a valid CSV ({e})") from None
    try:
        return pd.read_csv(io.StringIO(text), **kw)
    except pd.errors.EmptyDataError as e:
        raise InputFileError(f"{what} {path} is empty ({e})") from None
    except (pd.errors.ParserError, ValueError) as e:
        msg = " ".join(str(e).split())
        line = re.search(r"\bline (\d+)", msg)
        where = f" line {line.group(1)}" if line else ""
        raise InputFileError(f"{what} {path}{where}: not a valid CSV ({msg})") from None


def check_motion_values(cells, path, labels, what: str = "prompt file"):
    """Requested motion cells -> float64 array; a cell that is not a finite number >= 0 (text, empty, NaN, inf,
    negative) raises ``InputFileError`` naming the file and the row (``labels[i]``, e.g. 'row 3 (video a.npy)')."""
    out = np.empty(len(cells), dtype=np.float64)
    for i, (cell, label) in enumerate(zip(cells, labels)):
        try:
            x = float(cell)
        except (TypeError, ValueError):
            x = None
        if x is None or not np.isfinite(x) or x < 0:
            raise InputFileError(f"{what} {path} {label}: column 'motion' must be a finite number >= 0, "
                                 f"got {cell!r}")
        out[i] = x
    return out


# ----------------------------------------------------------------------------------------------- run folders
class RunFolderError(ValueError):
    """A file an earlier run wrote cannot be read back (truncated, foreign, garbage). The message names the file and
    says what to delete so that a re-run recomputes it; nothing in the folder was changed."""


def file_damage(path: str | os.PathLike, video: bool = False, npz_keys: tuple = ()) -> str | None:
    """Why a file this suite wrote cannot be read back, or None when it can. By suffix: ``.json`` (one JSON
    object), ``.jsonl`` (a JSON object per line), ``.csv`` (``read_csv_file``), ``.npz`` (every array read, so
    zip CRCs are checked; ``npz_keys``: one of them must be there; ``video``: a uint8 (T, H, W, 3) ``video``),
    ``.gif`` / ``.png`` (every frame decoded), ``.safetensors`` (header against the file size, no tensor read),
    ``.pt`` (a complete zip archive). Other suffixes are not inspected."""
    import json
    import zipfile
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        if suffix in (".json", ".jsonl"):
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                return f"not UTF-8 text (byte offset {e.start})"
            lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()] if suffix == ".jsonl" \
                else [(None, text)]
            if not lines:
                return "no records"
            for line, chunk in lines:
                where = f"line {line}: " if line else ""
                try:
                    obj = json.loads(chunk)
                except json.JSONDecodeError as e:
                    return f"{where}not valid JSON ({e})"
                if not isinstance(obj, dict):
                    return f"{where}not a JSON object (a {type(obj).__name__})"
            return None
        if suffix == ".csv":
            try:
                read_csv_file(path, "file")
            except InputFileError as e:
                return str(e).replace(f"file {path}", "").strip(" :") or str(e)
            return None
        if suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
                return f"not a readable .npz archive ({type(e).__name__}: {e})"
            keys = ("video",) if video else npz_keys
            if keys and not any(k in arrays for k in keys):
                return f"holds {sorted(arrays)}, not {' or '.join(repr(k) for k in keys)}"
            if video:
                v = arrays["video"]
                if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3 or 0 in v.shape:
                    return f"'video' is {v.dtype} {tuple(v.shape)}, expected uint8 (T, H, W, 3)"
            return None
        if suffix in (".gif", ".png"):
            from PIL import Image, ImageSequence
            try:
                with Image.open(path) as im:
                    for frame in ImageSequence.Iterator(im):
                        frame.load()
            except Exception as e:       # PIL raises many types for broken files
                return f"not a readable image ({type(e).__name__}: {e})"
            return None
        if suffix == ".safetensors":
            from .checkpoint import CheckpointError, safetensors_header
            try:
                safetensors_header(path)
            except CheckpointError as e:
                return str(e).replace(f"{path} ", "", 1)
            return None
        if suffix == ".pt":
            with open(path, "rb") as f:
                if f.read(1) == b"\x80":    # torch's legacy (pre-1.6) pickle format: no archive to check here
                    return None
            try:
                with zipfile.ZipFile(path) as zf:
                    if any(i.header_offset + i.compress_size > size for i in zf.infolist()):
                        return "truncated torch archive (an entry lies beyond the end of the file)"
            except (zipfile.BadZipFile, ValueError) as e:
                return f"not a complete torch archive ({e})"
            return None
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None
