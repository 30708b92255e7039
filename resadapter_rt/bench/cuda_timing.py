"""Timing work on a CUDA device with events (one synchronised call per sample)."""

from __future__ import annotations

from typing import Callable


def cuda_event_times_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn``, each bracketed by CUDA events and synchronised."""
    import torch

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times
