"""``resadapter-rt canny``: a canny edge map of an image, a control image for canny ControlNets."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_output_file, save_png


def add_parser(commands) -> None:
    canny = commands.add_parser("canny", help="canny edge map of an image (a control image for canny ControlNets)")
    canny.add_argument("input", help="image file")
    canny.add_argument("output", help="PNG path")
    canny.add_argument("--low", type=int, default=100, help="lower hysteresis threshold (default 100)")
    canny.add_argument("--high", type=int, default=200, help="upper hysteresis threshold (default 200)")
    canny.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.canny import canny_image, check_thresholds, read_image

    check_thresholds(args.low, args.high)
    check_output_file(Path(args.output))
    edges = canny_image(read_image(Path(args.input)), args.low, args.high)
    save_png(edges, Path(args.output), {"canny": {"input": args.input, "low": args.low, "high": args.high}})
    print(f"{args.output}: canny edges of {args.input} ({edges.width}x{edges.height}, thresholds {args.low}/{args.high})")
    return 0
