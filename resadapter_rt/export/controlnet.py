"""ControlNet(s) inside the UNet graph (as TensorRT's diffusion demo and ONNX Runtime's SD tools fold them).

Extra UNet inputs: ``controlnet_cond`` [N, B, 3, 8H, 8W] fp32 in [0, 1] (pixel space; B is the UNet
batch, doubled for classifier-free guidance) and ``controlnet_scale`` [N], a runtime input so that
conditioning scales and per-step guidance windows change without a new export. Each ControlNet's
residuals are multiplied by its scale and summed in diffusers' ``MultiControlNetModel`` order, then
fed to the UNet as ``down_block_additional_residuals`` / ``mid_block_additional_residual``.
"""

from __future__ import annotations

import torch
from torch import nn

from .dynamic_alpha import AlphaSource
from .specs import ALPHA_INPUT, ComponentSpec, UNetForExport, unet_spec

CONTROLNET_COND = "controlnet_cond"
CONTROLNET_SCALE = "controlnet_scale"
CONTROL_CHANNELS = 3
LATENT_FACTOR = 8


class UNetControlNetForExport(nn.Module):
    """Positional-input UNet + N ControlNets; inputs in ``controlnet_unet_spec`` order."""

    def __init__(self, unet: nn.Module, controlnets: list[nn.Module], sdxl: bool, alpha: AlphaSource | None) -> None:
        super().__init__()
        self.unet, self.controlnets, self.sdxl, self.alpha = unet, nn.ModuleList(controlnets), sdxl, alpha

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        extra = list(extra)
        added = {"text_embeds": extra.pop(0), "time_ids": extra.pop(0)} if self.sdxl else None
        cond, scale = extra.pop(0), extra.pop(0)
        down, mid = None, None
        for index, controlnet in enumerate(self.controlnets):
            d, m = controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=cond[index], conditioning_scale=1.0,
                              added_cond_kwargs=added, return_dict=False)
            d, m = [r * scale[index] for r in d], m * scale[index]
            down, mid = (d, m) if index == 0 else ([a + b for a, b in zip(down, d)], mid + m)
        kwargs = dict(added_cond_kwargs=added, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                      return_dict=False)
        if self.alpha is None:
            return self.unet(sample, timestep, encoder_hidden_states, **kwargs)[0]
        with self.alpha.bound(extra.pop(0)):  # the ResAdapter is merged into the UNet only
            return self.unet(sample, timestep, encoder_hidden_states, **kwargs)[0]


def controlnet_unet_spec(unet: nn.Module, sdxl: bool, dynamic_alpha: bool, count: int) -> ComponentSpec:
    """The UNet spec plus ``controlnet_cond`` (dynamic batch and pixel height/width) and ``controlnet_scale``."""
    base = unet_spec(unet, sdxl, dynamic_alpha)
    inputs = [name for name in base.inputs if name != ALPHA_INPUT] + [CONTROLNET_COND, CONTROLNET_SCALE]
    inputs += [ALPHA_INPUT] if dynamic_alpha else []
    axes = base.dynamic_axes | {CONTROLNET_COND: {1: "batch", 3: "height", 4: "width"}}

    def example(batch: int, height: int, width: int, tokens: int = 77, seed: int = 0, alpha: float = 1.0):
        values = base.example(batch, height, width, tokens, seed=seed, alpha=alpha)
        g = torch.Generator().manual_seed(seed + 1000)
        values[CONTROLNET_COND] = torch.rand(count, batch, CONTROL_CHANNELS, height * LATENT_FACTOR, width * LATENT_FACTOR, generator=g)
        values[CONTROLNET_SCALE] = torch.linspace(1.0, 0.5, count)  # distinct, non-zero: each net's scaling is exercised
        return values

    return ComponentSpec(base.name, tuple(inputs), base.outputs, axes, example)


def unet_export_module(unet: nn.Module, controlnets: list[nn.Module], sdxl: bool, alpha: AlphaSource | None,
                       dynamic_alpha: bool) -> tuple[nn.Module, ComponentSpec]:
    """The UNet's export wrapper and spec: with ControlNets folded in when there are any."""
    if not controlnets:
        return UNetForExport(unet, sdxl, alpha).eval(), unet_spec(unet, sdxl, dynamic_alpha)
    return (UNetControlNetForExport(unet, controlnets, sdxl, alpha).eval(),
            controlnet_unet_spec(unet, sdxl, dynamic_alpha, len(controlnets)))
