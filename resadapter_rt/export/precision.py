"""fp16 export: a half-precision copy whose GroupNorm statistics stay fp32 and whose IO stays fp32."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class Fp32GroupNorm(nn.Module):
    """GroupNorm computed in fp32 on a half-precision tensor (the fp16 black/NaN-image guard)."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float().clone(), requires_grad=False)
        self.bias = nn.Parameter(norm.bias.detach().float().clone(), requires_grad=False)

    def _apply(self, fn, recurse=True):  # keep the affine in fp32 through .half()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


class Fp32Interface(nn.Module):
    """Runs a half-precision module behind fp32 inputs and outputs (integer inputs pass unchanged)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs):
        cast = [x.half() if x.is_floating_point() else x for x in inputs]
        outputs = self.module(*cast)
        if isinstance(outputs, tuple):
            return tuple(o.float() for o in outputs)
        return outputs.float()


def half_precision(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` in fp16 with fp32 GroupNorms behind an fp32 interface.

    ``inplace`` converts ``module`` itself (its fp32 weights are freed as each is converted: an exporter
    that owns the module never holds both precisions); otherwise a converted copy is returned.
    """
    copied = module if inplace else copy.deepcopy(module)
    for name, child in list(copied.named_modules()):
        if isinstance(child, nn.GroupNorm):
            parent_name, _, attr = name.rpartition(".")
            setattr(copied.get_submodule(parent_name) if parent_name else copied, attr, Fp32GroupNorm(child))
    return Fp32Interface(copied.half()).eval()
