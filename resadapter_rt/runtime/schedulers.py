"""Scheduler names users type, mapped to diffusers schedulers configured from the export's config."""

from __future__ import annotations

from typing import Any

from ..errors import ResAdapterRTError

# name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
DEFAULT_SCHEDULER = "dpm++2m-karras"


def make_scheduler(name: str, config: dict) -> Any:
    """A fresh scheduler (schedulers are stateful: one per generation call)."""
    if name not in SCHEDULERS:
        raise ResAdapterRTError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)
