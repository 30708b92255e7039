"""What ``resadapter-rt train`` takes (``TrainOptions``), what it returns (``TrainResult``), and the checks of
both that need no model: numbers in range, a resume's options against its checkpoint, the run directory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError
from ..files import check_output_dir
from .accelerator import DEVICES, PRECISIONS
from .data import SizeRules
from .trainable import FORMATS

# Options that shape the trajectory: a resume takes them from the checkpoint and refuses different ones.
TRAJECTORY_DEFAULTS: dict[str, Any] = dict(rank=8, batch_size=4, learning_rate=1e-4, resolution_multiple=64,
                                           min_side=128, max_side=1024, seed=0, gradient_accumulation_steps=1)


@dataclass
class TrainOptions:
    """What ``resadapter-rt train`` takes; ``None`` trajectory options mean the default (or the checkpoint's).

    ``batch_size`` is the global batch of one micro-step, split over the processes of a data-parallel
    launch; an optimisation step takes ``gradient_accumulation_steps`` such batches.
    """

    model: str
    data: Path
    out: Path
    rank: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resolution_multiple: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    seed: int | None = None
    gradient_accumulation_steps: int | None = None
    steps: int | None = None
    epochs: int | None = None
    checkpointing_steps: int = 500
    resume: Path | None = None
    validation_prompt: str | None = None
    validation_sizes: list[tuple[int, int]] = field(default_factory=list)
    validation_steps: int = 20
    format: str = "official"
    config: str | None = None
    device: str = "auto"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    allow_tf32: bool = False
    cache_latents: bool = False

    def trajectory(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in TRAJECTORY_DEFAULTS}

    def rules(self) -> SizeRules:
        return SizeRules(self.resolution_multiple, self.min_side, self.max_side)


@dataclass
class TrainResult:
    out: Path
    steps: int  # the step the run ended at
    history: list[dict[str, Any]]
    seconds: float
    first_step: int = 0  # the step it started from (a resume's checkpoint step; 0 for a new run)

    @property
    def new_steps(self) -> int:
        return self.steps - self.first_step


def check_numbers(options: TrainOptions) -> None:
    """Every option that can be checked on its own, with a one-line error for the first bad one."""
    positive = dict(rank=options.rank, batch_size=options.batch_size, steps=options.steps, epochs=options.epochs,
                    validation_steps=options.validation_steps, gradient_accumulation_steps=options.gradient_accumulation_steps)
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ResAdapterRTError(f"--{name.replace('_', '-')} {value} must be a positive integer")
    if options.learning_rate is not None and not (math.isfinite(options.learning_rate) and 0 < options.learning_rate < 1):
        raise ResAdapterRTError(f"--learning-rate {options.learning_rate} is not in (0, 1); use e.g. 1e-4 (paper) or 1e-5")
    if options.checkpointing_steps < 0:
        raise ResAdapterRTError(f"--checkpointing-steps {options.checkpointing_steps} is negative; use 0 for none")
    if options.seed is not None and not 0 <= options.seed < 2**63:
        raise ResAdapterRTError(f"--seed {options.seed} is out of range; use an integer in [0, 2**63)")
    if options.steps is not None and options.epochs is not None:
        raise ResAdapterRTError("--steps and --epochs both given; pass one (training stops at whichever you give)")
    if options.format not in FORMATS:
        raise ResAdapterRTError(f"unknown --format {options.format!r}; choose official (the release layout) or peft "
                                "(the training script's)")
    if options.device not in DEVICES:
        raise ResAdapterRTError(f"unknown --device {options.device!r}; choose auto (CUDA when present), cpu or cuda")
    if options.mixed_precision not in PRECISIONS:
        raise ResAdapterRTError(f"unknown --mixed-precision {options.mixed_precision!r}; choose no, fp16 or bf16")
    if options.validation_sizes and not options.validation_prompt:
        raise ResAdapterRTError("--validation-sizes given without --validation-prompt; add the prompt to render")


def resolve(options: TrainOptions, checkpoint: dict[str, Any] | None) -> TrainOptions:
    """Fill unset trajectory options from the checkpoint (or the defaults); refuse ones that differ from it."""
    saved = checkpoint["options"] if checkpoint else TRAJECTORY_DEFAULTS
    changes = {}
    for key, value in options.trajectory().items():
        if value is not None and checkpoint and value != saved[key]:
            raise ResAdapterRTError(f"--{key.replace('_', '-')} {value} differs from the checkpoint's {saved[key]}; "
                                    "a resumed run must use the options it was started with (leave it out to reuse them)")
        changes[key] = saved[key] if value is None else value
    return replace(options, **changes)


def check_world(options: TrainOptions, world_size: int) -> None:
    """A data-parallel launch splits each global batch evenly: the batch size must be a multiple of the processes."""
    if options.batch_size % world_size:
        larger = -(-options.batch_size // world_size) * world_size
        raise ResAdapterRTError(f"--batch-size {options.batch_size} is not divisible by the {world_size} processes of this "
                                f"launch (WORLD_SIZE); each rank takes an equal slice of the global batch: use --batch-size "
                                f"{larger} or launch a number of processes that divides {options.batch_size}")


def check_out(out: Path) -> None:
    """A new run directory: absent or empty (``check_output_dir`` also refuses the current directory)."""
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if out.is_dir() and any(out.iterdir()) and resolved != cwd and resolved not in cwd.parents:
        raise ResAdapterRTError(f"{out}: directory is not empty; training writes a new run directory: choose a new --out "
                                "(to continue a run, pass --resume OUT/checkpoints/checkpoint-N with a new --out)")
    check_output_dir(out)
