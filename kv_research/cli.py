"""One error policy for every command line (``ablate_blocks``, ``evaluate``, ``variants``, ...).

* A problem with the user's input (a missing or damaged file, a bad option value, a folder of another run) exits
  with status 2 and one line, ``error: <message>``; the message names the file or option and the value. The
  exception types that mean "input problem" are listed in ``INPUT_ERRORS``; library users catch the same types.
* No traceback unless ``--debug`` is on the command line or ``KV_DEBUG=1`` is set: then the exception propagates.
* Ctrl-C prints one line and exits 130: every stage is resumable, so re-running the same command continues.

Why a wrapper rather than try/except in each ``main``: an input error found deep inside a run (a latent cache built
with another codec, a truncated checkpoint) must look the same as one found while parsing, in every command.

Threads and OpenMP waiting: no command sets ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS``; torch's default thread
count and OpenMP's default (spin, then sleep) waiting apply, and whatever the user exports wins (OpenMP reads both
when the process starts, so export them before the command: ``OMP_NUM_THREADS=1 python experiments/...``), as does
a command's ``--threads``. Chosen by measurement (``benchmarks/bench_threads.py``: 20 quick-preset image steps,
each run a fresh process, default and PASSIVE interleaved) on the study machine, 2 cores shared with another job
(load average 2-3.5), seconds per step:

* 1 thread: default 0.44-0.48, PASSIVE 0.46-0.49; PASSIVE / default pair by pair median 1.02 (0.99-1.10, 4
  pairs). With one thread the waiting policy does not matter.
* 2 threads: default 1.3-4.2, PASSIVE 1.3-2.3; PASSIVE / default median 0.56 (0.46-0.97, 3 pairs); one default
  run did not finish 22 steps in 3 minutes. In a quiet moment, 2 threads default took 0.26.

So forcing PASSIVE (which the CLI once did) is never the fastest choice. On an idle machine the fastest is 2
threads with the default policy (0.26 s against 0.46 s with 1 thread; the README's earlier figures: 383 ms against
790 ms with PASSIVE); on a shared one it is 1 thread, about 3-9x faster than 2 threads under either policy. Which
case applies depends on the load, which a command cannot know, so the defaults stay and the user chooses: on a
shared machine pass ``--threads 1`` or export ``OMP_NUM_THREADS=1`` (``OMP_WAIT_POLICY=PASSIVE`` only softens two
oversubscribed threads).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

INTERRUPTED = "interrupted; re-run the same command to resume"
DEBUG_HELP = "Errors: one line and exit status 2; --debug (or KV_DEBUG=1) shows the traceback. Ctrl-C exits 130."


def parse_override(s: str):
    """``--set section.field=VALUE`` -> (key, value); VALUE is JSON when it parses (numbers, true, lists), else text.
    The value's type is checked later against the field (``ablation.resolved_preset``)."""
    import argparse
    import json
    key, sep, value = s.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects section.field=value, got {s!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe bad input (each carries a message naming the file or value)."""
    from .checkpoint import CheckpointError
    from .data.video import VideoDecodeError
    from .weights import MissingWeightsError
    return (CheckpointError, VideoDecodeError, MissingWeightsError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, KeyError, ValueError)


def _message(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split()) if "\n" not in str(msg) else str(msg).strip()


_DEBUG = False   # set by ``run`` while a main runs with --debug


def debug_enabled() -> bool:
    """True under ``--debug`` (inside ``run``) or ``KV_DEBUG=1``: a main that reports input errors itself (so that
    calling it directly also returns 2) re-raises them instead, so that the traceback is shown."""
    return _DEBUG or os.environ.get("KV_DEBUG", "") not in ("", "0")


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` under the policy; returns the exit status. ``--debug`` is removed from ``argv``."""
    global _DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("KV_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    previous, _DEBUG = _DEBUG, debug
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except input_errors() as e:
        if debug:
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        _DEBUG = previous


# ----------------------------------------------------------------------------------------------- shared checks
import argparse as _argparse  # noqa: E402
import tempfile  # noqa: E402


class UsageError(ValueError):
    """A command-line option that cannot be used (argparse's own errors included): an input error."""


class ArgumentParser(_argparse.ArgumentParser):
    """argparse's parser whose errors are one line under the policy (``UsageError``, exit 2) instead of the usage
    text, the message and ``SystemExit``."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def check_device(value: str, option: str = "--device") -> None:
    """``value`` names a torch device this machine has (cpu, cuda[:i] with that GPU present, mps where built)."""
    import torch
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"{option} {value!r} is not a torch device ({e}); e.g. cpu, cuda, cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {value}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {value}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{option} {value}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"{option} {value!r}: not supported here; use cpu or cuda[:index]")


def check_out_dir(path, option: str = "--out") -> None:
    """An output folder that exists as a folder, or can be created: refused when it is a file, lies under a file,
    or its nearest existing folder cannot be written in. Creates nothing."""
    from pathlib import Path
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is an existing file, not a folder; choose another {option}")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{option} {out}: {base} is a file, so the folder cannot be created")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise UsageError(f"{option} {out}: cannot write in {base} ({e.strerror or e})") from None
