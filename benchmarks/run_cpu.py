"""One command for the CPU benchmark suite: python benchmarks/run_cpu.py [--no-full-size] [--repeats N].

Writes cpu_bench.{json,png,md} (see resadapter_rt/bench/suite.py for what is measured) into a new directory
under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the committed ones in benchmarks/results/.
"""

from __future__ import annotations

import argparse

from resadapter_rt.bench.results import add_output_arguments, output_dir
from resadapter_rt.bench.suite import run_cpu_suite

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-full-size", action="store_true", help="skip the full-size SD1.5 UNet (minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    add_output_arguments(parser)
    args = parser.parse_args()
    run_cpu_suite(output_dir(args, "cpu_bench"), full_size=not args.no_full_size, repeats=args.repeats)
