"""``resadapter-rt inspect``: what an export or engine directory holds, and whether a size is covered."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    inspect = commands.add_parser("inspect", help="describe an export or engine directory")
    inspect.add_argument("directory")
    inspect.add_argument("--size", metavar="WxH", help="say whether this size is covered (exit 1 when it is not)")
    inspect.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the description; exit 1 when ``--size`` is not covered (0 otherwise)."""
    from ..engines.describe import describe_artifacts

    text, covered = describe_artifacts(Path(args.directory), args.size)
    print(text)
    return 1 if covered is False else 0
