"""``resadapter-rt demo``: the built-in mini-sd15 with and without its ResAdapter, scored, as one grid PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..miniature import DEMO_ALPHA, DEMO_GUIDANCE, DEMO_PROMPT
from .common import add_generation_arguments, check_generation_args, check_output_file, save_png


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="the built-in mini-sd15 with and without its ResAdapter at in- and out-of-domain "
                                            "sizes, offline: export if missing, generate, score, one grid PNG")
    demo.add_argument("--artifacts", default="export/mini-sd15-demo", help="root of the two exports to use or create "
                      "(model/: --resadapter none, resadapter/: dynamic alpha)")
    demo.add_argument("--output-dir", default="outputs", help="where demo.png and demo.json go (default outputs/)")
    add_generation_arguments(demo, {"prompt": DEMO_PROMPT, "steps": 20, "guidance": DEMO_GUIDANCE, "alpha": DEMO_ALPHA})
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..miniature.demo import ensure_exports, generate_cells, grid_image, write_report
    from ..runtime.pipeline import ResAdapterPipeline

    check_generation_args(args)
    output_dir = Path(args.output_dir)
    check_output_file(output_dir / "demo.png")
    quiet = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    exports = ensure_exports(Path(args.artifacts), print, quiet)
    pipes = {name: ResAdapterPipeline.from_artifacts(path, backend=args.backend, cpu_precision=args.cpu_precision)
             for name, path in exports.items()}
    cells = generate_cells(pipes, args.prompt, args.seed, args.steps, args.guidance, args.alpha, scheduler=args.scheduler)
    grid = grid_image(cells, args.prompt, args.seed)
    save_png(grid, output_dir / "demo.png", {"prompt": args.prompt, "seed": args.seed, "steps": args.steps,
                                             "guidance": args.guidance, "model": "mini-sd15"})
    write_report(cells, output_dir / "demo.json", args.prompt, args.seed, args.steps, args.guidance)
    for cell in cells:
        alpha = f"alpha {cell.alpha:g}" if cell.alpha is not None else "no adapter"
        verdict = cell.verdict.describe() if cell.verdict else "not scorable (prompt outside the grammar)"
        print(f"{cell.width}x{cell.height} {cell.label:>13} | {cell.variant:>10} ({alpha}) | {verdict}")
    print(f"{output_dir / 'demo.png'}: the grid (rows: without / with the ResAdapter); verdicts in {output_dir / 'demo.json'}")
    return 0
