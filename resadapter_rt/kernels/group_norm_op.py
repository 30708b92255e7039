"""GroupNorm with optional fused SiLU: a Triton kernel on CUDA (and under ``TRITON_INTERPRET=1``).

One program normalises one (sample, group). Statistics are fp32 and computed in a single pass
with Chan's parallel update of (count, mean, M2) per block, so large means (values around 300)
do not cancel as E[x^2] - mean^2 would. A second pass applies the affine and the activation and
stores in the input dtype. NCHW and channels-last inputs are both read in their own order.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from ..errors import ResAdapterRTError

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
    use_triton = triton_available() and (x.is_cuda or _interpreting())
    if not use_triton:
        out = F.group_norm(x, num_groups, weight, bias, eps)
        return F.silu(out) if activation == "silu" else out
    return _triton_group_norm(x, num_groups, weight, bias, eps, activation == "silu")


def _triton_group_norm(x, num_groups, weight, bias, eps, silu):
    from ._triton_group_norm import launch

    n, c = x.shape[:2]
    x4 = x.reshape(n, c, -1, 1) if x.dim() != 4 else x
    channels_last = x4.dim() == 4 and x4.is_contiguous(memory_format=torch.channels_last) and not x4.is_contiguous()
    if not (x4.is_contiguous() or channels_last):
        x4 = x4.contiguous()
    out = torch.empty_like(x4, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ones = weight if weight is not None else torch.ones(c, device=x.device, dtype=torch.float32)
    zeros = bias if bias is not None else torch.zeros(c, device=x.device, dtype=torch.float32)
    launch(x4, out, ones, zeros, num_groups, eps, silu, channels_last)
    return out.reshape(x.shape) if x.dim() != 4 else out
