"""Where and how training runs: the device, the process group of a data-parallel launch, and the precision.

A run started by ``torchrun`` or ``accelerate launch`` finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``) in its environment and joins a ``torch.distributed`` process group:
NCCL on CUDA, gloo on the CPU. Without them it is one process and no group. Every rank computes the
same global batch's gradient share; ``all_reduce_sum`` adds the shares, so all ranks take the same
AdamW step. Mixed precision keeps the frozen networks in fp16/bf16 and every trainable tensor in fp32
and runs the forward under ``torch.autocast``; fp16 adds a gradient scaler.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import ResAdapterRTError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Accelerator:
    """One process's place in the run: rank, world size, device, dtype of the frozen networks."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str
    grouped: bool  # a torch.distributed process group was initialised (by us)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def weight_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision context: autocast to the weight dtype, or nothing in fp32."""
        if self.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)

    def scaler(self) -> Any:
        """A gradient scaler for fp16 (disabled otherwise, so ``scale``/``step`` pass through)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (itself when there is one process)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def agree(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank failed: a failed rank raises its own error, the others a one-line
        ``ResAdapterRTError`` naming the first failed rank (rank 0 is the one that prints)."""
        if self.world_size > 1:
            message = None if error is None else (str(error).strip().splitlines() or [type(error).__name__])[0]
            messages: list[str | None] = [None] * self.world_size
            torch.distributed.all_gather_object(messages, message)
        else:
            messages = [None]
        if error is not None:
            raise error
        failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
        if failed:
            raise ResAdapterRTError(f"rank {failed[0][0]}: {failed[0][1]}")

    def close(self) -> None:
        if self.grouped and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched as a group); for who prints errors."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _launch_numbers() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) for a plain process."""
    if os.environ.get("WORLD_SIZE", "1").strip() == "1":
        return 0, 1, 0
    present = [name for name in LAUNCH_VARIABLES if name in os.environ]
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ResAdapterRTError(f"a data-parallel launch sets {', '.join(LAUNCH_VARIABLES)}, but {', '.join(missing)} "
                                f"{'is' if len(missing) == 1 else 'are'} missing (found {', '.join(present)}); start "
                                "with `torchrun --nproc_per_node N -m resadapter_rt train ...` or `accelerate launch`")
    try:
        rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ResAdapterRTError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start with torchrun or accelerate "
                                "launch") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ResAdapterRTError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local} is not a valid launch; start with "
                                "torchrun or accelerate launch")
    return rank, world, local


def _device(option: str, local_rank: int) -> torch.device:
    if option not in DEVICES:
        raise ResAdapterRTError(f"unknown --device {option!r}; choose auto (CUDA when present), cpu or cuda")
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ResAdapterRTError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False); use "
                                "--device cpu or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ResAdapterRTError(f"LOCAL_RANK {local_rank} but this node has {count} visible GPU(s); launch at most "
                                f"{count} processes per node (--nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def start(device: str = "auto", precision: str = "no", allow_tf32: bool = False) -> Accelerator:
    """This process's ``Accelerator``: joins the launcher's process group when there is one."""
    if precision not in PRECISIONS:
        raise ResAdapterRTError(f"unknown --mixed-precision {precision!r}; choose no, fp16 or bf16")
    rank, world, local = _launch_numbers()
    where = _device(device, local)
    if precision == "bf16" and where.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ResAdapterRTError("--mixed-precision bf16, but this GPU has no bf16 support; use fp16")
    if allow_tf32 and where.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    grouped = False
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if where.type == "cuda" else "gloo"
        if where.type == "cuda":
            torch.cuda.set_device(where)
        torch.distributed.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
        grouped = True
    return Accelerator(rank, world, local, where, precision, grouped)


@contextlib.contextmanager
def started(device: str = "auto", precision: str = "no", allow_tf32: bool = False) -> Iterator[Accelerator]:
    """``start`` ... ``close`` around a run."""
    accelerator = start(device, precision, allow_tf32)
    try:
        yield accelerator
    finally:
        accelerator.close()
