"""The ``pyrocg`` command: ``demo``, ``demo-crf``, ``train``, ``evaluate`` and ``diagnose``
(public API only).

Every argument, input file and output path is checked before any data are loaded or any
training starts (:mod:`pyrocg.cli.checks`). :func:`main` returns the exit status and prints
one line on stderr for an error -- no traceback unless ``--debug`` or ``PYROCG_DEBUG=1``:

* ``2``: a usage error -- a flag's value, a combination of flags, a flag that does not apply
  to the data set or mode, an input path that is missing or not a file, an output path that
  cannot be written, ``--resume`` with arguments that change the run;
* ``1``: an error while working -- a file that is not a usable checkpoint or table, a
  checkpoint in use by another run, a diverged loss, data errors, out of memory;
* ``130``: interrupted (Ctrl-C); the checkpoint of the last finished epoch is kept.

>>> main(["train", "--seed", "-1"])
2
"""

from __future__ import annotations

import os
import sys
import traceback

from ..infer import TrainingDiverged
from ..infer.checkpoint import CheckpointLockedError
from .checks import UsageError
from .commands import build_mode, build_model, cmd_evaluate, cmd_train
from .demos import cmd_demo, cmd_demo_crf
from .diagnose import cmd_diagnose
from .parser import make_parser

__all__ = ["main", "make_parser", "build_mode", "build_model", "UsageError"]

COMMANDS = {"demo": cmd_demo, "demo-crf": cmd_demo_crf, "train": cmd_train,
            "evaluate": cmd_evaluate, "diagnose": cmd_diagnose}


def _one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _debug_requested(argv: list[str]) -> bool:
    return os.environ.get("PYROCG_DEBUG", "").strip() not in ("", "0") or "--debug" in argv


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyrocg`` command with ``argv`` (default ``sys.argv[1:]``).

    :returns: the exit status (0 success, 1 runtime error, 2 usage error, 130 interrupted).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug_requested(argv)
    args = None
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException as exc:  # noqa: B036 -- every error ends as one line and a status
        status, message = _report(exc, args)
        if debug:
            traceback.print_exception(exc)
        print(f"pyrocg: {message}", file=sys.stderr)
        return status


def _report(exc: BaseException, args) -> tuple[int, str]:
    """The exit status and the one line that report ``exc``."""
    if isinstance(exc, UsageError):
        return 2, f"error: {_one_line(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        ck = getattr(args, "checkpoint", None)
        kept = (f"; the checkpoint of the last finished epoch is kept at {ck}"
                if ck and getattr(args, "command", "") == "train" and os.path.exists(ck) else "")
        return 130, f"interrupted{kept}"
    if isinstance(exc, (ValueError, OSError, MemoryError, CheckpointLockedError,
                        TrainingDiverged)):
        # pyrocg's messages (CheckpointError, data errors, locks) and OSError's name the file
        # or the argument; the type adds nothing.
        return 1, f"error: {_one_line(exc)}"
    # Anything else: the type helps; the traceback is behind --debug.
    return 1, f"error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)"
