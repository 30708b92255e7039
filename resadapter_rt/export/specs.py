"""What each pipeline component exports: names, dynamic axes, wrappers and example inputs (declared once).

The UNet's, with its optional ControlNet and IP-Adapter inputs, is in ``unet.py``.

Names follow diffusers/optimum; text encoders take int32 ``input_ids``. ``timestep`` is float32 ``[B]`` (Karras/Euler schedules use
fractional timesteps). Token length is dynamic in multiples of 77 for long prompts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

ALPHA_INPUT = "resadapter_alpha"


@dataclass(frozen=True)
class ComponentSpec:
    """Everything generic export code needs to know about one component."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    example: Callable[..., dict[str, torch.Tensor]]  # (batch, latent_h, latent_w, tokens) -> inputs


class TextEncoderForExport(nn.Module):
    """CLIP text encoder with optimum's output names; ``input_ids`` int32 (cast inside the graph).

    SD1.5: ``last_hidden_state``, ``pooler_output``. SDXL (``all_hidden_states``): the same, or
    ``text_embeds``, ``last_hidden_state`` for the projected encoder 2, then every
    ``hidden_states.{i}``, i = 0..layers, in optimum's exporter's order; the UNet takes the
    penultimate one, ``hidden_states.{layers - 1}``.
    """

    def __init__(self, encoder: nn.Module, all_hidden_states: bool, projected: bool) -> None:
        super().__init__()
        self.encoder, self.all_hidden_states, self.projected = encoder, all_hidden_states, projected

    def forward(self, input_ids):
        out = self.encoder(input_ids.long(), output_hidden_states=self.all_hidden_states)
        if not self.all_hidden_states:
            return out.last_hidden_state, out.pooler_output
        if self.projected:
            return (out.text_embeds, out.last_hidden_state, *out.hidden_states)
        return (out.last_hidden_state, out.pooler_output, *out.hidden_states)


def penultimate_hidden_state(output_names: Iterable[str]) -> str:
    """The output an SDXL UNet is conditioned on: ``hidden_states.{layers - 1}``."""
    layers = max(int(name.rpartition(".")[2]) for name in output_names if name.startswith("hidden_states."))
    return f"hidden_states.{layers - 1}"


class VaeDecoderForExport(nn.Module):
    """Latents already divided by the VAE scaling factor -> image in [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


@contextlib.contextmanager
def upsample_sizes_from_skips(unet: nn.Module) -> Iterator[None]:
    """Make diffusers' UNet take every upsample size from its skip connection while tracing.

    ``forward`` passes explicit upsample sizes only when the input is not a multiple of
    ``2**num_upsamplers``; tracing at such a multiple would bake in plain 2x upsampling and break
    sizes like 125x75 latents. With a huge ``num_upsamplers`` the check always fires, so the
    graph reads the size from the skip tensor's shape: every multiple of 8 px works.
    """
    saved = unet.num_upsamplers
    unet.num_upsamplers = 30
    try:
        yield
    finally:
        unet.num_upsamplers = saved


def text_encoder_spec(name: str, encoder: nn.Module, all_hidden_states: bool) -> ComponentSpec:
    vocab = encoder.config.vocab_size

    def example(batch: int, *_ignored, seed: int = 0, **_unused):
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(0, vocab, (batch, 77), generator=g, dtype=torch.int32)}

    pooled = "text_embeds" if name == "text_encoder_2" else "pooler_output"
    if all_hidden_states:
        layers = encoder.config.num_hidden_layers
        # optimum's order: diffusers' SDXL pipeline takes the first 2-D output it sees as the pooled embedding
        first = ("text_embeds", "last_hidden_state") if pooled == "text_embeds" else ("last_hidden_state", "pooler_output")
        outputs = (*first, *(f"hidden_states.{i}" for i in range(layers + 1)))
    else:
        outputs = ("last_hidden_state", pooled)
    axes = {"input_ids": {0: "batch"}, **{output: {0: "batch"} for output in outputs}}
    return ComponentSpec(name, ("input_ids",), outputs, axes, example)


def vae_decoder_spec(vae: nn.Module) -> ComponentSpec:
    channels = vae.config.latent_channels

    def example(batch: int, height: int, width: int, *_ignored, seed: int = 0, **_unused):
        g = torch.Generator().manual_seed(seed)
        return {"latent_sample": torch.randn(batch, channels, height, width, generator=g)}

    axes = {"latent_sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
            "sample": {0: "batch", 2: "height", 3: "width"}}
    return ComponentSpec("vae_decoder", ("latent_sample",), ("sample",), axes, example)
