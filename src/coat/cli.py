"""The ``coat`` command: one sub-command per job.

Each sub-command lives in its own module with ``add_parsers(subparsers)``, which registers it and
sets ``func``. Bad input raises a ``coat.errors.CoatError``, printed as one line on stderr with exit
status 2; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .commands import (
    data_commands,
    detect_commands,
    model_commands,
    segment_commands,
    train_commands,
    use_commands,
    weights_commands,
)
from .errors import CoatError
from .extras import require

COMMAND_MODULES = [
    model_commands,
    weights_commands,
    train_commands,
    data_commands,
    use_commands,
    detect_commands,
    segment_commands,
]
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool that SIGPIPE ended


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coat", description="CoaT image models: info, convert, train, eval, ...")
    parser.add_argument("--version", action="version", version=f"coat {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:  # also after argparse's --help: a reader that is gone shows up here, not at interpreter exit
            sys.stdout.flush()
    except BrokenPipeError:  # the output's reader closed the pipe (`coat info | head -3`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    # coat's own notes at INFO; other libraries' only from WARNING (ONNX export's optimiser logs hundreds of lines)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("coat").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        for extra in getattr(args, "extras", ()):  # optional libraries the command needs
            require(extra)
        return int(args.func(args) or 0)
    except CoatError as err:
        print(f"coat {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coat {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    """The message alone; errors re-raised from DataLoader workers carry the worker's traceback."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(err):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
