"""``resadapter-rt bench``: the CPU benchmark suite."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="CPU benchmark suite: UNet step per backend, end to end vs diffusers, scaling")
    bench.add_argument("--results", metavar="DIR", help="where JSON/PNG/Markdown go (default: a new directory under "
                       "benchmarks/results/tmp/; the committed results are updated only by benchmarks/run_cpu.py --update-results)")
    bench.add_argument("--full-size", action="store_true", help="also the full-size SD1.5 UNet (minutes, ~15 GiB RAM)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.results import output_dir
    from ..bench.suite import run_cpu_suite

    results = output_dir(argparse.Namespace(out=args.results), "cpu_bench")
    record = run_cpu_suite(results, full_size=args.full_size, repeats=args.repeats)
    print((results / "cpu_bench.md").read_text())
    return 0 if record else 1
