"""Where a benchmark writes, and what it may write.

By default every benchmark writes into a new directory under ``benchmarks/results/tmp/`` (git-ignored),
or into ``--out DIR``; only ``--update-results`` replaces the committed files in ``benchmarks/results/``.
Records are strict JSON (a NaN or infinity is refused, naming its key) written through a temporary
file and a rename. What a machine cannot measure is recorded as ``"not measurable here: <reason>"``
and said in one line, never replaced by a number that was not measured. No torch import here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

from ..errors import ResAdapterRTError

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SCRATCH = COMMITTED / "tmp"
NOT_MEASURABLE = "not measurable here"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out DIR`` and ``--update-results`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="DIR", help="write the results here (default: a new directory under benchmarks/results/tmp/)")
    group.add_argument("--update-results", action="store_true",
                       help="replace the committed results in benchmarks/results/ (default: leave them alone)")


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """The committed results with ``--update-results``, else ``--out`` (made if missing), else a new scratch directory."""
    if getattr(args, "update_results", False):
        return COMMITTED
    if getattr(args, "out", None):
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ResAdapterRTError(f"--out {out}: exists and is not a directory; pass a directory (it is made if missing)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    scratch = SCRATCH if COMMITTED.parent.is_dir() else None  # outside a checkout: the system's temporary directory
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=scratch))


def not_measurable(reason: str) -> str:
    """The value recorded in place of a measurement this machine cannot make."""
    return f"{NOT_MEASURABLE}: {reason}"


def check_finite(value: object, where: str = "record") -> None:
    """Refuse NaN/infinity anywhere in ``value`` (not valid JSON, and never a measurement), naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ResAdapterRTError(f"{where} is {value}, which is not a measured number; record it as '{NOT_MEASURABLE}: <reason>'")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, record: object, indent: int | None = 2) -> Path:
    """``record`` as strict JSON (``check_finite`` first), written atomically."""
    check_finite(record)
    separators = (",", ":") if indent is None else None
    return write_text(path, json.dumps(record, indent=indent, separators=separators, allow_nan=False) + "\n")


def read_runs(path: Path) -> list:
    """The ``runs`` list of an accumulating result file (empty when the file is absent)."""
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string: which CPU a number came from."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown"
