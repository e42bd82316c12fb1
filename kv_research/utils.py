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
