"""Resident memory of a child process tree, sampled, with a peak per phase the child announces."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Callable


class TreeMemory(threading.Thread):
    """Peak summed RSS of a process and all its descendants, sampled every ``interval`` seconds.

    ``phase`` names what the process is doing now (set it from its progress lines); ``peaks`` maps each
    phase to the largest total seen while it was current.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.done = pid, interval, 0, threading.Event()
        self.phase = "start"
        self.peaks: dict[str, int] = {}

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.done.is_set():
            try:
                total = 0
                for process in [root, *root.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), total)
            self.done.wait(self.interval)


def run_measured(command: list[str], phase_of: Callable[[str], str | None], timeout: float | None = None) -> dict:
    """Run ``command``; sample its tree's memory; ``phase_of(stderr line)`` names a new phase or returns None.

    Returns exit status, wall seconds, peak RSS (GiB), the peak per phase (GiB, in order), stdout and stderr.
    """
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(child.pid)
    memory.start()
    phase_started = {memory.phase: 0.0}
    stderr_lines: list[str] = []

    def follow() -> None:
        for line in child.stderr:
            stderr_lines.append(line.rstrip("\n"))
            phase = phase_of(line)
            if phase:
                memory.phase = phase
                phase_started.setdefault(phase, time.perf_counter() - start)

    stdout_parts: list[str] = []
    readers = [threading.Thread(target=follow, daemon=True),
               threading.Thread(target=lambda: stdout_parts.append(child.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    stopped = False
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        for process in [*psutil.Process(child.pid).children(recursive=True), psutil.Process(child.pid)]:
            process.kill()
        child.wait()
        stopped = True
    for reader in readers:
        reader.join()
    stdout = "".join(stdout_parts)
    memory.done.set()
    memory.join()
    gib = 2**30
    return {"exit_status": child.returncode, "stopped_after_timeout": stopped,
            "wall_seconds": round(time.perf_counter() - start, 1), "peak_tree_rss_gib": round(memory.peak / gib, 2),
            "phases": [{"phase": name, "started_seconds": round(phase_started.get(name, 0.0), 1),
                        "peak_rss_gib": round(peak / gib, 2)} for name, peak in memory.peaks.items()],
            "stdout": stdout, "stderr": "\n".join(stderr_lines)}
