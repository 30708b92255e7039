"""Scheduler names users type, mapped to diffusers schedulers configured from the export's config.

``model`` (the default) is the scheduler saved with the model, exactly as its author configured it
(what diffusers' ``from_pretrained`` uses); the other names are overrides.
"""

from __future__ import annotations

from typing import Any

from ..errors import ResAdapterRTError

MODEL_SCHEDULER = "model"
# name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
SCHEDULER_NAMES = (MODEL_SCHEDULER, *SCHEDULERS)
DEFAULT_SCHEDULER = MODEL_SCHEDULER


def check_scheduler_name(name: str) -> None:
    if name not in SCHEDULER_NAMES:
        raise ResAdapterRTError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")


def model_scheduler_class(config: dict) -> str:
    """The diffusers class the model's own scheduler config names (refused in one line if not a diffusers scheduler)."""
    import diffusers

    class_name = config.get("_class_name")
    scheduler_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise ResAdapterRTError(f"the model's scheduler config names {class_name!r}, which is not a diffusers scheduler; "
                                f"pass a named scheduler instead ({', '.join(SCHEDULERS)})")
    return class_name


def make_scheduler(name: str, config: dict) -> Any:
    """A fresh scheduler (schedulers are stateful: one per generation call)."""
    check_scheduler_name(name)
    import diffusers

    if name == MODEL_SCHEDULER:
        return getattr(diffusers, model_scheduler_class(config)).from_config(config)
    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)
