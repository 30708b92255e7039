"""Running the CLI on bad input: exit status 2, one line on stderr, no traceback, nothing else touched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file and directory below ``root`` with its content hash and mode ("dir" for directories)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            snapshot[relative] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            snapshot[relative] = f"dir:{oct(path.stat().st_mode & 0o777)}"
        else:
            snapshot[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300,
            max_file_bytes: int | None = None) -> CliResult:
    """``resadapter-rt ARGS`` in a subprocess (so a traceback or a crash is seen as a user would see it).

    ``max_file_bytes`` caps the size of any file it writes (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk).
    """
    import resource

    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path, **(env or {})}
    done = subprocess.run([sys.executable, "-m", "resadapter_rt.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_main(argv: list[str], capsys) -> CliResult:
    """``resadapter-rt ARGV`` in this process (fast; an uncaught exception fails the test as a traceback would)."""
    from resadapter_rt.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_one_line_error(result: CliResult, expected: str) -> str:
    """Exit 2, exactly one stderr line starting ``error:`` that contains ``expected``, and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    return lines[0]


def assert_bad_input_touches_nothing(root: Path, argv: list[str], expected: str, monkeypatch, capsys) -> None:
    """Run ``argv`` in-process from ``root``: one ``error:`` line containing ``expected``, exit 2, ``root`` unchanged."""
    monkeypatch.chdir(root)
    before = tree_snapshot(root)
    assert_one_line_error(run_main(argv, capsys), expected)
    assert tree_snapshot(root) == before
