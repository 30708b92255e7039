"""Swap every GroupNorm -> SiLU pair of a diffusers UNet / VAE decoder for the fused ``group_norm``.

ResnetBlock2D calls ``norm1`` then ``nonlinearity`` and ``norm2`` then ``nonlinearity``; the
nonlinearity module is shared with the time embedding, so the block's ``forward`` is replaced
(for the default time-embedding path with SiLU, and the VAE's "group" setting without time embedding) instead of the modules. ``conv_norm_out`` followed by
``conv_act`` (UNet and VAE decoder) becomes one fused norm and an identity.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .group_norm_op import group_norm


class FusedGroupNormSiLU(nn.Module):
    """A GroupNorm whose output is passed through SiLU in the same kernel."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, activation="silu")


def _fused_resnet_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
    hidden = self.fused_norm1(input_tensor)
    if self.upsample is not None:
        input_tensor, hidden = self.upsample(input_tensor), self.upsample(hidden)
    elif self.downsample is not None:
        input_tensor, hidden = self.downsample(input_tensor), self.downsample(hidden)
    hidden = self.conv1(hidden)
    if self.time_emb_proj is not None and temb is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        hidden = hidden + self.time_emb_proj(temb)[:, :, None, None]
    hidden = self.fused_norm2(hidden)
    hidden = self.conv2(self.dropout(hidden))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    return (input_tensor + hidden) / self.output_scale_factor


def _fusable_resnet(module: nn.Module) -> bool:
    """A ResnetBlock2D whose norms are GroupNorm -> SiLU with nothing in between.

    "group" (the VAE's setting) without a time embedding computes exactly the default path.
    """
    from diffusers.models.resnet import ResnetBlock2D

    if not isinstance(module, ResnetBlock2D):
        return False
    plain = module.time_embedding_norm == "default" or (module.time_embedding_norm == "group" and module.time_emb_proj is None)
    return plain and isinstance(module.nonlinearity, nn.SiLU) and isinstance(module.norm1, nn.GroupNorm) \
        and isinstance(module.norm2, nn.GroupNorm)


def fuse_group_norm_silu(model: nn.Module) -> int:
    """Fuse in place; returns how many GroupNorm -> SiLU pairs were replaced."""
    replaced = 0
    for module in list(model.modules()):
        if _fusable_resnet(module):
            module.fused_norm1 = FusedGroupNormSiLU(module.norm1)
            module.fused_norm2 = FusedGroupNormSiLU(module.norm2)
            module.forward = types.MethodType(_fused_resnet_forward, module)
            replaced += 2
        if isinstance(getattr(module, "conv_norm_out", None), nn.GroupNorm) and isinstance(getattr(module, "conv_act", None), nn.SiLU):
            module.conv_norm_out = FusedGroupNormSiLU(module.conv_norm_out)
            module.conv_act = nn.Identity()
            replaced += 1
    return replaced
