"""``resadapter-rt inspect``: what an export or engine directory holds, and whether a size is covered."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    inspect = commands.add_parser("inspect", help="describe an export or engine directory")
    inspect.add_argument("directory")
    inspect.add_argument("--size", metavar="WxH", help="say whether this size is covered (exit 1 when it is not)")
    inspect.add_argument("--tile-size", type=int, metavar="PX", help="with --size: whether it is covered when generated in "
                         "tiles of PX (generate --tile-size)")
    inspect.add_argument("--tile-stride", type=int, metavar="PX", help="with --tile-size: the window step (default: the tile size)")
    inspect.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the description; exit 1 when ``--size`` is not covered (0 otherwise)."""
    from ..engines.describe import describe_artifacts

    text, covered = describe_artifacts(Path(args.directory), args.size, args.tile_size, args.tile_stride)
    print(text)
    return 1 if covered is False else 0
