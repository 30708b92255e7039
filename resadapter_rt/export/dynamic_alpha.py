"""Keeping the ResAdapter LoRA as a separate branch whose scale is a graph input (``alpha`` dynamic mode).

Each sampler conv becomes ``conv(x) + alpha * scale * up(down(x))``; ``down`` copies the base conv's
stride and padding, so the branch computes exactly the merged update. ``alpha`` is one input shared
by every branch of a call, which lets one export serve every resolution's best alpha.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import nn

from ..models.adapter import ResAdapterWeights
from ..models.lora import LoraLayer


class CallScalar:
    """A scalar graph input (the ResAdapter alpha, the IP-Adapter scale) bound to the call in progress.

    ``bound(value)`` sets it for the duration of one forward in the caller's context (a
    ``ContextVar``), so two threads running the same UNet with different values each see their
    own; outside a call it falls back to 1.0.
    """

    def __init__(self) -> None:
        self._current: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("call_scalar", default=None)

    def __getstate__(self) -> dict:
        return {}  # a copy (deepcopy, pickle) gets its own, unbound variable

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    @contextlib.contextmanager
    def bound(self, value: torch.Tensor) -> Iterator[None]:
        token = self._current.set(value)
        try:
            yield
        finally:
            self._current.reset(token)

    @property
    def value(self) -> torch.Tensor:
        current = self._current.get()
        return torch.tensor(1.0) if current is None else current


class LoraBranchConv2d(nn.Module):
    """A conv plus its low-rank branch, scaled by an externally supplied alpha."""

    def __init__(self, base: nn.Conv2d, layer: LoraLayer, alpha: CallScalar) -> None:
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


def attach_lora_branches(unet: nn.Module, adapter: ResAdapterWeights) -> CallScalar:
    """Replace each adapted sampler conv of ``unet`` (in place) by a ``LoraBranchConv2d``."""
    alpha = CallScalar()
    for key, layer in adapter.lora.for_component("unet").items():
        parent_name, _, child = key.rpartition(".")
        parent = unet.get_submodule(parent_name)
        setattr(parent, child, LoraBranchConv2d(getattr(parent, child), layer, alpha))
    return alpha
