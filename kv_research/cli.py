"""One error policy for every command line (``ablate_blocks``, ``evaluate``, ``variants``, ...).

* A problem with the user's input (a missing or damaged file, a bad option value, a folder of another run) exits
  with status 2 and one line, ``error: <message>``; the message names the file or option and the value. The
  exception types that mean "input problem" are listed in ``INPUT_ERRORS``; library users catch the same types.
* No traceback unless ``--debug`` is on the command line or ``KV_DEBUG=1`` is set: then the exception propagates.
* Ctrl-C prints one line and exits 130: every stage is resumable, so re-running the same command continues.

Why a wrapper rather than try/except in each ``main``: an input error found deep inside a run (a latent cache built
with another codec, a truncated checkpoint) must look the same as one found while parsing, in every command.
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
