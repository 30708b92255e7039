"""Keeping the ResAdapter LoRA as a separate branch whose scale is a graph input (``alpha`` dynamic mode).

Each sampler conv becomes ``conv(x) + alpha * scale * up(down(x))``; ``down`` copies the base conv's
stride and padding, so the branch computes exactly the merged update. ``alpha`` is one tensor shared
by every branch and set per call, which lets one export serve every resolution's best alpha.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapter import ResAdapterWeights
from ..models.lora import LoraLayer


class AlphaSource:
    """Holds the current alpha tensor; the wrapper sets it before each forward."""

    def __init__(self) -> None:
        self.value: torch.Tensor = torch.tensor(1.0)


class LoraBranchConv2d(nn.Module):
    """A conv plus its low-rank branch, scaled by an externally supplied alpha."""

    def __init__(self, base: nn.Conv2d, layer: LoraLayer, alpha: AlphaSource) -> None:
        super().__init__()
        self.base = base
        rank = layer.rank
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(layer.down.float())
            self.up.weight.copy_(layer.up.float() * layer.scale)
        self.down.to(base.weight.dtype)
        self.up.to(base.weight.dtype)
        self.alpha = alpha

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base(x) + self.alpha.value.to(x.dtype) * self.up(self.down(x))


def attach_lora_branches(unet: nn.Module, adapter: ResAdapterWeights) -> AlphaSource:
    """Replace each adapted sampler conv of ``unet`` (in place) by a ``LoraBranchConv2d``."""
    alpha = AlphaSource()
    for key, layer in adapter.lora.for_component("unet").items():
        parent_name, _, child = key.rpartition(".")
        parent = unet.get_submodule(parent_name)
        setattr(parent, child, LoraBranchConv2d(getattr(parent, child), layer, alpha))
    return alpha
