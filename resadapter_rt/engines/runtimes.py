"""The two TensorRT runtimes an engine can be built for, and which GPUs each engine fits.

* ``tensorrt`` (data-center TensorRT): builds on and for the GPU it runs on (any compute capability).
* ``tensorrt-rtx`` (TensorRT for RTX): builds ahead of time without a GPU, for a set of compute
  capabilities (7.5, 8.0, 8.6, 8.9, 12.0, 12.1); no Hopper (9.0) or data-center Blackwell (10.x).

Nothing here imports TensorRT at module import; ``runtime_version`` imports the module it names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import ResAdapterRTError

RTX_PIN = "tensorrt-rtx-cu13==1.7.1.116"
# TensorRT-RTX 1.7's ComputeCapability enum (SM75 ... SM121); a test checks it against the installed module.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
# What TensorRT-RTX targets when none is set: "8.0, 8.6, 8.9, 12.0, and later" (its CPU-only AOT docs).
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0+")


@dataclass(frozen=True)
class RuntimeFamily:
    """One TensorRT flavour: its CLI name, Python module and install route."""

    name: str
    module: str
    install: str


TENSORRT = RuntimeFamily("tensorrt", "tensorrt",
                         "pip install tensorrt (from NVIDIA's index) on a machine with an NVIDIA GPU")
TENSORRT_RTX = RuntimeFamily("tensorrt-rtx", "tensorrt_rtx", f'pip install -e ".[tensorrt-rtx]" (or pip install {RTX_PIN})')
FAMILIES = {family.name: family for family in (TENSORRT, TENSORRT_RTX)}
RUNTIME_CHOICES = ("auto", *FAMILIES)


def importable(family: RuntimeFamily) -> bool:
    """Whether the family's module imports (a bindings wheel without its libraries does not count)."""
    try:
        importlib.import_module(family.module)
        return True
    except (ImportError, OSError):
        return False


def resolve_runtime(requested: str) -> RuntimeFamily:
    """``auto``: data-center TensorRT when importable, else TensorRT-RTX; else one line naming both installs."""
    if requested not in RUNTIME_CHOICES:
        raise ResAdapterRTError(f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    if requested != "auto":
        family = FAMILIES[requested]
        if not importable(family):
            raise ResAdapterRTError(f"--runtime {family.name}: module {family.module} is not installed here; {family.install}")
        return family
    for family in (TENSORRT, TENSORRT_RTX):
        if importable(family):
            return family
    raise ResAdapterRTError(f"neither TensorRT nor TensorRT for RTX is installed here; {TENSORRT_RTX.install} to build "
                            f"engines on any machine (RTX/Ampere/Ada/Blackwell-RTX GPUs), or {TENSORRT.install}")


def runtime_version(family: RuntimeFamily) -> str:
    return importlib.import_module(family.module).__version__


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``8.6,8.9,12.0`` -> ("8.6", "8.9", "12.0"), checked against what TensorRT-RTX can target."""
    values = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    for value in values:
        if value not in RTX_COMPUTE_CAPABILITIES:
            raise ResAdapterRTError(f"--compute-capability {value!r} is not a TensorRT-RTX target; choose from "
                                    f"{', '.join(RTX_COMPUTE_CAPABILITIES)} (Hopper 9.0 and Blackwell 10.x need --runtime tensorrt)")
    if not values:
        raise ResAdapterRTError("--compute-capability is empty; pass e.g. 8.6,8.9,12.0")
    return values


def covers_capability(targets: list[str] | tuple[str, ...], capability: str) -> bool:
    """Whether an engine built for ``targets`` (``12.0+``: 12.0 and later) runs on ``capability``."""
    major = int(capability.split(".")[0])
    return any(capability == target or (target.endswith("+") and major >= int(target[:-1].split(".")[0])) for target in targets)


@dataclass(frozen=True)
class GpuInfo:
    """The GPU the runtime found."""

    name: str
    compute_capability: str


def gpu_info() -> GpuInfo:
    """The CUDA GPU torch sees, or a one-line error (engines run only on a GPU)."""
    import torch

    if not torch.cuda.is_available():
        raise ResAdapterRTError("the tensorrt backend needs an NVIDIA GPU and none is visible here (torch.cuda.is_available() is "
                                "False); use --backend onnxruntime or torch on this machine")
    major, minor = torch.cuda.get_device_capability()
    return GpuInfo(torch.cuda.get_device_name(), f"{major}.{minor}")


def check_engines_fit_gpu(family_name: str, targets: list[str], gpu: GpuInfo, rebuild: str) -> None:
    """Refuse, in one line, engines whose runtime family or compute capabilities do not fit ``gpu``."""
    where = f"this GPU is {gpu.name} (compute capability {gpu.compute_capability})"
    if family_name == TENSORRT_RTX.name:
        if gpu.compute_capability not in RTX_COMPUTE_CAPABILITIES and not covers_capability(("12.0+",), gpu.compute_capability):
            raise ResAdapterRTError(f"these are TensorRT-RTX engines, but {where}, which TensorRT-RTX does not support; "
                                    f"build with --runtime tensorrt on this machine: {rebuild} --runtime tensorrt")
        if not covers_capability(targets, gpu.compute_capability):
            raise ResAdapterRTError(f"these TensorRT-RTX engines target compute capabilities {', '.join(targets)}, but {where}; "
                                    f"rebuild: {rebuild} --compute-capability {gpu.compute_capability}")
    elif family_name == TENSORRT.name:
        if targets != [gpu.compute_capability]:
            raise ResAdapterRTError(f"these TensorRT engines were built for compute capability {', '.join(targets)}, but {where}; "
                                    f"rebuild on this machine: {rebuild}")
    else:
        raise ResAdapterRTError(f"unknown engine runtime {family_name!r} in the engine manifest; rebuild: {rebuild}")
