"""Reading and comparing training runs' checkpoints (parity between process counts, accumulation, caching)."""

from __future__ import annotations

from pathlib import Path

import torch


def checkpoint_state(run: Path, step: int) -> dict:
    """The training state a run saved at ``step``."""
    return torch.load(run / "checkpoints" / f"checkpoint-{step:06d}" / "training_state.pt", weights_only=True)


def relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all tensors of the two dicts, concatenated."""
    x = torch.cat([a[k].reshape(-1).float() for k in sorted(a)])
    y = torch.cat([b[k].reshape(-1).float() for k in sorted(a)])
    return float((x - y).norm() / x.norm())


def adam_moments(state: dict) -> dict:
    """AdamW's first moments (the gradient's running mean) by parameter index."""
    return {str(i): s["exp_avg"] for i, s in state["optimizer"]["state"].items()}
