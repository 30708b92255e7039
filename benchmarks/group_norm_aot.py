"""Compile every GroupNorm kernel variant ahead of time for sm_80/86/89/90/120 and record ptxas' report.

No GPU needed: Triton's bundled ptxas compiles for each target (``resadapter_rt.kernels.aot``).
Writes benchmarks/results/group_norm_aot.json (registers, spill stores/loads, stack frame, shared
memory, PTX/cubin sizes per variant and target) and prints registers per kernel and target.
python benchmarks/group_norm_aot.py
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.kernels.aot import KERNELS, TARGETS, collect

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args()
    record = {"benchmark": "group_norm_aot", "machine": platform.machine(), **collect()}
    path = write_json(output_dir(args, "group_norm_aot") / "group_norm_aot.json", record, indent=1)
    results = record["results"]
    print("registers per thread (min-max over dtype x SiLU x layout); spills in bytes")
    print(f"{'kernel':10s}" + "".join(f"{'sm_' + str(cap):>12s}" for cap in TARGETS))
    for kernel in KERNELS:
        cells = []
        for cap in TARGETS:
            rows = [r for r in results if r["kernel"] == kernel and r["target"] == f"sm_{cap}"]
            regs = sorted(r["registers"] for r in rows)
            spills = sum(r["spill_stores"] + r["spill_loads"] for r in rows)
            cells.append(f"{regs[0]}-{regs[-1]}/{spills}" if regs[0] != regs[-1] else f"{regs[0]}/{spills}")
        print(f"{kernel:10s}" + "".join(f"{c:>12s}" for c in cells))
    print(f"{len(results)} compilations, ptxas {record['ptxas']}; wrote {path}")


if __name__ == "__main__":
    main()
