"""Resumable checkpoints: ``OUT/checkpoints/checkpoint-NNNNNN/``, each written whole or not at all.

A checkpoint holds the adapter in the run's output format (so it loads with ``load_adapter`` like a
release) and ``training_state.pt``: the fp32 trainable tensors, the AdamW (and fp16 gradient scaler) state, the
position in the data order, the options that shape the trajectory, fingerprints of the data and
model, and the log so far. It holds nothing per rank, so any number of processes can resume it. It
is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ResAdapterRTError
from ..files import atomic_directory

STATE_FILE = "training_state.pt"
STATE_VERSION = 2  # 2: per-sample randomness (no generator state), gradient accumulation, scaler
CHECKPOINTS = "checkpoints"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"checkpoint-{step:06d}"


def save_checkpoint(directory: Path, state: dict[str, Any], write_adapter) -> None:
    """Write ``state`` and the adapter files (``write_adapter(tmp_dir)``) atomically to ``directory``."""
    with atomic_directory(directory) as tmp:
        write_adapter(tmp)
        torch.save({"version": STATE_VERSION, **state}, tmp / STATE_FILE)


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """The state of a checkpoint written by ``resadapter-rt train``, or a one-line error."""
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise ResAdapterRTError(f"--resume {directory}: no {STATE_FILE} here; pass a checkpoint directory such as "
                                f"OUT/{CHECKPOINTS}/checkpoint-000500 written by `resadapter-rt train`")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ResAdapterRTError(f"{path}: not a readable training state ({reason}); is the checkpoint truncated?") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ResAdapterRTError(f"{path}: not a training state of this resadapter-rt version (expected version {STATE_VERSION}); "
                                "continue it with the version that wrote it, or start a new run")
    return state
