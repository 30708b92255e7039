"""Start-up time of the CLI, before and after lazy imports, side by side in one run.

    python benchmarks/startup.py [--before 7f71486] [--repeats 7] [--out DIR | --update-results]

Times (wall clock, fresh interpreter each time) ``resadapter-rt --help`` and a usage error
(``resadapter-rt generate --width 3``: required arguments missing, exit 2) for this working tree and
for commit ``--before`` (checked out into a temporary git worktree, removed afterwards, run with the
same Python through PYTHONPATH), alternating the two so that the machine's load hits both alike.
Also records which of torch/diffusers each command imported. Targets (issue 32): --help <= 0.5 s,
a usage error <= 1 s. Writes startup.json into a new directory under benchmarks/results/tmp/
(or --out DIR); --update-results replaces benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"help": (["--help"], 0, 0.5), "usage_error": (["generate", "--width", "3"], 2, 1.0)}  # argv, exit status, target s
PROBE = ("import json, runpy, sys\nsys.argv = ['resadapter-rt'] + json.loads(sys.argv[1])\n"
         "try:\n    runpy.run_module('resadapter_rt.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "import resadapter_rt\nprint(json.dumps({'heavy': [m for m in ('torch', 'diffusers') if m in sys.modules], "
         "'package': resadapter_rt.__file__}), file=sys.__stderr__)")


def run(tree: Path, argv: list[str], status: int) -> float:
    """Seconds for ``python -m resadapter_rt.cli ARGV`` with ``tree`` first on the path; the exit status is checked."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "resadapter_rt.cli", *argv], env=env, capture_output=True, text=True, cwd=tree)
    seconds = time.perf_counter() - started
    if done.returncode != status:
        raise SystemExit(f"{tree}: resadapter-rt {' '.join(argv)} exited {done.returncode}, expected {status}: {done.stderr[-300:]}")
    return seconds


def imports(tree: Path, argv: list[str]) -> dict:
    """Which heavy modules the command imported, and which package copy ran (to prove the tree was the one measured)."""
    import json

    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, cwd=tree)
    return json.loads(done.stderr.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="7f71486", help="the commit to compare with (default 7f71486: before lazy imports)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per command and tree (default 7)")
    add_output_arguments(parser)
    args = parser.parse_args()
    out = output_dir(args, "startup")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    worktree = Path(tempfile.mkdtemp(prefix="startup-before-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(worktree), args.before], cwd=REPO, check=True)
    try:
        trees = {"before": worktree, "after": REPO}
        record = {"benchmark": "startup", "before": args.before, "after": f"{commit} + working tree", "repeats": args.repeats,
                  "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                  "load_average_start": round(os.getloadavg()[0], 2), "commands": {}}
        for name, (argv, status, target) in COMMANDS.items():
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            for tree, path in trees.items():  # warm-up: file system cache, .pyc files
                run(path, argv, status)
            for _ in range(args.repeats):
                for tree, path in trees.items():
                    times[tree].append(run(path, argv, status))
            row = {"argv": ["resadapter-rt", *argv], "exit_status": status, "target_s": target}
            for tree, path in trees.items():
                seen = imports(path, argv)
                row[tree] = {"median_s": round(statistics.median(times[tree]), 3), "min_s": round(min(times[tree]), 3),
                             "max_s": round(max(times[tree]), 3), "imports": seen["heavy"],
                             "package": str(Path(seen["package"]).parent.relative_to(path))}
            row["speed_up"] = round(row["before"]["median_s"] / row["after"]["median_s"], 1)
            row["after_meets_target"] = row["after"]["median_s"] <= target
            record["commands"][name] = row
            print(f"{' '.join(row['argv'])}: before {row['before']['median_s']:.2f} s (imports {row['before']['imports'] or 'none'}), "
                  f"after {row['after']['median_s']:.2f} s (imports {row['after']['imports'] or 'none'}), "
                  f"{row['speed_up']}x; target <= {target} s: {'met' if row['after_meets_target'] else 'NOT met'}", flush=True)
        record["load_average_end"] = round(os.getloadavg()[0], 2)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
        worktree.parent.rmdir()
    path = write_json(out / "startup.json", record)
    print(f"wrote {path}")
    return 0 if all(row["after_meets_target"] for row in record["commands"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
