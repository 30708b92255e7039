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

CONTROLNET_COND = "controlnet_cond"
CONTROLNET_SCALE = "controlnet_scale"
CONTROL_CHANNELS = 3
LATENT_FACTOR = 8


def controlnet_residuals(controlnets: nn.ModuleList, sample, timestep, encoder_hidden_states, cond, scale,
                         added: dict | None) -> dict:
    """The UNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual``: each ControlNet's
    residuals times its scale, summed in ``MultiControlNetModel`` order."""
    down, mid = None, None
    for index, controlnet in enumerate(controlnets):
        d, m = controlnet(sample, timestep, encoder_hidden_states, controlnet_cond=cond[index], conditioning_scale=1.0,
                          added_cond_kwargs=added, return_dict=False)
        d, m = [r * scale[index] for r in d], m * scale[index]
        down, mid = (d, m) if index == 0 else ([a + b for a, b in zip(down, d)], mid + m)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def controlnet_example(count: int, batch: int, height: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """Example control images (pixel space, [0, 1]) and distinct non-zero scales, so each net's scaling is exercised."""
    g = torch.Generator().manual_seed(seed + 1000)
    return {CONTROLNET_COND: torch.rand(count, batch, CONTROL_CHANNELS, height * LATENT_FACTOR, width * LATENT_FACTOR, generator=g),
            CONTROLNET_SCALE: torch.linspace(1.0, 0.5, count)}
