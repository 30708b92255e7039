"""Image-to-image: the source image encoded by the export's VAE encoder, noised to the strength's first timestep.

Exactly diffusers' ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionControlNetImg2ImgPipeline``:
``get_timesteps`` (skip the first ``steps - int(steps * strength)`` steps, ``set_begin_index``), the
latent distribution sampled with the request's generator, scaled, then ``scheduler.add_noise``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ResAdapterRTError
from ..export.vae_encoder import NAME as VAE_ENCODER


@dataclass
class InitImage:
    """The source image, preprocessed: [1, 3, H, W] in [-1, 1], and how much of it is re-generated."""

    pixels: torch.Tensor
    strength: float
    mask: torch.Tensor | None = None  # inpainting: [1, 1, H, W], 1 where the image is re-generated (``inpaint.py``)


def init_image_request(runners: dict, image: Any, strength: float, width: int, height: int, steps: int,
                       vae_scale_factor: int) -> InitImage | None:
    """The checked source image (None: text-to-image), resized to W x H as diffusers' image processor does."""
    if image is None:
        return None
    if VAE_ENCODER not in runners:
        raise ResAdapterRTError("this export has no VAE encoder, so image-to-image cannot be used; re-export with "
                                "`resadapter-rt export ... --vae-encoder`")
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ResAdapterRTError(f"the source image must be a PIL image, got {type(image).__name__}")
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ResAdapterRTError(f"strength must be in (0, 1], got {strength!r}")
    if int(steps * strength) < 1:
        raise ResAdapterRTError(f"strength {strength:g} with {steps} steps leaves no denoising step; raise the strength or the steps")
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True)
    return InitImage(pixels=processor.preprocess(image, height=height, width=width).to(torch.float32), strength=float(strength))


@dataclass
class ImageStart:
    """Where an image-to-image (or inpainting) loop starts: its timesteps and latents, plus the encoded
    source image and the noise that inpainting re-noises it with at every step."""

    timesteps: torch.Tensor
    latents: torch.Tensor
    image_latents: torch.Tensor
    noise: torch.Tensor


def image_to_image_start(init: InitImage, scheduler: Any, steps: int, encoder: Any, scaling_factor: float, batch: int,
                         generator: torch.Generator, inpainting: bool = False) -> ImageStart:
    """The start for a scheduler whose ``set_timesteps(steps)`` was called.

    ``inpainting``: as diffusers' inpainting pipelines, start from noise alone at strength 1 (its img2img
    pipelines noise the source image to the first timestep), and batch the source latents with
    ``repeat`` (a contiguous copy; img2img's ``cat`` keeps the encoder's channels-last layout, and
    CPU convolutions round differently per layout, ~1e-6, so each mirrors its reference).
    """
    first = min(int(steps * init.strength), steps)
    start = max(steps - first, 0)
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    moments = encoder(sample=init.pixels)["latent_parameters"].float().cpu()
    mean, logvar = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    image_latents = scaling_factor * (mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype))
    if inpainting:
        image_latents = image_latents.repeat(batch, 1, 1, 1)
    elif batch > 1:
        image_latents = torch.cat([image_latents] * batch)
    noise = torch.randn(image_latents.shape, generator=generator, dtype=image_latents.dtype)
    if inpainting and init.strength == 1.0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))
    return ImageStart(timesteps=timesteps, latents=latents, image_latents=image_latents, noise=noise)
