"""One command for the CPU benchmark suite: python benchmarks/run_cpu.py [--no-full-size] [--repeats N].

Writes benchmarks/results/cpu_bench.{json,png,md} (see resadapter_rt/bench.py for what is measured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resadapter_rt.bench.suite import run_cpu_suite

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-full-size", action="store_true", help="skip the full-size SD1.5 UNet (minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run_cpu_suite(Path(__file__).resolve().parent / "results", full_size=not args.no_full_size, repeats=args.repeats)
