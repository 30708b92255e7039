"""The VAE encoder component (image-to-image): image in [-1, 1] -> the latent distribution's parameters.

Output ``latent_parameters`` [B, 2C, H/8, W/8] is diffusers' ``quant_conv(encoder(x))``: mean and
log-variance, so the runtime samples ``mean + std * noise`` with the request's generator exactly as
``AutoencoderKL.encode(...).latent_dist.sample(generator)`` does. It stays fp32 (it runs once per request).
"""

from __future__ import annotations

import torch
from torch import nn

from .specs import ComponentSpec

NAME = "vae_encoder"


class VaeEncoderForExport(nn.Module):
    """``quant_conv(encoder(x))`` without diffusers' tiling branch (H/W stay dynamic)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        moments = self.vae.encoder(sample)
        return moments if self.vae.quant_conv is None else self.vae.quant_conv(moments)


def vae_encoder_spec(vae: nn.Module) -> ComponentSpec:
    channels = vae.config.in_channels

    def example(batch: int, height: int, width: int, *_ignored, seed: int = 0, **_unused):
        g = torch.Generator().manual_seed(seed)
        return {"sample": 2 * torch.rand(batch, channels, 8 * height, 8 * width, generator=g) - 1}

    axes = {"sample": {0: "batch", 2: "height", 3: "width"},
            "latent_parameters": {0: "batch", 2: "latent_height", 3: "latent_width"}}
    return ComponentSpec(NAME, ("sample",), ("latent_parameters",), axes, example)


def vae_encoder_job(vae: nn.Module, trace_latent: int, validation_sizes) -> tuple[nn.Module, ComponentSpec, dict, list[dict]]:
    """(module, spec, trace example, validation cases) for the exporter: validated at the first two off-trace sizes."""
    spec = vae_encoder_spec(vae)
    cases = [{"label": {"width": w, "height": h, "batch": b}, "inputs": spec.example(b, h // 8, w // 8, seed=i)}
             for i, (w, h, b) in enumerate(validation_sizes[:2])]
    return VaeEncoderForExport(vae).eval(), spec, spec.example(1, trace_latent // 2, trace_latent // 2), cases
