"""The ``resadapter-rt`` command line: one module per command (``add_parser`` + ``run``), shared arguments in
``common``, failure handling in ``failures``. Commands import torch, diffusers and the backends inside ``run``,
so ``--help`` and usage errors answer without loading them."""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from ..errors import ResAdapterRTError
from . import bench, build, canny, demo, export, generate, inspect, merge, serve, train, triton_repo
from .failures import OneLineParser, os_error_in, os_error_line

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silences optional-vision import notices

COMMANDS = (merge, train, export, build, inspect, bench, generate, canny, demo, serve, triton_repo)


def build_parser() -> OneLineParser:
    """The argument parser of every command."""
    parser = OneLineParser(prog="resadapter-rt", description="ResAdapter merge / export / run for SD1.5 and SDXL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _quiet_library_progress_bars() -> None:
    """Our own progress lines say what is happening; per-file bars from the libraries are noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one ``error:`` line (exit 2 for bad input, 1 for a bug, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        _quiet_library_progress_bars()
        return args.handler(args)
    except ResAdapterRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written to the output path", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback with --verbose
        if args.verbose:
            raise
        os_error = os_error_in(exc)
        if os_error is not None:
            print(f"error: {os_error_line(os_error)}; nothing was written to the output path", file=sys.stderr)
            return 2
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(exc).__name__}: {first} (a bug in resadapter-rt: run with --verbose for the "
              "traceback and report it)", file=sys.stderr)
        return 1
