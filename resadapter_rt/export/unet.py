"""The UNet as exported: one wrapper and one spec, with ControlNets and an IP-Adapter folded in when given.

Inputs, in this order: ``sample``, ``timestep``, ``encoder_hidden_states``, [SDXL: ``text_embeds``,
``time_ids``], [ControlNets: ``controlnet_cond``, ``controlnet_scale``], [IP-Adapter: ``image_embeds``,
and ``ip_adapter_scale`` unless baked], [dynamic alpha: ``resadapter_alpha``]. Output ``out_sample``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .controlnet import CONTROLNET_COND, CONTROLNET_SCALE, controlnet_example, controlnet_residuals
from .dynamic_alpha import CallScalar
from .ip_adapter import IMAGE_EMBEDS, IP_SCALE, ip_unet_example
from .specs import ALPHA_INPUT, ComponentSpec


@dataclass(frozen=True)
class IPAdapterInputs:
    """What the UNet graph takes for an IP-Adapter: one image's embedding shape, and whether the scale is an input."""

    embed_shape: tuple[int, ...]
    dynamic_scale: bool


class UNetForExport(nn.Module):
    """Positional-input UNet (see the module docstring for the order); scalars bound to the call, not stored."""

    def __init__(self, unet: nn.Module, sdxl: bool, alpha: CallScalar | None, controlnets: list[nn.Module] = (),
                 ip_adapter: bool = False, ip_scale: CallScalar | None = None) -> None:
        super().__init__()
        self.unet, self.sdxl, self.alpha = unet, sdxl, alpha
        self.controlnets = nn.ModuleList(controlnets)
        self.ip_adapter, self.ip_scale = ip_adapter, ip_scale

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        extra = list(extra)
        added = {"text_embeds": extra.pop(0), "time_ids": extra.pop(0)} if self.sdxl else {}
        residuals = {}
        if len(self.controlnets):  # ControlNets see the text conditioning only, as in diffusers' pipelines
            residuals = controlnet_residuals(self.controlnets, sample, timestep, encoder_hidden_states, extra.pop(0),
                                             extra.pop(0), added or None)
        unet_added, bound = dict(added), []
        if self.ip_adapter:
            unet_added["image_embeds"] = [extra.pop(0)]
            if self.ip_scale is not None:
                bound.append((self.ip_scale, extra.pop(0)))
        if self.alpha is not None:
            bound.append((self.alpha, extra.pop(0)))
        with contextlib.ExitStack() as stack:
            for scalar, value in bound:
                stack.enter_context(scalar.bound(value))
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=unet_added or None, **residuals,
                             return_dict=False)[0]


def unet_spec(unet: nn.Module, sdxl: bool, dynamic_alpha: bool, controlnets: int = 0,
              ip_adapter: IPAdapterInputs | None = None) -> ComponentSpec:
    cfg = unet.config
    inputs = ["sample", "timestep", "encoder_hidden_states"] + (["text_embeds", "time_ids"] if sdxl else [])
    inputs += [CONTROLNET_COND, CONTROLNET_SCALE] if controlnets else []
    if ip_adapter is not None:
        inputs += [IMAGE_EMBEDS] + ([IP_SCALE] if ip_adapter.dynamic_scale else [])
    inputs += [ALPHA_INPUT] if dynamic_alpha else []
    axes = {"sample": {0: "batch", 2: "latent_height", 3: "latent_width"}, "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "tokens"},
            "out_sample": {0: "batch", 2: "latent_height", 3: "latent_width"}}
    if sdxl:
        axes |= {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}
    if controlnets:
        axes |= {CONTROLNET_COND: {1: "batch", 3: "height", 4: "width"}}
    if ip_adapter is not None:
        axes |= {IMAGE_EMBEDS: {0: "batch"}}

    def example(batch: int, height: int, width: int, tokens: int = 77, seed: int = 0, alpha: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        values = {
            "sample": torch.randn(batch, cfg.in_channels, height, width, generator=g),
            "timestep": torch.linspace(999, 1, batch),
            "encoder_hidden_states": torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g),
        }
        if sdxl:
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            values["text_embeds"] = torch.randn(batch, pooled, generator=g)
            values["time_ids"] = torch.tensor([[height * 8.0, width * 8.0, 0, 0, height * 8.0, width * 8.0]] * batch)
        if controlnets:
            values |= controlnet_example(controlnets, batch, height, width, seed)
        if ip_adapter is not None:
            values |= ip_unet_example(ip_adapter.embed_shape, ip_adapter.dynamic_scale, batch, seed)
        if dynamic_alpha:
            values[ALPHA_INPUT] = torch.tensor(alpha, dtype=torch.float32)
        return {name: values[name] for name in inputs}

    return ComponentSpec("unet", tuple(inputs), ("out_sample",), axes, example)


def unet_export_module(unet: nn.Module, sdxl: bool, alpha: CallScalar | None, dynamic_alpha: bool,
                       controlnets: list[nn.Module] = (), ip_adapter: IPAdapterInputs | None = None,
                       ip_scale: CallScalar | None = None) -> tuple[nn.Module, ComponentSpec]:
    """The UNet's export wrapper and its spec."""
    module = UNetForExport(unet, sdxl, alpha, list(controlnets), ip_adapter is not None, ip_scale).eval()
    return module, unet_spec(unet, sdxl, dynamic_alpha, len(controlnets), ip_adapter)
