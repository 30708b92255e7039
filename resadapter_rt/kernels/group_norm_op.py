"""GroupNorm with optional fused SiLU: Triton kernels on CUDA (and under ``TRITON_INTERPRET=1``).

``launch_plan.plan_group_norm`` chooses per input between one launch with one program per
(sample, group) (small, launch-bound tensors) and a split path that fills the GPU: partial
statistics over many chunks, a per-group merge, then a fully parallel normalise + affine + SiLU.
Statistics are fp32 and merged with Chan's parallel (count, mean, M2) formula, so large means
(values around 300) do not cancel as E[x^2] - mean^2 would. Outputs are stored in the input dtype
and layout; NCHW and channels-last inputs are both read in their own order.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from ..errors import ResAdapterRTError
from .launch_plan import H100_SMS, plan_group_norm

ACTIVATIONS = (None, "silu")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, activation: str | None = None) -> torch.Tensor:
    """``F.group_norm`` (+ ``F.silu``) on ``[N, C, *spatial]``; Triton on CUDA tensors, torch on CPU.

    Under ``TRITON_INTERPRET=1`` CPU tensors also run the Triton kernel (its interpreter).
    """
    if activation not in ACTIVATIONS:
        raise ResAdapterRTError(f"activation {activation!r} is not supported; use None or 'silu'")
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ResAdapterRTError(f"group_norm: {x.shape[1] if x.dim() > 1 else '?'} channels are not divisible into {num_groups} groups")
    use_triton = triton_available() and (x.is_cuda or _interpreting()) and x.numel() > 0
    if not use_triton:
        out = F.group_norm(x, num_groups, weight, bias, eps)
        return F.silu(out) if activation == "silu" else out
    return _triton_group_norm(x, num_groups, weight, bias, eps, activation == "silu")


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; the H100's count when interpreting on the CPU."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else H100_SMS


def _triton_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float, silu: bool, path: str | None = None) -> torch.Tensor:
    """Run the Triton kernels; ``path`` forces the "single" or "split" plan (default: the cost model's)."""
    from ._triton_group_norm import launch

    n, c = x.shape[:2]
    x4 = x.reshape(n, c, -1, 1) if x.dim() != 4 else x
    channels_last = x4.dim() == 4 and x4.is_contiguous(memory_format=torch.channels_last) and not x4.is_contiguous()
    if not (x4.is_contiguous() or channels_last):
        x4 = x4.contiguous()
    out = torch.empty_like(x4, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ones = weight if weight is not None else torch.ones(c, device=x.device, dtype=torch.float32)
    zeros = bias if bias is not None else torch.zeros(c, device=x.device, dtype=torch.float32)
    plan = plan_group_norm(tuple(x4.shape), num_groups, x4.element_size(), channels_last, _sm_count(x4.device), path)
    launch(x4, out, ones, zeros, num_groups, eps, silu, channels_last, plan)
    return out.reshape(x.shape) if x.dim() != 4 else out
