"""An IP-Adapter inside the UNet graph with a runtime scale, and the CLIP image encoder component.

Extra UNet inputs: ``image_embeds`` [B, 1, D] (plain adapters: the encoder's projected embedding) or
[B, 1, T, C] (plus / full-face: its penultimate hidden states), and ``ip_adapter_scale`` [] (dynamic
mode). diffusers adds ``scale * softmax(Q K_ip^T) V_ip`` to each cross-attention before ``to_out``,
so a scale input is exact: diffusers' own processor runs with a stand-in for its scale (``CallScale``)
that multiplies by the call's value. The branch is always in the graph (the processor skips it at
scale 0, so a trace at 0 would drop it); at scale 0 it adds zeros: the UNet without the IP-Adapter.
A baked scale is a plain float in the processor, as ``set_ip_adapter_scale`` sets it.

The image encoder (``CLIPVisionModelWithProjection``, 224x224, dynamic batch) outputs both the
projected ``image_embeds`` and ``penultimate_hidden_states``; it stays fp32 (one call per request).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.ip_adapter import LoadedIPAdapter, apply_ip_adapter
from .dynamic_alpha import CallScalar
from .specs import ComponentSpec

IMAGE_EMBEDS = "image_embeds"
IP_SCALE = "ip_adapter_scale"
IMAGE_ENCODER = "image_encoder"
ENCODER_INPUT = "pixel_values"
ENCODER_OUTPUTS = ("image_embeds", "penultimate_hidden_states")
EXAMPLE_SCALE = 0.6  # non-zero and not 1: the scaling is in the traced graph and exercised by validation


class CallScale:
    """Stands in for the number in diffusers' IP-Adapter processor (``processor.scale = [CallScale(source)]``).

    It compares and multiplies as the scale of the call in progress, so the stock processor computes
    ``hidden + scale * attention`` exactly as with a float, while in the exported graph the scale is an
    input. Its ``== 0`` test (diffusers skips the branch at 0) sees the real value in torch and the
    traced example (never 0) during export, so the graph always holds the branch.
    """

    __hash__ = None

    def __init__(self, source: CallScalar) -> None:
        self.source = source

    def __eq__(self, other: object) -> bool:
        return float(self.source.value) == other

    def __mul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.source.value.to(x.dtype) * x

    __rmul__ = __mul__


def _ip_processors(unet: nn.Module) -> list[Any]:
    return [processor for processor in unet.attn_processors.values() if hasattr(processor, "to_v_ip")]


def attach_ip_adapter(unet: nn.Module, loaded: LoadedIPAdapter, scale: float | None) -> CallScalar | None:
    """Install the IP-Adapter into ``unet`` (in place); ``scale`` None: a runtime scale, returned as a ``CallScalar``."""
    apply_ip_adapter(unet, loaded)
    source = CallScalar() if scale is None else None
    for processor in _ip_processors(unet):
        processor.scale = [CallScale(source) if source else float(scale)]
    return source


class ImageEncoderForExport(nn.Module):
    """``pixel_values`` (CLIP-normalised) -> projected image embedding and penultimate hidden states."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        out = self.encoder(pixel_values, output_hidden_states=True)
        return out.image_embeds, out.hidden_states[-2]


def ip_unet_example(embed_shape: tuple[int, ...], dynamic: bool, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Example ``image_embeds`` (and scale) for the UNet: one image per sample, as diffusers passes them."""
    g = torch.Generator().manual_seed(seed + 2000)
    values = {IMAGE_EMBEDS: torch.randn(batch, 1, *embed_shape, generator=g)}
    if dynamic:
        values[IP_SCALE] = torch.tensor(EXAMPLE_SCALE, dtype=torch.float32)
    return values


def image_encoder_spec(encoder: nn.Module) -> ComponentSpec:
    size = int(encoder.config.image_size)

    def example(batch: int, *_ignored, seed: int = 0, **_unused):
        g = torch.Generator().manual_seed(seed)
        return {ENCODER_INPUT: torch.randn(batch, 3, size, size, generator=g)}

    axes = {ENCODER_INPUT: {0: "batch"}, **{output: {0: "batch"} for output in ENCODER_OUTPUTS}}
    return ComponentSpec(IMAGE_ENCODER, (ENCODER_INPUT,), ENCODER_OUTPUTS, axes, example)


def image_encoder_job(encoder: nn.Module) -> tuple[nn.Module, ComponentSpec, dict, list[dict]]:
    """(module, spec, trace example, validation cases) for the exporter: traced at batch 1, validated at batch 3."""
    spec = image_encoder_spec(encoder)
    return ImageEncoderForExport(encoder).eval(), spec, spec.example(1), [{"label": {"batch": 3}, "inputs": spec.example(3, seed=5)}]
